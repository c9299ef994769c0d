"""TFDS builder for PTB-XL (Wagner et al. 2020; version 1.0.3: 21,799 clinical 12-lead ECGs of
10 s from 18,869 patients), with free-text reports and SCP-ECG statements.

Build from PhysioNet's untouched folder (https://physionet.org/content/ptb-xl/, holding
ptbxl_database.csv, scp_statements.csv, records100/ and records500/):

  python -m tfds_builders.ptbxl --config 500hz --manual_dir /path/to/ptb-xl-1.0.3 \\
      --data_dir ~/tensorflow_datasets

It runs the stock `tfds build` (array_record by default; every `tfds build` flag works, e.g.
`--beam_pipeline_options=direct_num_workers=8,direct_running_mode=multi_processing`). The
build writes `build_report.json` beside the dataset: records seen, kept, and skipped by reason.

Configs: `100hz` reads `filename_lr` (records100/), `500hz` reads `filename_hr` (records500/);
both keep 10 s (1000 or 5000 samples), int16 µV in the lead order I, II, III, aVR, aVL, aVF,
V1-V6 (the files spell AVR/AVL/AVF). A JSON `--config` may set `signal` (a `SignalSpec`) and
`filename_column` (default: `filename_lr` up to 100 Hz, `filename_hr` above).

Report: the `report` column (free text, mostly German), whitespace collapsed. A record with a
blank report (ecg_id 443 of 1.0.3, for one) is kept with report "" (`require_report=False`),
its labels intact, so one build serves evaluation and pre-training: contrastive training
leaves such records out (sources.with_reports, counted in the training log), and
build_report.json counts them as `blank_reports`.

Labels: the task sets of the PTB-XL benchmark (Strodthoff, Wagner et al. 2021; its code's
`utils.compute_label_aggregations`, github.com/helme/ecg_ptbxl_benchmarking). A record has
a statement when it is a key of its `scp_codes` dict, whatever the likelihood (0 included),
exactly as the benchmark does:
  labels                   all 71 SCP statements, in scp_statements.csv's row order
  labels_diagnostic        the 44 statements with diagnostic == 1, in row order
  labels_subdiagnostic     their 23 `diagnostic_subclass` values, in order of first row
  labels_superdiagnostic   their 5 `diagnostic_class` values: NORM, MI, STTC, CD, HYP
  labels_form              the 19 statements with form == 1, in row order
  labels_rhythm            the 12 statements with rhythm == 1, in row order
The vocabularies ship with this module (`SCP_STATEMENTS`, generated from PTB-XL 1.0.1's
scp_statements.csv) because TFDS needs the features before it sees the download; the build
stops with a `CorpusError` when the download's scp_statements.csv disagrees. Unlike the
benchmark, records without any statement of a set are kept (their vector is all False).
`info.metadata` holds every vocabulary (`label_sets`) and each statement's description.

Split: the official `strat_fold` (patient-stratified): folds 1-8 train, 9 validation, 10 test.

Mappings: record_id = str(ecg_id); patient_id "15709.0" -> "15709"; sex (PTB-XL: 0 male,
1 female) -> 1 male, 0 female; age as recorded, except PTB-XL's 300 (its privacy code for
"older than 89") -> 90; a missing age or sex -> -1.

Skips (counted in build_report.json): rows without patient_id, strat_fold or file name, or
whose scp_codes is not a dict of known statements -> missing_metadata (before any file is
read); repeated ecg_id -> duplicate_record_id; missing, truncated or malformed WFDB files ->
missing_file / unreadable_signal / .... A wrong folder or a missing index file or records
folder stops the build with one line (`CorpusError`).
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import io
import math
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ecgclip_jax.data import contract
from ecgclip_jax.data import readers
from ecgclip_jax.data import signal as signal_lib
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import ecg_builder

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
RECORD_FOLDERS = {"filename_lr": "records100", "filename_hr": "records500"}
FOLD_SPLITS = {**{fold: "train" for fold in range(1, 9)}, 9: "validation", 10: "test"}
AGE_OVER_89_CODE = 300  # PTB-XL's (HIPAA) stand-in for every age above 89
AGE_OVER_89 = 90
_SEX = {0: 1, 1: 0}  # PTB-XL 0 male / 1 female -> contract 1 male / 0 female


class Statement(NamedTuple):
  """One row of scp_statements.csv, as far as the label sets need it."""

  code: str
  kinds: str  # "D" diagnostic, "F" form, "R" rhythm (a statement may be several)
  diagnostic_class: str  # "" unless diagnostic
  diagnostic_subclass: str  # "" unless diagnostic
  description: str


_S = Statement
# Generated from PTB-XL 1.0.1's scp_statements.csv, in its row order; `check_statements` compares
# a download's copy with it.
SCP_STATEMENTS: tuple[Statement, ...] = (
    _S("NDT", "DF", "STTC", "STTC", "non-diagnostic T abnormalities"),
    _S("NST_", "DF", "STTC", "NST_", "non-specific ST changes"),
    _S("DIG", "DF", "STTC", "STTC", "digitalis-effect"),
    _S("LNGQT", "DF", "STTC", "STTC", "long QT-interval"),
    _S("NORM", "D", "NORM", "NORM", "normal ECG"),
    _S("IMI", "D", "MI", "IMI", "inferior myocardial infarction"),
    _S("ASMI", "D", "MI", "AMI", "anteroseptal myocardial infarction"),
    _S("LVH", "D", "HYP", "LVH", "left ventricular hypertrophy"),
    _S("LAFB", "D", "CD", "LAFB/LPFB", "left anterior fascicular block"),
    _S("ISC_", "D", "STTC", "ISC_", "non-specific ischemic"),
    _S("IRBBB", "D", "CD", "IRBBB", "incomplete right bundle branch block"),
    _S("1AVB", "D", "CD", "_AVB", "first degree AV block"),
    _S("IVCD", "D", "CD", "IVCD", "non-specific intraventricular conduction disturbance (block)"),
    _S("ISCAL", "D", "STTC", "ISCA", "ischemic in anterolateral leads"),
    _S("CRBBB", "D", "CD", "CRBBB", "complete right bundle branch block"),
    _S("CLBBB", "D", "CD", "CLBBB", "complete left bundle branch block"),
    _S("ILMI", "D", "MI", "IMI", "inferolateral myocardial infarction"),
    _S("LAO/LAE", "D", "HYP", "LAO/LAE", "left atrial overload/enlargement"),
    _S("AMI", "D", "MI", "AMI", "anterior myocardial infarction"),
    _S("ALMI", "D", "MI", "AMI", "anterolateral myocardial infarction"),
    _S("ISCIN", "D", "STTC", "ISCI", "ischemic in inferior leads"),
    _S("INJAS", "D", "MI", "AMI", "subendocardial injury in anteroseptal leads"),
    _S("LMI", "D", "MI", "LMI", "lateral myocardial infarction"),
    _S("ISCIL", "D", "STTC", "ISCI", "ischemic in inferolateral leads"),
    _S("LPFB", "D", "CD", "LAFB/LPFB", "left posterior fascicular block"),
    _S("ISCAS", "D", "STTC", "ISCA", "ischemic in anteroseptal leads"),
    _S("INJAL", "D", "MI", "AMI", "subendocardial injury in anterolateral leads"),
    _S("ISCLA", "D", "STTC", "ISCA", "ischemic in lateral leads"),
    _S("RVH", "D", "HYP", "RVH", "right ventricular hypertrophy"),
    _S("ANEUR", "D", "STTC", "STTC", "ST-T changes compatible with ventricular aneurysm"),
    _S("RAO/RAE", "D", "HYP", "RAO/RAE", "right atrial overload/enlargement"),
    _S("EL", "D", "STTC", "STTC", "electrolytic disturbance or drug (former EDIS)"),
    _S("WPW", "D", "CD", "WPW", "Wolf-Parkinson-White syndrome"),
    _S("ILBBB", "D", "CD", "ILBBB", "incomplete left bundle branch block"),
    _S("IPLMI", "D", "MI", "IMI", "inferoposterolateral myocardial infarction"),
    _S("ISCAN", "D", "STTC", "ISCA", "ischemic in anterior leads"),
    _S("IPMI", "D", "MI", "IMI", "inferoposterior myocardial infarction"),
    _S("SEHYP", "D", "HYP", "SEHYP", "septal hypertrophy"),
    _S("INJIN", "D", "MI", "IMI", "subendocardial injury in inferior leads"),
    _S("INJLA", "D", "MI", "AMI", "subendocardial injury in lateral leads"),
    _S("PMI", "D", "MI", "PMI", "posterior myocardial infarction"),
    _S("3AVB", "D", "CD", "_AVB", "third degree AV block"),
    _S("INJIL", "D", "MI", "IMI", "subendocardial injury in inferolateral leads"),
    _S("2AVB", "D", "CD", "_AVB", "second degree AV block"),
    _S("ABQRS", "F", "", "", "abnormal QRS"),
    _S("PVC", "F", "", "", "ventricular premature complex"),
    _S("STD_", "F", "", "", "non-specific ST depression"),
    _S("VCLVH", "F", "", "", "voltage criteria (QRS) for left ventricular hypertrophy"),
    _S("QWAVE", "F", "", "", "Q waves present"),
    _S("LOWT", "F", "", "", "low amplitude T-waves"),
    _S("NT_", "F", "", "", "non-specific T-wave changes"),
    _S("PAC", "F", "", "", "atrial premature complex"),
    _S("LPR", "F", "", "", "prolonged PR interval"),
    _S("INVT", "F", "", "", "inverted T-waves"),
    _S("LVOLT", "F", "", "", "low QRS voltages in the frontal and horizontal leads"),
    _S("HVOLT", "F", "", "", "high QRS voltage"),
    _S("TAB_", "F", "", "", "T-wave abnormality"),
    _S("STE_", "F", "", "", "non-specific ST elevation"),
    _S("PRC(S)", "F", "", "", "premature complex(es)"),
    _S("SR", "R", "", "", "sinus rhythm"),
    _S("AFIB", "R", "", "", "atrial fibrillation"),
    _S("STACH", "R", "", "", "sinus tachycardia"),
    _S("SARRH", "R", "", "", "sinus arrhythmia"),
    _S("SBRAD", "R", "", "", "sinus bradycardia"),
    _S("PACE", "R", "", "", "normal functioning artificial pacemaker"),
    _S("SVARR", "R", "", "", "supraventricular arrhythmia"),
    _S("BIGU", "R", "", "", "bigeminal pattern (unknown origin, SV or Ventricular)"),
    _S("AFLT", "R", "", "", "atrial flutter"),
    _S("SVTAC", "R", "", "", "supraventricular tachycardia"),
    _S("PSVT", "R", "", "", "paroxysmal supraventricular tachycardia"),
    _S("TRIGU", "R", "", "", "trigeminal pattern (unknown origin, SV or Ventricular)"),
)
del _S

# The order in which the PTB-XL paper lists the superclasses (the benchmark's binarizer sorts
# them instead; `label_sets` in the metadata names each position either way).
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
SUPERCLASS_DESCRIPTIONS = {
    "NORM": "normal ECG", "MI": "myocardial infarction", "STTC": "ST/T change",
    "CD": "conduction disturbance", "HYP": "hypertrophy"}


def _unique(values) -> list[str]:
  return list(dict.fromkeys(values))


def label_sets_of(statements: tuple[Statement, ...]) -> dict[str, list[str]]:
  """Feature name -> vocabulary, for the statements of one scp_statements.csv."""
  diagnostic = [s for s in statements if "D" in s.kinds]
  superclasses = {s.diagnostic_class for s in diagnostic if s.diagnostic_class}
  return {
      "labels": [s.code for s in statements],
      "labels_diagnostic": [s.code for s in diagnostic],
      "labels_subdiagnostic": _unique(s.diagnostic_subclass for s in diagnostic
                                      if s.diagnostic_subclass),
      "labels_superdiagnostic": ([c for c in SUPERCLASSES if c in superclasses]
                                 + sorted(superclasses - set(SUPERCLASSES))),
      "labels_form": [s.code for s in statements if "F" in s.kinds],
      "labels_rhythm": [s.code for s in statements if "R" in s.kinds],
  }


LABEL_SETS = label_sets_of(SCP_STATEMENTS)
_BY_CODE = {s.code: s for s in SCP_STATEMENTS}


def statement_labels(codes) -> dict[str, np.ndarray]:
  """The multi-hot vector of every label set for a record's SCP statements (the keys of its
  scp_codes), aggregated as the benchmark's `compute_label_aggregations` does: the label sets
  of just the statements present, placed in the full vocabularies."""
  present = label_sets_of(tuple(_BY_CODE[code] for code in codes))
  return {name: ecg_builder.multi_hot(present[name], vocabulary)
          for name, vocabulary in LABEL_SETS.items()}


def _csv_text(path: epath.Path) -> io.StringIO:
  """A CSV file as text for the csv module (epath's open() takes no `newline`)."""
  try:
    return io.StringIO(path.read_text(encoding="utf-8"), newline="")
  except UnicodeDecodeError as e:
    raise CorpusError(f"{path}: not UTF-8 text ({e})") from None


def _flag(value: str) -> bool:
  value = (value or "").strip()
  try:
    return bool(value) and float(value) == 1.0
  except ValueError:
    raise CorpusError(f"flag {value!r} is not 1.0 or empty") from None


def read_scp_statements(path) -> tuple[Statement, ...]:
  """scp_statements.csv -> its statements in row order (the first, unnamed column is the code)."""
  path = epath.Path(path)
  rows = list(csv.DictReader(_csv_text(path)))
  needed = {"", "description", "diagnostic", "form", "rhythm", "diagnostic_class",
            "diagnostic_subclass"}
  if not rows or not needed <= set(rows[0]):
    raise CorpusError(f"{path}: expected PTB-XL's SCP statement table with the columns "
                      f"{sorted(needed)} (the first, unnamed one holding the statement codes)")
  statements = []
  for row in rows:
    try:
      kinds = "".join(k for k, column in (("D", "diagnostic"), ("F", "form"), ("R", "rhythm"))
                      if _flag(row[column]))
    except CorpusError as e:
      raise CorpusError(f"{path}: statement {row['']!r}: {e}") from None
    statements.append(Statement(
        code=row[""].strip(), kinds=kinds,
        diagnostic_class=(row["diagnostic_class"] or "").strip() if "D" in kinds else "",
        diagnostic_subclass=(row["diagnostic_subclass"] or "").strip() if "D" in kinds else "",
        description=(row["description"] or "").strip()))
  return tuple(statements)


def check_statements(path) -> None:
  """CorpusError unless the download's statements define the label sets this module ships."""
  found = {s.code: s[1:4] for s in read_scp_statements(path)}
  shipped = {s.code: s[1:4] for s in SCP_STATEMENTS}
  if found == shipped:
    return
  problems = []
  if missing := [c for c in shipped if c not in found]:
    problems.append(f"missing {missing}")
  if extra := [c for c in found if c not in shipped]:
    problems.append(f"new {extra}")
  for code, expected in shipped.items():
    if code in found and found[code] != expected:
      problems.append(f"{code} is (kinds, class, subclass) {found[code]}, expected {expected}")
  raise CorpusError(f"{path}: its SCP statements differ from the label vocabularies this "
                    f"builder ships (SCP_STATEMENTS in {__name__}): {'; '.join(problems)}")


# --- the record index ------------------------------------------------------------------------


def _number(value: str | None) -> float | None:
  """A CSV number, or None for a blank, NaN or unparsable cell."""
  try:
    number = float((value or "").strip())
  except ValueError:
    return None
  return None if math.isnan(number) else number


def patient_id_of(value: str | None) -> str | None:
  """"15709.0" -> "15709" (pandas wrote the ids as floats); None when missing."""
  value = (value or "").strip()
  number = _number(value)
  if number is not None and number.is_integer():
    return str(int(number))
  return value if value and value.casefold() != "nan" else None


def age_of(value: str | None) -> int:
  """Years; PTB-XL's 300 (any age above 89) -> 90; missing -> -1."""
  age = _number(value)
  if age is None or age < 0:
    return contract.UNKNOWN
  if age >= AGE_OVER_89_CODE:
    return AGE_OVER_89
  return round(age)


def sex_of(value: str | None) -> int:
  """PTB-XL 0 male, 1 female -> 1 male, 0 female; anything else -> -1."""
  sex = _number(value)
  if sex is None or not sex.is_integer():
    return contract.UNKNOWN
  return _SEX.get(int(sex), contract.UNKNOWN)


def statements_of(value: str | None) -> tuple[str, ...]:
  """The statement codes of a scp_codes cell (a Python dict literal: code -> likelihood).
  Raises ValueError saying what is wrong with the cell."""
  text = (value or "").strip()
  if not text:
    raise ValueError("scp_codes is empty")
  try:
    codes = ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    raise ValueError(f"scp_codes {text[:60]!r} is not a Python dict literal") from None
  if not isinstance(codes, dict) or not all(isinstance(c, str) for c in codes):
    raise ValueError(f"scp_codes {text[:60]!r} is not a dict of statement codes")
  unknown = sorted(c for c in codes if c not in _BY_CODE)
  if unknown:
    raise ValueError(f"scp_codes names statements not in scp_statements.csv: {unknown}")
  return tuple(codes)


def _task_or_skip(row: dict, row_number: int, manual_dir: epath.Path, filename_column: str):
  """(RecordTask, None) or (None, (id, reason, detail)) for one row of ptbxl_database.csv."""
  ecg_id = _number(row.get("ecg_id"))
  if ecg_id is None or not ecg_id.is_integer():
    return None, (f"row{row_number}", "missing_metadata",
                  f"ecg_id {row.get('ecg_id')!r} in data row {row_number}")
  record_id = str(int(ecg_id))

  def skip(detail):
    return None, (record_id, "missing_metadata", detail)

  patient_id = patient_id_of(row.get("patient_id"))
  if patient_id is None:
    return skip("patient_id missing")
  fold = _number(row.get("strat_fold"))
  if fold is None or not fold.is_integer() or int(fold) not in FOLD_SPLITS:
    return skip(f"strat_fold {row.get('strat_fold')!r} is not one of 1..10")
  filename = (row.get(filename_column) or "").strip()
  if not filename:
    return skip(f"{filename_column} missing")
  try:
    codes = statements_of(row.get("scp_codes"))
  except ValueError as e:
    return skip(str(e))
  return ecg_builder.RecordTask(
      record_id=record_id, patient_id=patient_id, split=FOLD_SPLITS[int(fold)],
      source=(("path", str(manual_dir / filename)),
              ("report", row.get("report") or ""),
              ("scp_codes", codes),
              ("age", age_of(row.get("age"))),
              ("sex", sex_of(row.get("sex"))))), None


def read_record(task: ecg_builder.RecordTask) -> ecg_builder.RawRecord:
  """One PTB-XL record: its WFDB signal, report, label vectors, age and sex (module-level, so
  Beam workers can unpickle it by reference)."""
  return ecg_builder.RawRecord(
      signal=readers.read_wfdb(task.field("path")),
      report=task.field("report", ""),
      labels=statement_labels(task.field("scp_codes", ())),
      age=task.field("age", contract.UNKNOWN),
      sex=task.field("sex", contract.UNKNOWN))


# --- the builder -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False, kw_only=True)
class PtbxlConfig(ecg_builder.EcgConfig):
  """`EcgConfig` plus which of PTB-XL's two recordings of each ECG to read."""

  filename_column: str | None = None  # None: filename_lr up to 100 Hz, filename_hr above
  require_report: bool = False  # blank reports are kept: their labels serve evaluation

  def __post_init__(self):
    super().__post_init__()
    if self.filename_column is None:
      self.filename_column = "filename_lr" if self.signal.sample_rate <= 100 else "filename_hr"
    if self.filename_column not in RECORD_FOLDERS:
      raise ValueError(f"filename_column must be one of {sorted(RECORD_FOLDERS)}, "
                       f"got {self.filename_column!r}")


class Builder(ecg_builder.EcgBuilder):
  """PTB-XL: 12-lead 10 s ECGs with free-text reports and SCP-ECG statement labels."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      **contract.RELEASE_NOTES,
      "1.2.0": ("Records with a blank report are kept (report \"\", labels intact) instead of "
                "skipped as empty_report: one build serves evaluation and pre-training, which "
                "leaves them out. Rebuild from the source: this builder opens only 1.2.0 "
                "builds."),
  }
  BUILDER_CONFIGS = [
      PtbxlConfig(name="100hz", description="records100 (filename_lr): 10 s at 100 Hz.",
                  signal=signal_lib.SignalSpec(sample_rate=100), filename_column="filename_lr"),
      PtbxlConfig(name="500hz", description="records500 (filename_hr): 10 s at 500 Hz.",
                  signal=signal_lib.SignalSpec(sample_rate=500), filename_column="filename_hr"),
  ]
  DEFAULT_CONFIG_NAME = "500hz"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download PTB-XL from https://physionet.org/content/ptb-xl/ (e.g. `wget -r -N -c -np
  https://physionet.org/files/ptb-xl/1.0.3/`) and pass the folder holding ptbxl_database.csv,
  scp_statements.csv, records100/ and records500/ as --manual_dir.
  """

  def label_sets(self) -> dict[str, list[str]]:
    return {name: list(vocabulary) for name, vocabulary in LABEL_SETS.items()}

  def extra_metadata(self) -> dict:
    return {
        "statement_descriptions": {s.code: s.description for s in SCP_STATEMENTS},
        "superclass_descriptions": dict(SUPERCLASS_DESCRIPTIONS),
        "split_folds": {"train": list(range(1, 9)), "validation": [9], "test": [10]},
        "records": self.builder_config.filename_column,
    }

  def list_records(self, manual_dir: epath.Path):
    column = self.builder_config.filename_column
    database, statements = manual_dir / DATABASE_CSV, manual_dir / STATEMENTS_CSV
    for path, what in ((database, "PTB-XL's record index"),
                       (statements, "PTB-XL's SCP statement table")):
      if not path.is_file():
        raise CorpusError(f"{path}: not found; expected {what} {path.name} in the PTB-XL folder "
                          f"passed as manual_dir")
    records = manual_dir / RECORD_FOLDERS[column]
    if not records.is_dir():
      raise CorpusError(f"{records}: no such folder; expected PTB-XL's WFDB records for "
                        f"{column} ({records.name}/00000/00001_*.hea, ...)")
    check_statements(statements)
    reader = csv.DictReader(_csv_text(database))
    needed = {"ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", column}
    if missing := sorted(needed - set(reader.fieldnames or ())):
      raise CorpusError(f"{database}: missing the column(s) {missing}; expected PTB-XL's "
                        f"record index")
    tasks, skipped = [], []
    for row_number, row in enumerate(reader, start=1):
      task, skip = _task_or_skip(row, row_number, manual_dir, column)
      if task is not None:
        tasks.append(task)
      else:
        skipped.append(skip)
    self._blank_reports = sum(not task.field("report").strip() for task in tasks)
    return tasks, skipped

  def extra_report(self) -> dict:
    """Index rows with a blank report, kept with report "" (unless skipped for another
    reason): the records contrastive pre-training leaves out."""
    return {"blank_reports": self._blank_reports}

  def record_reader(self):
    return read_record
