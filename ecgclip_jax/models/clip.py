"""Two-tower ECG–report model: unit embeddings from each tower and a logit scale.

Parameter paths: `ecg_encoder/...` (see resnet1d), `ecg_projection`, `text_encoder/...`
(see bert), `text_projection`, `logit_scale` (learnable log-scale only), `logit_bias`
(SigLIP's learnable bias, only in models built with `logit_bias_init`), `uma_heads/{0,1}`
(MERL's UMA heads, training only, in models built with `uma_dropout`).

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
               uma_dropout: float | None = None, rngs: nnx.Rngs):
    if text_pooling not in bert_lib.POOLING_METHODS:
      raise ValueError(f"unknown text pooling {text_pooling!r}; choose one of {bert_lib.POOLING_METHODS}")
    self.ecg_encoder = resnet1d.ResNet1D(ecg_config, rngs=rngs)
    self.ecg_projection = nnx.Linear(ecg_config.feature_dim, embed_dim, rngs=rngs)
    self.text_encoder = text_encoder
    self.text_projection = nnx.Linear(text_encoder.config.hidden_size, embed_dim, rngs=rngs)
    self.text_pooling = text_pooling
    # A fixed scale is a Python float, static in the graph definition: an array here would
    # be a tracer leaked from ModelDef's abstract build, which breaks the jitted train step.
    log_scale = math.log(logit_scale_init)
    self.logit_scale = (nnx.Param(jnp.asarray(log_scale, jnp.float32)) if learn_logit_scale
                        else log_scale)
    # None for the softmax losses, so their checkpoints keep the same parameter tree.
    self.logit_bias = (None if logit_bias_init is None
                       else nnx.Param(jnp.asarray(logit_bias_init, jnp.float32)))
    # MERL's two UMA heads (its linear1/linear2 and dropout1/dropout2), only when UMA is on.
    # MERL's heads have no bias but read the mean of its 1x1 `downconv` output, which has
    # one; here they read the last stage's mean directly, so each carries the bias.
    self.uma_heads = None if uma_dropout is None else nnx.List(
        [nnx.Linear(ecg_config.feature_dim, embed_dim, rngs=rngs) for _ in range(2)])
    self.uma_dropout = None if uma_dropout is None else nnx.Dropout(uma_dropout)

  def encode_ecg(self, ecg: jax.Array, train: bool = False) -> jax.Array:
    return l2_normalize(self.ecg_projection(self.ecg_encoder(ecg, train=train)))

  def encode_ecg_with_views(self, ecg: jax.Array, rngs: nnx.Rngs
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training with MERL's UMA: the unit embedding (as `encode_ecg(train=True)`) and two
    un-normalized views of each ECG from one pass of the tower. As MERL's forward: the last
    stage's output averaged over time (not the attention-pooled features), through each UMA
    head, then dropout with its own mask (`rngs`); losses.uma_loss normalizes them."""
    feature_map = self.ecg_encoder.feature_map(ecg, train=True)
    ecg_emb = l2_normalize(self.ecg_projection(self.ecg_encoder.pooled(feature_map)))
    mean = feature_map.mean(axis=1)
    view_a, view_b = (self.uma_dropout(head(mean), deterministic=False, rngs=rngs)
                      for head in self.uma_heads)
    return ecg_emb, view_a, view_b

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
    log_scale = (self.logit_scale[...] if isinstance(self.logit_scale, nnx.Param)
                 else jnp.asarray(self.logit_scale, jnp.float32))
    return jnp.minimum(jnp.exp(log_scale), MAX_LOGIT_SCALE)

  def bias(self) -> jax.Array | None:
    return None if self.logit_bias is None else self.logit_bias[...]
