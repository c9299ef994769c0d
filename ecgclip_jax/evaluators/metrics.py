"""Per-task ranking metrics (scikit-learn's AUROC and average precision) with seeded bootstrap
confidence intervals, averaged over training seeds; degenerate tasks are reported, never NaN.

The point estimates are scikit-learn's `average_precision_score` and `roc_auc_score`. The
bootstrap needs one metric per (task, seed, resample): 210,000 curves for 70 tasks, 3 seeds and
1000 resamples, where scikit-learn's input validation alone costs about a millisecond per call.
So the resamples are scored by `resampled_ranking_metrics`, the same formulas (step-wise average
precision, trapezoidal AUROC, tied scores as one threshold) evaluated for every resample at
once, with a resample expressed as how often it draws each example. The tests hold it equal to
scikit-learn on explicit resamples.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from sklearn import metrics as skm

# Bootstrap resamples are drawn and scored in chunks of about this many (resample, example)
# counts, so memory stays bounded for large test sets.
_CHUNK_ELEMENTS = 1 << 22


def resampled_ranking_metrics(y_true: np.ndarray, y_score: np.ndarray,
                              counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Average precision and AUROC of one task for many resamples of its examples at once.

  y_true [n] bool, y_score [n], counts [n, B]: how many times resample b draws example i
  (or any non-negative integer weights). Returns (prauc [B], auroc [B]), each what
  scikit-learn gives on the resampled examples; NaN where a resample lacks a positive or a
  negative. Only thresholds holding a positive add to either metric, so after one sort the
  work is one pass summing weights between those thresholds:
    PRAUC = sum_k dTP_k * TP_k / (TP_k + FP_k) / P
    AUROC = sum_k dTP_k * (negatives scored below k + half the negatives tied at k) / (P * N)
  over the distinct scores k holding a positive, in decreasing order.
  """
  y_true = np.asarray(y_true, bool)
  y_score = np.asarray(y_score, np.float64)
  num_resamples = counts.shape[1]
  if y_true.all() or not y_true.any():
    return np.full(num_resamples, np.nan), np.full(num_resamples, np.nan)
  order = np.argsort(-y_score, kind="stable")
  sorted_scores, is_positive = y_score[order], y_true[order]
  n = len(order)
  # Runs of tied scores are one threshold each: start and end (exclusive) of every run.
  new_run = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  run_of = np.cumsum(new_run) - 1
  starts = np.flatnonzero(new_run)
  ends = np.r_[starts[1:], n]
  positive_rows = np.flatnonzero(is_positive)
  positive_runs = run_of[positive_rows]
  first_in_run = np.flatnonzero(np.r_[True, positive_runs[1:] != positive_runs[:-1]])
  positive_runs = positive_runs[first_in_run]
  weights = counts[order]
  # Positive weight per threshold, and total weight before and through each threshold.
  d_tps = np.add.reduceat(weights[positive_rows], first_in_run, axis=0).astype(np.float64)
  cuts = np.unique(np.r_[0, starts[positive_runs], ends[positive_runs], n])
  segments = np.add.reduceat(weights, cuts[:-1], axis=0)
  prefix = np.vstack([np.zeros((1, num_resamples)), np.cumsum(segments, axis=0, dtype=np.float64)])
  before = prefix[np.searchsorted(cuts, starts[positive_runs])]
  through = prefix[np.searchsorted(cuts, ends[positive_runs])]
  tps = np.cumsum(d_tps, axis=0)
  positives, negatives = tps[-1], prefix[-1] - tps[-1]
  d_fps = through - before - d_tps
  negatives_below = negatives - (through - tps)
  precision = np.divide(tps, through, out=np.zeros_like(tps), where=through > 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    prauc = (d_tps * precision).sum(axis=0) / positives
    auroc = (d_tps * (negatives_below + 0.5 * d_fps)).sum(axis=0) / (positives * negatives)
  undefined = (positives == 0) | (negatives == 0)
  prauc[undefined] = np.nan
  auroc[undefined] = np.nan
  return prauc, auroc


def bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
  """Resamples of n examples with replacement from np.random.default_rng(seed), as count
  matrices [n, chunk] (how often each resample draws each example), in chunks."""
  rng = np.random.default_rng(seed)
  chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
  for start in range(0, n_bootstrap, chunk):
    size = min(chunk, n_bootstrap - start)
    draws = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
    yield np.ascontiguousarray(counts.T, dtype=np.int32)


def _percentile_ci(values: np.ndarray, ci: float) -> list[float] | None:
  valid = values[~np.isnan(values)]
  if not len(valid):
    return None
  tail = 100 * (1 - ci) / 2
  return [float(v) for v in np.percentile(valid, [tail, 100 - tail])]


def _seed_std(per_seed: np.ndarray) -> float:
  """Spread over training seeds: sample standard deviation; 0 for a single seed."""
  return float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0


def _check_inputs(labels, scores, task_names, known):
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, np.float64)
  if labels.ndim != 2:
    raise ValueError(f"labels must be [examples, tasks], got shape {labels.shape}")
  if scores.ndim == 2:
    scores = scores[None]
  if scores.ndim != 3 or scores.shape[1:] != labels.shape:
    raise ValueError(f"scores must be [examples, tasks] or [seeds, examples, tasks] matching "
                     f"labels {labels.shape}, got shape {scores.shape}")
  if len(task_names) != labels.shape[1]:
    raise ValueError(f"{len(task_names)} task names for {labels.shape[1]} label columns")
  if not np.isfinite(scores).all():
    raise ValueError("scores contain NaN or infinite values")
  known = np.ones_like(labels) if known is None else np.asarray(known).astype(bool)
  if known.shape != labels.shape:
    raise ValueError(f"known must match labels {labels.shape}, got shape {known.shape}")
  return labels, scores, known


def task_metrics(labels: np.ndarray, scores: np.ndarray, task_names: list[str], *,
                 known: np.ndarray | None = None, min_positives: int = 1,
                 n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> dict:
  """PRAUC (primary) and AUROC per task and their macro means, with bootstrap CIs.

  labels [N, T] bool; scores [N, T] or [S, N, T] (S training seeds scored on the same test
  examples); known [N, T] (False: that example's label is unknown, so it is left out of that
  task). A task with fewer than `min_positives` positives or negatives among its known
  examples is listed under `too_few_positives` and left out of the macro means.

  Point estimates are the mean over seeds of scikit-learn's metric; `*_std` is the sample
  standard deviation over seeds (0 for one seed). CIs are percentile intervals of the
  seed-averaged metric over `n_bootstrap` resamples of the test examples, the same resamples
  for every task and seed, so they show test-set sampling error only; a resample without a
  positive or a negative for a task is skipped for that task (`n_bootstrap_used`). The macro
  CI uses the resamples valid for every scored task, so each of its replicates averages the
  same tasks as the point estimate. n_bootstrap=0 gives no CIs (None).
  """
  labels, scores, known = _check_inputs(labels, scores, task_names, known)
  if int(min_positives) != min_positives or min_positives < 1:
    raise ValueError(f"min_positives must be a positive integer, got {min_positives}")
  if not 0 < ci < 1:
    raise ValueError(f"ci must be between 0 and 1, got {ci}")
  if n_bootstrap < 0:
    raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
  num_seeds, n, _ = scores.shape

  scored, too_few, counts_of = [], {}, {}
  for j, name in enumerate(task_names):
    positives = int((labels[:, j] & known[:, j]).sum())
    count = int(known[:, j].sum())
    if min(positives, count - positives) < min_positives:
      too_few[name] = {"n": count, "positives": positives}
    else:
      scored.append(j)
      counts_of[j] = {"n": count, "positives": positives, "prevalence": positives / count}

  # Point estimates: scikit-learn, per task and seed.
  point = {key: np.zeros((len(scored), num_seeds)) for key in ("prauc", "auroc")}
  for k, j in enumerate(scored):
    rows = known[:, j]
    for s in range(num_seeds):
      point["prauc"][k, s] = skm.average_precision_score(labels[rows, j], scores[s, rows, j])
      point["auroc"][k, s] = skm.roc_auc_score(labels[rows, j], scores[s, rows, j])

  # Bootstrap replicates of the seed-averaged metric per task: [tasks, resamples].
  replicates = {key: np.full((len(scored), n_bootstrap), np.nan) for key in point}
  done = 0
  for counts in bootstrap_counts(n, n_bootstrap, seed) if scored else ():
    chunk = slice(done, done + counts.shape[1])
    for k, j in enumerate(scored):
      rows = np.flatnonzero(known[:, j])
      per_seed = [resampled_ranking_metrics(labels[rows, j], scores[s, rows, j], counts[rows])
                  for s in range(num_seeds)]
      for i, key in enumerate(("prauc", "auroc")):
        replicates[key][k, chunk] = np.mean([metric[i] for metric in per_seed], axis=0)
    done += counts.shape[1]

  tasks = {}
  for k, j in enumerate(scored):
    entry = dict(counts_of[j])
    for key in ("prauc", "auroc"):
      entry[key] = float(point[key][k].mean())
      entry[f"{key}_ci"] = _percentile_ci(replicates[key][k], ci)
      entry[f"{key}_std"] = _seed_std(point[key][k])
    entry["n_bootstrap_used"] = int((~np.isnan(replicates["prauc"][k])).sum())
    tasks[task_names[j]] = entry

  macro = {"num_tasks": len(scored)}
  all_valid = ~np.isnan(replicates["prauc"]).any(axis=0)
  for key in ("prauc", "auroc"):
    if scored:
      macro[key] = float(point[key].mean())
      macro[f"{key}_ci"] = _percentile_ci(replicates[key][:, all_valid].mean(axis=0), ci)
      macro[f"{key}_std"] = _seed_std(point[key].mean(axis=0))
    else:
      macro.update({key: None, f"{key}_ci": None, f"{key}_std": None})
  macro["n_bootstrap_used"] = int(all_valid.sum()) if scored else 0
  return {"tasks": tasks, "too_few_positives": too_few, "macro": macro, "n": n,
          "num_seeds": num_seeds, "n_bootstrap": n_bootstrap, "seed": seed, "ci": ci}


def per_label_ranking_metrics(labels: np.ndarray, scores: np.ndarray,
                              label_names: list[str]) -> dict:
  """AUROC and PRAUC per label and their macro means, without CIs (the zero-shot summary).

  A label with no positives or no negatives has no defined ranking metric: it is listed
  under `undefined` with its counts and left out of the macro means.
  """
  out = task_metrics(labels, scores, label_names, n_bootstrap=0)
  keys = ("auroc", "prauc", "n", "positives", "prevalence")
  return {"per_label": {name: {k: m[k] for k in keys} for name, m in out["tasks"].items()},
          "macro": {k: out["macro"][k] for k in ("auroc", "prauc")},
          "undefined": out["too_few_positives"]}
