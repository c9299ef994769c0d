"""Attributions against scores whose gradients and path integrals are known in closed form,
and against a real (tiny, randomly initialized) two-tower model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgclip_jax import parallel
from ecgclip_jax.models import build
from ecgclip_jax.evaluators import linear_probe
from ecgclip_jax.interpret import saliency

T, C = 24, 12


def _inputs(seed: int, batch: int = 3):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, T, C)).astype(np.float32), rng


def test_linear_score_attributions_are_weights_times_input():
  x, rng = _inputs(0)
  w = rng.normal(size=(T, C)).astype(np.float32)
  score = lambda z: jnp.sum(z * w, axis=(1, 2))
  gxi = jax.jit(functools.partial(saliency.gradient_x_input, score))(x)
  np.testing.assert_allclose(gxi, w * x, rtol=1e-6)
  # 5 steps in chunks of 2: the padded last chunk must add nothing.
  ig = saliency.integrated_gradients(score, x, np.zeros_like(x), steps=5, chunk=2)
  np.testing.assert_allclose(ig, w * x, rtol=1e-5, atol=1e-6)


def test_quadratic_score_integrated_gradients_match_float64_closed_form():
  """For a quadratic score the gradient is linear along the path, so the midpoint rule is
  exact: IG = (x - b) * grad f((x + b) / 2), and IG sums to f(x) - f(b) (completeness)."""
  x, rng = _inputs(1)
  b = rng.normal(size=x.shape).astype(np.float32)
  v, u, q = (rng.normal(size=(T, C)) for _ in range(3))

  def f64(z):  # per record, float64 reference
    return np.sum(v * z, axis=(1, 2)) ** 2 + np.sum(u * z + 0.5 * q * z * z, axis=(1, 2))

  def grad64(z):
    return 2 * np.sum(v * z, axis=(1, 2))[:, None, None] * v + u + q * z

  score = lambda z: (jnp.sum(z * v.astype(np.float32), axis=(1, 2)) ** 2
                     + jnp.sum(z * u.astype(np.float32) + 0.5 * q.astype(np.float32) * z * z,
                               axis=(1, 2)))
  ig = np.asarray(saliency.integrated_gradients(score, x, b, steps=7, chunk=3), np.float64)
  x64, b64 = x.astype(np.float64), b.astype(np.float64)
  expected = (x64 - b64) * grad64((x64 + b64) / 2)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(ig, expected, rtol=0, atol=1e-5 * scale)
  completeness = f64(x64) - f64(b64)  # tolerance: float32 sums of T x C = 288 terms
  np.testing.assert_allclose(ig.sum(axis=(1, 2)), completeness, rtol=1e-4,
                             atol=1e-4 * np.abs(completeness).max())


def test_nonlinear_score_integrated_gradients_follow_the_midpoint_rule():
  """A separable tanh score: IG is the midpoint Riemann sum, which converges to the exact
  a * (tanh(x) - tanh(b))."""
  x, rng = _inputs(2)
  x *= 2
  b = 0.5 * rng.normal(size=x.shape).astype(np.float32)
  a = rng.normal(size=(T, C)).astype(np.float32)
  score = lambda z: jnp.sum(a * jnp.tanh(z), axis=(1, 2))
  steps = 50
  ig = np.asarray(saliency.integrated_gradients(score, x, b, steps=steps, chunk=8), np.float64)
  x64, b64 = x.astype(np.float64), b.astype(np.float64)
  alphas = (np.arange(steps) + 0.5) / steps
  riemann = sum(a / np.cosh(b64 + t * (x64 - b64)) ** 2 for t in alphas) / steps * (x64 - b64)
  np.testing.assert_allclose(ig, riemann, rtol=1e-4, atol=1e-5)
  exact = a * (np.tanh(x64) - np.tanh(b64))
  np.testing.assert_allclose(ig, exact, atol=2e-2 * np.abs(exact).max())


def test_batched_attributions_equal_per_record_ones():
  x, rng = _inputs(3, batch=4)
  w = rng.normal(size=(T * C, 5)).astype(np.float32)
  score = lambda z: jnp.sum(jnp.sin(z.reshape(len(z), -1) @ w), axis=1)  # mixes samples
  base = np.zeros_like(x)
  together = saliency.integrated_gradients(score, x, base, steps=6, chunk=4)
  alone = [saliency.integrated_gradients(score, x[i:i + 1], base[i:i + 1], 6, 4)[0]
           for i in range(len(x))]
  # Tolerance: float32 matrix products sum in another order for one row than for four.
  np.testing.assert_allclose(together, np.stack(alone), rtol=0,
                             atol=1e-5 * np.abs(together).max())
  gxi = saliency.gradient_x_input(score, x)
  np.testing.assert_allclose(gxi, np.concatenate([saliency.gradient_x_input(score, x[i:i + 1])
                                                  for i in range(len(x))]),
                             rtol=0, atol=1e-5 * np.abs(gxi).max())


@pytest.mark.parametrize("width, stride, chunk", [(4, 2, 5), (5, 2, 8), (3, 3, 1)])
def test_occlusion_matches_a_window_by_window_float64_reference(width, stride, chunk):
  """Every (lead, window) occluded one at a time in float64; chunk sizes that do not divide
  the number of windows (padding), widths that the stride does not divide."""
  x, rng = _inputs(6)
  fill = rng.normal(size=x.shape)
  w = rng.normal(size=(T * C, 5))
  f64 = lambda z: np.sum(np.sin(z.reshape(len(z), -1) @ w), axis=1)  # mixes samples
  score = lambda z: jnp.sum(jnp.sin(z.reshape(len(z), -1) @ w.astype(np.float32)), axis=1)
  got = np.asarray(saliency.occlusion(score, x, fill.astype(np.float32), width, stride, chunk))
  total, count = np.zeros(x.shape), np.zeros((T, 1))
  for begin in range(stride - width, T, stride):
    window = slice(max(begin, 0), begin + width)
    count[window] += 1
    for lead in range(C):
      z = x.astype(np.float64)
      z[:, window, lead] = fill[:, window, lead]
      total[:, window, lead] += (f64(x.astype(np.float64)) - f64(z))[:, None]
  expected = total / count
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


def test_occlusion_sees_only_where_the_score_looks():
  """A score reading samples 10-13 of lead 2, where the input is positive: occluding any
  window that reaches them (width 4: samples 7-16 of lead 2) lowers the score, so the map
  is positive there (that part raises the score) and exactly 0 everywhere else."""
  x, _ = _inputs(7)
  x[:, 10:14, 2] = np.abs(x[:, 10:14, 2]) + 0.1
  score = lambda z: jnp.sum(z[:, 10:14, 2], axis=1)
  occluded = np.asarray(saliency.occlusion(score, x, np.zeros_like(x), 4, 1, 8))
  reach = np.zeros((T, C), bool)
  reach[7:17, 2] = True
  assert (occluded[:, reach] > 0).all() and (occluded[:, ~reach] == 0).all()
  with pytest.raises(ValueError, match="occlusion_stride_s"):
    saliency.check_config(saliency.SaliencyConfig(occlusion_s=0.04, occlusion_stride_s=0.08))


def test_baselines_isoelectric_blur_zeros():
  t = np.arange(500) / 100
  x = (1.5 + np.sin(2 * np.pi * 5 * t))[None, :, None] * np.ones((2, 1, C), np.float32)
  config = saliency.SaliencyConfig(baseline="blur", blur_s=0.2)
  blurred = saliency.baseline(x, config, sample_rate=100)
  assert np.abs(blurred[:, 100:-100] - 1.5).max() < 5e-3  # the 1 mV wave: below 0.5%
  assert (saliency.baseline(x, saliency.SaliencyConfig(baseline="zeros"), 100) == 0).all()
  # A beat-like lead: flat at 0.3 with a tall spike and a plateau; its mean is pulled up.
  rng = np.random.default_rng(8)
  beats = np.full((2, 500, C), 0.3, np.float32)
  beats[:, 50::100] += 5
  beats[:, 60::100] += 1
  beats += 0.01 * rng.normal(size=beats.shape).astype(np.float32)
  flat = saliency.baseline(beats, saliency.SaliencyConfig(baseline="isoelectric"), 100)
  assert flat.shape == beats.shape and (flat == flat[:, :1]).all()
  np.testing.assert_allclose(flat[:, 0], 0.3, atol=0.01)
  assert beats.mean() > 0.35


def test_probe_target_reproduces_the_probe_logit():
  rng = np.random.default_rng(4)
  d, k = 6, 3
  probe = linear_probe.LinearProbe(
      mean=rng.normal(size=d).astype(np.float32), std=rng.uniform(0.5, 2, d).astype(np.float32),
      params={"weights": rng.normal(size=(d, k)).astype(np.float32),
              "bias": rng.normal(size=k).astype(np.float32)}, history={})
  features = rng.normal(size=(5, d)).astype(np.float32)
  target = saliency.probe_target("x", probe, column=1)
  np.testing.assert_allclose(features @ target.direction + target.offset,
                             probe.predict(features)[:, 1], rtol=1e-5, atol=1e-5)
  other = saliency.probe_target("y", probe, column=2)
  versus = saliency.contrast(target, other)
  assert versus.name == "x - y"
  np.testing.assert_allclose(features @ versus.direction + versus.offset,
                             probe.predict(features) @ np.array([0, 1, -1]), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="representation"):
    saliency.Target("x", "logits", target.direction)
  with pytest.raises(ValueError, match="same representation"):
    saliency.contrast(target, saliency.zero_shot_target("z", target.direction))


@pytest.mark.parametrize("representation", saliency.REPRESENTATIONS)
def test_attributor_explains_the_model_read_out(tiny_config, representation):
  """The jitted, sharded attributions are those of `representation(x) . direction + offset`
  computed directly from the model, with the configured baseline."""
  tiny_config.data.num_samples = 250
  model_def = build.ModelDef(tiny_config)
  weights = model_def.init(jax.random.key(0), load_pretrained_text=False)
  mesh = parallel.make_mesh(tiny_config.mesh)
  config = saliency.SaliencyConfig(steps=5, baseline="blur", blur_s=0.1, chunk=2)
  attributor = saliency.Attributor(model_def, config, 100.0, parallel.batch_sharding(mesh))
  rng = np.random.default_rng(5)
  x = rng.normal(size=(8, 250, C)).astype(np.float32)
  read = model_def.embed_ecg if representation == "embedding" else model_def.ecg_features
  dim = read(*weights, x[:1]).shape[1]
  target = saliency.Target("x", representation, rng.normal(size=dim).astype(np.float32), 0.3)
  score = lambda z: read(*weights, z) @ target.direction + target.offset

  np.testing.assert_allclose(attributor.scores(weights, target, x), score(x), rtol=1e-4,
                             atol=1e-5)
  ig = attributor(weights, target, x, "integrated_gradients")
  expected = saliency.integrated_gradients(score, x, saliency.baseline(x, config, 100.0), 5, 2)
  scale = np.abs(expected).max()
  np.testing.assert_allclose(ig, expected, rtol=0, atol=1e-4 * scale)
  gxi = attributor(weights, target, x, "grad_x_input")
  np.testing.assert_allclose(gxi, saliency.gradient_x_input(score, x), rtol=0,
                             atol=1e-4 * np.abs(gxi).max())
  occluded = attributor(weights, target, x, "occlusion")  # 0.16 s windows by 0.04 s
  expected = saliency.occlusion(score, x, saliency.baseline(x, config, 100.0), 16, 4, 2)
  np.testing.assert_allclose(occluded, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
  with pytest.raises(ValueError, match="unknown saliency method"):
    attributor(weights, target, x, "smoothgrad")
