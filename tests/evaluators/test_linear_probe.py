"""Linear probe: accuracy, agreement with scikit-learn, early stopping, masks, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats
from sklearn import linear_model, metrics

from ecgclip_jax.evaluators import linear_probe
from ecgclip_jax.evaluators.linear_probe import LinearProbeConfig, fit_linear_probe


def planted(rng, n, d, t, noise=0.2, scale=3.0):
  """Features with a per-feature scale and offset (the probe must standardize), and labels
  from a random linear rule plus noise."""
  rule = rng.normal(size=(d, t))
  z = rng.normal(size=(n, d))
  y = z @ rule / np.sqrt(d) + noise * rng.normal(size=(n, t)) > 0
  x = z * rng.uniform(0.1, scale, size=d) + rng.normal(size=d) * 5
  return x.astype(np.float32), y


@pytest.fixture
def problem():
  """One rule, split into train / validation / test (the same feature scales)."""
  rng = np.random.default_rng(0)
  x, y = planted(rng, 900, 16, 3)
  return (x[:400], y[:400]), (x[400:600], y[400:600]), (x[600:], y[600:])


def val_loss(probe, x, y):
  return float(linear_probe.masked_bce(probe.predict(x), y, np.ones_like(y)))


def test_separable_labels_reach_high_auroc(problem):
  (x, y), (vx, vy), (tx, ty) = problem
  probe = fit_linear_probe(x, y, vx, vy, LinearProbeConfig(batch_size=128))
  scores = probe.predict(tx)
  assert scores.shape == ty.shape and scores.dtype == np.float32
  for j in range(ty.shape[1]):
    assert metrics.roc_auc_score(ty[:, j], scores[:, j]) > 0.93
  h = probe.history
  assert 1 <= h["best_epoch"] <= h["epochs"] <= 300
  assert h["best_val_loss"] == pytest.approx(min(h["val_loss"]))


def test_matches_sklearn_logistic_regression(problem):
  """Full batch, no early stop: both minimize the same convex objective (module doc)."""
  (x, y), (vx, vy), (tx, _) = problem
  config = LinearProbeConfig(weight_decay=1e-2, batch_size=1000, max_epochs=3000,
                             patience=3000)
  probe = fit_linear_probe(x, y, vx, vy, config)
  n, t = y.shape
  xs = probe.standardize(x)
  for j in range(t):
    ref = linear_model.LogisticRegression(C=1 / (config.weight_decay * n * t), tol=1e-8,
                                          max_iter=10_000).fit(xs, y[:, j])
    np.testing.assert_allclose(probe.params["weights"][:, j], ref.coef_[0], atol=5e-3)
    np.testing.assert_allclose(probe.params["bias"][j], ref.intercept_[0], atol=5e-3)
    rho = stats.spearmanr(probe.predict(tx)[:, j], ref.decision_function(probe.standardize(tx)))
    assert rho.statistic > 0.999


def test_early_stopping_keeps_the_best_epoch():
  """Many features, few examples, no decay: the validation loss falls, then rises."""
  rng = np.random.default_rng(1)
  x, y = planted(rng, 220, 100, 2, noise=1.0)
  config = LinearProbeConfig(learning_rate=0.05, weight_decay=0.0, max_epochs=300, patience=10)
  probe = fit_linear_probe(x[:20], y[:20], x[20:], y[20:], config)
  h = probe.history
  assert h["epochs"] < config.max_epochs  # it stopped early
  assert h["epochs"] == h["best_epoch"] + config.patience
  assert h["best_epoch"] == int(np.argmin(h["val_loss"])) + 1
  assert h["val_loss"][-1] > h["best_val_loss"] + 0.05
  # The returned weights are the best epoch's, not the last one's.
  assert val_loss(probe, x[20:], y[20:]) == pytest.approx(h["best_val_loss"], rel=1e-5)


def test_task_without_positives_stays_finite(problem):
  (x, y), (vx, vy), (tx, _) = problem
  y = y.copy()
  y[:, 1] = False
  probe = fit_linear_probe(x[:8], y[:8], vx, vy, LinearProbeConfig())
  assert np.isfinite(probe.predict(tx)).all()
  assert np.isfinite(probe.history["train_loss"]).all()
  assert np.isfinite(probe.history["val_loss"]).all()
  assert (probe.predict(tx)[:, 1] < 0).all()  # never a positive: always predicts negative


def test_unknown_cells_do_not_affect_the_fit(problem):
  (x, y), (vx, vy), (tx, _) = problem
  rng = np.random.default_rng(2)
  known, val_known = rng.random(y.shape) < 0.6, rng.random(vy.shape) < 0.6
  config = LinearProbeConfig(batch_size=128)
  fit = lambda y, vy, **kw: fit_linear_probe(x, y, vx, vy, config, **kw).predict(tx)
  reference = fit(y, vy, train_known=known, val_known=val_known)
  flipped = fit(np.where(known, y, ~y), np.where(val_known, vy, ~vy), train_known=known,
                val_known=val_known)
  np.testing.assert_allclose(flipped, reference, rtol=1e-6, atol=1e-6)
  # The flipped labels do change the fit when they count.
  assert np.abs(fit(np.where(known, y, ~y), vy) - reference).max() > 0.1


def test_deterministic_given_the_seed(problem):
  (x, y), (vx, vy), (tx, _) = problem
  config = LinearProbeConfig(batch_size=128)
  first = fit_linear_probe(x, y, vx, vy, config).predict(tx)
  np.testing.assert_array_equal(fit_linear_probe(x, y, vx, vy, config).predict(tx), first)
  other = fit_linear_probe(x, y, vx, vy, dataclasses.replace(config, seed=1)).predict(tx)
  assert not np.array_equal(other, first)  # the seed drives the mini-batch order


def sklearn_macro_auroc(scores, labels, known):
  """Mean AUROC over the tasks with a known positive and negative, by scikit-learn."""
  values = [metrics.roc_auc_score(labels[known[:, j], j], scores[known[:, j], j])
            for j in range(labels.shape[1]) if len(set(labels[known[:, j], j])) == 2]
  return np.mean(values)


def test_macro_auroc_matches_sklearn_on_fresh_random_inputs():
  rng = np.random.default_rng(7)
  scores = np.round(rng.normal(size=(300, 5)), 1).astype(np.float32)  # many ties
  labels = rng.random((300, 5)) < np.array([0.5, 0.1, 0.02, 0.0, 0.9])  # task 3: no positive
  known = rng.random((300, 5)) > 0.2
  value = float(linear_probe.macro_auroc(scores, labels, known))
  assert value == pytest.approx(sklearn_macro_auroc(scores, labels, known), abs=1e-6)


def test_max_test_keeps_the_epoch_of_best_test_auroc(problem):
  (x, y), (vx, vy), (tx, ty) = problem
  known = np.ones_like(ty)
  config = LinearProbeConfig(batch_size=128, learning_rate=0.05, max_epochs=30, patience=30)
  probe = fit_linear_probe(x[:60], y[:60], vx, vy, config, test=(tx, ty, known))
  chosen = probe.history["max_test"]
  assert 1 <= chosen["epoch"] <= probe.history["epochs"]
  assert chosen["macro_auroc"] == pytest.approx(
      sklearn_macro_auroc(probe.max_test_logits, ty, known), abs=1e-6)
  assert chosen["macro_auroc"] >= sklearn_macro_auroc(probe.predict(tx), ty, known) - 1e-6
  # The validation-selected fit is the same with or without the test set.
  plain = fit_linear_probe(x[:60], y[:60], vx, vy, config)
  np.testing.assert_array_equal(plain.predict(tx), probe.predict(tx))
  assert plain.max_test_logits is None and "max_test" not in plain.history
