"""Contrastive losses over the GLOBAL batch.

Under `jax.jit` with batch-sharded embeddings, XLA gathers what the similarity matrix
needs, so this is the same function of the whole batch on 1 device or 256 (DESIGN.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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


def contrastive_loss(name: str, ecg_emb: jax.Array, text_emb: jax.Array, logit_scale: jax.Array,
                     logit_bias: jax.Array | None, mesh: jax.sharding.Mesh | None) -> jax.Array:
  """The loss named by `model.loss` (config_defaults.LOSSES) over the global batch."""
  if name == "clip":
    return clip_loss(ecg_emb, text_emb, logit_scale)
  raise NotImplementedError(name)
