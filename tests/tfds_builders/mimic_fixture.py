"""A small fake MIMIC-IV-ECG v1.0 download, in the exact layout, with planted faults.

`write_mimic_fixture(root)` writes `record_list.csv`, `machine_measurements.csv` and
`files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}` (WFDB format 16, 200 adu/mV, 500 Hz,
5000 samples, leads in MIMIC's order I, II, III, aVR, aVF, aVL, V1..V6). Waveforms and reports
come from `ecgclip_jax.data.synthetic` (each synthetic patient is one subject with 1-4 ECGs);
its report sentences become the `report_N` fields, decorated the way machine statements are.
Faults are planted at seeded positions and returned with the skip reason each must get.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import pathlib
import re

import numpy as np
import wfdb

from ecgclip_jax.data import synthetic
from ecgclip_jax.data.leads import LEAD_INDEX

MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
FS, NUM_SAMPLES, ADC_GAIN = 500, 5000, 200.0
NUM_REPORT_FIELDS = 18
MEASUREMENT_COLUMNS = (
    ["subject_id", "study_id", "cart_id", "ecg_time"]
    + [f"report_{i}" for i in range(NUM_REPORT_FIELDS)]
    + ["bandwidth", "filtering", "rr_interval", "p_onset", "p_end", "qrs_onset", "qrs_end",
       "t_end", "p_axis", "qrs_axis", "t_axis"])
WARNING = "--- Warning: Data quality may affect interpretation ---"
FILLERS = ("No significant change from prior ECG", "Compared with ECG of prior date",
           "Confirmed by reviewing cardiologist")

# Planted fault -> the skip reason the build must give it.
FAULTS = {
    "missing_dat": "missing_file",
    "missing_hea": "missing_file",
    "truncated_dat": "unreadable_signal",  # cut mid-frame
    "header_longer_than_data": "header_data_mismatch",  # 4500 whole frames, header says 5000
    "too_many_nan": "too_many_nonfinite",  # 1000 of 60000 samples (cap: 1%)
    "four_flat_leads": "flat_leads",
    "four_saturated_leads": "saturated_leads",
    "six_seconds": "wrong_duration",
    "no_report_fields": "empty_report",
    "three_words": "empty_report",  # below MERL's 4-word minimum
    "no_measurements_row": "empty_report",
    "not_utf8": "undecodable_report",
    "duplicate_row": "duplicate_record_id",  # the first row is kept
    "nonstandard_leads": "unsupported_format",
    "missing_subject_id": "missing_metadata",
}
# Borderline records that must be kept.
KEPT_ODDITIES = ("few_nan", "two_flat_leads", "four_words")


@dataclasses.dataclass(frozen=True)
class MimicFixture:
  root: pathlib.Path
  num_rows: int  # rows of record_list.csv: what the build sees
  skips: dict[str, str]  # study_id -> expected skip reason
  kept: frozenset[str]  # study_ids the build must keep
  planted: dict[str, str]  # fault or oddity name -> study_id


def write_mimic_fixture(root: str | pathlib.Path, num_records: int = 200,
                        seed: int = 0) -> MimicFixture:
  """Writes `num_records` record_list rows (one of them the planted duplicate) under `root`."""
  root = pathlib.Path(root)
  rng = np.random.default_rng([seed, 40])
  special = list(FAULTS) + list(KEPT_ODDITIES)
  num_studies = num_records - 1  # the duplicate row repeats a study
  if num_studies < len(special) + 3:
    raise ValueError(f"num_records must be at least {len(special) + 4}")
  records = []
  for record in synthetic.iter_corpus(num_studies, FS, NUM_SAMPLES / FS, seed):
    records.append(record)
    if len(records) == num_studies:
      break
  positions = rng.choice(num_studies, len(special), replace=False)
  planted_at = dict(zip(positions.tolist(), special))
  subjects = _unique_ids(rng, 10_000_000, {r.patient_id for r in records})
  study_ids = _unique_ids(rng, 40_000_000, range(num_studies))
  record_rows, measurement_rows, planted = [], [], {}
  for i, record in enumerate(records):
    kind = planted_at.get(i)
    subject_id, study_id = subjects[record.patient_id], study_ids[i]
    if kind:
      planted[kind] = study_id
    ecg_time = datetime.datetime(2150, 1, 1) + datetime.timedelta(
        minutes=int(rng.integers(0, 40 * 365 * 24 * 60)))
    path = f"files/p{subject_id[:4]}/p{subject_id}/s{study_id}/{study_id}"
    _write_record(root / path, record.ecg[:, [LEAD_INDEX[n] for n in MIMIC_LEADS]], kind,
                  ecg_time, rng)
    row = [subject_id, study_id, study_id, f"{ecg_time:%Y-%m-%d %H:%M:%S}", path]
    if kind == "missing_subject_id":
      row[0] = ""
    record_rows.append(row)
    if kind == "duplicate_row":
      record_rows.append(row)
    if kind != "no_measurements_row":
      fields = _report_fields(record.report, kind, rng)
      measurement_rows.append(_measurement_row(subject_id, study_id, ecg_time, fields, rng))
  _write_csv(root / "record_list.csv",
             ["subject_id", "study_id", "file_name", "ecg_time", "path"], record_rows)
  _write_csv(root / "machine_measurements.csv", MEASUREMENT_COLUMNS, measurement_rows)
  skips = {planted[kind]: reason for kind, reason in FAULTS.items()}
  kept = frozenset(study_ids.values()) - {
      study_id for study_id, reason in skips.items() if reason != "duplicate_record_id"}
  return MimicFixture(root=root, num_rows=len(record_rows), skips=skips, kept=kept,
                      planted=planted)


def _unique_ids(rng, start: int, keys) -> dict:
  """Distinct 8-digit ids, one per key, increasing in key order as MIMIC's are."""
  keys = sorted(keys)
  values = np.sort(rng.choice(8_000_000, len(keys), replace=False)) + start
  return {key: str(value) for key, value in zip(keys, values)}


def _write_record(path: pathlib.Path, ecg_mv: np.ndarray, kind: str | None, ecg_time, rng):
  signal = ecg_mv.astype(np.float64)
  names = list(MIMIC_LEADS)
  if kind == "too_many_nan":
    signal.flat[rng.choice(signal.size, 1000, replace=False)] = np.nan
  elif kind == "few_nan":
    signal[rng.choice(NUM_SAMPLES, 20, replace=False), 3] = np.nan
  elif kind in ("four_flat_leads", "two_flat_leads"):
    signal[:, rng.choice(12, 4 if kind == "four_flat_leads" else 2, replace=False)] = 0.0
  elif kind == "four_saturated_leads":
    for lead in rng.choice(12, 4, replace=False):
      low, high = np.percentile(signal[:, lead], [10, 90])
      signal[:, lead] = np.clip(signal[:, lead], low, high)
  elif kind == "six_seconds":
    signal = signal[:6 * FS]
  elif kind == "header_longer_than_data":
    signal = signal[:4500]
  elif kind == "nonstandard_leads":
    names = [f"ch{i + 1}" for i in range(12)]
  path.parent.mkdir(parents=True, exist_ok=True)
  wfdb.wrsamp(path.name, fs=FS, units=["mV"] * 12, sig_name=names, p_signal=signal,
              fmt=["16"] * 12, adc_gain=[ADC_GAIN] * 12, baseline=[0] * 12,
              base_time=ecg_time.time(), base_date=ecg_time.date(), write_dir=str(path.parent))
  hea, dat = path.with_suffix(".hea"), path.with_suffix(".dat")
  if kind == "missing_dat":
    dat.unlink()
  elif kind == "missing_hea":
    hea.unlink()
  elif kind == "truncated_dat":
    dat.write_bytes(dat.read_bytes()[:-7])
  elif kind == "header_longer_than_data":
    first, rest = hea.read_text().split("\n", 1)
    tokens = first.split(" ")
    tokens[3] = str(NUM_SAMPLES)
    hea.write_text(" ".join(tokens) + "\n" + rest)


def _report_fields(report: str, kind: str | None, rng) -> list[str]:
  """Machine-statement fields: the synthetic report's sentences, decorated as MIMIC's are."""
  if kind == "no_report_fields":
    return []
  if kind == "three_words":
    return ["Sinus rhythm", "Borderline"]
  if kind == "four_words":
    return ["Sinus rhythm ", "Normal EKG"]
  fields = [s.rstrip(".") for s in re.split(r"(?<=\.)\s+", report.strip()) if s]
  if sum(len(f.split()) for f in fields) < 4:  # only the planted short reports are skipped
    fields.append(str(rng.choice(FILLERS)))
  roll = rng.random()
  if roll < 0.2:
    fields.append(WARNING)
  elif roll < 0.3:
    fields.insert(0, "*** Critical Test Result: abnormal EKG")
  elif roll < 0.4:
    fields[0] = f"  {fields[0]}.  "
  elif roll < 0.5:
    fields[-1] = fields[-1].replace("electrocardiogram", "ekg")
  if kind == "not_utf8":
    fields.append("Compared with ECG of 12-Mar-2150, caf\udce9 noted")  # byte 0xE9 on disk
  return fields


def _measurement_row(subject_id, study_id, ecg_time, fields, rng) -> list:
  reports = fields + [""] * (NUM_REPORT_FIELDS - len(fields))
  p_onset = int(rng.integers(20, 60))
  qrs_onset = p_onset + int(rng.integers(120, 200))
  return ([subject_id, study_id, int(rng.integers(6000, 9000)),
           f"{ecg_time:%Y-%m-%d %H:%M:%S}"] + reports
          + ["0.5-150 Hz", "60 Hz notch Baseline filter", int(rng.integers(500, 1200)),
             p_onset, p_onset + 100, qrs_onset, qrs_onset + 90, qrs_onset + 400,
             int(rng.integers(-30, 90)), int(rng.integers(-60, 120)), int(rng.integers(-30, 90))])


def _write_csv(path: pathlib.Path, header: list[str], rows: list[list]) -> None:
  """CSV as bytes; lone surrogates in a field go to disk as the raw bytes they escape."""
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(header)
  writer.writerows(rows)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.getvalue().encode("utf-8", "surrogateescape"))
