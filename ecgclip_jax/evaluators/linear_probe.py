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


def macro_auroc(scores: jax.Array, labels: jax.Array, known: jax.Array) -> jax.Array:
  """Mean AUROC over the tasks with a known positive and a known negative (0 when none), in
  its rank (Mann-Whitney) form with ties counted half, so it runs inside the jitted fit."""
  known = jnp.asarray(known, bool)
  positive = jnp.asarray(labels, bool) & known
  scores = jnp.where(known, scores, jnp.inf)  # unknown cells rank above every known one
  in_order = jnp.sort(scores, axis=0)
  count = jax.vmap(jnp.searchsorted, in_axes=(1, 1, None), out_axes=1)
  less, not_more = count(in_order, scores, "left"), count(in_order, scores, "right")
  below = less + (not_more - less - 1) / 2  # known cells below each, a tie counting half
  n_pos = positive.sum(0).astype(jnp.float32)
  n_neg = known.sum(0) - n_pos
  pairs = jnp.sum(jnp.where(positive, below, 0.0), 0) - n_pos * (n_pos - 1) / 2
  valid = (n_pos > 0) & (n_neg > 0)
  auroc = pairs / jnp.where(valid, n_pos * n_neg, 1.0)
  return jnp.sum(jnp.where(valid, auroc, 0.0)) / jnp.maximum(valid.sum(), 1)


@functools.partial(jax.jit, static_argnames=("batch_size", "max_epochs"))
def _fit(x, labels, known, val_x, val_labels, val_known, test, key, learning_rate,
         weight_decay, patience, *, batch_size, max_epochs):
  """The whole early-stopped fit as one `while_loop`: no host round trip per epoch. Only
  shapes are static, so fits with other hyperparameters reuse the compilation. `test`
  (x, labels, known) or None: also keep the test logits of the epoch with the best test
  macro AUROC (MERL's selection rule)."""
  num_tasks = labels.shape[1]
  params = {"weights": jnp.zeros((x.shape[1], num_tasks)), "bias": jnp.zeros(num_tasks)}
  tx = optax.adam(learning_rate)
  zero = jnp.zeros((), jnp.int32)
  carry = {"epoch": zero, "params": params, "opt_state": tx.init(params),
           "best_params": params, "best_loss": jnp.asarray(jnp.inf), "best_epoch": zero,
           "history": jnp.full((2, max_epochs), jnp.nan)}  # mean training BCE, validation loss
  if test is not None:
    carry |= {"test_logits": jnp.zeros((test[0].shape[0], num_tasks)),
              "test_auroc": jnp.asarray(-1.0), "test_epoch": zero}

  def keep_going(c):
    return (c["epoch"] < max_epochs) & (c["epoch"] - c["best_epoch"] < patience)

  def one_epoch(c):
    c = dict(c)
    epoch = c["epoch"] = c["epoch"] + 1
    c["params"], c["opt_state"], train_loss = _train_epoch(
        c["params"], c["opt_state"], x, labels, known, jax.random.fold_in(key, epoch), tx,
        batch_size, weight_decay)
    val_loss = masked_bce(_logits(c["params"], val_x), val_labels, val_known)
    better = val_loss < c["best_loss"]
    c["best_params"] = jax.tree.map(lambda new, old: jnp.where(better, new, old),
                                    c["params"], c["best_params"])
    c["best_loss"] = jnp.where(better, val_loss, c["best_loss"])
    c["best_epoch"] = jnp.where(better, epoch, c["best_epoch"])
    c["history"] = c["history"].at[:, epoch - 1].set(jnp.stack([train_loss, val_loss]))
    if test is not None:
      logits = _logits(c["params"], test[0])
      auroc = macro_auroc(logits, test[1], test[2])
      better = auroc > c["test_auroc"]
      c["test_logits"] = jnp.where(better, logits, c["test_logits"])
      c["test_auroc"] = jnp.where(better, auroc, c["test_auroc"])
      c["test_epoch"] = jnp.where(better, epoch, c["test_epoch"])
    return c

  return jax.lax.while_loop(keep_going, one_epoch, carry)


@dataclasses.dataclass
class LinearProbe:
  """A fitted probe: training-set standardization plus one logistic regression per task."""
  mean: np.ndarray  # [D]
  std: np.ndarray  # [D]
  params: dict[str, np.ndarray]  # weights [D, T], bias [T]
  history: dict[str, Any]
  # With a test set given to the fit: its logits at the epoch of best test macro AUROC.
  max_test_logits: np.ndarray | None = None

  def standardize(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

  def predict(self, x: np.ndarray) -> np.ndarray:
    """Logits [M, T] (monotone in the probability; ranking metrics need no sigmoid)."""
    return np.asarray(_logits(self.params, self.standardize(x)))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray,
                     val_y: np.ndarray, config: LinearProbeConfig, *,
                     train_known: np.ndarray | None = None,
                     val_known: np.ndarray | None = None,
                     test: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                     ) -> LinearProbe:
  """Fits on (train_x, train_y), early-stopped on the validation loss; deterministic per seed.

  `history`: epochs run, the best epoch (0: no epoch ran) and its validation loss, and the
  per-epoch mean training BCE and validation loss. `test` (features, labels, known): the
  fit also keeps `max_test_logits`, the test logits of the epoch (among those run) with the
  best test macro AUROC, and `history["max_test"]`: MERL's reported number is selected
  this way, on the test set, so it is for comparison with their tables only.
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
  if test is not None:
    test_y, test_known = check_labels(test[1], test[2], len(test[0]), "test")
    test = (probe.standardize(test[0]), test_y, test_known)
  out = _fit(
      probe.standardize(train_x), train_y, train_known, probe.standardize(val_x), val_y,
      val_known, test, jax.random.key(config.seed), config.learning_rate, config.weight_decay,
      config.patience, batch_size=min(config.batch_size, len(train_x)),
      max_epochs=config.max_epochs)
  epochs, best_epoch = int(out["epoch"]), int(out["best_epoch"])
  probe.params = jax.tree.map(np.asarray, out["best_params"])
  probe.history = {"epochs": epochs, "best_epoch": best_epoch,
                   "best_val_loss": float(out["best_loss"]) if best_epoch else None,
                   "train_loss": np.asarray(out["history"][0, :epochs]).tolist(),
                   "val_loss": np.asarray(out["history"][1, :epochs]).tolist()}
  if test is not None:
    probe.max_test_logits = np.asarray(out["test_logits"])
    probe.history["max_test"] = {"epoch": int(out["test_epoch"]),
                                 "macro_auroc": float(out["test_auroc"])}
  return probe
