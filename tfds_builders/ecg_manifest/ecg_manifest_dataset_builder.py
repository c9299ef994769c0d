"""TFDS builder for a hospital's own ECG export, described by a manifest (CSV or Parquet).

`--manual_dir` is the export folder. It holds `manifest.csv` or `manifest.parquet` (config
field `manifest` names another file), one row per ECG, with these columns (any case):

  path         required  the waveform, relative to the manifest's folder or absolute: a WFDB
                         record (`a/rec.hea`, or `a/rec`), a CinC `.mat` (read through the
                         `.hea` beside it), or a `.npy` array [time, lead] (or [lead, time])
  patient_id   required  splits never divide a patient
  report       required  free text; the column may be left out when `require_report` is False
  record_id    optional  default: `path` without its extension
  labels       optional  names from the config's `label_names`, separated by `;`
  age          optional  years; blank: unknown (-1)
  sex          optional  F / female / 0, M / male / 1 (any case); blank, U or unknown: -1
  sample_rate  .npy: required; WFDB and .mat: optional, checked against the header (Hz)
  lead_names   optional  .npy only: comma-separated, any case; default I,II,III,aVR,...,V6
  units        optional  .npy only: mV (default), uV or V
  split        optional  train / validation / test; blank: a hash of patient_id (80/10/10)

Build (array_record; `--config` is `500hz`, `100hz`, or a JSON of `ManifestConfig` fields):

  python -m tfds_builders.ecg_manifest --config 500hz --manual_dir /data/export \
      --data_dir /data/tfds
  python -m tfds_builders.ecg_manifest --manual_dir /data/export --data_dir /data/tfds \
      --config '{"name": "my_hospital", "label_names": ["afib", "lbbb"],
                 "signal": {"sample_rate": 500}}'

A row that cannot be used is skipped and counted in `build_report.json`: no path or patient
id, a split or sample rate that is not one -> missing_metadata; file, format and signal
problems -> the readers' and signal preparation's reasons. An age or sex that cannot be read
is kept as unknown (-1) and named in one warning line. The build stops at once, naming the
file, when the manifest is missing, unreadable, empty or lacks a required column, when it
names labels outside `label_names`, or when its `split` column puts a patient in two splits.
"""

from __future__ import annotations

import codecs
import collections
import csv
import dataclasses
import functools
import io
import json
import math
import os
import pathlib

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from ecgclip_jax.data import contract
from ecgclip_jax.data import readers
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.signal import SignalSpec
from ecgclip_jax.data.skips import CorpusError, SkipRecord
from tfds_builders import ecg_builder

MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
REQUIRED_COLUMNS = ("path", "patient_id", "report")
OPTIONAL_COLUMNS = ("record_id", "labels", "age", "sex", "sample_rate", "lead_names", "units",
                    "split")
SIGNAL_SUFFIXES = (".hea", ".dat", ".mat", ".npy")  # dropped from `path` for the record id
MAX_AGE = 150
_SEX = {"f": 0, "female": 0, "0": 0, "m": 1, "male": 1, "1": 1,
        "": contract.UNKNOWN, "u": contract.UNKNOWN, "unknown": contract.UNKNOWN,
        "-1": contract.UNKNOWN}


@dataclasses.dataclass(eq=False, kw_only=True)
class ManifestConfig(ecg_builder.EcgConfig):
  """Signal format and label vocabulary. The vocabulary lives here, not in the manifest,
  because TFDS fixes the features when the builder is made, before any file is read."""

  label_names: tuple[str, ...] = ()
  manifest: str = ""  # file in manual_dir (or absolute); "": manifest.csv or manifest.parquet
  encoding: str = "utf-8"  # of a CSV manifest; bytes it cannot decode make undecodable_report
  split_salt: str = "ecg_manifest"  # hash_split salt for rows without a split

  def __post_init__(self):
    super().__post_init__()
    self.label_names = tuple(self.label_names)  # a JSON list from `tfds build --config`
    if (len(set(self.label_names)) != len(self.label_names)
        or any(not n or n != n.strip() or ";" in n for n in self.label_names)):
      raise ValueError(f"label_names must be distinct and non-empty, without ';' or outer "
                       f"spaces: {self.label_names}")


class Builder(ecg_builder.EcgBuilder):
  """A hospital's own ECG export, described by a CSV or Parquet manifest."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = dict(contract.RELEASE_NOTES)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  The export folder: manifest.csv or manifest.parquet, one row per ECG (columns: path,
  patient_id, report, and optionally record_id, labels, age, sex, sample_rate, lead_names,
  units, split), and the waveform files it names.
  """
  BUILDER_CONFIGS = [
      ManifestConfig(name="500hz", description="10 s at 500 Hz, no labels.",
                     signal=SignalSpec(sample_rate=500)),
      ManifestConfig(name="100hz", description="10 s at 100 Hz, no labels.",
                     signal=SignalSpec(sample_rate=100)),
  ]
  DEFAULT_CONFIG_NAME = "500hz"

  def label_sets(self) -> dict[str, list[str]]:
    return {"labels": list(self.builder_config.label_names)}

  def list_records(self, manual_dir):
    config = self.builder_config
    path = find_manifest(epath.Path(manual_dir), config.manifest)
    required = REQUIRED_COLUMNS if config.require_report else ("path", "patient_id")
    rows = read_manifest(path, required, config.encoding)
    tasks, skipped = [], []
    unknown_labels = collections.defaultdict(list)  # label -> row numbers
    unreadable = collections.defaultdict(list)  # column -> "row N: 'value'"
    for number, row in enumerate(rows, start=1):
      labels = tuple(name.strip() for name in row.get("labels", "").split(";") if name.strip())
      for name in labels:
        if name not in config.label_names:
          unknown_labels[name].append(number)
      age, sex = _age(row.get("age", "")), _SEX.get(row.get("sex", "").casefold())
      for column, value in (("age", age), ("sex", sex)):
        if value is None:
          unreadable[column].append(f"row {number}: {row[column]!r}")
      record_id = _record_id(row, number)
      try:
        tasks.append(_task(row, record_id, path.parent, config, labels=labels,
                           age=contract.UNKNOWN if age is None else age,
                           sex=contract.UNKNOWN if sex is None else sex))
      except SkipRecord as e:
        skipped.append((record_id, e.reason, f"row {number}: {e.detail}"))
    if unknown_labels:
      raise CorpusError(_unknown_labels_message(path, unknown_labels, config.label_names))
    _check_patient_splits(path, tasks)
    for column, examples in unreadable.items():
      logging.warning("%s: %d %s value(s) not understood, kept as unknown (-1): %s", path,
                      len(examples), column, ", ".join(examples[:3]))
    return tasks, skipped

  def record_reader(self):
    return functools.partial(read_record, label_names=self.builder_config.label_names)


def read_record(task: ecg_builder.RecordTask,
                label_names: tuple[str, ...]) -> ecg_builder.RawRecord:
  """One manifest row's waveform and fields (module level, so Beam workers can unpickle it)."""
  rate = task.field("sample_rate")
  signal = readers.read_signal(task.field("path"), rate,
                               list(task.field("lead_names") or LEAD_NAMES), task.field("units"))
  if rate is not None and not math.isclose(signal.fs, rate, rel_tol=1e-6):
    raise SkipRecord("header_data_mismatch",
                     f"{task.field('path')}: header says {signal.fs:g} Hz, manifest {rate:g} Hz")
  return ecg_builder.RawRecord(
      signal=signal, report=task.field("report"),
      labels={"labels": ecg_builder.multi_hot(task.field("labels"), list(label_names))},
      age=task.field("age"), sex=task.field("sex"))


# ----------------------------------------------------------------------------- the manifest


def find_manifest(manual_dir: epath.Path, name: str) -> epath.Path:
  """`name` in manual_dir (or an absolute path), else the one of MANIFEST_NAMES there."""
  if name:
    path = manual_dir / name
    if not path.is_file():
      raise CorpusError(f"{path}: no such manifest file (config field `manifest`)")
    return path
  found = [manual_dir / n for n in MANIFEST_NAMES if (manual_dir / n).is_file()]
  if not found:
    raise CorpusError(f"{manual_dir}: no {' or '.join(MANIFEST_NAMES)} (one row per ECG; "
                      f"config field `manifest` names another file)")
  if len(found) > 1:
    raise CorpusError(f"{manual_dir}: both {' and '.join(MANIFEST_NAMES)}; name the one to "
                      f"build with config field `manifest`")
  return found[0]


def read_manifest(path: epath.Path, required: tuple[str, ...] = REQUIRED_COLUMNS,
                  encoding: str = "utf-8") -> list[dict[str, str]]:
  """The rows as {column: text}: column names stripped and lower-cased, blank or null -> ''."""
  if path.suffix.casefold() == ".parquet":
    names, rows = _read_parquet(path)
  else:
    names, rows = _read_csv(path, encoding)
  names = [str(name).strip().casefold() for name in names]
  if len(set(names)) != len(names):
    raise CorpusError(f"{path}: repeated column names in {', '.join(names)}")
  missing = [name for name in required if name not in names]
  if missing:
    raise CorpusError(f"{path}: missing required column(s) {', '.join(missing)} "
                      f"(columns found: {', '.join(names)})")
  ignored = [name for name in names if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
  if ignored:
    logging.warning("%s: ignoring unknown column(s) %s", path, ", ".join(ignored))
  if not rows:
    raise CorpusError(f"{path}: no rows (expected one row per ECG below the header)")
  return [{name: _text(value) for name, value in zip(names, row)} for row in rows]


def _read_csv(path: epath.Path, encoding: str) -> tuple[list[str], list[list[str]]]:
  """Header and rows; blank lines are passed over, a line with a wrong field count stops."""
  try:
    # epath's open() takes no `errors`; codecs (unlike bytes.decode) rejects an unknown
    # `encoding` for an empty file too, as open() does
    text = codecs.decode(path.read_bytes(), encoding, "replace")
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows = next(reader, []), []
    for row in reader:
      if row and len(row) != len(header):
        raise CorpusError(f"{path}: line {reader.line_num} has {len(row)} fields, the "
                          f"header {len(header)}")
      if row:
        rows.append(row)
  except (OSError, LookupError, csv.Error) as e:  # LookupError: an unknown `encoding`
    raise CorpusError(f"{path}: not a readable CSV manifest ({type(e).__name__}: {e})") from None
  if not header:
    raise CorpusError(f"{path}: empty (expected a header line naming the columns, then rows)")
  header[0] = header[0].removeprefix("\ufeff")  # the byte-order mark Excel writes
  return header, rows


def _read_parquet(path: epath.Path) -> tuple[list[str], list[tuple]]:
  try:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CorpusError(f"{path}: a Parquet manifest needs pyarrow (pip install pyarrow)") from None
  try:
    with path.open("rb") as file:
      table = pq.read_table(file)
  except (OSError, pa.ArrowException) as e:
    message = f"{path}: not a readable Parquet manifest ({type(e).__name__}: {e})"
    raise CorpusError(message) from None
  return table.column_names, list(zip(*(column.to_pylist() for column in table.columns)))


def _text(value) -> str:
  """A cell as text. Parquet cells are typed: null -> '', a whole float (an integer column
  with nulls, as pandas writes it) loses its '.0', bytes are UTF-8."""
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  if isinstance(value, bytes):
    return value.decode("utf-8", errors="replace")
  return str(value).strip()


def _record_id(row: dict[str, str], number: int) -> str:
  """`record_id`, else `path` without a signal file's extension, else the row's number."""
  if row.get("record_id"):
    return row["record_id"]
  if not row["path"]:
    return f"row {number}"
  path = pathlib.PurePath(row["path"])
  return str(path.with_suffix("") if path.suffix.casefold() in SIGNAL_SUFFIXES else path)


def _task(row: dict[str, str], record_id: str, folder: epath.Path, config: ManifestConfig,
          labels, age, sex) -> ecg_builder.RecordTask:
  for column in ("path", "patient_id"):
    if not row[column]:
      raise SkipRecord("missing_metadata", f"no {column}")
  split = row.get("split", "").casefold()
  if not split:
    split = ecg_builder.hash_split(row["patient_id"], config.split_salt)
  elif split not in contract.SPLITS:
    raise SkipRecord("missing_metadata",
                     f"split {row['split']!r} is not one of {', '.join(contract.SPLITS)}")
  lead_names = row.get("lead_names", "")
  source = {
      "path": os.path.join(folder, row["path"]),  # an absolute `path` stays as it is
      "sample_rate": _sample_rate(row.get("sample_rate", "")),
      "lead_names": tuple(n.strip() for n in lead_names.split(",")) if lead_names else None,
      "units": row.get("units") or "mV",
      "report": row.get("report", ""),
      "labels": labels,
      "age": age,
      "sex": sex,
  }
  return ecg_builder.RecordTask(record_id=record_id, patient_id=row["patient_id"], split=split,
                                source=tuple(sorted(source.items())))


def _age(text: str) -> int | None:
  """Whole years; None when `text` is not an age (blank is unknown, not an error)."""
  if not text:
    return contract.UNKNOWN
  try:
    years = float(text)
  except ValueError:
    return None
  return int(years) if 0 <= years <= MAX_AGE else None  # NaN fails the comparison too


def _sample_rate(text: str) -> float | None:
  if not text:
    return None
  try:
    rate = float(text)
  except ValueError:
    rate = math.nan
  if not (math.isfinite(rate) and rate > 0):
    raise SkipRecord("missing_metadata", f"sample_rate {text!r} is not a positive number of Hz")
  return rate


def _unknown_labels_message(path, unknown: dict[str, list[int]], vocabulary) -> str:
  listed = ", ".join(f"{name!r} (row{'s' * (len(rows) > 1)} {', '.join(map(str, rows[:3]))}"
                     f"{f' and {len(rows) - 3} more' if len(rows) > 3 else ''})"
                     for name, rows in sorted(unknown.items()))
  wanted = json.dumps(list(vocabulary) + sorted(unknown))
  return (f"{path}: labels not in the config's label_names {json.dumps(list(vocabulary))}: "
          f"{listed}; add them to label_names (--config '{{\"name\": ..., \"label_names\": "
          f"{wanted}}}') or remove them from the manifest")


def _check_patient_splits(path, tasks: list[ecg_builder.RecordTask]) -> None:
  """Explicit splits are the user's: they must still never divide a patient."""
  splits = collections.defaultdict(set)
  for task in tasks:
    splits[task.patient_id].add(task.split)
  divided = sorted(patient for patient, names in splits.items() if len(names) > 1)
  if divided:
    examples = "; ".join(f"{p}: {', '.join(sorted(splits[p]))}" for p in divided[:3])
    raise CorpusError(f"{path}: the split column puts {len(divided)} patient(s) in more than "
                      f"one split ({examples}); give all of a patient's rows one split, or "
                      f"leave it blank for all of them")
