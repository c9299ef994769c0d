"""Task sets read from published split files, such as MERL's linear-probe splits
(configs/tasks/merl_splits/): each role's records and labels come from one CSV, so numbers
computed on them stand beside the paper's.

A split file names its records by an id column; they are looked up in every split of the
build, because a builder's own split (a hash of the record id, or PTB-XL's folds) need not be
the paper's. A record the file names that the build does not have is counted and reported
(`SplitMatch.missing`), never dropped silently: a build from a partial download, or one that
skipped a record as unreadable, gives numbers on fewer test records than the paper's.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import posixpath

import numpy as np
from etils import epath

from ecgclip_jax.data import contract
from ecgclip_jax.evaluators import tasks

# The file of each role in a split folder: <anything>_train.csv, _val.csv, _test.csv.
ROLE_SUFFIXES = {"train": "_train.csv", "validation": "_val.csv", "test": "_test.csv"}
MISSING_EXAMPLES = 5  # missing record ids listed in the report


def record_key(value: str) -> str:
  """A split file's record id as the builders write it: the file name without folder or
  extension (MERL's Chapman file names `/chapman/WFDBRecords/18/186/JS18048.mat`: JS18048);
  a plain id (PTB-XL's ecg_id, ICBEB's A0001) stays as it is."""
  return posixpath.splitext(posixpath.basename(value.strip()))[0]


def split_file(folder: str, role: str) -> epath.Path:
  """The one CSV of `role` in `folder`; a missing or ambiguous one is a one-line error."""
  suffix = ROLE_SUFFIXES[role]
  found = sorted(p for p in epath.Path(folder).iterdir() if p.name.endswith(suffix))
  if len(found) != 1:
    raise ValueError(f"split folder {folder}: expected one *{suffix} file for the {role} "
                     f"split, found {[p.name for p in found] or 'none'}")
  return found[0]


def label_columns(path: epath.Path, first_label_column: str) -> list[str]:
  """A split file's tasks: its columns from `first_label_column` to the last."""
  header = path.read_text(encoding="utf-8-sig").split("\n", 1)[0].rstrip("\r").split(",")
  header = [name.strip() for name in header]
  if first_label_column not in header:
    raise ValueError(f"split file {path}: no column {first_label_column!r} (columns: {header})")
  return header[header.index(first_label_column):]


def load_split(path: epath.Path, id_column: str, names: list[str]) -> tasks.TaskTable:
  """One split file: its ids (as `record_key`s) and the binary tasks `names`."""
  table = tasks.load_task_file(str(path), {name: {"column": name} for name in names},
                               id_column=id_column)
  table.record_ids = np.array([record_key(r) for r in table.record_ids], dtype=str)
  return table


class Records(collections.abc.Sequence):
  """Records drawn from several sources: item i is `sources[picks[i][0]][picks[i][1]]`."""

  def __init__(self, sources: list, picks: list[tuple[int, int]]):
    self.sources, self.picks = sources, picks

  def __len__(self) -> int:
    return len(self.picks)

  def __getitem__(self, i):
    source, index = self.picks[i]
    return self.sources[source][index]


@dataclasses.dataclass
class SplitMatch:
  """One role's split file matched to the build."""
  file: str
  records: Records  # the build's records the file names, in file order
  labels: np.ndarray  # [N, T] bool
  known: np.ndarray  # [N, T] bool
  rows: int  # rows read from the file (rows with problems left out)
  missing: list[str]  # ids the file names that the build lacks
  problems: list[tuple[int, str]]  # the file's unreadable rows and cells

  def counts(self) -> dict:
    return {"file": self.file, "rows": self.rows, "found": len(self.records),
            "missing": len(self.missing), "missing_examples": self.missing[:MISSING_EXAMPLES],
            "problems": len(self.problems)}

  def describe(self, role: str, dataset: str) -> str:
    line = (f"{role}: {len(self.records)} of {self.rows} records of "
            f"{posixpath.basename(self.file)} found in {dataset}")
    if self.missing:
      examples = ", ".join(self.missing[:MISSING_EXAMPLES])
      line += f"; {len(self.missing)} missing (e.g. {examples})"
    return line


def build_index(sources: list) -> dict[str, tuple[int, int]]:
  """record id -> (source, index) over every record of every source (one read of each)."""
  index = {}
  for s, source in enumerate(sources):
    for i in range(len(source)):
      index.setdefault(contract.text(source[i]["record_id"]), (s, i))
  return index


def match_splits(split_files: dict[str, str], sources: list) -> dict[str, SplitMatch]:
  """Each role's split file matched against the records of `sources` (the build's splits)."""
  index, names = build_index(sources), task_names(split_files)
  matches = {}
  for role in ROLE_SUFFIXES:
    path = split_file(split_files["folder"], role)
    table = load_split(path, split_files["id_column"], names)
    found = [i for i, record_id in enumerate(table.record_ids) if record_id in index]
    matches[role] = SplitMatch(
        file=str(path), records=Records(sources, [index[table.record_ids[i]] for i in found]),
        labels=table.labels[found], known=table.known[found], rows=len(table.record_ids),
        missing=[r for r in table.record_ids if r not in index], problems=table.problems)
  return matches


def task_names(split_files: dict[str, str]) -> list[str]:
  """The tasks of a split folder: its training file's label columns (every role's file must
  have them)."""
  return label_columns(split_file(split_files["folder"], "train"),
                       split_files["first_label_column"])


def first_samples(record: dict, n: int) -> dict:
  """The record with every sample after the first `n` set to zero: MERL's ICBEB protocol
  reads the first 2500 samples (5 s at 500 Hz) zero-padded to 5000."""
  ecg = np.array(record["ecg"])
  ecg[n:] = 0
  return {**record, "ecg": ecg}
