"""Two-tower ECG–report model: unit embeddings from each tower and a logit scale.

Parameter paths: `ecg_encoder/...` (see resnet1d), `ecg_projection`, `text_encoder/...`
(see bert), `text_projection`, `logit_scale` (learnable log-scale only), `logit_bias`
(SigLIP's learnable bias, only in models built with `logit_bias_init`).

Under a bfloat16 compute dtype the towers run in bfloat16 on float32 parameters; the
projections and the unit embeddings are float32, so the loss is computed in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ecgclip_jax.models import bert as bert_lib
from ecgclip_jax.models import resnet1d

MAX_LOGIT_SCALE = 100.0  # CLIP clamps the learned temperature so logits cannot blow up.


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class ECGCLIP(nnx.Module):
  """ECG tower (1-D ResNet) and text tower (BERT family), each with a linear projection."""

  def __init__(self, ecg_config: resnet1d.ResNet1DConfig, text_encoder: bert_lib.BertEncoder,
               *, embed_dim: int, text_pooling: str, logit_scale_init: float,
               learn_logit_scale: bool, logit_bias_init: float | None = None,
               rngs: nnx.Rngs):
    if text_pooling not in bert_lib.POOLING_METHODS:
      raise ValueError(f"unknown text pooling {text_pooling!r}; choose one of {bert_lib.POOLING_METHODS}")
    self.ecg_encoder = resnet1d.ResNet1D(ecg_config, rngs=rngs)
    self.ecg_projection = nnx.Linear(ecg_config.feature_dim, embed_dim, rngs=rngs)
    self.text_encoder = text_encoder
    self.text_projection = nnx.Linear(text_encoder.config.hidden_size, embed_dim, rngs=rngs)
    self.text_pooling = text_pooling
    log_scale = jnp.asarray(math.log(logit_scale_init), jnp.float32)
    self.logit_scale = nnx.Param(log_scale) if learn_logit_scale else log_scale
    # None for the softmax losses, so their checkpoints keep the same parameter tree.
    self.logit_bias = (None if logit_bias_init is None
                       else nnx.Param(jnp.asarray(logit_bias_init, jnp.float32)))

  def encode_ecg(self, ecg: jax.Array, train: bool = False) -> jax.Array:
    return l2_normalize(self.ecg_projection(self.ecg_encoder(ecg, train=train)))

  def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array,
                  dropout_rngs: nnx.Rngs | None = None, first_dropout_layer: int = -1) -> jax.Array:
    """Report embeddings; dropout runs only when `dropout_rngs` is given (training), and from
    `first_dropout_layer` up (see bert.BertEncoder)."""
    return self.project_text(self.text_features(input_ids, attention_mask, dropout_rngs,
                                                first_dropout_layer))

  def text_features(self, input_ids: jax.Array, attention_mask: jax.Array,
                    dropout_rngs: nnx.Rngs | None = None,
                    first_dropout_layer: int = -1) -> jax.Array:
    """The text tower's pooled features `[B, H]`, before the projection."""
    hidden = self.text_encoder(input_ids, attention_mask, dropout_rngs=dropout_rngs,
                               first_dropout_layer=first_dropout_layer)
    return bert_lib.pool(hidden, attention_mask, self.text_pooling)

  def project_text(self, features: jax.Array) -> jax.Array:
    """Unit report embeddings from pooled text features (`text_features`)."""
    return l2_normalize(self.text_projection(features))

  def scale(self) -> jax.Array:
    log_scale = self.logit_scale[...] if isinstance(self.logit_scale, nnx.Param) else self.logit_scale
    return jnp.minimum(jnp.exp(log_scale), MAX_LOGIT_SCALE)

  def bias(self) -> jax.Array | None:
    return None if self.logit_bias is None else self.logit_bias[...]
