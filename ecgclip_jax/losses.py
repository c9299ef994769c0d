"""Contrastive losses over the GLOBAL batch, in three implementations (`model.loss`).

- "clip": symmetric softmax CLIP written globally; under `jax.jit` with batch-sharded
  embeddings XLA gathers what the similarity matrix needs (docs/architecture.md, "One global batch").
- "clip_shard_map": the same value with explicit communication: each device all-gathers the
  reports and scores only its own ECG rows, so its logits are one `n x N` block, never
  `N x N`; the report-to-ECG term adds up per-device column log-sum-exps.
- "siglip": the sigmoid loss of Zhai et al. 2023, with report blocks passed around a ring of
  devices, so each device holds one `n x n` block of logits at a time.

All three are the same function of the whole batch on 1 device or 256 (tests/test_losses.py).
`uma_loss`, MERL's uni-modal term (`model.uma_weight`), is added to any of them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from ecgclip_jax import parallel
from ecgclip_jax.models.clip import l2_normalize

LOSSES = ("clip", "clip_shard_map", "siglip")  # `model.loss` values (contrastive_loss)


def clip_logits(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """`[B, B]` scaled cosine similarities, ECG rows against report columns, in float32."""
  return logit_scale * jnp.einsum("id,jd->ij", ecg_emb.astype(jnp.float32),
                                  text_emb.astype(jnp.float32))


def clip_loss(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array) -> jax.Array:
  """Symmetric softmax cross-entropy (CLIP): each ECG picks its report and vice versa."""
  logits = clip_logits(ecg_emb, text_emb, logit_scale)
  targets = jnp.arange(logits.shape[0])
  ecg_to_text = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  text_to_ecg = optax.softmax_cross_entropy_with_integer_labels(logits.T, targets)
  return 0.5 * (ecg_to_text.mean() + text_to_ecg.mean())


# MERL's clip_loss temperature, 0.07 (utils/utils_loss.py), fixed for its UMA term whatever
# the cross-modal loss's logit scale is.
UMA_LOGIT_SCALE = 1 / 0.07


def uma_loss(view_a: jax.Array, view_b: jax.Array) -> jax.Array:
  """MERL's uni-modal alignment (Liu et al. 2024): the CLIP loss between two dropout views of
  each ECG, the record's other view its positive and every other record's a negative, over
  the global batch (written globally like "clip": N x N logits).

  The views come un-normalized (`ECGCLIP.encode_ecg_with_views`: dropout after the linear
  heads, before any normalization, as MERL's `dropout1(linear1(...))`); they are normalized
  here, as MERL's clip_loss normalizes its inputs, and scaled by 1 / 0.07. MERL's clip_loss
  sums its two cross-entropies, for both terms, so this mean keeps MERL's 1:1 ratio to CLIP.
  """
  return clip_loss(l2_normalize(view_a), l2_normalize(view_b), UMA_LOGIT_SCALE)


def _siglip_block_sum(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                      logit_bias: jax.Array, positives_on_diagonal: bool) -> jax.Array:
  """Sum of -log sigmoid(z * logits) over one block; only a block of matching rows has z=+1."""
  logits = clip_logits(ecg_emb, text_emb, logit_scale) + logit_bias
  if positives_on_diagonal:
    signs = 2 * jnp.eye(*logits.shape, dtype=logits.dtype) - 1
  else:
    signs = -1
  return -jax.nn.log_sigmoid(signs * logits).sum()


def siglip_loss(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                logit_bias: jax.Array) -> jax.Array:
  """Sigmoid loss written globally (XLA partitions it); the reference for the ring version."""
  return _siglip_block_sum(ecg_emb, text_emb, logit_scale, logit_bias, True) / ecg_emb.shape[0]


def _batch_shard_map(local_fn, mesh: Mesh | None, num_scalars: int):
  """`local_fn(ecg_rows, text_rows, *scalars, axes=...)` mapped over the mesh's batch axes.

  The local function returns the loss sum already added up over devices (`psum`), so the
  result is replicated. Gradients come from autodiff through the collectives: `all_gather`
  transposes to a reduce-scatter and `ppermute` to the reverse permutation, so each row's
  gradient gathers what every device computed from it (open_clip's gather-with-grad).
  """
  if mesh is None:
    raise ValueError("this loss runs under shard_map over the batch axes: pass the mesh")
  axes = parallel.batch_axes(mesh)
  rows = PartitionSpec(axes)
  return jax.shard_map(functools.partial(local_fn, axes=axes), mesh=mesh,
                       in_specs=(rows, rows) + (PartitionSpec(),) * num_scalars,
                       out_specs=PartitionSpec())


def _local_clip_sum(ecg_rows, text_rows, logit_scale, *, axes):
  """Both cross-entropies from one `n x N` block: this device's ECG rows against all reports.

  A report's column spans every device's block, so its log-sum-exp is assembled from
  per-device length-N vectors (column max, then the sum of exponentials under the shared
  max): scoring the report rows against all ECGs too would double the logits and the FLOPs.
  The max only stabilises, so `stop_gradient` on it leaves the gradient exact.
  """
  targets = jax.lax.axis_index(axes) * ecg_rows.shape[0] + jnp.arange(ecg_rows.shape[0])
  logits = clip_logits(ecg_rows, jax.lax.all_gather(text_rows, axes, tiled=True), logit_scale)
  positives = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
  column_max = jax.lax.pmax(jax.lax.stop_gradient(logits.max(axis=0)), axes)
  column_lse = column_max + jnp.log(
      jax.lax.psum(jnp.exp(logits - column_max).sum(axis=0), axes))
  ecg_to_text = jax.nn.logsumexp(logits, axis=1) - positives
  text_to_ecg = column_lse[targets] - positives  # this device's reports are columns `targets`
  return jax.lax.psum(ecg_to_text.sum() + text_to_ecg.sum(), axes)


def clip_loss_shard_map(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                        mesh: Mesh | None) -> jax.Array:
  """`clip_loss` with per-device logits `n x N` (n = N / batch-parallel devices)."""
  loss_sum = _batch_shard_map(_local_clip_sum, mesh, 1)(
      ecg_emb, text_emb, jnp.asarray(logit_scale, jnp.float32))
  return loss_sum / (2 * ecg_emb.shape[0])


def _local_siglip_sum(ecg_rows, text_rows, logit_scale, logit_bias, *, axes):
  """This device's ECG rows against every report block, received one block per ring step.

  Each step's logits are recomputed in the backward pass (`jax.checkpoint`), so the scan
  keeps only the `n x D` report blocks, not one `n x n` block of residuals per step.
  """
  num_devices = jax.lax.axis_size(axes)
  ring = [(i, (i + 1) % num_devices) for i in range(num_devices)]
  negatives_sum = jax.checkpoint(functools.partial(_siglip_block_sum,
                                                   positives_on_diagonal=False),
                                 prevent_cse=False)

  def step(text_block, _):
    text_block = jax.lax.ppermute(text_block, axes, ring)
    return text_block, negatives_sum(ecg_rows, text_block, logit_scale, logit_bias)

  own = _siglip_block_sum(ecg_rows, text_rows, logit_scale, logit_bias, True)
  _, others = jax.lax.scan(step, text_rows, length=num_devices - 1)
  return jax.lax.psum(own + others.sum(), axes)


def siglip_loss_ring(ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                     logit_bias: jax.Array, mesh: Mesh | None) -> jax.Array:
  """`siglip_loss` with report blocks exchanged by `ppermute`: `n x n` logits per step."""
  loss_sum = _batch_shard_map(_local_siglip_sum, mesh, 2)(
      ecg_emb, text_emb, jnp.asarray(logit_scale, jnp.float32),
      jnp.asarray(logit_bias, jnp.float32))
  return loss_sum / ecg_emb.shape[0]


def contrastive_loss(name: str, ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                     logit_bias: jax.Array | None, mesh: Mesh | None) -> jax.Array:
  """The loss named by `model.loss` over the global batch; the CLIP losses ignore the bias."""
  if name == "clip":
    return clip_loss(ecg_emb, text_emb, logit_scale)
  if name == "clip_shard_map":
    return clip_loss_shard_map(ecg_emb, text_emb, logit_scale, mesh)
  if name == "siglip":
    if logit_bias is None:
      raise ValueError("loss 'siglip' needs the learnable logit_bias (model.siglip_bias_init)")
    return siglip_loss_ring(ecg_emb, text_emb, logit_scale, logit_bias, mesh)
  raise ValueError(f"unknown loss {name!r}; choose one of {LOSSES}")
