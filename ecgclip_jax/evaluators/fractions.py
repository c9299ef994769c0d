"""Label-fraction subsets of a training split (1%, 10%, 100% of the labels), as in the
label-efficiency experiments of ECG-text pre-training papers.

A plain random 1% of PTB-XL's training split misses most of its rarest statements, so their
probes would train on no positive at all. Here every task keeps at least one positive (and
one negative) where the full split has one, and the rest is random. The subsets are nested:
for one seed, the 1% subset lies inside the 10% one, so a curve over fractions adds labels
rather than redrawing them.
"""

from __future__ import annotations

import numpy as np


def sample_fraction(labels: np.ndarray, fraction: float, seed: int, *,
                    known: np.ndarray | None = None) -> np.ndarray:
  """Sorted indices of round(fraction * N) (at least 1) of the N training examples.

  labels [N, T] bool (multi-label); known [N, T] (False: that label is unknown, so that
  example is neither a positive nor a negative of that task). Deterministic in (seed,
  fraction); nested over fractions for one seed.

  One random priority order per seed decides everything: first, for each task from the
  rarest up, the highest-priority positive if no example chosen so far is a positive of it;
  then likewise a negative for each task; then the remaining slots in priority order. The
  covering examples come first, so when a tiny fraction cannot cover every task, the rarest
  tasks keep theirs. Neither step depends on the fraction, hence the nesting.
  """
  labels = np.asarray(labels).astype(bool)
  if labels.ndim != 2 or not labels.shape[0]:
    raise ValueError(f"labels must be [examples, tasks] with examples, got shape {labels.shape}")
  known = np.ones_like(labels) if known is None else np.asarray(known).astype(bool)
  if known.shape != labels.shape:
    raise ValueError(f"known must match labels {labels.shape}, got shape {known.shape}")
  if not 0 < fraction <= 1:
    raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
  n = labels.shape[0]
  if fraction == 1:
    return np.arange(n)
  size = max(1, round(fraction * n))

  priority = np.random.default_rng(seed).permutation(n)  # example ids, best first
  rank = np.empty(n, np.int64)
  rank[priority] = np.arange(n)
  chosen = np.zeros(n, bool)
  covering = []
  for members in (labels & known, ~labels & known):
    counts = members.sum(axis=0)
    for task in np.argsort(counts, kind="stable"):
      column = members[:, task]
      if counts[task] and not (column & chosen).any():
        candidates = np.flatnonzero(column)
        pick = candidates[np.argmin(rank[candidates])]
        chosen[pick] = True
        covering.append(pick)
  rest = priority[~chosen[priority]]
  return np.sort(np.r_[np.array(covering, np.int64), rest][:size])
