"""The contrastive loss is a function of the whole global batch, however it is sharded."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from ecgclip_jax import losses, parallel

MESHES = ({"data": 4, "fsdp": 2}, {"data": 8})


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _reference_clip(ecg, text, scale):
  """Independent float64 numpy symmetric CLIP cross-entropy: (loss, d loss / d logits)."""
  logits = scale * ecg.astype(np.float64) @ text.astype(np.float64).T
  n = len(logits)
  def xent(l):
    l = l - l.max(axis=1, keepdims=True)
    log_softmax = l - np.log(np.exp(l).sum(axis=1, keepdims=True))
    return -np.diag(log_softmax).mean(), (np.exp(log_softmax) - np.eye(n)) / n
  rows, d_rows = xent(logits)
  columns, d_columns = xent(logits.T)
  return 0.5 * (rows + columns), 0.5 * (d_rows + d_columns.T)


def _reference_siglip(ecg, text, scale, bias):
  """Independent float64 numpy sigmoid loss (Zhai et al. 2023): (loss, d loss / d logits)."""
  logits = scale * ecg.astype(np.float64) @ text.astype(np.float64).T + bias
  signs = 2 * np.eye(len(logits)) - 1
  loss = np.logaddexp(0, -signs * logits).sum() / len(logits)  # -log sigmoid(z * logit)
  return loss, -signs / (1 + np.exp(signs * logits)) / len(logits)


def _reference(name, ecg, text, scale, bias):
  """float64 loss and its gradients w.r.t. (ecg, text, scale, bias), by the chain rule."""
  ecg, text = ecg.astype(np.float64), text.astype(np.float64)
  if name == "siglip":
    loss, d_logits = _reference_siglip(ecg, text, scale, bias)
  else:
    loss, d_logits = _reference_clip(ecg, text, scale)
  grads = (scale * d_logits @ text, scale * d_logits.T @ ecg, (d_logits * (ecg @ text.T)).sum(),
           d_logits.sum() if name == "siglip" else 0.0)
  return loss, grads


def _random_batch(rng, batch_size=64, dim=16):
  ecg, text = _unit(rng.normal(size=(2, batch_size, dim))).astype(np.float32)
  return ecg, text, np.float32(rng.uniform(5, 30)), np.float32(rng.uniform(-10, 0))


def test_clip_loss_matches_float64_reference():
  rng = np.random.default_rng()
  ecg, text = _unit(rng.normal(size=(2, 24, 8))).astype(np.float32)
  scale = np.float32(rng.uniform(5, 50))
  got = losses.clip_loss(jnp.asarray(ecg), jnp.asarray(text), jnp.asarray(scale))
  np.testing.assert_allclose(got, _reference_clip(ecg, text, scale)[0], rtol=1e-5)


def test_global_siglip_loss_and_gradients_match_float64_reference():
  ecg, text, scale, bias = _random_batch(np.random.default_rng(), batch_size=24, dim=8)
  loss, grads = jax.value_and_grad(losses.siglip_loss, argnums=(0, 1, 2, 3))(
      ecg, text, scale, bias)
  want_loss, want_grads = _reference("siglip", ecg, text, scale, bias)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_perfectly_aligned_pairs_have_lower_loss_than_shuffled():
  rng = np.random.default_rng()
  emb = jnp.asarray(_unit(rng.normal(size=(16, 32))), jnp.float32)
  aligned = losses.clip_loss(emb, emb, 20.0)
  shuffled = losses.clip_loss(emb, emb[::-1], 20.0)
  assert aligned < shuffled


def test_sharded_loss_and_gradients_equal_single_device():
  """On 8 simulated devices, batch-sharded inputs give the single-device loss and gradients
  (float32; tolerance 1e-6 absolute / 1e-5 relative, the reduction order differs)."""
  assert jax.device_count() == 8
  rng = np.random.default_rng()
  ecg, text = rng.normal(size=(2, 64, 16)).astype(np.float32)
  scale = np.float32(14.3)

  def loss(ecg, text, scale):  # normalization inside so the gradients are non-trivial
    return losses.clip_loss(ecg / jnp.linalg.norm(ecg, axis=-1, keepdims=True),
                            text / jnp.linalg.norm(text, axis=-1, keepdims=True), scale)

  value_and_grad = jax.value_and_grad(loss, argnums=(0, 1, 2))
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single = jax.jit(value_and_grad)(*jax.device_put((ecg, text, scale), one_device))

  mesh = parallel.make_mesh({"data": -1})
  rows = NamedSharding(mesh, PartitionSpec("data"))
  sharded_inputs = (jax.device_put(ecg, rows), jax.device_put(text, rows), scale)
  sharded = jax.jit(value_and_grad)(*sharded_inputs)
  assert sharded[1][0].sharding.spec == PartitionSpec("data")  # gradients stay batch-sharded

  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5, atol=1e-6)
  for g_sharded, g_single in zip(sharded[1], single[1]):
    np.testing.assert_allclose(g_sharded, g_single, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(single[0], _reference_clip(
      _unit(ecg), _unit(text), scale)[0], rtol=1e-5)


def _sharded_value_and_grad(name, mesh):
  def loss(ecg, text, scale, bias):
    return losses.contrastive_loss(name, ecg, text, scale, bias, mesh)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


@pytest.mark.parametrize("axes", MESHES, ids=str)
@pytest.mark.parametrize("name", losses.LOSSES)
def test_each_loss_on_8_devices_matches_float64_value_and_gradients(name, axes):
  """Value within rtol 1e-5 and gradients w.r.t. (ecg, text, scale, bias) within rtol 1e-5 /
  atol 1e-6 of a float64 reference that never shards, for batch-sharded unit embeddings."""
  ecg, text, scale, bias = _random_batch(np.random.default_rng())
  mesh = parallel.make_mesh(axes)
  rows = parallel.batch_sharding(mesh)
  loss, grads = _sharded_value_and_grad(name, mesh)(
      jax.device_put(ecg, rows), jax.device_put(text, rows), scale, bias)
  want_loss, want_grads = _reference(name, ecg, text, scale, bias)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert grads[0].sharding.spec == rows.spec  # embedding gradients stay batch-sharded


def _largest_array(compiled) -> int:
  """Elements of the largest array in the per-device program XLA compiled."""
  shapes = re.findall(r"\b(?:f32|s32|pred)\[([\d,]+)\]", compiled.as_text())
  return max(int(np.prod([int(d) for d in shape.split(",")])) for shape in shapes)


@pytest.mark.parametrize("name,largest", [("clip_shard_map", 64 * 512), ("siglip", 64 * 64)])
def test_shard_map_losses_hold_only_their_block_of_logits(name, largest):
  """With 8 devices and N=512 (n=64 rows each) and D=4, every array of the compiled forward
  and backward is at most `n x N` (all-gather CLIP) or `n x n` (SigLIP ring) elements."""
  batch, dim = 512, 4
  mesh = parallel.make_mesh({"data": 8})
  rows = parallel.batch_sharding(mesh)
  embedding = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  compiled = _sharded_value_and_grad(name, mesh).lower(
      embedding, embedding, scalar, scalar).compile()
  assert _largest_array(compiled) == largest


def test_siglip_without_bias_is_an_error():
  emb = jnp.zeros((8, 4))
  with pytest.raises(ValueError, match="logit_bias"):
    losses.contrastive_loss("siglip", emb, emb, 10.0, None, parallel.make_mesh({"data": 8}))


@pytest.mark.parametrize("name", ["clip_shard_map", "siglip"])
def test_shard_map_losses_need_the_mesh(name):
  emb = jnp.zeros((8, 4))
  with pytest.raises(ValueError, match="mesh"):
    losses.contrastive_loss(name, emb, emb, 10.0, -10.0, None)


def test_an_unknown_loss_is_a_clear_error():
  with pytest.raises(ValueError, match="unknown loss"):
    losses.contrastive_loss("infonce", jnp.zeros((8, 4)), jnp.zeros((8, 4)), 10.0, None, None)


def _reference_uma(view_a, view_b):
  """Independent float64 MERL UMA on raw (un-normalized) views: normalize each, CLIP at the
  fixed temperature 0.07; (loss, d loss / d view_a, d loss / d view_b), the gradients
  through the normalization by the chain rule."""
  a, b = view_a.astype(np.float64), view_b.astype(np.float64)
  norm_a, norm_b = (np.linalg.norm(x, axis=-1, keepdims=True) for x in (a, b))
  unit_a, unit_b = a / norm_a, b / norm_b
  loss, d_logits = _reference_clip(unit_a, unit_b, 1 / 0.07)
  d_unit_a, d_unit_b = d_logits @ unit_b / 0.07, d_logits.T @ unit_a / 0.07
  through_norm = lambda unit, d, norm: (d - unit * (unit * d).sum(-1, keepdims=True)) / norm
  return loss, through_norm(unit_a, d_unit_a, norm_a), through_norm(unit_b, d_unit_b, norm_b)


def _random_views(rng, batch_size=64, dim=16):
  """Dropout-like views: norms from 0.1 to 10, about 10% of entries zeroed."""
  views = rng.normal(size=(2, batch_size, dim)) * rng.uniform(0.1, 10, size=(2, batch_size, 1))
  return (views * (rng.random(views.shape) > 0.1)).astype(np.float32)


@pytest.mark.parametrize("axes", MESHES, ids=str)
def test_uma_loss_on_one_and_8_devices_matches_float64_value_and_gradients(axes):
  """UMA of fresh random views: on one device and batch-sharded over 8, the value within rtol
  1e-5 of the float64 reference and of each other, each gradient within 1e-5 of its largest
  magnitude (rtol 1e-5 too); gradients stay batch-sharded."""
  view_a, view_b = _random_views(np.random.default_rng())
  want_loss, *want_grads = _reference_uma(view_a, view_b)
  value_and_grad = jax.jit(jax.value_and_grad(losses.uma_loss, argnums=(0, 1)))
  one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  rows = parallel.batch_sharding(parallel.make_mesh(axes))
  single = value_and_grad(*jax.device_put((view_a, view_b), one_device))
  sharded = value_and_grad(jax.device_put(view_a, rows), jax.device_put(view_b, rows))
  np.testing.assert_allclose(sharded[0], single[0], rtol=1e-5)
  for loss, grads in (single, sharded):
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for got, want in zip(grads, want_grads):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  assert sharded[1][0].sharding.spec == rows.spec
