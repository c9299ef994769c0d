"""The ecg_manifest builder: WFDB, CinC .mat and .npy rows of one manifest read back exactly,
bad rows are counted with their reason, and a bad manifest stops the build with one line."""

from __future__ import annotations

import collections
import filecmp
import logging
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
import wfdb

from ecgclip_jax.data import skips
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.signal import SignalSpec
from ecgclip_jax.data.skips import CorpusError
from tfds_builders import ecg_manifest
from tfds_builders.ecg_manifest.example import make_example

FS = 100
SPEC = SignalSpec(sample_rate=FS, duration_s=2.0)
NUM_SAMPLES = 200
VOCAB = ("afib", "lbbb", "rbbb")
SHUFFLED = ["v4", "avl", "i", "v1", "iii", "v6", "avr", "ii", "v2", "avf", "v5", "v3"]
ELEVEN = [name for name in LEAD_NAMES if name != "V3"]
BAD_BYTES = "@@bad-bytes@@"  # replaced by latin-1 bytes in the CSV
EXAMPLE = pathlib.Path(make_example.__file__).parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _signal(rng, seconds: float, leads: int) -> np.ndarray:
  """Fresh random millivolts on the 1 µV grid, which every format here stores exactly."""
  return np.round(rng.normal(0.0, 0.5, (round(FS * seconds), leads)), 3)


def _contract(signal_mv: np.ndarray, lead_names) -> tuple[np.ndarray, np.ndarray]:
  """The expected int16 µV [NUM_SAMPLES, 12] and lead mask, worked out column by column."""
  folded = [name.casefold() for name in LEAD_NAMES]
  ecg, mask = np.zeros((NUM_SAMPLES, 12), np.int16), np.zeros(12, bool)
  for column, name in enumerate(lead_names):
    i = folded.index(name.casefold())
    ecg[:, i] = np.rint(signal_mv[:NUM_SAMPLES, column] * 1000)
    mask[i] = True
  return ecg, mask


def _write_corpus(folder: pathlib.Path):
  """Waveforms of every kind plus a manifest's rows: six good records and thirteen faults.
  Returns (rows, expected examples by record id, expected skipped ids by reason)."""
  rng = np.random.default_rng()
  a, b, c = (_signal(rng, 2.5, 12) for _ in range(3))  # cropped to 2 s
  d, e, f = _signal(rng, 2.0, 12), _signal(rng, 2.0, 11), _signal(rng, 2.0, 12)
  make_example.write_wfdb(folder / "wfdb", "a", a, FS, LEAD_NAMES)
  make_example.write_wfdb(folder / "wfdb", "b", b, FS, LEAD_NAMES)
  make_example.write_cinc_mat(folder / "cinc", "c", c, FS, LEAD_NAMES)
  (folder / "npy").mkdir()
  np.save(folder / "npy/d.npy", d)
  np.save(folder / "npy/e.npy", np.rint(e * 1000).astype(np.int16))  # microvolts
  np.save(folder / "npy/f.npy", f.T.astype(np.float32))  # lead-major
  np.save(folder / "npy/short.npy", _signal(rng, 1.0, 12))
  d_row = {"sample_rate": "100", "lead_names": ",".join(SHUFFLED), "report": "ok"}
  rows = [
      {"path": "wfdb/a.hea", "patient_id": "p1", "report": "Sinus rhythm.", "labels": "afib",
       "age": "63", "sex": "F", "sample_rate": "100", "split": "train"},
      {"path": "wfdb/b", "patient_id": "p2", "report": "Left  bundle\nbranch block.",
       "sex": "male"},
      {"path": "cinc/c.mat", "patient_id": "p3", "report": "AF; LBBB.", "labels": "lbbb;afib",
       "age": "71.9", "sex": "m", "split": "Test"},
      {"path": "npy/d.npy", "patient_id": "p4", **d_row, "report": "RBBB.", "labels": " rbbb ",
       "sex": "0", "split": "validation"},
      {"path": "npy/e.npy", "patient_id": "p1", "report": "Eleven leads.", "sample_rate": "100.0",
       "lead_names": ",".join(ELEVEN), "units": "uV", "age": "abc", "sex": "1", "split": "train"},
      {"path": str(folder / "npy/f.npy"), "record_id": "custom-f", "patient_id": "p5",
       "report": "Stored lead-major.", "sample_rate": "100", "sex": "x"},
      # Faults, each with the reason it must be counted under.
      {"path": "", "patient_id": "p6", "report": "no path"},
      {"path": "npy/d.npy", "record_id": "no-patient", "patient_id": "", **d_row},
      {"path": "npy/d.npy", "record_id": "bad-split", "patient_id": "p7", "split": "val",
       **d_row},
      {"path": "wfdb/a.hea", "patient_id": "p1", "report": "again", "split": "train"},
      {"path": "npy/gone.npy", "patient_id": "p8", "report": "x", "sample_rate": "100"},
      {"path": "wfdb/b.hea", "record_id": "b-500", "patient_id": "p2", "report": "x",
       "sample_rate": "500"},
      {"path": "npy/d.npy", "record_id": "no-rate", "patient_id": "p9", "report": "x"},
      {"path": "npy/d.npy", "record_id": "bad-rate", "patient_id": "p9", "report": "x",
       "sample_rate": "fast"},
      {"path": "x/file.edf", "patient_id": "p10", "report": "x"},
      {"path": "npy/d.npy", "record_id": "bad-units", "patient_id": "p11", **d_row,
       "units": "furlongs"},
      {"path": "npy/short.npy", "patient_id": "p12", "report": "x", "sample_rate": "100"},
      {"path": "npy/d.npy", "record_id": "empty-report", "patient_id": "p13", **d_row,
       "report": " \n "},
      {"path": "npy/d.npy", "record_id": "bad-bytes", "patient_id": "p14", **d_row,
       "report": BAD_BYTES},
  ]
  expected = {
      "wfdb/a": (*_contract(a, LEAD_NAMES), [1, 0, 0], 63, 0, "Sinus rhythm.", "p1", "train"),
      "wfdb/b": (*_contract(b, LEAD_NAMES), [0, 0, 0], -1, 1, "Left bundle branch block.", "p2",
                 None),
      "cinc/c": (*_contract(c, LEAD_NAMES), [1, 1, 0], 71, 1, "AF; LBBB.", "p3", "test"),
      "npy/d": (*_contract(d, SHUFFLED), [0, 0, 1], -1, 0, "RBBB.", "p4", "validation"),
      "npy/e": (*_contract(e, ELEVEN), [0, 0, 0], -1, 1, "Eleven leads.", "p1", "train"),
      "custom-f": (*_contract(f, LEAD_NAMES), [0, 0, 0], -1, -1, "Stored lead-major.", "p5",
                   None),
  }
  skipped = {
      "missing_metadata": ["bad-rate", "bad-split", "no-patient", "no-rate", "row 7"],
      "duplicate_record_id": ["wfdb/a"],
      "missing_file": ["npy/gone"],
      "header_data_mismatch": ["b-500"],
      "unsupported_format": ["bad-units", "x/file.edf"],
      "wrong_duration": ["npy/short"],
      "empty_report": ["empty-report"],
      "undecodable_report": ["bad-bytes"],
  }
  return rows, expected, skipped


def _write_csv(folder: pathlib.Path, rows, name: str = "manifest.csv") -> pathlib.Path:
  path = folder / name
  pd.DataFrame(rows).to_csv(path, index=False)
  path.write_bytes(path.read_bytes().replace(BAD_BYTES.encode(), "café".encode("latin-1")))
  return path


def _builder(data_dir, **fields) -> ecg_manifest.Builder:
  config = ecg_manifest.ManifestConfig(name="test", **{"label_names": VOCAB, "signal": SPEC,
                                                       **fields})
  return ecg_manifest.Builder(config=config, data_dir=str(data_dir), file_format="array_record")


def _build(manual_dir, data_dir, **fields) -> ecg_manifest.Builder:
  builder = _builder(data_dir, **fields)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder) -> dict[str, tuple[str, dict]]:
  return {example["record_id"].decode(): (split, example)
          for split, source in builder.as_data_source().items() for example in source}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("export")
  rows, expected, skipped = _write_corpus(folder)
  _write_csv(folder, rows)
  builder = _build(folder, tmp_path_factory.mktemp("tfds"))
  return folder, rows, expected, skipped, builder


def test_every_format_reads_back_exactly(corpus):
  _, _, expected, _, builder = corpus
  examples = _examples(builder)
  assert set(examples) == set(expected)
  for record_id, (ecg, mask, labels, age, sex, report, patient, split) in expected.items():
    got_split, example = examples[record_id]
    assert example["ecg"].dtype == np.int16 and example["ecg"].shape == (NUM_SAMPLES, 12)
    np.testing.assert_array_equal(example["ecg"], ecg, err_msg=record_id)
    np.testing.assert_array_equal(example["lead_mask"], mask, err_msg=record_id)
    np.testing.assert_array_equal(example["labels"], np.array(labels, bool), err_msg=record_id)
    assert (example["age"], example["sex"]) == (age, sex), record_id
    assert example["report"].decode() == report
    assert example["patient_id"].decode() == patient
    assert split is None or got_split == split, record_id
  assert not examples["npy/e"][1]["lead_mask"][LEAD_NAMES.index("V3")]
  assert not examples["npy/e"][1]["ecg"][:, LEAD_NAMES.index("V3")].any()
  assert builder.info.metadata["label_names"] == list(VOCAB)
  assert builder.info.metadata["sample_rate"] == FS


def test_patients_never_span_splits(corpus):
  splits = collections.defaultdict(set)
  for split, example in _examples(corpus[-1]).values():
    splits[example["patient_id"].decode()].add(split)
  assert all(len(names) == 1 for names in splits.values())


def test_every_planted_fault_is_counted_with_its_reason(corpus):
  _, rows, expected, skipped, builder = corpus
  report = skips.read_report(builder.data_path)
  assert report["skipped_by_reason"] == {reason: len(ids) for reason, ids in skipped.items()}
  assert (report["seen"], report["kept"]) == (len(rows), len(expected))
  assert report["kept"] + report["skipped"] == report["seen"]
  first_ids = collections.defaultdict(list)
  for section in report["splits"].values():
    for reason, r in section["reasons"].items():
      first_ids[reason] += r["first_ids"]
  assert {reason: sorted(ids) for reason, ids in first_ids.items()} == skipped
  assert builder.info.splits.total_num_examples == len(expected)


def test_parquet_manifest_gives_the_same_dataset(corpus, tmp_path):
  folder, rows, _, _, csv_builder = corpus
  frame = pd.DataFrame(rows).replace(BAD_BYTES, "caf\ufffd")
  for column in ("age", "sample_rate"):  # typed as a database would export them: float, NaN
    frame[column] = pd.to_numeric(frame[column], errors="coerce")
  frame.to_parquet(folder / "manifest.parquet")
  try:
    builder = _build(folder, tmp_path, manifest="manifest.parquet")
  finally:
    (folder / "manifest.parquet").unlink()
  got, want = _examples(builder), _examples(csv_builder)
  assert set(got) == set(want)
  for record_id, (split, example) in want.items():
    assert got[record_id][0] == split
    assert set(got[record_id][1]) == set(example)
    for key, value in example.items():
      np.testing.assert_array_equal(got[record_id][1][key], value, err_msg=f"{record_id} {key}")
  counts = lambda b: skips.read_report(b.data_path)["skipped_by_reason"]
  assert counts(builder) == counts(csv_builder)


def test_reader_and_tasks_survive_pickling_for_beam(corpus, tmp_path):
  folder = corpus[0]
  builder = _builder(tmp_path)
  tasks, _ = builder.list_records(folder)
  reader = pickle.loads(pickle.dumps(builder.record_reader()))
  task = pickle.loads(pickle.dumps(next(t for t in tasks if t.record_id == "cinc/c")))
  record = reader(task)
  np.testing.assert_array_equal(record.labels["labels"], [True, True, False])
  assert (record.signal.fs, record.signal.lead_names) == (FS, list(LEAD_NAMES))


def test_hash_split_is_by_patient_and_salted(tmp_path):
  rows = [{"path": f"r{i}.npy", "patient_id": f"patient{i % 400}", "report": "x"}
          for i in range(1200)]
  _write_csv(tmp_path, rows)
  assignments = []
  for salt in ("ecg_manifest", "other"):
    tasks, skipped = _builder(tmp_path / "d", split_salt=salt).list_records(tmp_path)
    assert len(tasks) == 1200 and not skipped
    by_patient = collections.defaultdict(set)
    for task in tasks:
      by_patient[task.patient_id].add(task.split)
    assert all(len(splits) == 1 for splits in by_patient.values())
    share = collections.Counter(splits.pop() for splits in by_patient.values())
    assert 0.74 < share["train"] / 400 < 0.86 and 0.05 < share["test"] / 400 < 0.15
    assert 0.05 < share["validation"] / 400 < 0.15
    assignments.append({task.patient_id: task.split for task in tasks})
  assert assignments[0] != assignments[1]


def test_unreadable_age_and_sex_are_unknown_and_named_in_a_warning(tmp_path, caplog):
  rows = [{"path": "a.npy", "patient_id": "p", "report": "x", "age": age, "sex": sex}
          for age, sex in (("90+", "X"), ("-3", "Female"), ("", "U"), ("44", ""))]
  _write_csv(tmp_path, rows)
  with caplog.at_level(logging.WARNING):
    tasks, _ = _builder(tmp_path / "d").list_records(tmp_path)
  assert [(t.field("age"), t.field("sex")) for t in tasks] == [(-1, -1), (-1, 0), (-1, -1),
                                                               (44, -1)]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("2 age value(s)" in w and "row 1: '90+'" in w and "row 2: '-3'" in w
             for w in warnings), warnings
  assert any("1 sex value(s)" in w and "row 1: 'X'" in w for w in warnings), warnings


def test_csv_encoding_is_a_config_field_and_excel_byte_order_marks_are_read(tmp_path):
  text = "path,patient_id,report\na.npy,p,Befund unauffällig\n"
  (tmp_path / "manifest.csv").write_bytes(text.encode("latin-1"))
  for encoding, report in (("latin-1", "Befund unauffällig"),
                           ("utf-8", "Befund unauff\ufffdllig")):
    tasks, _ = _builder(tmp_path / "d", encoding=encoding).list_records(tmp_path)
    assert tasks[0].field("report") == report
  (tmp_path / "manifest.csv").write_bytes(text.encode("utf-8-sig"))
  tasks, _ = _builder(tmp_path / "d").list_records(tmp_path)
  assert tasks[0].field("path") == str(tmp_path / "a.npy")
  assert tasks[0].field("report") == "Befund unauffällig"


def _corpus_error(folder, **fields) -> str:
  with pytest.raises(CorpusError) as e:
    _builder(folder / "tfds", **fields).list_records(folder)
  return str(e.value)


def test_unknown_labels_stop_the_build_naming_them(tmp_path):
  rows = [{"path": "a.npy", "patient_id": "p", "report": "x", "labels": labels}
          for labels in ("afib;stemi", "lbbb", "STEMI;afib", "stemi")]
  _write_csv(tmp_path, rows)
  message = _corpus_error(tmp_path)
  assert "'STEMI' (row 3)" in message and "'stemi' (rows 1, 4)" in message
  assert "label_names" in message and '["afib", "lbbb", "rbbb", "STEMI", "stemi"]' in message
  assert "'afib'" not in message and "'lbbb'" not in message
  assert "\n" not in message
  assert "label_names" in _corpus_error(tmp_path, label_names=())  # the stock configs


def test_a_patient_in_two_explicit_splits_stops_the_build(tmp_path):
  rows = [{"path": f"{i}.npy", "patient_id": pid, "report": "x", "split": split}
          for i, (pid, split) in enumerate((("p1", "train"), ("p2", "test"), ("p1", "test")))]
  _write_csv(tmp_path, rows)
  message = _corpus_error(tmp_path)
  assert "1 patient(s)" in message and "p1: test, train" in message and "p2" not in message


def test_corpus_errors_name_the_file_and_what_was_expected(tmp_path, monkeypatch):
  assert "no manifest.csv or manifest.parquet" in _corpus_error(tmp_path)
  assert "no such manifest file" in _corpus_error(tmp_path, manifest="export.csv")
  csv_path = tmp_path / "manifest.csv"
  csv_path.write_text("Path,age,Report\na.npy,3,x\n")
  assert _corpus_error(tmp_path) == (f"{csv_path}: missing required column(s) patient_id "
                                     f"(columns found: path, age, report)")
  csv_path.write_text("path,age\na.npy,3\n")
  assert "column(s) patient_id, report" in _corpus_error(tmp_path)
  assert "column(s) patient_id (" in _corpus_error(tmp_path, require_report=False)
  csv_path.write_text("path,patient_id,report\n")
  assert "no rows" in _corpus_error(tmp_path)
  csv_path.write_text("path,patient_id,report\na.npy,p,x\n\nb.npy,p,x,extra,fields\n")
  assert _corpus_error(tmp_path) == f"{csv_path}: line 4 has 5 fields, the header 3"
  csv_path.write_text("")
  assert "empty (expected a header line" in _corpus_error(tmp_path)
  assert "LookupError" in _corpus_error(tmp_path, encoding="no-such-codec")
  parquet_path = tmp_path / "manifest.parquet"
  pd.DataFrame({"path": ["a.npy"], "patient_id": ["p"], "report": ["x"]}).to_parquet(parquet_path)
  assert "both manifest.csv and manifest.parquet" in _corpus_error(tmp_path)
  csv_path.unlink()
  assert len(_builder(tmp_path / "d").list_records(tmp_path)[0]) == 1
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if pyarrow were not installed
  assert "pip install pyarrow" in _corpus_error(tmp_path)
  monkeypatch.undo()
  parquet_path.write_text("not parquet")
  assert "not a readable Parquet manifest" in _corpus_error(tmp_path)


def test_label_names_must_be_usable():
  for bad in (("afib", "afib"), ("a;b",), ("",), (" afib",)):
    with pytest.raises(ValueError, match="label_names"):
      ecg_manifest.ManifestConfig(name="x", label_names=bad)


def test_stock_configs():
  configs = ecg_manifest.Builder.builder_configs
  assert {name: (c.signal.sample_rate, c.label_names) for name, c in configs.items()} == {
      "500hz": (500, ()), "100hz": (100, ())}


def test_example_is_what_make_example_writes(tmp_path):
  make_example.main(tmp_path)
  written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
  shipped = sorted(p.relative_to(EXAMPLE) for p in EXAMPLE.rglob("*")
                   if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts)
  assert written == shipped
  for p in written:
    if p.suffix == ".npy":  # float arrays: the last bit follows the numpy/scipy release
      mine, theirs = np.load(tmp_path / p), np.load(EXAMPLE / p)
      assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, p
      np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6, err_msg=str(p))
    else:
      assert filecmp.cmp(tmp_path / p, EXAMPLE / p, shallow=False), p
  assert sum((EXAMPLE / p).stat().st_size for p in shipped) < 300_000


def test_cli_builds_the_example_with_a_json_config(tmp_path):
  config = ('{"name": "example", "label_names": ["sinus_rhythm", "afib", "lbbb"], '
            '"signal": {"sample_rate": 100}}')
  result = subprocess.run(
      [sys.executable, "-m", "tfds_builders.ecg_manifest", "--config", config, "--manual_dir",
       str(EXAMPLE), "--data_dir", str(tmp_path)], capture_output=True, text=True, env=ENV,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "6 records seen: 5 kept, 1 skipped" in result.stdout
  sources = tfds.data_source("ecg_manifest/example", data_dir=str(tmp_path))
  info = tfds.builder("ecg_manifest/example", data_dir=str(tmp_path)).info
  assert info.metadata["label_names"] == list(make_example.LABEL_NAMES)
  assert info.metadata["sample_rate"] == 100
  examples = {e["record_id"].decode(): e for source in sources.values() for e in source}
  assert sorted(examples) == ["cinc/ecg003", "npy/ecg004", "npy/ecg005", "wfdb/ecg001",
                              "wfdb/ecg002"]
  stored = np.load(EXAMPLE / "npy/ecg004.npy")  # µV, leads V6 ... I
  np.testing.assert_array_equal(examples["npy/ecg004"]["ecg"], stored[:, ::-1])
  np.testing.assert_array_equal(examples["npy/ecg004"]["labels"], [True, False, True])
  eight = examples["npy/ecg005"]["lead_mask"]
  assert [name for name, kept in zip(LEAD_NAMES, eight) if kept] == list(make_example.EIGHT_LEADS)
  report = skips.read_report(tmp_path / "ecg_manifest/example/1.1.0")
  assert report["skipped_by_reason"] == {"empty_report": 1}


def test_cli_stops_a_bad_manifest_with_one_line(tmp_path):
  (tmp_path / "manifest.csv").write_text("path,report\na.npy,x\n")
  result = subprocess.run(
      [sys.executable, "-m", "tfds_builders.ecg_manifest", "--config", "100hz", "--manual_dir",
       str(tmp_path), "--data_dir", str(tmp_path / "out")], capture_output=True, text=True,
      env=ENV, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {tmp_path / 'manifest.csv'}: missing required column(s) patient_id "
      f"(columns found: path, report)")


def test_real_ptbxl_and_cinc_records(tmp_path):
  """Absolute paths into the shared corpora, read back against wfdb's own reading."""
  shared = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"
  records = {"ptbxl": str(shared / "ptbxl" / "records500" / "00000" / "00001_hr"),
             "cinc": str(shared / "cinc2021" / "E07500.mat")}
  if not all(os.path.exists(p.removesuffix(".mat") + ".hea") for p in records.values()):
    pytest.skip("shared PTB-XL / CinC 2021 data not present")
  rows = [{"path": path, "record_id": name, "patient_id": name, "report": "x"}
          for name, path in records.items()]
  _write_csv(tmp_path, rows)
  builder = _build(tmp_path, tmp_path / "tfds", signal=SignalSpec(sample_rate=500))
  examples = _examples(builder)
  for name, path in records.items():
    record = wfdb.rdrecord(path.removesuffix(".mat"))
    order = [[n.casefold() for n in record.sig_name].index(lead.casefold()) for lead in LEAD_NAMES]
    want = np.rint(record.p_signal[:5000, order] * 1000).astype(np.int16)
    np.testing.assert_array_equal(examples[name][1]["ecg"], want, err_msg=name)
