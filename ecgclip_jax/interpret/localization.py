"""How much of a saliency map lies where the finding is: the check that saliency points at
the right places, on the synthetic corpus, whose generator records where it put each finding.

For one record and finding the region is the union of the finding's annotations (sample
span x the annotation's leads). Its area share is the fraction of the record's [T, 12]
samples it covers, its mass share the fraction of the total |attribution| inside it. Their
ratio is 1 for saliency spread evenly or at random, and at most 1 / area share (all of the
mass inside the region). The evidence share does the same for the positive attributions
alone, those that raise the class score: |attribution| also counts what speaks against it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np

from ecgclip_jax.data.leads import LEAD_INDEX, NUM_LEADS
from ecgclip_jax.data.synthetic import Annotation


def region_mask(annotations: Iterable[Annotation], name: str, num_samples: int) -> np.ndarray:
  """[T, 12] bool: where the annotations named `name` lie (overlaps counted once)."""
  mask = np.zeros((num_samples, NUM_LEADS), bool)
  for a in annotations:
    if a.name == name:
      mask[a.start:a.end, [LEAD_INDEX[lead] for lead in a.leads]] = True
  return mask


@dataclasses.dataclass(frozen=True)
class Localization:
  record_id: str
  mass_share: float  # of |attribution| inside the region
  area_share: float  # of the record's samples x leads inside the region
  evidence_share: float | None = None  # of the positive attribution; None: there is none

  @property
  def ratio(self) -> float:
    return self.mass_share / self.area_share

  @property
  def evidence_ratio(self) -> float | None:
    return None if self.evidence_share is None else self.evidence_share / self.area_share


def localize(record_id: str, saliency: np.ndarray, mask: np.ndarray) -> Localization | None:
  """The shares of one record; None where the region is empty or the map is all zero."""
  saliency = np.asarray(saliency, np.float64)
  magnitude, evidence = np.abs(saliency), np.maximum(saliency, 0)
  if not mask.any() or not magnitude.any():
    return None
  return Localization(record_id, magnitude[mask].sum() / magnitude.sum(), mask.mean(),
                      evidence[mask].sum() / evidence.sum() if evidence.any() else None)


def summarize(rows: Sequence[Localization]) -> dict:
  """Means of the shares, mean and median of the per-record ratio, the fraction of records
  whose ratio exceeds 1, and the mean evidence ratio (over records with positive evidence)."""
  if not rows:
    return {"n": 0}
  ratio = np.array([r.ratio for r in rows])
  evidence = [r.evidence_ratio for r in rows if r.evidence_ratio is not None]
  return {"n": len(rows), "area_share": float(np.mean([r.area_share for r in rows])),
          "mass_share": float(np.mean([r.mass_share for r in rows])),
          "ratio_mean": float(ratio.mean()), "ratio_median": float(np.median(ratio)),
          "above_1": float(np.mean(ratio > 1)),
          "evidence_ratio_mean": float(np.mean(evidence)) if evidence else None}


def format_table(results: dict[tuple[str, str], dict]) -> str:
  """One line per (finding, method) summary; control columns (|attribution| and evidence)
  where the summaries have them."""
  control = any("control_ratio" in s for s in results.values())
  lines = [f"{'finding':<32}{'method':<22}{'n':>5}{'area':>8}{'mass':>8}{'ratio':>8}"
           f"{'median':>8}{'>1':>7}{'evidence':>10}"
           + (f"{'control':>9}{'evidence':>10}" if control else "")]
  for (finding, method), s in results.items():
    if not s["n"]:
      lines.append(f"{finding:<32}{method:<22}{0:>5}  (no annotated records)")
      continue
    lines.append(f"{finding:<32}{method:<22}{s['n']:>5}{s['area_share']:>8.3f}"
                 f"{s['mass_share']:>8.3f}{s['ratio_mean']:>8.2f}{s['ratio_median']:>8.2f}"
                 f"{s['above_1']:>7.0%}{_number(s['evidence_ratio_mean']):>10}"
                 + (f"{_number(s['control_ratio']):>9}"
                    f"{_number(s['control_evidence_ratio']):>10}" if control else ""))
  return "\n".join(lines)


def _number(value: float | None) -> str:
  return "-" if value is None else f"{value:.2f}"
