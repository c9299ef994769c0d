"""ECG->report and report->ECG retrieval: recall@k of each item's own partner."""

from __future__ import annotations

import numpy as np


def recall_at_k(similarity: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
  """`similarity[i, j]` scores query i against candidate j; the partner of i is j == i.

  Ties are broken at random, in expectation: with `h` candidates strictly above the partner
  and `t` others level with it, the partner lands in the top k with probability
  clip((k - h) / (t + 1), 0, 1). A model that scores everything alike thus gets k / N,
  chance, rather than a perfect score (duplicate reports produce genuine ties).
  """
  partner = np.diag(similarity)[:, None]
  higher = (similarity > partner).sum(axis=1)
  level = (similarity == partner).sum(axis=1) - 1
  return {f"recall@{k}": float(np.clip((k - higher) / (level + 1), 0, 1).mean()) for k in ks}


def evaluate(ecg_emb: np.ndarray, text_emb: np.ndarray, ks=(1, 5, 10)) -> dict:
  similarity = ecg_emb @ text_emb.T
  return {"ecg_to_report": recall_at_k(similarity, ks),
          "report_to_ecg": recall_at_k(similarity.T, ks)}
