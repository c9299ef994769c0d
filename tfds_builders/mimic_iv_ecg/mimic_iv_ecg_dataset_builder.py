"""TFDS builder for MIMIC-IV-ECG v1.0 (Gow et al. 2023): ~800,000 diagnostic 12-lead ECGs of
10 s from ~160,000 patients, each with the ECG cart's machine report.

Build from PhysioNet's untouched folder (https://physionet.org/content/mimic-iv-ecg/1.0/,
holding record_list.csv, machine_measurements.csv and files/):

  python -m tfds_builders.mimic_iv_ecg --config 500hz \\
      --manual_dir /path/to/mimic-iv-ecg-1.0 --data_dir ~/tensorflow_datasets

and with the records read on Beam workers (DirectRunner processes here; Dataflow, Flink or
Spark at scale):

  python -m tfds_builders.mimic_iv_ecg --config 500hz \\
      --manual_dir /path/to/mimic-iv-ecg-1.0 --data_dir ~/tensorflow_datasets \\
      --beam_pipeline_options=direct_num_workers=16,direct_running_mode=multi_processing

It runs the stock `tfds build` (array_record by default; every `tfds build` flag works) and
writes `build_report.json` beside the dataset: records seen, kept, and skipped by reason.

Configs: `500hz` keeps the files' native 500 Hz (5000 samples), `100hz` resamples to 1000
samples; both int16 µV in the lead order I, II, III, aVR, aVL, aVF, V1-V6 (the files list
aVF before aVL; leads are placed by name). A JSON `--config` may set `signal` (a
`SignalSpec`), `min_report_words` and `lowercase_report`.

Report: the machine statements `report_0`..`report_17` cleaned as MERL does (Liu et al. 2024,
github.com/cheliu-computation/MERL-ICML2024, pretrain/preprocess.ipynb): fields joined with
". ", "EKG"/"ekg" -> "ECG"/"ecg", edge decorations ("***", "---", "=") stripped, lower-cased
(`lowercase_report`), whitespace collapsed, a final "."; fewer than `min_report_words` (4,
as MERL) words -> skipped as empty_report. One deliberate difference: MERL strips the
decorations and trailing "." only at the ends of the joined text; here each field is stripped,
so a statement reads the same wherever it sits ("--- Warning: Data quality may affect
interpretation ---" -> "warning: data quality may affect interpretation") and no ".." appears
where a field ends with a period. Statements are kept, warnings included: a data-quality
warning is a true statement about the recording.

Labels: MIMIC-IV-ECG has none; `labels` is an empty vocabulary (a [0] vector).

Split: by patient, `hash_split(subject_id, salt="mimic_iv_ecg")` 80/10/10 train/validation/
test: deterministic, no patient in two splits, stable when records are added.

Mappings: record_id = study_id, patient_id = subject_id; age and sex are not in these files
(-1; MIMIC-IV's `patients` table has them).

Skips (counted in build_report.json): no subject_id / study_id / path -> missing_metadata; no
machine_measurements.csv row, or too few words -> empty_report (a study with several rows
takes the first); report bytes that are not
UTF-8 -> undecodable_report (only that record: the CSV is read with surrogate escapes); a
repeated study_id -> duplicate_record_id (all of these before any file is read); missing,
truncated or malformed WFDB files, NaN, flat or saturated leads, short records -> the reasons
of `ecgclip_jax.data.readers` / `signal`, found on the workers. A missing index file or files/
folder stops the build with one line (`CorpusError`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import tensorflow_datasets as tfds
from etils import epath

from ecgclip_jax.data import contract
from ecgclip_jax.data import readers
from ecgclip_jax.data import signal as signal_lib
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import ecg_builder

RECORD_LIST_CSV = "record_list.csv"
MEASUREMENTS_CSV = "machine_measurements.csv"
FILES_FOLDER = "files"
REPORT_COLUMNS = tuple(f"report_{i}" for i in range(18))
SPLIT_SALT = "mimic_iv_ecg"
_ID_COLUMNS = ("subject_id", "study_id", "path")
_EDGE = " *=-"  # decoration around machine statements: "*** ... ***", "--- ... ---", "="


@dataclasses.dataclass(eq=False, kw_only=True)
class MimicConfig(ecg_builder.EcgConfig):
  """Signal format plus MERL's report rules."""

  min_report_words: int = 4
  lowercase_report: bool = True


def clean_reports(fields: pd.DataFrame, lowercase: bool = True) -> pd.Series:
  """MERL's report per row of `report_N` columns (NaN: empty field), a column at a time and
  touching only the filled cells, so the 800k-row table costs seconds (rules: module
  docstring)."""
  report = np.full(len(fields), "", dtype=object)
  for column in fields.columns:
    values = fields[column].to_numpy()
    rows = np.flatnonzero(pd.notna(values))  # most of the 18 fields are empty
    part = np.array([" ".join(cell.split()).lstrip(_EDGE).rstrip(_EDGE + ".")
                     for cell in values[rows]], dtype=object)
    rows, part = rows[part != ""], part[part != ""]
    before = report[rows]
    report[rows] = np.where(before != "", before + ". " + part, part)
  report = pd.Series(report, index=fields.index, dtype=object)
  report = report.str.replace("EKG", "ECG", regex=False).str.replace("ekg", "ecg", regex=False)
  if lowercase:
    report = report.str.lower()
  return report.where(report == "", report + ".")


def read_record(task: ecg_builder.RecordTask) -> ecg_builder.RawRecord:
  """One study's WFDB record and its cleaned report (module-level: Beam pickles it)."""
  return ecg_builder.RawRecord(signal=readers.read_wfdb(task.field("path")),
                               report=task.field("report"))


def _read_csv(path: epath.Path, columns) -> pd.DataFrame:
  """`columns` of an index CSV as strings (NaN where empty); bytes that are not UTF-8 stay
  as lone surrogates, so a bad row costs only its own record."""
  if not path.exists():
    raise CorpusError(f"{path}: not found; expected PhysioNet's MIMIC-IV-ECG v1.0 folder "
                      f"({RECORD_LIST_CSV}, {MEASUREMENTS_CSV}, {FILES_FOLDER}/)")
  with path.open("rb") as f:
    frame = pd.read_csv(f, dtype=object, usecols=lambda c: c in columns, keep_default_na=False,
                        na_values=[""], encoding="utf-8", encoding_errors="surrogateescape")
  if missing := [c for c in columns if c not in frame.columns]:
    raise CorpusError(f"{path}: no column {', '.join(missing)}")
  return frame


class Builder(ecg_builder.EcgBuilder):
  """MIMIC-IV-ECG v1.0: 12-lead ECGs with machine reports, split by patient."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = dict(contract.RELEASE_NOTES)
  BUILDER_CONFIGS = [
      MimicConfig(name="500hz", description="10 s at 500 Hz (native).",
                  signal=signal_lib.SignalSpec(sample_rate=500)),
      MimicConfig(name="100hz", description="10 s resampled to 100 Hz.",
                  signal=signal_lib.SignalSpec(sample_rate=100)),
  ]
  DEFAULT_CONFIG_NAME = "500hz"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download MIMIC-IV-ECG v1.0 from https://physionet.org/content/mimic-iv-ecg/1.0/ (credentialed
  access) and pass its folder (record_list.csv, machine_measurements.csv, files/) as manual_dir.
  """

  def label_sets(self) -> dict[str, list[str]]:
    return {"labels": []}

  def extra_metadata(self) -> dict:
    c = self.builder_config
    return {"report_cleaning": {"style": "MERL", "min_report_words": c.min_report_words,
                                "lowercase": c.lowercase_report},
            "split": f"hash_split(subject_id, salt={SPLIT_SALT!r}) 80/10/10"}

  def list_records(self, manual_dir: epath.Path):
    records = _read_csv(manual_dir / RECORD_LIST_CSV, _ID_COLUMNS)
    measurements = _read_csv(manual_dir / MEASUREMENTS_CSV, ("study_id",) + REPORT_COLUMNS)
    if not (manual_dir / FILES_FOLDER).is_dir():
      raise CorpusError(f"{manual_dir / FILES_FOLDER}: no such folder; expected the WFDB "
                        f"records under {FILES_FOLDER}/pNNNN/pNNNNNNNN/sNNNNNNNN/")
    c = self.builder_config
    reports = pd.DataFrame({
        "study_id": measurements["study_id"],
        "report": clean_reports(measurements[list(REPORT_COLUMNS)], c.lowercase_report),
    }).drop_duplicates("study_id")
    del measurements
    records = records.merge(reports, on="study_id", how="left", sort=False)
    text = records["report"].fillna("")
    words = text.str.count(r"\S+").to_numpy()
    missing = records[list(_ID_COLUMNS)].isna().to_numpy()
    # (condition, reason, detail) in the order they are checked; the first that holds counts.
    checks = [
        (missing.any(axis=1), "missing_metadata",
         lambda row: f"{RECORD_LIST_CSV}: no {', '.join(np.array(_ID_COLUMNS)[missing[row]])}"),
        (records["report"].isna().to_numpy(), "empty_report",
         lambda row: f"no {MEASUREMENTS_CSV} row"),
        (text.str.contains(contract.SURROGATE).to_numpy(), "undecodable_report",
         lambda row: f"{MEASUREMENTS_CSV}: report bytes are not UTF-8"),
        (words < c.min_report_words, "empty_report",
         lambda row: f"{words[row]} words < min_report_words={c.min_report_words}"),
    ]
    failed = np.select([condition for condition, _, _ in checks], range(len(checks)), -1)
    study_ids, index_skips = records["study_id"].to_numpy(), []
    for row in np.flatnonzero(failed >= 0):
      _, reason, detail = checks[failed[row]]
      record_id = study_ids[row]
      if pd.isna(record_id):
        record_id = f"{RECORD_LIST_CSV} row {row + 2}"  # 1-based, after the header line
      index_skips.append((record_id, reason, detail(row)))
    usable = records[failed < 0]
    splits = {subject: ecg_builder.hash_split(subject, SPLIT_SALT)
              for subject in usable["subject_id"].unique()}
    root = str(manual_dir)
    tasks = [ecg_builder.RecordTask(record_id=study, patient_id=subject, split=splits[subject],
                                    source=(("path", f"{root}/{path}"), ("report", report)))
             for subject, study, path, report in zip(usable["subject_id"], usable["study_id"],
                                                     usable["path"], usable["report"])]
    return tasks, index_skips

  def record_reader(self):
    return read_record

