"""Optimizer, train state and the pure train step.

The model (models/build.py) lives as a static NNX graph definition plus plain nested dicts
of arrays (parameters; BatchNorm statistics), so the state is an ordinary pytree that optax
updates, `jax.jit` shards and Orbax saves without NNX-specific handling. Parameters,
gradients and optimizer state are float32 whatever `model.dtype` (the towers' compute
dtype) is.
"""

from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ecgclip_jax import losses, parallel
from ecgclip_jax.models import build, clip
from ecgclip_jax.models.build import Params


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Params  # every nnx.Param, as a nested dict
  model_state: Params  # BatchNorm running statistics
  opt_state: optax.OptState  # over the trainable parameters only
  rng: jax.Array  # raw uint32 key data (plain arrays checkpoint anywhere)


# ---------------------------------------------------------------------------------------
# Which parameters train, and which decay.
# ---------------------------------------------------------------------------------------

def first_trainable_text_layer(trainable_top_layers: int, num_text_layers: int) -> int:
  """The text-tower freezing policy: layers from this index up train; -1: the embeddings
  too (the whole tower); `num_text_layers`: none."""
  if trainable_top_layers < 0 or trainable_top_layers > num_text_layers:
    trainable_top_layers = num_text_layers + 1  # +1: the embeddings train too
  return num_text_layers - trainable_top_layers


def precomputes_text_features(config: ml_collections.ConfigDict) -> bool:
  """Whether training feeds the step each report's pooled text features, computed once before
  the first step, in place of its tokens: only when no text layer trains (and hence none
  runs dropout), so the tower is a fixed function of the report."""
  return config.text.trainable_top_layers == 0 and config.text.precompute_features


def trainable_mask(params: Params, trainable_top_layers: int, num_text_layers: int) -> Params:
  """True for parameters the optimizer updates (the text-tower freezing policy)."""
  first_trainable = first_trainable_text_layer(trainable_top_layers, num_text_layers)

  def is_trainable(path, _):
    name = build.path_str(path)
    if not name.startswith("text_encoder/"):
      return True
    layer = re.match(r"text_encoder/layers/(\d+)/", name)
    if layer is None:  # embeddings: train only when the whole tower does
      return first_trainable < 0
    return int(layer.group(1)) >= first_trainable

  return jax.tree_util.tree_map_with_path(is_trainable, params)


def step_dropout_key(rng: jax.Array, step: jax.Array) -> jax.Array:
  """The step's dropout key, a pure function of (seed, step); an "rbg" key (`build.rbg_key`:
  the tiny test model's train step compiles in half the time)."""
  return build.rbg_key(jax.random.fold_in(jax.random.wrap_key_data(rng), step))


# Folded into a (micro)batch's dropout key for the UMA views' masks: the text tower's stream
# (nnx.Rngs) folds in its draw counts 0, 1, ..., so a large constant keeps the two apart.
UMA_DROPOUT_STREAM = 0x554D41  # "UMA"


def uma_rngs(dropout_key: jax.Array) -> nnx.Rngs:
  return nnx.Rngs(dropout=jax.random.fold_in(dropout_key, UMA_DROPOUT_STREAM))


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
  """Linear warmup from 0, then one cosine down to `end_learning_rate_factor` of the peak
  over the run, or with `optim.restart_every_steps` a cosine that restarts at the peak every
  that many steps (PyTorch's CosineAnnealingWarmRestarts, T_mult=1, as MERL trains)."""
  o = config.optim
  warmup_steps = min(o.warmup_steps, config.total_steps - 1)
  if not o.restart_every_steps:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.learning_rate, warmup_steps=warmup_steps,
        decay_steps=config.total_steps, end_value=o.learning_rate * o.end_learning_rate_factor)
  cycle = optax.cosine_decay_schedule(o.learning_rate, o.restart_every_steps,
                                      alpha=o.end_learning_rate_factor)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, o.learning_rate, warmup_steps),
       lambda step: cycle(step % o.restart_every_steps)], [warmup_steps])


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  o = config.optim
  return optax.chain(
      optax.clip_by_global_norm(o.clip_grad_norm) if o.clip_grad_norm else optax.identity(),
      optax.adamw(learning_rate_schedule(config), b1=o.b1, b2=o.b2,
                  weight_decay=o.weight_decay, mask=decay_mask))


def applied_learning_rate(config: ml_collections.ConfigDict, opt_state: optax.OptState
                          ) -> jax.Array:
  """The learning rate an update from `opt_state` applies: the schedule at the optimizer's own
  count of applied updates, which a skipped non-finite step does not advance (the step
  number does)."""
  is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
  (schedule_state,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_schedule)
                       if is_schedule(x)]
  return learning_rate_schedule(config)(schedule_state.count)


def all_finite(tree) -> jax.Array:
  """True when no array of `tree` holds a NaN or Inf (integer arrays always pass)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)] or
                           [jnp.bool_(True)]))


# ---------------------------------------------------------------------------------------
# Initialization.
# ---------------------------------------------------------------------------------------

class Trainer:
  """Holds the static parts (graph definition, masks, optimizer) and builds pure steps.

  `mesh` is the device mesh the steps run on: the shard_map losses need it, and gradient
  accumulation pins its microbatches to the batch axes with it (None: a single device, or
  leave the layout to XLA).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: Mesh | None = None):
    self.config = config
    self.mesh = mesh
    rows = config.grad_accum_steps * (1 if mesh is None else parallel.data_parallel_size(mesh))
    if config.batch_size % rows:
      raise ValueError(f"batch_size {config.batch_size} does not split into grad_accum_steps "
                       f"{config.grad_accum_steps} microbatches spread evenly over the "
                       f"data-parallel devices: it must be divisible by {rows}")
    self.model_def = build.ModelDef(config)
    self.num_text_layers = self.model_def.num_text_layers
    self.mask = trainable_mask(self.model_def.abstract_weights[0],
                               config.text.trainable_top_layers, self.num_text_layers)
    first_trainable = first_trainable_text_layer(config.text.trainable_top_layers,
                                                 self.num_text_layers)
    self.text_trains = first_trainable < self.num_text_layers
    # Frozen layers without dropout are a fixed feature extractor (text.frozen_layers_dropout).
    self.first_dropout_layer = -1 if config.text.frozen_layers_dropout else first_trainable
    self.tx = make_optimizer(config)

  def init(self, rng: jax.Array, load_pretrained_text: bool) -> TrainState:
    params, model_state = self.model_def.init(rng, load_pretrained_text)
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
    return self.model_def.model(params, model_state)

  def embed_batch(self, trainable: Params, frozen: Params, model_state: Params,
                  batch: dict[str, jax.Array], dropout_key: jax.Array):
    """Train-mode embeddings of a (micro)batch, and the new BatchNorm statistics: unit
    `(ecg, text)`, then with model.uma_weight > 0 the two UMA views of each ECG
    (`ECGCLIP.encode_ecg_with_views`). Dropout only where the text tower trains, and in the
    views; every mask comes from `dropout_key`, so a resumed step draws the same ones."""
    model = self.model(combine(trainable, frozen), model_state)
    text_emb = self.train_text_embeddings(model, batch, dropout_key)
    if self.config.model.uma_weight > 0:
      ecg_emb, *views = model.encode_ecg_with_views(batch["ecg"], uma_rngs(dropout_key))
    else:
      ecg_emb, views = model.encode_ecg(batch["ecg"], train=True), []
    return ((ecg_emb, text_emb, *views), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

  def train_text_embeddings(self, model: clip.ECGCLIP, batch: dict[str, jax.Array],
                            dropout_key: jax.Array) -> jax.Array:
    """Train-mode report embeddings: dropout only where the text tower trains (and not in
    its frozen layers unless text.frozen_layers_dropout). A batch that carries the frozen
    tower's `text_features` runs only the projection."""
    if "text_features" in batch:
      return model.project_text(batch["text_features"])
    dropout_rngs = nnx.Rngs(dropout=dropout_key) if self.text_trains else None
    return model.encode_text(batch["input_ids"], batch["attention_mask"], dropout_rngs,
                             self.first_dropout_layer)

  def batch_loss(self, params: Params, model_state: Params, embeddings) -> jax.Array:
    """The configured loss of the whole global batch (`embed_batch`'s embeddings), plus
    model.uma_weight times the UMA loss of the views if there are any; the parameters enter
    only through the logit scale and bias."""
    model = self.model(params, model_state)
    ecg_emb, text_emb, *views = embeddings
    loss = losses.contrastive_loss(self.config.model.loss, ecg_emb, text_emb, model.scale(),
                                   model.bias(), self.mesh)
    if views:
      loss = loss + self.config.model.uma_weight * losses.uma_loss(*views)
    return loss

  def _constrain_rows(self, x: jax.Array, batch_dim: int) -> jax.Array:
    """Pins dimension `batch_dim` to the mesh's batch axes (nothing to pin without a mesh)."""
    if self.mesh is None:
      return x
    spec = PartitionSpec(*(None,) * batch_dim, parallel.batch_axes(self.mesh))
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

  def microbatches(self, tree):
    """`[B, ...] -> [k, B/k, ...]`, microbatch j holding rows j, j+k, j+2k, ... With the batch
    in contiguous row blocks over the devices, each device's block splits evenly into the k
    microbatches: every microbatch spreads over all devices, with no data moved."""
    k = self.config.grad_accum_steps
    return jax.tree.map(lambda x: self._constrain_rows(
        x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), 1), tree)

  def merge_microbatches(self, tree):
    """The inverse of `microbatches`: the original row order and sharding."""
    return jax.tree.map(lambda x: self._constrain_rows(
        x.swapaxes(0, 1).reshape(-1, *x.shape[2:]), 0), tree)

  def loss_and_grads(self, state: TrainState, batch: dict[str, jax.Array]):
    """`(loss, grads, model_state)`: the loss of the global batch, its gradients for the
    trainable parameters (`partition`'s trainable tree) and the new BatchNorm statistics.

    With `grad_accum_steps` k > 1 the batch runs as k microbatches (GradCache, Gao et al.
    2021), still for the loss of the whole batch, which couples every example: (a) embed
    every microbatch without gradients; (b) the loss of all the embeddings, and its
    gradients for them and for the logit scale and bias; (c) per microbatch, recompute its
    embeddings under `jax.vjp` and pull its slice of (b)'s gradient back to the parameters,
    summing. Only one microbatch's activations are alive at a time. Microbatches hold rows
    j, j+k, ... (see `microbatches`). BatchNorm normalizes each microbatch with that
    microbatch's statistics (as any accumulation does), and its running statistics are
    updated microbatch after microbatch; GroupNorm (`ecg.norm="group"`) gives exactly the
    full batch's gradients. Microbatch j's dropout key is the step's key folded with j, the
    same in (a) and (c). With k == 1 this is one plain `jax.value_and_grad`.
    """
    trainable, frozen = partition(state.params, self.mask)
    dropout_key = step_dropout_key(state.rng, state.step)
    k = self.config.grad_accum_steps
    loss_of = lambda trainable, embeddings: self.batch_loss(combine(trainable, frozen),
                                                            state.model_state, embeddings)
    if k == 1:
      def loss_fn(trainable):
        embeddings, model_state = self.embed_batch(trainable, frozen, state.model_state,
                                                   batch, dropout_key)
        return loss_of(trainable, embeddings), model_state

      (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
      return loss, grads, model_state

    def embed(trainable, model_state, microbatch, index):
      return self.embed_batch(trainable, frozen, model_state, microbatch,
                              jax.random.fold_in(dropout_key, index))

    micro = (self.microbatches(batch), jnp.arange(k))
    # (a) Train-mode outputs do not read the running statistics: (c) alone updates them.
    cached = jax.lax.map(lambda xs: embed(trainable, state.model_state, *xs)[0], micro)
    # (b)
    loss, (grads, emb_grads) = jax.value_and_grad(loss_of, argnums=(0, 1))(
        trainable, self.merge_microbatches(cached))

    # (c)
    def accumulate(carry, xs):
      grads, model_state = carry
      microbatch, index, emb_grad = xs
      _, pullback, model_state = jax.vjp(
          lambda p: embed(p, model_state, microbatch, index), trainable, has_aux=True)
      return (jax.tree.map(jnp.add, grads, pullback(emb_grad)[0]), model_state), None

    (grads, model_state), _ = jax.lax.scan(
        accumulate, (grads, state.model_state), (*micro, self.microbatches(emb_grads)))
    return loss, grads, model_state

  def sharded_step(self, shardings: TrainState):
    """`train_step` jitted as training runs it: the state placed by `shardings` and donated,
    the batch's rows over the mesh's batch axes, the metrics replicated."""
    return jax.jit(self.train_step,
                   in_shardings=(shardings, parallel.batch_sharding(self.mesh)),
                   out_shardings=(shardings, parallel.replicated(self.mesh)), donate_argnums=0)

  def train_step(self, state: TrainState, batch: dict[str, jax.Array]):
    loss, grads, model_state = self.loss_and_grads(state, batch)
    trainable, frozen = partition(state.params, self.mask)
    updates, opt_state = self.tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    updated = state.replace(step=state.step + 1, params=combine(trainable, frozen),
                            model_state=model_state, opt_state=opt_state)
    # A NaN/Inf loss or gradient (or BatchNorm statistic) leaves the state as it was, only
    # the step moves on; the caller applies the configured policy (see nonfinite.py).
    nonfinite_grads = sum(jnp.sum(~jnp.isfinite(g)) for g in jax.tree.leaves(grads))
    finite = jnp.isfinite(loss) & (nonfinite_grads == 0) & all_finite(model_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                             updated, state.replace(step=state.step + 1))
    model = self.model(state.params, state.model_state)  # the scale and bias the loss used
    metrics = {"loss": loss, "logit_scale": model.scale(), "grad_norm": optax.tree.norm(grads),
               "learning_rate": applied_learning_rate(self.config, state.opt_state),
               "finite": finite, "nonfinite_grads": nonfinite_grads}
    if model.bias() is not None:
      metrics["logit_bias"] = model.bias()
    return new_state, metrics
