"""Attributions of a class score to the input ECG: gradient x input, integrated gradients,
occlusion.

A target is a scalar read-out per record, `representation(x) . direction + offset`: the
zero-shot score (the cosine of the unit ECG embedding with a class embedding) or a linear
probe's logit (standardized pooled features times the probe's weights, folded into one
direction and offset). The direction is an argument of the jitted function, not a constant,
so every class and checkpoint reuses one compilation per method and input shape.

Attributions are taken with respect to the normalized input the model sees (`[B, T, 12]`),
one value per sample and lead. The model runs in inference mode, where records do not
interact, so the gradient of the batch's summed score is every record's own gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ecgclip_jax.evaluators import linear_probe
from ecgclip_jax.models import build

METHODS = ("grad_x_input", "integrated_gradients", "occlusion")
BASELINES = ("isoelectric", "blur", "zeros")
REPRESENTATIONS = ("embedding", "features")

ScoreFn = Callable[[jax.Array], jax.Array]  # [B, T, C] -> [B], records independent


@dataclasses.dataclass(frozen=True)
class SaliencyConfig:
  steps: int = 32  # integrated gradients: midpoint-rule points along the path
  baseline: str = "isoelectric"  # the reference signal (see `baseline`)
  blur_s: float = 0.2  # "blur": Gaussian sigma in seconds, wider than a QRS or an ST segment
  chunk: int = 8  # path points or occluded copies evaluated together: memory ~ chunk x batch
  occlusion_s: float = 0.16  # occlusion window: about a QRS complex or an ST segment
  occlusion_stride_s: float = 0.04


def check_config(config: SaliencyConfig) -> None:
  if config.baseline not in BASELINES:
    raise ValueError(f"unknown saliency baseline {config.baseline!r}; choose from {BASELINES}")
  if config.steps < 1 or config.chunk < 1 or config.blur_s <= 0:
    raise ValueError(f"saliency steps and chunk must be >= 1 and blur_s > 0, got {config}")
  if not 0 < config.occlusion_stride_s <= config.occlusion_s:
    raise ValueError(f"need 0 < occlusion_stride_s <= occlusion_s, got {config}")


def gradient_x_input(score: ScoreFn, x: jax.Array) -> jax.Array:
  """d score / d x times x, per record."""
  return jax.grad(lambda z: jnp.sum(score(z)))(x) * x


def integrated_gradients(score: ScoreFn, x: jax.Array, baseline: jax.Array, steps: int,
                         chunk: int) -> jax.Array:
  """(x - baseline) times the path-averaged gradient, by the midpoint rule over `steps`
  points (exact for a quadratic score). A scan over chunks of `chunk` points keeps memory at
  one chunk's worth; the last chunk is padded with zero-weight points at the input."""
  chunk = min(chunk, steps)
  num_chunks = -(-steps // chunk)
  k = jnp.arange(num_chunks * chunk)
  alphas = jnp.minimum((k + 0.5) / steps, 1.0).reshape(num_chunks, chunk)
  weights = jnp.where(k < steps, 1.0 / steps, 0.0).reshape(num_chunks, chunk)
  delta = x - baseline
  grad = jax.grad(lambda z: jnp.sum(score(z.reshape(-1, *x.shape[1:]))))

  def accumulate(total, part):
    alpha, weight = part
    g = grad(baseline + alpha[:, None, None, None] * delta)  # [chunk, B, T, C]
    return total + jnp.tensordot(weight, g, axes=1), None

  total, _ = jax.lax.scan(accumulate, jnp.zeros_like(x), (alphas, weights))
  return delta * total


def occlusion(score: ScoreFn, x: jax.Array, fill: jax.Array, width: int, stride: int,
              chunk: int) -> jax.Array:
  """Per lead, how much the score drops when a window of `width` samples is replaced by
  `fill`'s, the window sliding by `stride`; each sample gets the mean drop of the windows
  covering it (positive: that part raises the score). Windows start before the record so
  that its edges are covered as often as its middle. A scan over chunks of `chunk` windows
  keeps memory at `chunk` occluded copies of the batch; padding windows occlude nothing."""
  batch, num_samples, num_leads = x.shape
  starts = np.arange(stride - width, num_samples, stride)
  t = np.arange(num_samples)
  covers = (t >= starts[:, None]) & (t < starts[:, None] + width)  # [windows, T]
  num_windows = num_leads * len(starts)
  num_chunks = -(-num_windows // chunk)
  pad = num_chunks * chunk - num_windows
  leads = np.r_[np.repeat(np.arange(num_leads), len(starts)), -np.ones(pad, int)]
  windows = np.r_[np.tile(np.arange(len(starts)), num_leads), np.zeros(pad, int)]
  reference = score(x)

  def drops(_, part):
    lead, window = part  # [chunk]
    occluded = (jnp.asarray(covers)[window][:, :, None]
                & (jnp.arange(num_leads) == lead[:, None, None]))  # [chunk, T, C]
    z = jnp.where(occluded[:, None], fill, x)  # [chunk, B, T, C]
    return None, reference - score(z.reshape(-1, num_samples, num_leads)).reshape(chunk, batch)

  _, drop = jax.lax.scan(drops, None, (leads.reshape(num_chunks, chunk),
                                       windows.reshape(num_chunks, chunk)))
  drop = drop.reshape(-1, batch)[:num_windows].reshape(num_leads, len(starts), batch)
  return jnp.einsum("lwb,wt->btl", drop, covers.astype(np.float32)) / covers.sum(0)[:, None]


def baseline(x: np.ndarray, config: SaliencyConfig, sample_rate: float) -> np.ndarray:
  """The reference for `x` [B, T, C]: where integrated gradients' path starts and what
  occlusion puts in a window's place. "isoelectric" (the default), every lead flat at its
  median, the level it rests at between waves: each wave is explained as its deviation from
  that line, as an ST shift is read. "blur", a Gaussian low-pass of `x`: the lead's level
  and slow wander stay, the sharp waves go (an ST plateau partly stays). "zeros" (z-scored
  input: every lead flat at its mean) starts where a cosine target is ill-defined: a network
  without biases is scale-invariant under the cosine, so along the straight path from 0 the
  score barely moves and IG no longer adds up to score(x) - score(0)."""
  if config.baseline == "zeros":
    return np.zeros_like(x)
  if config.baseline == "isoelectric":
    return np.broadcast_to(np.median(x, axis=1, keepdims=True), x.shape).copy()
  return ndimage.gaussian_filter1d(x, config.blur_s * sample_rate, axis=1, mode="nearest")


# ------------------------------------------------------------------------------- targets


@dataclasses.dataclass(frozen=True)
class Target:
  """One class score to explain: `representation(x) . direction + offset` per record."""

  name: str
  representation: str  # "embedding": zero-shot cosine; "features": linear-probe logit
  direction: np.ndarray  # [D]
  offset: float = 0.0

  def __post_init__(self):
    if self.representation not in REPRESENTATIONS:
      raise ValueError(f"unknown representation {self.representation!r}; "
                       f"choose from {REPRESENTATIONS}")


def zero_shot_target(name: str, class_embedding: np.ndarray) -> Target:
  """The cosine with a unit class embedding (`zero_shot.class_embeddings`' row)."""
  return Target(name, "embedding", np.asarray(class_embedding, np.float32))


def probe_target(name: str, probe: linear_probe.LinearProbe, column: int) -> Target:
  """The probe's logit for `column`, its standardization folded into the weights."""
  w = probe.params["weights"][:, column] / probe.std
  return Target(name, "features", w.astype(np.float32),
                float(probe.params["bias"][column] - probe.mean @ w))


def contrast(target: Target, reference: Target) -> Target:
  """`target`'s score minus `reference`'s: what makes a record this class rather than that
  one; the sensitivity both scores share cancels."""
  if target.representation != reference.representation:
    raise ValueError("contrasted targets must read the same representation")
  return Target(f"{target.name} - {reference.name}", target.representation,
                target.direction - reference.direction, target.offset - reference.offset)


class Attributor:
  """Jitted target scores and attributions for one model; `weights` (params, model_state)
  and the target's direction are arguments, so they compile once per input shape. Inputs
  are placed with `sharding` (e.g. split over the mesh's batch axes) when given."""

  def __init__(self, model_def: build.ModelDef, config: SaliencyConfig, sample_rate: float,
               sharding: jax.sharding.Sharding | None = None):
    check_config(config)
    self.config, self.sample_rate = config, sample_rate
    self.occlusion_window = tuple(max(1, round(seconds * sample_rate)) for seconds in
                                  (config.occlusion_s, config.occlusion_stride_s))
    self._place = lambda x: x if x is None or sharding is None else jax.device_put(x, sharding)
    reads = {"embedding": model_def.embed_ecg, "features": model_def.ecg_features}

    def score(weights, x, direction, offset, *, representation):
      return reads[representation](*weights, x) @ direction + offset

    def attribute(weights, x, start, direction, offset, *, representation, method):
      fn = lambda z: score(weights, z, direction, offset, representation=representation)
      if method == "grad_x_input":
        return gradient_x_input(fn, x)
      if method == "occlusion":
        return occlusion(fn, x, start, *self.occlusion_window, config.chunk)
      return integrated_gradients(fn, x, start, config.steps, config.chunk)

    self._score = jax.jit(score, static_argnames="representation")
    self._attribute = jax.jit(attribute, static_argnames=("representation", "method"))

  def scores(self, weights, target: Target, x: np.ndarray) -> np.ndarray:
    """The target's score of each record of `x` [B, T, 12] (normalized input)."""
    return np.asarray(self._score(weights, self._place(x), target.direction, target.offset,
                                  representation=target.representation))

  def __call__(self, weights, target: Target, x: np.ndarray, method: str) -> np.ndarray:
    """Attributions [B, T, 12] of the target's score to `x` [B, T, 12]."""
    if method not in METHODS:
      raise ValueError(f"unknown saliency method {method!r}; choose from {METHODS}")
    start = None if method == "grad_x_input" else baseline(x, self.config, self.sample_rate)
    return np.asarray(self._attribute(weights, self._place(x), self._place(start),
                                      target.direction, target.offset,
                                      representation=target.representation, method=method))
