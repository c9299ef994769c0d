"""Linear probe: multi-label logistic regression on frozen ECG-encoder features.

Features are standardized with the training set's statistics, so one learning rate and one
weight decay suit any encoder's feature scale. The objective is the mean binary
cross-entropy over known (example, task) cells plus an L2 penalty `weight_decay / 2 * |W|^2`
on the weights (not the bias): a fixed, convex objective, the one scikit-learn's
`LogisticRegression(C=1 / (weight_decay * known cells))` minimizes per task. Adam minimizes
it in mini-batches; the whole fit, early stopping included, is one jitted
`while_loop`, so hundreds of epochs cost no host round trips.

Early stopping watches the validation loss (the same masked BCE), not macro AUROC: it is
defined for tasks with one class in a small validation set, is smooth from epoch to epoch,
and is a proper score, so it also rewards calibrated probabilities; the best epoch's
weights are kept.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

_MIN_STD = 1e-6  # a feature constant on the training set is centred, not blown up


@dataclasses.dataclass
class LinearProbeConfig:
  learning_rate: float = 1e-2
  weight_decay: float = 1e-4  # L2 penalty coefficient on the weights (see the module doc)
  batch_size: int = 256  # full batch when the training set is smaller
  max_epochs: int = 300
  patience: int = 20  # epochs without a lower validation loss before stopping
  seed: int = 0


def masked_bce(logits: jax.Array, labels: jax.Array, known: jax.Array) -> jax.Array:
  """Mean binary cross-entropy over the known cells (0 when none is known).

  Unknown cells are selected out, so their labels (often placeholders) reach neither the
  value nor the gradient.
  """
  known = jnp.asarray(known, bool)
  losses = optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(labels, logits.dtype))
  return jnp.sum(jnp.where(known, losses, 0.0)) / jnp.maximum(jnp.sum(known), 1)


def check_labels(labels: np.ndarray, known: np.ndarray | None, num_rows: int,
                 name: str) -> tuple[np.ndarray, np.ndarray]:
  """Labels [num_rows, T] as bool, and the known mask (all known when None)."""
  labels = np.asarray(labels)
  if labels.ndim != 2 or labels.shape[0] != num_rows:
    raise ValueError(f"{name} labels must be [{num_rows}, num_tasks], got {labels.shape}")
  known = np.ones(labels.shape, bool) if known is None else np.asarray(known, bool)
  if known.shape != labels.shape:
    raise ValueError(f"{name} known mask {known.shape} does not match labels {labels.shape}")
  return labels.astype(bool), known


def _logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  return x @ params["weights"] + params["bias"]


def _objective(params, x, labels, known, weight_decay):
  bce = masked_bce(_logits(params, x), labels, known)
  return bce + 0.5 * weight_decay * jnp.sum(jnp.square(params["weights"])), bce


def _train_epoch(params, opt_state, x, labels, known, key, tx, batch_size, weight_decay):
  """One shuffled pass; the last batch is padded with rows marked unknown."""
  n = x.shape[0]
  num_batches = -(-n // batch_size)
  order = jnp.pad(jax.random.permutation(key, n), (0, num_batches * batch_size - n))
  real = jnp.arange(num_batches * batch_size) < n
  batches = (order.reshape(num_batches, batch_size), real.reshape(num_batches, batch_size))

  def step(carry, batch):
    params, opt_state = carry
    rows, real = batch
    grads, bce = jax.grad(_objective, has_aux=True)(
        params, x[rows], labels[rows], known[rows] & real[:, None], weight_decay)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), bce

  (params, opt_state), bce = jax.lax.scan(step, (params, opt_state), batches)
  return params, opt_state, bce.mean()


@functools.partial(jax.jit, static_argnames=("batch_size", "max_epochs"))
def _fit(x, labels, known, val_x, val_labels, val_known, key, learning_rate, weight_decay,
         patience, *, batch_size, max_epochs):
  """The whole early-stopped fit as one `while_loop`: no host round trip per epoch. Only
  shapes are static, so fits with other hyperparameters reuse the compilation."""
  num_tasks = labels.shape[1]
  params = {"weights": jnp.zeros((x.shape[1], num_tasks)), "bias": jnp.zeros(num_tasks)}
  tx = optax.adam(learning_rate)
  history = jnp.full((2, max_epochs), jnp.nan)  # mean training BCE, validation loss

  def keep_going(carry):
    epoch, _, _, _, _, best_epoch, _ = carry
    return (epoch < max_epochs) & (epoch - best_epoch < patience)

  def one_epoch(carry):
    epoch, params, opt_state, best_params, best_loss, best_epoch, history = carry
    epoch += 1
    params, opt_state, train_loss = _train_epoch(
        params, opt_state, x, labels, known, jax.random.fold_in(key, epoch), tx, batch_size,
        weight_decay)
    val_loss = masked_bce(_logits(params, val_x), val_labels, val_known)
    better = val_loss < best_loss
    best_params = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best_params)
    return (epoch, params, opt_state, best_params, jnp.where(better, val_loss, best_loss),
            jnp.where(better, epoch, best_epoch),
            history.at[:, epoch - 1].set(jnp.stack([train_loss, val_loss])))

  zero = jnp.zeros((), jnp.int32)
  carry = (zero, params, tx.init(params), params, jnp.asarray(jnp.inf), zero, history)
  epochs, _, _, best_params, best_loss, best_epoch, history = jax.lax.while_loop(
      keep_going, one_epoch, carry)
  return best_params, epochs, best_epoch, best_loss, history


@dataclasses.dataclass
class LinearProbe:
  """A fitted probe: training-set standardization plus one logistic regression per task."""
  mean: np.ndarray  # [D]
  std: np.ndarray  # [D]
  params: dict[str, np.ndarray]  # weights [D, T], bias [T]
  history: dict[str, Any]

  def standardize(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Logits [M, T] (monotone in the probability; ranking metrics need no sigmoid)."""
    return np.asarray(_logits(self.params, self.standardize(x)))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                     val_y: np.ndarray, config: LinearProbeConfig, *,
                     train_known: np.ndarray | None = None,
                     val_known: np.ndarray | None = None) -> LinearProbe:
  """Fits on (train_x, train_y), early-stopped on the validation loss; deterministic per seed.

  `history`: epochs run, the best epoch (0: no epoch ran) and its validation loss, and the
  per-epoch mean training BCE and validation loss.
  """
  train_x = np.asarray(train_x, np.float32)
  val_x = np.asarray(val_x, np.float32)
  if train_x.ndim != 2 or val_x.ndim != 2 or val_x.shape[1] != train_x.shape[1]:
    raise ValueError(f"features must be [N, D] with the same D, got {train_x.shape} and "
                     f"{val_x.shape}")
  if not len(train_x) or not len(val_x):
    raise ValueError("the linear probe needs training and validation examples")
  if config.patience < 1:
    raise ValueError(f"patience must be at least 1 epoch, got {config.patience}")
  train_y, train_known = check_labels(train_y, train_known, len(train_x), "train")
  val_y, val_known = check_labels(val_y, val_known, len(val_x), "validation")
  num_tasks = train_y.shape[1]
  if val_y.shape[1] != num_tasks:
    raise ValueError(f"{num_tasks} training tasks but {val_y.shape[1]} validation tasks")

  std = train_x.std(axis=0)
  probe = LinearProbe(mean=train_x.mean(axis=0), std=np.where(std < _MIN_STD, 1.0, std),
                      params={}, history={})  # params and history are filled in below
  params, epochs, best_epoch, best_loss, history = _fit(
      probe.standardize(train_x), train_y, train_known, probe.standardize(val_x), val_y,
      val_known, jax.random.key(config.seed), config.learning_rate, config.weight_decay,
      config.patience, batch_size=min(config.batch_size, len(train_x)),
      max_epochs=config.max_epochs)
  epochs, best_epoch = int(epochs), int(best_epoch)
  probe.params = jax.tree.map(np.asarray, params)
  probe.history = {"epochs": epochs, "best_epoch": best_epoch,
                   "best_val_loss": float(best_loss) if best_epoch else None,
                   "train_loss": np.asarray(history[0, :epochs]).tolist(),
                   "val_loss": np.asarray(history[1, :epochs]).tolist()}
  return probe
