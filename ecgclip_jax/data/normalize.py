"""ECG amplitude normalization, chosen by config in the input pipeline.

Records are stored once as int16 microvolts; normalizing here (not in the
builders) lets one build serve models that expect different input scales.
Every method keeps missing leads exactly zero, so `lead_mask` stays truthful.
"""

import numpy as np

NORMALIZATION_METHODS = ("minmax", "zscore", "none")
_EPS = 1e-8  # MERL's epsilon; only matters for a flat record or lead.
_NUM_LEADS = 12


def check_normalization(method: str) -> None:
  """Raises ValueError for an unknown method, naming the valid ones."""
  if method not in NORMALIZATION_METHODS:
    raise ValueError(
        f"Unknown normalization {method!r}; valid: {', '.join(NORMALIZATION_METHODS)}."
    )


def normalize_ecg(ecg: np.ndarray, lead_mask: np.ndarray, method: str) -> np.ndarray:
  """Returns `ecg` (int16 µV [T, 12]) normalized as float32 [T, 12].

  - "minmax": MERL's per-record min-max to [0, 1], (x - min) / (max - min + eps),
    with min and max over every sample of the present leads (MERL's records
    have all 12 leads, so this is their formula; zeros of missing leads must
    not stretch the range).
  - "zscore": per-lead (x - mean) / (std + eps), the usual choice for models
    pre-trained on per-lead standardized signals.
  - "none": µV -> mV, the physical unit, for models that learn their own scale.
  """
  check_normalization(method)
  ecg = np.asarray(ecg)
  lead_mask = np.asarray(lead_mask, dtype=bool)
  if ecg.ndim != 2 or ecg.shape[1] != _NUM_LEADS or lead_mask.shape != (_NUM_LEADS,):
    raise ValueError(
        f"Expected ecg [T, {_NUM_LEADS}] and lead_mask [{_NUM_LEADS}]; "
        f"got {ecg.shape} and {lead_mask.shape}."
    )
  x = ecg.astype(np.float64)
  if method == "minmax":
    present = x[:, lead_mask]
    if present.size:
      lo, hi = present.min(), present.max()
      x = (x - lo) / (hi - lo + _EPS)
  elif method == "zscore":
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + _EPS)
  else:
    x = x / 1000.0
  return np.where(lead_mask, x, 0.0).astype(np.float32)
