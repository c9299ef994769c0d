"""Model construction, optimizer, train state and the pure step functions.

The model lives as a static NNX graph definition plus plain nested dicts of arrays
(parameters; BatchNorm statistics), so the state is an ordinary pytree that optax updates,
`jax.jit` shards and Orbax saves without NNX-specific handling.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from ecgclip_jax import losses
from ecgclip_jax.models import bert as bert_lib
from ecgclip_jax.models import clip, hf_import, resnet1d

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Params  # every nnx.Param, as a nested dict
  model_state: Params  # BatchNorm running statistics
  opt_state: optax.OptState  # over the trainable parameters only
  rng: jax.Array  # raw uint32 key data (plain arrays checkpoint anywhere)


def text_encoder_dir(config: ml_collections.ConfigDict) -> str:
  return config.text.encoder_dir or hf_import.default_text_encoder_dir()


def ecg_encoder_config(config: ml_collections.ConfigDict) -> resnet1d.ResNet1DConfig:
  """The ECG tower's structure; downstream jobs rebuild the tower alone from it."""
  return resnet1d.ResNet1DConfig(
      arch=config.ecg.arch, width_multiplier=config.ecg.width_multiplier,
      pooling=config.ecg.pooling, num_samples=config.data.num_samples, dtype=config.model.dtype)


def build_model(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> clip.ECGCLIP:
  """The two-tower model with randomly initialized weights (structure from the config)."""
  ecg_config = ecg_encoder_config(config)
  text_config = bert_lib.BertConfig.from_hf_dir(text_encoder_dir(config))
  text_encoder = bert_lib.BertEncoder(text_config, dtype=config.model.dtype, rngs=rngs)
  return clip.ECGCLIP(
      ecg_config, text_encoder, embed_dim=config.model.embed_dim,
      text_pooling=config.text.pooling, logit_scale_init=config.model.logit_scale_init,
      learn_logit_scale=config.model.learn_logit_scale, rngs=rngs)


def split_model(model: clip.ECGCLIP) -> tuple[nnx.GraphDef, Params, Params]:
  graphdef, params, model_state = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(model_state)


# ---------------------------------------------------------------------------------------
# Which parameters train, and which decay.
# ---------------------------------------------------------------------------------------

def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def trainable_mask(params: Params, trainable_top_layers: int, num_text_layers: int) -> Params:
  """True for parameters the optimizer updates (the text-tower freezing policy)."""
  if trainable_top_layers < 0 or trainable_top_layers > num_text_layers:
    trainable_top_layers = num_text_layers + 1  # +1: the embeddings train too
  first_trainable = num_text_layers - trainable_top_layers

  def is_trainable(path, _):
    name = _path_str(path)
    if not name.startswith("text_encoder/"):
      return True
    layer = re.match(r"text_encoder/layers/(\d+)/", name)
    if layer is None:  # embeddings: train only when the whole tower does
      return first_trainable < 0
    return int(layer.group(1)) >= first_trainable

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def partition(params: Params, mask: Params) -> tuple[Params, Params]:
  """Splits into (trainable, frozen) trees; absent leaves are None (an empty subtree)."""
  pick = lambda keep: jax.tree.map(lambda p, m: p if m == keep else None, params, mask)
  return pick(True), pick(False)


def combine(trainable: Params, frozen: Params) -> Params:
  return jax.tree.map(lambda t, f: f if t is None else t, trainable, frozen,
                      is_leaf=lambda x: x is None)


def decay_mask(params: Params) -> Params:
  """Weight decay on matrices and kernels only: no decay on norms, biases or the logit scale."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  o = config.optim
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.learning_rate,
      warmup_steps=min(o.warmup_steps, config.total_steps - 1),
      decay_steps=config.total_steps, end_value=o.learning_rate * o.end_learning_rate_factor)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.clip_grad_norm),
      optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2,
                  weight_decay=o.weight_decay, mask=decay_mask))


# ---------------------------------------------------------------------------------------
# Initialization.
# ---------------------------------------------------------------------------------------

class Trainer:
  """Holds the static parts (graph definition, masks, optimizer) and builds pure steps."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    model = nnx.eval_shape(lambda: build_model(config, nnx.Rngs(0)))
    self.graphdef, abstract_params, _ = split_model(model)
    self.num_text_layers = model.text_encoder.config.num_layers
    self.mask = trainable_mask(abstract_params, config.text.trainable_top_layers,
                               self.num_text_layers)
    self.text_trains = any(
        m for path, m in jax.tree_util.tree_leaves_with_path(self.mask)
        if _path_str(path).startswith("text_encoder/"))
    self.tx = make_optimizer(config)

  def init(self, rng: jax.Array, load_pretrained_text: bool) -> TrainState:
    model = build_model(self.config, nnx.Rngs(rng))
    if load_pretrained_text:
      hf_import.load_bert_weights(model.text_encoder, text_encoder_dir(self.config))
    _, params, model_state = split_model(model)
    trainable, _ = partition(params, self.mask)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      opt_state=self.tx.init(trainable),
                      rng=jax.random.key_data(jax.random.key(self.config.seed + 1)))

  def abstract_state(self, sharding: jax.sharding.Sharding | None = None) -> TrainState:
    """Shapes and dtypes of the state (placed on `sharding`, if given: Orbax restores there)."""
    shapes = jax.eval_shape(lambda: self.init(jax.random.key(0), load_pretrained_text=False))
    if sharding is None:
      return shapes
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)

  # -------------------------------------------------------------------------------------
  # Steps (pure functions of state and batch; jitted by the caller with shardings).
  # -------------------------------------------------------------------------------------

  def model(self, params: Params, model_state: Params) -> clip.ECGCLIP:
    return nnx.merge(self.graphdef, params, model_state)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]):
    trainable, frozen = partition(state.params, self.mask)
    # Dropout only where the text tower trains; its key is a pure function of (seed, step).
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

    def loss_fn(trainable):
      dropout_rngs = nnx.Rngs(dropout=dropout_key) if self.text_trains else None
      model = self.model(combine(trainable, frozen), state.model_state)
      ecg_emb = model.encode_ecg(batch["ecg"], train=True)
      text_emb = model.encode_text(batch["input_ids"], batch["attention_mask"], dropout_rngs)
      scale = model.scale()
      new_model_state = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      return losses.clip_loss(ecg_emb, text_emb, scale), (new_model_state, scale)

    (loss, (model_state, scale)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = self.tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    new_state = state.replace(step=state.step + 1, params=combine(trainable, frozen),
                              model_state=model_state, opt_state=opt_state)
    metrics = {"loss": loss, "logit_scale": scale, "grad_norm": optax.tree.norm(grads),
               "learning_rate": learning_rate_schedule(self.config)(state.step)}
    return new_state, metrics

  def embed_ecg(self, params: Params, model_state: Params, ecg: jax.Array) -> jax.Array:
    return self.model(params, model_state).encode_ecg(ecg, train=False)

  def ecg_features(self, params: Params, model_state: Params, ecg: jax.Array) -> jax.Array:
    """The ECG tower's pooled features before the projection: what linear probes read."""
    return self.model(params, model_state).ecg_encoder(ecg, train=False)

  def embed_text(self, params: Params, model_state: Params, input_ids: jax.Array,
                 attention_mask: jax.Array) -> jax.Array:
    return self.model(params, model_state).encode_text(input_ids, attention_mask)

