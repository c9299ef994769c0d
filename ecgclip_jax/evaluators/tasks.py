"""Downstream task sets: which dataset, which labels, which splits a probe is scored on; and
generic task files, a hospital's own outcomes (a CSV keyed by record id) joined to its ECGs.

A task set is a JSON file in configs/tasks/ (see README, "Downstream tasks"), named by its
file name or given as a path. Labels come from a label feature of the dataset
(`label_feature`, e.g. PTB-XL's `labels_superdiagnostic`) or, with `task_file`, from a CSV
whose columns become binary tasks, directly or by thresholding a measurement.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import operator
import os

import numpy as np
from etils import epath

from ecgclip_jax import paths, storage
from ecgclip_jax.data import contract

TASKS_DIR = os.path.join(paths.PROJECT_ROOT, "configs", "tasks")
SPLIT_ROLES = ("train", "validation", "test")

TRUE_VALUES = frozenset({"1", "1.0", "true", "yes", "pos", "positive"})
FALSE_VALUES = frozenset({"0", "0.0", "false", "no", "neg", "negative"})
UNKNOWN_VALUES = frozenset({"", "na", "n/a", "nan"})
DIRECTIONS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


@dataclasses.dataclass(frozen=True)
class TaskSet:
  """One task-set file, paths resolved. `tasks` None: every label of `label_feature`
  (or every task of `task_file`)."""
  name: str
  dataset: str
  builder_config: str
  description: str = ""
  label_feature: str = "labels"
  tasks: tuple[str, ...] | None = None
  splits: dict[str, str] = dataclasses.field(
      default_factory=lambda: {role: role for role in SPLIT_ROLES})
  min_positives: int = 1
  num_patients: int = 0  # synthetic corpus size; 0: the builder config's default
  corpus_seed: int = 0  # synthetic corpus draw
  task_file: str | None = None  # absolute path
  task_spec: dict[str, dict] | None = None
  # Published split files (see split_files.py): {"folder", "id_column", "first_label_column"},
  # the folder absolute; the records and labels of each role come from its CSVs.
  split_files: dict[str, str] | None = None
  crop_samples: int = 0  # >0: only the first N samples are kept, the rest zeroed (MERL ICBEB)
  path: str = ""  # the JSON file this came from

  def select(self, names: list[str]) -> tuple[list[int], list[str]]:
    """Columns and names of this set's tasks among a label feature's (or task file's) names."""
    if self.tasks is None:
      return list(range(len(names))), list(names)
    missing = [t for t in self.tasks if t not in names]
    if missing:
      raise ValueError(f"task set {self.name}: tasks {missing} are not among the "
                       f"{len(names)} labels available: {names}")
    return [names.index(t) for t in self.tasks], list(self.tasks)


def check_task_spec(spec: dict | None, where: str) -> None:
  """Raises a one-line ValueError for a malformed task spec ({task: {column, type, ...}})."""
  if spec is None:
    return
  if not isinstance(spec, dict):
    raise ValueError(f"{where}: task_spec must be an object {{task: {{column, type}}}}")
  for task, entry in spec.items():
    if not isinstance(entry, dict) or not isinstance(entry.get("column"), str):
      raise ValueError(f"{where}: task {task!r} needs a \"column\" name")
    kind = entry.get("type", "binary")
    allowed = {"binary": {"column", "type"},
               "continuous": {"column", "type", "threshold", "direction"}}.get(kind)
    if allowed is None:
      raise ValueError(f"{where}: task {task!r} has type {kind!r}; use binary or continuous")
    unknown = sorted(set(entry) - allowed)
    if unknown:
      raise ValueError(f"{where}: task {task!r} ({kind}) has unknown keys {unknown}")
    if kind == "continuous":
      threshold = entry.get("threshold")
      if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ValueError(f"{where}: continuous task {task!r} needs a numeric \"threshold\"")
      if entry.get("direction") not in DIRECTIONS:
        raise ValueError(f"{where}: continuous task {task!r} needs \"direction\" one of "
                         f"{list(DIRECTIONS)} (positive when value <direction> threshold)")


def _check_type(where: str, key: str, value, kinds, allow_none=False):
  if (value is None and allow_none) or (isinstance(value, kinds) and not isinstance(value, bool)):
    return value
  expected = " or ".join(k.__name__ for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
  raise ValueError(f"{where}: {key} must be {expected}{' or null' if allow_none else ''}, "
                   f"got {value!r}")


def load_task_set(path: str) -> TaskSet:
  """Reads and checks a task-set JSON file; relative paths in it resolve against its folder,
  then the project checkout."""
  path = storage.absolute(path)
  try:
    raw = json.loads(epath.Path(path).read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"task set {path}: not valid JSON ({e})") from None
  where = f"task set {path}"
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: must be a JSON object")
  fields = {f.name for f in dataclasses.fields(TaskSet)} - {"path"}
  unknown = sorted(set(raw) - fields)
  if unknown:
    raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
  missing = [k for k in ("name", "dataset", "builder_config") if not raw.get(k)]
  if missing:
    raise ValueError(f"{where}: missing {missing}")
  for key in ("name", "dataset", "builder_config", "description", "label_feature"):
    _check_type(where, key, raw.get(key, ""), str)
  tasks = _check_type(where, "tasks", raw.get("tasks"), list, allow_none=True)
  if tasks is not None and (not tasks or len(set(tasks)) != len(tasks)
                            or not all(isinstance(t, str) for t in tasks)):
    raise ValueError(f"{where}: tasks must be null or a non-empty list of distinct names")
  splits = _check_type(where, "splits", raw.get("splits", {}), dict)
  if set(splits) - set(SPLIT_ROLES) or not all(isinstance(v, str) for v in splits.values()):
    raise ValueError(f"{where}: splits maps {list(SPLIT_ROLES)} to split names, got {splits}")
  min_positives = _check_type(where, "min_positives", raw.get("min_positives", 1), int)
  num_patients = _check_type(where, "num_patients", raw.get("num_patients", 0), int)
  corpus_seed = _check_type(where, "corpus_seed", raw.get("corpus_seed", 0), int)
  if min_positives < 1 or num_patients < 0 or corpus_seed < 0:
    raise ValueError(f"{where}: min_positives must be >= 1, num_patients and corpus_seed >= 0")
  task_file = _check_type(where, "task_file", raw.get("task_file"), str, allow_none=True)
  spec = raw.get("task_spec")
  check_task_spec(spec, where)
  if spec and not task_file:
    raise ValueError(f"{where}: task_spec describes the columns of a task_file; none is set")
  if task_file:
    task_file = paths.resolve_file(task_file, os.path.dirname(path), "task file")
  split_files = _check_split_files(where, raw.get("split_files"), os.path.dirname(path))
  if split_files and task_file:
    raise ValueError(f"{where}: give task_file or split_files, not both")
  crop_samples = _check_type(where, "crop_samples", raw.get("crop_samples", 0), int)
  if crop_samples < 0:
    raise ValueError(f"{where}: crop_samples must be >= 0 (0: the whole record)")
  return TaskSet(
      name=raw["name"], dataset=raw["dataset"], builder_config=raw["builder_config"],
      description=raw.get("description", ""), label_feature=raw.get("label_feature", "labels"),
      tasks=tuple(tasks) if tasks else None,
      splits={role: splits.get(role, role) for role in SPLIT_ROLES},
      min_positives=min_positives, num_patients=num_patients, corpus_seed=corpus_seed,
      task_file=task_file,
      task_spec=spec or None, split_files=split_files, crop_samples=crop_samples, path=path)


SPLIT_FILE_KEYS = ("folder", "id_column", "first_label_column")


def _check_split_files(where: str, value, folder: str) -> dict[str, str] | None:
  """The split_files entry with its folder resolved like a task file (the task set's folder,
  then the checkout)."""
  if value is None:
    return None
  if (not isinstance(value, dict) or set(value) != set(SPLIT_FILE_KEYS)
      or not all(isinstance(v, str) and v for v in value.values())):
    raise ValueError(f"{where}: split_files must be {{{', '.join(SPLIT_FILE_KEYS)}}}, each a "
                     f"non-empty string, got {value!r}")
  return {**value, "folder": paths.resolve_folder(value["folder"], folder, "split folder")}


def available_task_sets() -> list[str]:
  return sorted(f[:-len(".json")] for f in os.listdir(TASKS_DIR) if f.endswith(".json"))


def resolve_task_set(name_or_path: str) -> TaskSet:
  """A bare name is configs/tasks/<name>.json; anything else a path to a task-set file,
  looked up in the current directory, then in the project checkout."""
  candidates = [name_or_path]
  if not storage.is_remote(name_or_path):
    candidates.append(os.path.join(paths.PROJECT_ROOT, name_or_path))
    if os.sep not in name_or_path and not name_or_path.endswith(".json"):
      candidates.insert(0, os.path.join(TASKS_DIR, f"{name_or_path}.json"))
  for candidate in candidates:
    if epath.Path(candidate).is_file():
      return load_task_set(candidate)
  raise FileNotFoundError(f"task set not found: {name_or_path} (a JSON file, or one of "
                          f"{', '.join(available_task_sets())})")


@dataclasses.dataclass
class TaskTable:
  """Tasks read from a task file: one row per record kept, one column per task."""
  record_ids: np.ndarray  # [N] str
  task_names: list[str]
  labels: np.ndarray  # [N, T] bool
  known: np.ndarray  # [N, T] bool; False: blank or unreadable, the record is out of that task
  patient_ids: np.ndarray | None  # [N] str, when the file has a patient_id column
  problems: list[tuple[int, str]]  # (line number, what is wrong), header = line 1
  path: str = ""


def _cell(raw: str, entry: dict) -> bool | None:
  """One cell as positive / negative / unknown (None); ValueError when it cannot be read."""
  value = raw.strip().lower()
  if value in UNKNOWN_VALUES:
    return None
  if entry.get("type", "binary") == "binary":
    if value in TRUE_VALUES:
      return True
    if value in FALSE_VALUES:
      return False
    raise ValueError(f"{raw!r} is not a binary value (1/0, true/false, yes/no, pos/neg)")
  try:
    number = float(value)
  except ValueError:
    raise ValueError(f"{raw!r} is not a number") from None
  return bool(DIRECTIONS[entry["direction"]](number, entry["threshold"]))


def load_task_file(path: str, spec: dict | None = None, *,
                   id_column: str = "record_id") -> TaskTable:
  """Reads a task CSV: `record_id` (or `id_column`), optional `patient_id`, one column per
  task (names in any case). `spec` maps task -> {"column", "type": "binary"} or {"column", "type":
  "continuous", "threshold", "direction": "<" | "<=" | ">" | ">="}; None or empty: every
  other column is a binary task of its own name.

  Blank (or NA / N/A / nan) cells are unknown. A row without record_id, a repeated
  record_id (the first row is kept) or a row with the wrong number of fields is left out; a
  cell that cannot be read is unknown for that task only, the rest of its row is kept; each
  is listed in `problems` with its line number. A missing column is a ValueError.
  """
  check_task_spec(spec, f"task file {path}")
  with io.StringIO(epath.Path(path).read_text(encoding="utf-8-sig"), newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header:
      raise ValueError(f"task file {path} is empty (expected a header with record_id)")
    columns = {}
    for i, name in enumerate(header):
      key = name.strip().lower()
      if key in columns:
        raise ValueError(f"task file {path}: column {name.strip()!r} appears twice")
      columns[key] = i
    id_column = id_column.lower()
    if id_column not in columns:
      raise ValueError(f"task file {path} has no {id_column} column (columns: {header})")
    if not spec:
      spec = {name.strip(): {"column": name.strip(), "type": "binary"} for name in header
              if name.strip().lower() not in (id_column, "patient_id")}
      if not spec:
        raise ValueError(f"task file {path} has no task columns besides record_id/patient_id")
    for task, entry in spec.items():
      if entry["column"].lower() not in columns:
        raise ValueError(f"task file {path}: task {task!r} reads column {entry['column']!r}, "
                         f"which the file does not have (columns: {header})")
    task_columns = [columns[entry["column"].lower()] for entry in spec.values()]
    id_column, patient_column = columns[id_column], columns.get("patient_id")

    ids, patients, labels, known, problems, first_line = [], [], [], [], [], {}
    for row in reader:
      line = reader.line_num
      if not any(cell.strip() for cell in row):
        continue
      if len(row) != len(header):
        problems.append((line, f"{len(row)} fields where the header has {len(header)}; "
                               "row left out"))
        continue
      record_id = row[id_column].strip()
      if not record_id:
        problems.append((line, "no record_id; row left out"))
        continue
      if record_id in first_line:
        problems.append((line, f"record_id {record_id} repeats line {first_line[record_id]}; "
                               "row left out"))
        continue
      first_line[record_id] = line
      values = []
      for task, entry, column in zip(spec, spec.values(), task_columns):
        try:
          values.append(_cell(row[column], entry))
        except ValueError as e:
          problems.append((line, f"column {entry['column']!r} (task {task}): {e}; "
                                 "unknown for that task"))
          values.append(None)
      ids.append(record_id)
      patients.append(row[patient_column].strip() if patient_column is not None else "")
      labels.append([v is True for v in values])
      known.append([v is not None for v in values])
  shape = (len(ids), len(spec))
  return TaskTable(
      record_ids=np.array(ids, dtype=str), task_names=list(spec),
      labels=np.array(labels, bool).reshape(shape), known=np.array(known, bool).reshape(shape),
      patient_ids=np.array(patients, dtype=str) if patient_column is not None else None,
      problems=problems, path=path)


def join_task_table(table: TaskTable, dataset_record_ids, *,
                    split: str = "the dataset split") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The records in both the task file and a dataset split: (indices into the split, their
  labels [M, T], known [M, T]), in split order. Prints one line counting the task-file rows
  that match no record of this split (records of other splits among them)."""
  row_of = {record_id: i for i, record_id in enumerate(table.record_ids)}
  indices, rows = [], []
  for index, record_id in enumerate(dataset_record_ids):
    row = row_of.get(contract.text(record_id))
    if row is not None:
      indices.append(index)
      rows.append(row)
  rows = np.array(rows, np.int64)
  unmatched = len(table.record_ids) - len(np.unique(rows))
  print(f"task file {table.path or '(table)'}: {len(rows)} of {len(dataset_record_ids)} records "
        f"of {split} have task rows; {unmatched} of {len(table.record_ids)} task rows match "
        f"no record of {split}", flush=True)
  return np.array(indices, np.int64), table.labels[rows], table.known[rows]
