"""Full fine-tuning: the whole ECG encoder plus a fresh linear head, early-stopped.

The encoder starts from a pre-training checkpoint's ECG tower (or from random weights, the
supervised baseline). The objective and the stopping rule are the linear probe's: mean
binary cross-entropy over known cells, and the validation loss of the whole validation
split, keeping the best validation's weights. The learning rate is constant (AdamW, decay
on kernels only) because early stopping, not a schedule, decides how long training runs.

One global batch: the train step is jitted with the parameters replicated and the batch
sharded over the mesh's data axes, so the loss and BatchNorm's statistics are those of the
whole global batch, the same function on 1 device or many. With several processes, each
reads its own share of every global batch (see `pipeline.make_ecg_epoch_batches`) and every
process gathers the same validation logits, so all take the same early-stopping decisions.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ecgclip_jax import parallel, passes, train_state
from ecgclip_jax.data import pipeline
from ecgclip_jax.evaluators.linear_probe import check_labels, masked_bce
from ecgclip_jax.models import resnet1d
from ecgclip_jax.progress import Progress

Params = dict[str, Any]


@dataclasses.dataclass
class FinetuneConfig:
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4  # AdamW's decoupled decay, on kernels only
  batch_size: int = 64  # global; lowered (with a message) when the training subset is smaller
  max_epochs: int = 30
  patience: int = 4  # validations without a lower validation loss before stopping
  seed: int = 0  # head (and random-init encoder) weights, and the data order
  normalization: str = "zscore"
  eval_batch_size: int = 128  # global
  steps_per_validation: int | None = None  # None: once per epoch


class Classifier(nnx.Module):
  """ECG encoder and a linear head: `[B, T, leads]` -> logits `[B, num_tasks]`."""

  def __init__(self, ecg_config: resnet1d.ResNet1DConfig, num_tasks: int, *, rngs: nnx.Rngs):
    self.encoder = resnet1d.ResNet1D(ecg_config, rngs=rngs)
    self.head = nnx.Linear(ecg_config.feature_dim, num_tasks, rngs=rngs)

  def __call__(self, ecg: jax.Array, train: bool = False) -> jax.Array:
    return self.head(self.encoder(ecg, train=train))


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array
  params: Params  # {"encoder": ..., "head": ...}
  batch_stats: Params  # {"encoder": ...}
  opt_state: optax.OptState


def load_encoder(encoder: resnet1d.ResNet1D, init: dict[str, Params]) -> None:
  """Copies pre-trained `params` and `batch_stats` into `encoder`, checking that they cover
  every variable with the right shapes (a wrong `ecg_config` fails here, not silently)."""
  for kind, name in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
    state = nnx.state(encoder, kind)
    expected = nnx.to_pure_dict(state)
    nnx.replace_by_pure_dict(state, init[name])  # raises on a key the encoder lacks

    def check(path, want, got):
      if np.shape(got) != np.shape(want):
        raise ValueError(f"init[{name!r}]{jax.tree_util.keystr(path)}: shape {np.shape(got)}, "
                         f"the encoder has {np.shape(want)}")

    jax.tree_util.tree_map_with_path(check, expected, nnx.to_pure_dict(state))
    if len(jax.tree.leaves(init[name])) != len(jax.tree.leaves(expected)):
      raise ValueError(f"init[{name!r}] does not cover every encoder variable")
    nnx.update(encoder, state)


def make_optimizer(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, weight_decay=weight_decay, mask=train_state.decay_mask)


def classifier_graphdef(ecg_config: resnet1d.ResNet1DConfig, num_tasks: int) -> nnx.GraphDef:
  return nnx.graphdef(nnx.eval_shape(lambda: Classifier(ecg_config, num_tasks,
                                                        rngs=nnx.Rngs(0))))


def init_state(ecg_config: resnet1d.ResNet1DConfig, num_tasks: int, init: dict | None,
               seed: int, tx: optax.GradientTransformation) -> FinetuneState:
  """The first state: a fresh head; the encoder from `init`, or random from `seed`."""
  model = Classifier(ecg_config, num_tasks, rngs=nnx.Rngs(seed))
  if init is not None:
    load_encoder(model.encoder, init)
  _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  params, batch_stats = nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)
  return FinetuneState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params))


class Steps:
  """The train step and the forward pass, jitted with the mesh's shardings."""

  def __init__(self, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh):
    self.graphdef, self.tx, self.mesh = graphdef, tx, mesh
    replicated, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    # No buffer donation: the best validation's weights stay referenced while training goes on.
    self.train_step = jax.jit(self._train_step, in_shardings=(replicated, data),
                              out_shardings=(replicated, replicated))
    self.logits = jax.jit(self._logits, in_shardings=(replicated, replicated, data),
                          out_shardings=data)

  def _train_step(self, state: FinetuneState, batch: dict[str, jax.Array]):
    def loss_fn(params):
      model = nnx.merge(self.graphdef, params, state.batch_stats)
      logits = model(batch["ecg"], train=True)
      batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
      return masked_bce(logits, batch["labels"], batch["known"]), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, opt_state=opt_state), loss

  def _logits(self, params: Params, batch_stats: Params, ecg: jax.Array) -> jax.Array:
    return nnx.merge(self.graphdef, params, batch_stats)(ecg, train=False)

  def predict(self, params: Params, batch_stats: Params, source: Sequence[dict[str, Any]],
              normalization: str, eval_batch_size: int) -> np.ndarray:
    """Logits [len(source), T] of every record exactly once, in source order."""
    out = passes.run_over_split(
        source, {"logits": lambda batch: self.logits(params, batch_stats, batch["ecg"])},
        self.mesh, batch_size=eval_batch_size, normalization=normalization)
    return out["logits"].astype(np.float32)


@functools.lru_cache(maxsize=8)
def _cached_steps(ecg_config: resnet1d.ResNet1DConfig, num_tasks: int, learning_rate: float,
                  weight_decay: float, mesh: Mesh) -> Steps:
  """Repeated runs (label fractions, seeds) reuse one compilation per structure and mesh."""
  return Steps(classifier_graphdef(ecg_config, num_tasks),
               make_optimizer(learning_rate, weight_decay), mesh)


@dataclasses.dataclass
class FineTuned:
  """Best-validation weights of a fine-tuning run, and how the run went."""
  steps: Steps
  params: Params
  batch_stats: Params
  normalization: str
  eval_batch_size: int
  history: dict[str, Any]

  def predict(self, source: Sequence[dict[str, Any]]) -> np.ndarray:
    """Logits [len(source), T] (monotone in the probabilities), in source order."""
    return self.steps.predict(self.params, self.batch_stats, source, self.normalization,
                              self.eval_batch_size)


def fit_batch_size(batch_size: int, num_examples: int, mesh: Mesh) -> int:
  """The global batch: `batch_size`, or the largest one that splits over the mesh and the
  processes and still fits the training subset (a 1% subset may be smaller than a batch)."""
  unit = math.lcm(parallel.data_parallel_size(mesh), jax.process_count())
  fitted = min(batch_size, num_examples // unit * unit)
  if fitted == 0:
    raise ValueError(f"{num_examples} training examples cannot fill one batch split over "
                     f"{unit} devices/processes")
  parallel.check_batch_size(fitted, mesh)
  return fitted


def _epoch_batches(source, indices, columns, config: FinetuneConfig, batch_size: int,
                   mesh: Mesh) -> Iterator[tuple[int, dict[str, jax.Array]]]:
  """(epoch, global batch) for every step of up to `max_epochs` epochs."""
  for epoch in range(1, config.max_epochs + 1):
    for local in pipeline.make_ecg_epoch_batches(
        source, indices, columns=columns, normalization=config.normalization,
        global_batch_size=batch_size, seed=config.seed, epoch=epoch - 1,
        process_index=jax.process_index(), process_count=jax.process_count()):
      yield epoch, parallel.global_batch(local, mesh)


def finetune(ecg_config: resnet1d.ResNet1DConfig, init: dict[str, Params] | None,
             num_tasks: int, train_source: Sequence[dict[str, Any]], train_indices: Sequence[int],
             train_labels: np.ndarray, val_source: Sequence[dict[str, Any]],
             val_labels: np.ndarray, mesh: Mesh, config: FinetuneConfig, *,
             train_known: np.ndarray | None = None, val_known: np.ndarray | None = None,
             progress: Callable[[str], Any] = print) -> FineTuned:
  """Fine-tunes on `train_source[train_indices]`; deterministic given `config.seed`.

  `train_labels` / `train_known` have one row per record of `train_source` (the indices
  pick rows), `val_labels` / `val_known` one per record of `val_source`. `init`: None, or
  the ECG tower of a pre-training checkpoint, `{"params": params["ecg_encoder"],
  "batch_stats": model_state["ecg_encoder"]}`. Returns the best validation's weights;
  `history` has per-validation train / validation losses and the best step.
  """
  train_labels, train_known = check_labels(train_labels, train_known, len(train_source), "train")
  val_labels, val_known = check_labels(val_labels, val_known, len(val_source), "validation")
  if train_labels.shape[1] != num_tasks or val_labels.shape[1] != num_tasks:
    raise ValueError(f"num_tasks {num_tasks}, but labels have {train_labels.shape[1]} (train) "
                     f"and {val_labels.shape[1]} (validation) columns")
  batch_size = fit_batch_size(config.batch_size, len(train_indices), mesh)
  if batch_size != config.batch_size:
    progress(f"fine-tune: {len(train_indices)} training examples; global batch {batch_size} "
             f"instead of {config.batch_size}")
  steps_per_epoch = len(train_indices) // batch_size
  every = config.steps_per_validation or steps_per_epoch

  steps = _cached_steps(ecg_config, num_tasks, config.learning_rate, config.weight_decay, mesh)
  state = init_state(ecg_config, num_tasks, init, config.seed, steps.tx)
  state = parallel.place(state, parallel.replicated(mesh))
  model = FineTuned(steps, state.params, state.batch_stats, config.normalization,
                    config.eval_batch_size, history={})
  best = {"loss": float("inf"), "step": 0, "epoch": 0}
  validations_since_best = 0
  history = {"step": [], "epoch": [], "train_loss": [], "val_loss": [], "seconds": []}
  columns = {"labels": train_labels, "known": train_known}
  losses, start = [], time.time()
  # The ETA is an upper bound: early stopping usually ends the run before max_epochs.
  meter = Progress("fine-tune (at most)", config.max_epochs * steps_per_epoch, "steps",
                   wait=lambda: jax.block_until_ready(losses[-1:]))
  for step, (epoch, batch) in enumerate(
      _epoch_batches(train_source, train_indices, columns, config, batch_size, mesh), 1):
    state, loss = steps.train_step(state, batch)
    losses.append(loss)
    meter.update(1)
    if step % every:
      continue
    val_logits = steps.predict(state.params, state.batch_stats, val_source,
                               config.normalization, config.eval_batch_size)
    val_loss = float(masked_bce(val_logits, val_labels, val_known))
    train_loss = float(jnp.mean(jnp.stack(losses)))
    seconds = time.time() - start
    for name, value in zip(history, (step, epoch, train_loss, val_loss, seconds)):
      history[name].append(value)
    progress(f"fine-tune epoch {epoch}/{config.max_epochs} step {step}: train loss "
             f"{train_loss:.4f}  val loss {val_loss:.4f}  {seconds:.1f}s "
             f"({every / seconds:.1f} steps/s)")
    validations_since_best += 1
    if val_loss < best["loss"]:
      best = {"loss": val_loss, "step": step, "epoch": epoch}
      model.params, model.batch_stats = state.params, state.batch_stats
      validations_since_best = 0
    elif validations_since_best >= config.patience:
      break
    losses, start = [], time.time()
  meter.done()
  model.history = {**history, "epochs": history["epoch"][-1] if history["epoch"] else 0,
                   "steps_per_epoch": steps_per_epoch, "batch_size": batch_size,
                   "best_step": best["step"], "best_epoch": best["epoch"],
                   "best_val_loss": best["loss"] if best["step"] else None}
  return model
