"""The two-tower model built from a config, apart from training: its structure, fresh or
pretrained-text initial weights, and the pure forward passes that inference jobs jit.

A model lives as a static NNX graph definition plus two plain nested dicts of arrays,
`params` (every nnx.Param) and `model_state` (BatchNorm running statistics): `weights` is
the pair. Training (train_state.Trainer), inference (inference.Model) and the portable
model folder (model_folder.py) all build through here, so they cannot disagree on a shape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from ecgclip_jax.models import bert as bert_lib
from ecgclip_jax.models import clip, hf_import, resnet1d

Params = dict[str, Any]
Weights = tuple[Params, Params]  # (params, model_state)
COMPUTE_DTYPES = ("float32", "bfloat16")


def text_encoder_dir(config: ml_collections.ConfigDict) -> str:
  return config.text.encoder_dir or str(hf_import.default_text_encoder_dir())


def ecg_encoder_config(config: ml_collections.ConfigDict) -> resnet1d.ResNet1DConfig:
  """The ECG tower's structure; fine-tuning rebuilds the tower alone from it."""
  return resnet1d.ResNet1DConfig(
      arch=config.ecg.arch, width_multiplier=config.ecg.width_multiplier,
      pooling=config.ecg.pooling, num_samples=config.data.num_samples, dtype=config.model.dtype,
      norm=config.ecg.norm, remat=config.ecg.remat)


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> clip.ECGCLIP:
  """The two-tower model with randomly initialized weights (structure from the config and
  the text encoder folder's config.json). Only the sigmoid loss has a logit bias, and only
  UMA (model.uma_weight > 0) its heads, so other configs keep their parameter tree."""
  text_config = bert_lib.BertConfig.from_hf_dir(text_encoder_dir(config))
  text_encoder = bert_lib.BertEncoder(text_config, dtype=config.model.dtype, rngs=rngs)
  return clip.ECGCLIP(
      ecg_encoder_config(config), text_encoder, embed_dim=config.model.embed_dim,
      text_pooling=config.text.pooling, logit_scale_init=config.model.logit_scale_init,
      learn_logit_scale=config.model.learn_logit_scale,
      logit_bias_init=config.model.siglip_bias_init if config.model.loss == "siglip" else None,
      uma_dropout=config.model.uma_dropout if config.model.uma_weight > 0 else None,
      rngs=rngs)


def rbg_key(key: jax.Array) -> jax.Array:
  """An "rbg" key drawn from `key`. Its random bits come from XLA's RngBitGenerator, one
  operation, where a threefry key's rounds are inlined at every call site: programs that
  draw at many sites (initialization, dropout) compile about twice as fast on a CPU and run
  no slower. Its stream is exact on one backend, not the same across backends."""
  return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def path_str(path) -> str:
  """A pytree key path as `ecg_encoder/stages/0/1/conv1/kernel`: the name of a weight in
  freezing masks and in the model folder's safetensors."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def split_model(model: clip.ECGCLIP) -> tuple[nnx.GraphDef, Params, Params]:
  graphdef, params, model_state = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


class ModelDef:
  """A config's model structure (no arrays) and its pure forward passes, which take the
  weights as arguments so one compilation serves every checkpoint of that structure."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    self.graphdef, params, model_state = split_model(model)
    self.abstract_weights: Weights = (params, model_state)  # ShapeDtypeStruct leaves
    self.num_text_layers = model.text_encoder.config.num_layers
    self._compiled_random_weights = jax.jit(self._random_weights)

  def init(self, rng: jax.Array, load_pretrained_text: bool) -> Weights:
    """Fresh weights; the text tower from its folder's safetensors if asked. The random
    initialization runs as one compiled program from an "rbg" key (see `rbg_key`): op by op
    from a threefry key it took 40 s on a loaded 2-core CPU, compiled 17 s, and a second
    process loads it from the persistent compilation cache."""
    params, model_state = self._compiled_random_weights(rbg_key(rng))
    if not load_pretrained_text:
      return params, model_state
    model = self.model(params, model_state)
    hf_import.load_bert_weights(model.text_encoder, Path(text_encoder_dir(self.config)))
    _, params, model_state = split_model(model)
    return params, model_state

  def _random_weights(self, rng: jax.Array) -> Weights:
    _, params, model_state = split_model(build_model(self.config, nnx.Rngs(rng)))
    return params, model_state

  def model(self, params: Params, model_state: Params) -> clip.ECGCLIP:
    return nnx.merge(self.graphdef, params, model_state)

  def embed_ecg(self, params: Params, model_state: Params, ecg: jax.Array) -> jax.Array:
    """Unit ECG embeddings `[B, E]` of normalized `[B, T, 12]` input (inference mode)."""
    return self.model(params, model_state).encode_ecg(ecg, train=False)

  def ecg_features(self, params: Params, model_state: Params, ecg: jax.Array) -> jax.Array:
    """The ECG tower's pooled features before the projection: what linear probes read."""
    return self.model(params, model_state).ecg_encoder(ecg, train=False)

  def text_features(self, params: Params, model_state: Params, input_ids: jax.Array,
                    attention_mask: jax.Array) -> jax.Array:
    """The text tower's pooled features before the projection (text.precompute_features)."""
    return self.model(params, model_state).text_features(input_ids, attention_mask)

  def embed_text(self, params: Params, model_state: Params, input_ids: jax.Array,
                 attention_mask: jax.Array) -> jax.Array:
    return self.model(params, model_state).encode_text(input_ids, attention_mask)
