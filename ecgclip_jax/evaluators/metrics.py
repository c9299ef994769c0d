"""Per-label ranking metrics (scikit-learn's), with degenerate labels reported, not NaN."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def per_label_ranking_metrics(labels: np.ndarray, scores: np.ndarray,
                              label_names: list[str]) -> dict:
  """AUROC and PRAUC (average precision) per label and their macro means.

  A label with no positives or no negatives has no defined ranking metric: it is listed
  under `undefined` with its counts and left out of the macro means.
  """
  per_label, undefined = {}, {}
  for j, name in enumerate(label_names):
    y = labels[:, j].astype(bool)
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
      undefined[name] = {"n": len(y), "positives": positives}
      continue
    per_label[name] = {
        "auroc": float(skm.roc_auc_score(y, scores[:, j])),
        "prauc": float(skm.average_precision_score(y, scores[:, j])),
        "n": len(y), "positives": positives, "prevalence": positives / len(y)}
  macro = {key: float(np.mean([m[key] for m in per_label.values()])) if per_label else None
           for key in ("auroc", "prauc")}
  return {"per_label": per_label, "macro": macro, "undefined": undefined}
