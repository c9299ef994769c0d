"""Machine-style report text for the synthetic findings (MIMIC-IV-ECG flavour).

A text tower learns only what the reports let it learn: several phrasings per finding,
abbreviations, merged rhythm sentences, shuffled order and filler make it learn findings
rather than one fixed string per label. `LABEL_PATTERNS` describes each finding's phrasing
family, so tests (and zero-shot prompt authors) can check that a report names exactly the
findings its record carries.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np


class Facts(NamedTuple):
  """Measured values a report may quote, so its numbers agree with its waveform."""

  rate_bpm: int  # mean ventricular rate over the record
  pr_ms: int
  pvc_count: int  # premature ventricular beats inside the record
  lvh_strain: bool  # LVH with secondary ST-T changes
  prior: frozenset[str] | None  # findings of the patient's previous record, if any


# Case-insensitive; a finding is "mentioned" iff its pattern matches. No phrase of one
# finding may match another finding's pattern (e.g. no "sinus rhythm" in tachycardia text).
LABEL_PATTERNS = {
    "normal_sinus_rhythm": r"sinus rhythm|\bNSR\b",
    "sinus_bradycardia": r"sinus brady",
    "sinus_tachycardia": r"sinus tach",
    "atrial_fibrillation": r"atrial fib|\bA-?fib\b|\bAF\b",
    "first_degree_av_block": r"(1st|first)[ -]deg|prolonged PR",
    "left_bundle_branch_block": r"left bundle|\bLBBB\b",
    "right_bundle_branch_block": r"right bundle|\bRBBB\b",
    "left_ventricular_hypertrophy": r"left ventricular hypertrophy|\bLVH\b",
    "st_elevation_inferior": r"inferior|II, III, aVF",
    "st_elevation_anterior": r"anter|V1-V4",
    "st_elevation_lateral": r"lateral|I, aVL, V5-V6",
    "premature_ventricular_complexes": r"\bPVC|\bVPC|premature ventricular|ventricular premature",
    "low_qrs_voltage": r"low (QRS )?voltage",
}
NORMAL_PATTERN = r"(?<!otherwise )\bnormal (ECG|electrocardiogram)\b|within normal limits"

_SINUS = ("Sinus rhythm", "Normal sinus rhythm", "NSR", "Regular sinus rhythm",
          "Sinus rhythm, rate {rate}")
_BRADY = ("Sinus bradycardia", "Sinus brady", "Sinus bradycardia, rate {rate}",
          "Sinus bradycardia ({rate} bpm)")
_TACHY = ("Sinus tachycardia", "Sinus tach", "Sinus tachycardia, rate {rate}",
          "Sinus tachycardia ({rate} bpm)", "Sinus tachy")
_AF = ("Atrial fibrillation", "Afib", "AF", "A-fib", "Atrial fib")
_AF_RAPID = (" with rapid ventricular response", " with RVR", ", rapid ventricular response")
_AF_SLOW = (" with slow ventricular response", ", slow ventricular response")
_AF_CONTROLLED = ("", " with controlled ventricular response", ", rate {rate}")
_AVB = ("1st degree A-V block", "First degree AV block", "1st deg AVB", "Prolonged PR interval",
        "First-degree atrioventricular block", "1st degree AV block (PR {pr} ms)")
_AVB_MERGED = ("with 1st degree A-V block", "with first degree AV block", "with prolonged PR")
_PVC_FEW = ("PVC(s)", "Occasional PVCs", "Premature ventricular complexes",
            "Ventricular premature complex(es)", "VPCs",
            "Occasional premature ventricular contractions")
_PVC_MANY = ("Frequent PVCs", "Frequent premature ventricular complexes", "Frequent VPCs",
             "Multiple premature ventricular contractions")
_PVC_MERGED = ("with PVCs", "with occasional PVCs", "with premature ventricular complexes",
               "with VPCs")
_LBBB = ("Left bundle branch block", "LBBB", "Complete left bundle branch block",
         "Left bundle-branch block", "Complete LBBB")
_RBBB = ("Right bundle branch block", "RBBB", "Complete right bundle branch block",
         "Right bundle-branch block", "Complete RBBB")
_LVH = ("Left ventricular hypertrophy", "LVH", "LVH by voltage criteria",
        "Voltage criteria for left ventricular hypertrophy",
        "Left ventricular hypertrophy by voltage")
_LVH_STRAIN = ("LVH with repolarization abnormality",
               "LVH with secondary repolarization abnormality",
               "Left ventricular hypertrophy with strain", "LVH with strain pattern")
_LOW = ("Low QRS voltages", "Low voltage QRS", "Generalized low QRS voltage",
        "Low QRS voltage in limb and precordial leads", "Diffuse low voltage",
        "Low voltage, extremity and precordial leads")
_STE = ("{Terr} ST elevation, consider acute infarct", "ST elevation in {terr} leads",
        "{Terr} STE", "Acute {terr} MI", "{Terr} injury pattern", "{Terr} STEMI",
        "ST elevation {leads}, consider acute {terr} infarct")
_TERRITORY_LEADS = {"inferior": "II, III, aVF", "anterior": "V1-V4", "lateral": "I, aVL, V5-V6",
                    "anterolateral": "V1-V4 and I, aVL, V5-V6"}
_NORMAL = ("Normal ECG", "Normal ECG", "Normal electrocardiogram", "Within normal limits")
_BORDERLINE = ("Borderline ECG", "Otherwise normal ECG")
_ABNORMAL = ("Abnormal ECG", "Abnormal ECG", "Abnormal electrocardiogram")
_UNCHANGED = ("No significant change since previous tracing", "Unchanged from prior ECG",
              "Compared to prior tracing, no significant change")
_CHANGED = ("Changes since previous tracing", "Compared with previous ECG, findings have changed",
            "Significant changes since prior ECG")
_RATE = ("Vent. rate {rate} BPM", "Ventricular rate {rate}", "HR {rate}")
_MILD = {"sinus_bradycardia", "sinus_tachycardia", "first_degree_av_block",
         "premature_ventricular_complexes"}


def mentions(report: str, finding: str) -> bool:
  """Whether `report` names `finding` (one of the `LABEL_PATTERNS` keys)."""
  return re.search(LABEL_PATTERNS[finding], report, re.IGNORECASE) is not None


def make_report(findings: frozenset[str], facts: Facts, rng: np.random.Generator) -> str:
  """One report naming every finding in `findings` (label names) and no other."""
  pick = lambda options: options[rng.integers(len(options))]
  fmt = dict(rate=facts.rate_bpm, pr=facts.pr_ms)
  many_pvcs = facts.pvc_count >= 3

  # The rhythm sentence, sometimes absorbing the AV block or the PVCs as MIMIC does.
  if "atrial_fibrillation" in findings:
    response = (_AF_RAPID if facts.rate_bpm > 100 else
                _AF_SLOW if facts.rate_bpm < 60 else _AF_CONTROLLED)
    rhythm = pick(_AF) + pick(response)
  elif "sinus_bradycardia" in findings:
    marked = facts.rate_bpm < 50 and rng.random() < 0.5
    rhythm = "Marked sinus bradycardia" if marked else pick(_BRADY)
  elif "sinus_tachycardia" in findings:
    rhythm = pick(_TACHY)
  else:
    rhythm = pick(_SINUS)
  rest = set(findings) - {"normal_sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia",
                          "atrial_fibrillation"}
  if not any(mark in rhythm for mark in (",", "(", " with ")):
    for finding, merged in (("first_degree_av_block", _AVB_MERGED),
                            ("premature_ventricular_complexes", _PVC_MERGED)):
      frequent = finding.startswith("premature") and many_pvcs  # said on its own
      if finding in rest and not frequent and rng.random() < 0.4:
        rhythm += " " + pick(merged)
        rest.discard(finding)
        break

  sentences = []
  if "first_degree_av_block" in rest:
    sentences.append(pick(_AVB))
  if "premature_ventricular_complexes" in rest:
    sentences.append(pick(_PVC_MANY if many_pvcs else _PVC_FEW))
  for finding, options in (("left_bundle_branch_block", _LBBB),
                           ("right_bundle_branch_block", _RBBB), ("low_qrs_voltage", _LOW)):
    if finding in rest:
      sentences.append(pick(options))
  if "left_ventricular_hypertrophy" in rest:
    sentences.append(pick(_LVH_STRAIN if facts.lvh_strain and rng.random() < 0.8 else _LVH))
  territories = [t for t in ("inferior", "anterior", "lateral") if f"st_elevation_{t}" in rest]
  if territories == ["anterior", "lateral"] and rng.random() < 0.5:
    territories = ["anterolateral"]
  for terr in territories:
    sentences.append(pick(_STE).format(Terr=terr.capitalize(), terr=terr,
                                       leads=_TERRITORY_LEADS[terr]))
  rng.shuffle(sentences)
  position = 0 if rng.random() < 0.85 else rng.integers(len(sentences) + 1)
  sentences.insert(position, rhythm)
  if rng.random() < 0.15:
    sentences.insert(position + 1, pick(_RATE))

  if findings == {"normal_sinus_rhythm"}:
    summary = pick(_NORMAL) if rng.random() < 0.9 else None
  elif findings <= _MILD | {"normal_sinus_rhythm"} and rng.random() < 0.5:
    summary = pick(_BORDERLINE)
  else:
    summary = pick(_ABNORMAL) if rng.random() < 0.75 else None
  if summary:
    sentences.append(summary)
  if facts.prior is not None and rng.random() < 0.3:
    sentences.append(pick(_UNCHANGED if facts.prior == findings else _CHANGED))

  text = ". ".join(s.format(**fmt) for s in sentences) + "."
  return text.upper() if rng.random() < 0.05 else text
