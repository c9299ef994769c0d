"""Task-set files and generic task files: parsing, bad rows with line numbers, thresholds,
joining to a dataset split."""

import glob
import json
import os

import numpy as np
import pytest

from ecgclip_jax.evaluators import tasks

TASK_SET_FILES = sorted(glob.glob(os.path.join(tasks.TASKS_DIR, "*.json")))


def test_the_expected_task_sets_exist():
  assert set(tasks.available_task_sets()) >= {
      "ptbxl_all", "ptbxl_diagnostic", "ptbxl_superdiagnostic", "ptbxl_subdiagnostic",
      "ptbxl_form", "ptbxl_rhythm", "cinc_cpsc2018", "cinc_chapman_shaoxing", "synthetic",
      "hospital_example"}


@pytest.mark.parametrize("path", TASK_SET_FILES, ids=os.path.basename)
def test_every_task_set_loads_and_its_task_file_resolves(path):
  task_set = tasks.load_task_set(path)
  assert task_set.name == os.path.basename(path)[:-len(".json")]
  assert set(task_set.splits) == {"train", "validation", "test"}
  if task_set.task_file:
    assert os.path.isfile(task_set.task_file)
    table = tasks.load_task_file(task_set.task_file, task_set.task_spec)
    assert table.problems == [] and len(table.record_ids)


def test_task_sets_match_their_builders():
  from tfds_builders.physionet_challenge import physionet_challenge_dataset_builder as cinc
  from tfds_builders.ptbxl import ptbxl_dataset_builder as ptbxl
  for name in ("ptbxl_all", "ptbxl_diagnostic", "ptbxl_superdiagnostic", "ptbxl_subdiagnostic",
               "ptbxl_form", "ptbxl_rhythm"):
    assert tasks.resolve_task_set(name).label_feature in ptbxl.LABEL_SETS
  assert len(ptbxl.LABEL_SETS[tasks.resolve_task_set("ptbxl_all").label_feature]) == 71
  for name in ("cinc_cpsc2018", "cinc_chapman_shaoxing"):
    assert tasks.resolve_task_set(name).label_feature in cinc.LABEL_SETS
  assert tasks.resolve_task_set("synthetic").num_patients == 1600


def test_hospital_example_reads_binary_and_continuous_tasks():
  task_set = tasks.resolve_task_set("hospital_example")
  table = tasks.load_task_file(task_set.task_file, task_set.task_spec)
  assert table.task_names == ["incident_af_1y", "reduced_ef", "hyperkalemia"]
  assert list(table.record_ids[:2]) == ["wfdb/ecg001", "wfdb/ecg002"]
  # ecg002: AF yes, LVEF 35 < 40, potassium blank; ecg005: AF blank, LVEF 45, K 6.1 > 5.5.
  np.testing.assert_array_equal(table.labels[1], [True, True, False])
  np.testing.assert_array_equal(table.known[1], [True, True, False])
  np.testing.assert_array_equal(table.labels[4], [False, False, True])
  np.testing.assert_array_equal(table.known[4], [False, True, True])


def _write(tmp_path, text, name="tasks.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_bad_rows_are_reported_with_line_numbers(tmp_path):
  path = _write(tmp_path, "\n".join([
      "Record_ID,patient_id,afib,lbbb",  # 1 (header names in any case)
      "r1,p1,1,no",                       # 2
      ",p2,1,0",                          # 3 no record id
      "r1,p1,0,0",                        # 4 duplicate
      "r3,p3,maybe,YES",                  # 5 unreadable afib: unknown, lbbb kept
      "r4,p4,1",                          # 6 too few fields
      "",                                 # 7 blank: ignored
      "r5,p5,,Neg",                       # 8 blank afib: unknown, no problem
  ]) + "\n")
  table = tasks.load_task_file(path, None)
  assert table.task_names == ["afib", "lbbb"]
  assert list(table.record_ids) == ["r1", "r3", "r5"]
  assert list(table.patient_ids) == ["p1", "p3", "p5"]
  np.testing.assert_array_equal(table.labels, [[True, False], [False, True], [False, False]])
  np.testing.assert_array_equal(table.known, [[True, True], [False, True], [False, True]])
  assert [line for line, _ in table.problems] == [3, 4, 5, 6]
  assert "no record_id" in table.problems[0][1]
  assert "repeats line 2" in table.problems[1][1]
  assert "'maybe'" in table.problems[2][1] and "afib" in table.problems[2][1]
  assert "3 fields" in table.problems[3][1]


@pytest.mark.parametrize("direction,positives", [
    ("<", [True, False, False]), ("<=", [True, True, False]),
    (">", [False, False, True]), (">=", [False, True, True])])
def test_continuous_thresholds_in_each_direction(tmp_path, direction, positives):
  path = _write(tmp_path, "record_id,lvef\na,35\nb,40\nc,55.5\nd,\ne,abc\n")
  spec = {"low_ef": {"column": "LVEF", "type": "continuous", "threshold": 40,
                     "direction": direction}}
  table = tasks.load_task_file(path, spec)
  assert table.patient_ids is None
  np.testing.assert_array_equal(table.labels[:3, 0], positives)
  np.testing.assert_array_equal(table.known[:, 0], [True, True, True, False, False])
  assert table.problems == [(6, "column 'LVEF' (task low_ef): 'abc' is not a number; "
                                "unknown for that task")]


def test_missing_columns_are_one_line_errors(tmp_path):
  path = _write(tmp_path, "id,afib\nr1,1\n")
  with pytest.raises(ValueError, match="no record_id column"):
    tasks.load_task_file(path, None)
  path = _write(tmp_path, "record_id,afib\nr1,1\n")
  with pytest.raises(ValueError, match="reads column 'lvef', which the file does not have"):
    tasks.load_task_file(path, {"ef": {"column": "lvef", "type": "binary"}})
  with pytest.raises(ValueError, match="needs \"direction\""):
    tasks.load_task_file(path, {"ef": {"column": "afib", "type": "continuous", "threshold": 1}})


def test_join_keeps_records_in_both_and_counts_unmatched_rows(tmp_path, capsys):
  path = _write(tmp_path, "record_id,afib\nr1,1\nr2,0\nr9,1\nr3,\n")
  table = tasks.load_task_file(path, None)
  indices, labels, known = tasks.join_task_table(table, [b"r3", "r0", "r1", "r2"], split="test")
  np.testing.assert_array_equal(indices, [0, 2, 3])
  np.testing.assert_array_equal(labels[:, 0], [False, True, False])
  np.testing.assert_array_equal(known[:, 0], [False, True, True])
  assert "3 of 4 records of test have task rows; 1 of 4 task rows match no record" in (
      capsys.readouterr().out)


def _task_set(tmp_path, **fields):
  path = tmp_path / "set.json"
  path.write_text(json.dumps({"name": "x", "dataset": "ptbxl", "builder_config": "100hz",
                              **fields}))
  return str(path)


def test_task_set_defaults_selection_and_relative_task_file(tmp_path):
  _write(tmp_path, "record_id,afib\nr1,1\n", name="mine.csv")
  task_set = tasks.load_task_set(_task_set(tmp_path, task_file="mine.csv",
                                           tasks=["afib"], splits={"test": "validation"}))
  assert task_set.task_file == str(tmp_path / "mine.csv")
  assert task_set.splits == {"train": "train", "validation": "validation", "test": "validation"}
  assert task_set.select(["lbbb", "afib"]) == ([1], ["afib"])
  with pytest.raises(ValueError, match=r"tasks \['afib'\] are not among"):
    task_set.select(["lbbb"])
  everything = tasks.load_task_set(_task_set(tmp_path))
  assert everything.select(["a", "b"]) == ([0, 1], ["a", "b"])
  assert (everything.label_feature, everything.min_positives) == ("labels", 1)


@pytest.mark.parametrize("fields,message", [
    ({"label_set": "labels"}, r"unknown keys \['label_set'\]"),
    ({"min_positives": 0}, "min_positives must be >= 1"),
    ({"tasks": []}, "tasks must be null or a non-empty list"),
    ({"splits": {"dev": "validation"}}, "splits maps"),
    ({"task_file": "absent.csv"}, "task file not found: absent.csv"),
    ({"task_spec": {"a": {"column": "a"}}}, "none is set"),
    ({"num_patients": "many"}, "num_patients must be int"),
])
def test_bad_task_sets_are_one_line_errors(tmp_path, fields, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    tasks.load_task_set(_task_set(tmp_path, **fields))


def test_unknown_task_set_name_lists_the_known_ones():
  with pytest.raises(FileNotFoundError, match="task set not found: nope .*ptbxl_all"):
    tasks.resolve_task_set("nope")


def test_task_set_by_name_or_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a path relative to the project checkout still resolves
  by_name = tasks.resolve_task_set("ptbxl_form")
  assert tasks.resolve_task_set("configs/tasks/ptbxl_form.json") == by_name
  assert by_name.label_feature == "labels_form"
