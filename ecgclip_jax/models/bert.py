"""BERT-family text encoder in Flax NNX, layout-compatible with Hugging Face ``BertModel``.

Written from scratch because transformers no longer ships Flax models; pretrained
weights come in through :mod:`ecgclip_jax.models.hf_import`.

Parameter paths (``nnx.state(model, nnx.Param)``; ``i`` = 0 .. num_layers-1, bottom to top)::

    embeddings/word/embedding             [vocab, H]
    embeddings/position/embedding         [max_pos, H]
    embeddings/token_type/embedding       [type_vocab, H]
    embeddings/norm/{scale,bias}          LayerNorm
    layers/<i>/attention/{query,key,value,out}/{kernel,bias}   kernels [in, out]
    layers/<i>/attention_norm/{scale,bias}                     LayerNorm
    layers/<i>/ffn_in/{kernel,bias}       [H, I]
    layers/<i>/ffn_out/{kernel,bias}      [I, H]
    layers/<i>/ffn_norm/{scale,bias}      LayerNorm

So "train only the top k layers" selects paths starting with ``layers/<i>`` for
``i >= num_layers - k``; LayerNorm leaves are the ``scale``/``bias`` under any
``*norm`` module; the usual weight-decay mask decays ``kernel`` (and, if wanted,
``embedding``) leaves only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

_INIT = nnx.initializers.normal(stddev=0.02)  # BERT's initializer_range


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Architecture hyper-parameters; defaults are all-MiniLM-L6-v2."""

  vocab_size: int = 30522
  hidden_size: int = 384
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 1536
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1

  @classmethod
  def from_hf_dir(cls, path: str | Path) -> BertConfig:
    """Read a Hugging Face ``config.json``; only plain BERT (absolute positions, exact GELU)."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
      raise FileNotFoundError(f"config.json not found in text encoder folder: {path}")
    hf = json.loads(config_file.read_text())
    model_type = hf.get("model_type")
    if model_type != "bert":
      raise ValueError(
        f"unsupported text encoder model_type {model_type!r} in {config_file}: only plain 'bert' is supported"
      )
    # Anything else would load without error but compute a different function.
    if hf.get("hidden_act", "gelu") != "gelu":
      raise ValueError(
        f"unsupported hidden_act {hf['hidden_act']!r} in {config_file}: only exact 'gelu'"
      )
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(
        f"unsupported position_embedding_type {hf['position_embedding_type']!r} in {config_file}"
      )
    return cls(
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf["max_position_embeddings"],
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
    )


def _linear(d_in: int, d_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32, kernel_init=_INIT, rngs=rngs)


def _layer_norm(config: BertConfig, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
    config.hidden_size,
    epsilon=config.layer_norm_eps,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class BertEmbeddings(nnx.Module):
  """Word + absolute position + token-type embeddings, then LayerNorm and dropout."""

  def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
    def embed(n):
      return nnx.Embed(
        n, config.hidden_size, dtype=dtype, param_dtype=jnp.float32, embedding_init=_INIT, rngs=rngs
      )

    self.max_positions = config.max_position_embeddings
    self.word = embed(config.vocab_size)
    self.position = embed(config.max_position_embeddings)
    self.token_type = embed(config.type_vocab_size)
    self.norm = _layer_norm(config, dtype, rngs)
    self.dropout = nnx.Dropout(config.hidden_dropout)

  def __call__(self, input_ids: jax.Array, *, dropout_rngs: nnx.Rngs | None) -> jax.Array:
    seq_len = input_ids.shape[1]
    if seq_len > self.max_positions:
      raise ValueError(
        f"sequence length {seq_len} exceeds max_position_embeddings {self.max_positions}"
      )
    # Single-segment inputs only (reports are one sentence group), so token type is always 0.
    x = self.word(input_ids) + self.position(jnp.arange(seq_len))[None]
    x = x + self.token_type(jnp.zeros((1, 1), jnp.int32))
    return self.dropout(self.norm(x), deterministic=dropout_rngs is None, rngs=dropout_rngs)


class BertSelfAttention(nnx.Module):
  """Multi-head self-attention plus output projection; softmax in float32 for bf16 safety."""

  def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
    if config.hidden_size % config.num_heads:
      raise ValueError(
        f"hidden_size {config.hidden_size} not divisible by num_heads {config.num_heads}"
      )
    h = config.hidden_size
    self.num_heads = config.num_heads
    self.query = _linear(h, h, dtype, rngs)
    self.key = _linear(h, h, dtype, rngs)
    self.value = _linear(h, h, dtype, rngs)
    self.out = _linear(h, h, dtype, rngs)
    self.attention_dropout = nnx.Dropout(config.attention_dropout)
    self.output_dropout = nnx.Dropout(config.hidden_dropout)

  def __call__(
    self, x: jax.Array, mask_bias: jax.Array, *, dropout_rngs: nnx.Rngs | None
  ) -> jax.Array:
    b, l, h = x.shape
    head_dim = h // self.num_heads

    def heads(t):
      return t.reshape(b, l, self.num_heads, head_dim)

    q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
    scores = jnp.einsum("bqnd,bknd->bnqk", q, k).astype(jnp.float32) / jnp.sqrt(
      jnp.float32(head_dim)
    )
    probs = jax.nn.softmax(scores + mask_bias, axis=-1).astype(x.dtype)
    probs = self.attention_dropout(probs, deterministic=dropout_rngs is None, rngs=dropout_rngs)
    context = jnp.einsum("bnqk,bknd->bqnd", probs, v).reshape(b, l, h)
    return self.output_dropout(
      self.out(context), deterministic=dropout_rngs is None, rngs=dropout_rngs
    )


class BertLayer(nnx.Module):
  """Post-LN transformer block as in BERT: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

  def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
    self.attention = BertSelfAttention(config, dtype=dtype, rngs=rngs)
    self.attention_norm = _layer_norm(config, dtype, rngs)
    self.ffn_in = _linear(config.hidden_size, config.intermediate_size, dtype, rngs)
    self.ffn_out = _linear(config.intermediate_size, config.hidden_size, dtype, rngs)
    self.ffn_dropout = nnx.Dropout(config.hidden_dropout)
    self.ffn_norm = _layer_norm(config, dtype, rngs)

  def __call__(
    self, x: jax.Array, mask_bias: jax.Array, *, dropout_rngs: nnx.Rngs | None
  ) -> jax.Array:
    x = self.attention_norm(x + self.attention(x, mask_bias, dropout_rngs=dropout_rngs))
    y = self.ffn_out(
      jax.nn.gelu(self.ffn_in(x), approximate=False)
    )  # HF "gelu" is the exact erf form
    return self.ffn_norm(
      x + self.ffn_dropout(y, deterministic=dropout_rngs is None, rngs=dropout_rngs)
    )


class BertEncoder(nnx.Module):
  """Token ids -> last hidden states ``[B, L, H]`` (no pooler; see :func:`pool`).

  ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
  """

  def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.embeddings = BertEmbeddings(config, dtype=dtype, rngs=rngs)
    self.layers = nnx.List(
      [BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers)]
    )

  def __call__(
    self, input_ids: jax.Array, attention_mask: jax.Array, *, dropout_rngs: nnx.Rngs | None = None,
    first_dropout_layer: int = -1,
  ) -> jax.Array:
    """Dropout (given `dropout_rngs`) from layer `first_dropout_layer` up, the embeddings
    being layer -1: the layers below run as a fixed feature extractor."""
    # Additive key bias [B, 1, 1, L]: 0 for real tokens, float32 min for padding (as HF does).
    mask_bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
    rngs_at = lambda index: None if index < first_dropout_layer else dropout_rngs
    x = self.embeddings(input_ids, dropout_rngs=rngs_at(-1))
    for index, layer in enumerate(self.layers):
      x = layer(x, mask_bias, dropout_rngs=rngs_at(index))
    return x


POOLING_METHODS = ("cls", "mean")


def pool(hidden: jax.Array, attention_mask: jax.Array, method: str) -> jax.Array:
  """Sentence embedding ``[B, H]``: ``"cls"`` (first token) or ``"mean"`` (masked mean, as sentence-transformers)."""
  if method == "cls":
    return hidden[:, 0]
  if method == "mean":
    # Accumulate in float32 so bf16 hidden states do not lose precision over long sequences.
    mask = attention_mask[..., None].astype(jnp.float32)
    summed = (hidden.astype(jnp.float32) * mask).sum(axis=1)
    return (summed / jnp.maximum(mask.sum(axis=1), 1e-9)).astype(hidden.dtype)
  raise ValueError(f"unknown pooling method {method!r}; expected 'cls' or 'mean'")
