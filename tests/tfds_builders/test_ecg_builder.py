"""The EcgBuilder base, through a toy builder over WFDB files written here with planted faults:
every record seen is kept or skipped with its reason, the local and Beam builds agree, and
what is written equals the WFDB samples resampled and reordered independently (scipy)."""

import gc
import hashlib
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import types

from array_record.python.array_record_module import ArrayRecordReader
import numpy as np
import pytest
import scipy.signal
import tensorflow_datasets as tfds
import wfdb

from ecgclip_jax.data import contract, readers, skips, synthetic
from ecgclip_jax.data import signal as signal_lib
from ecgclip_jax.data.leads import LEAD_NAMES
from tfds_builders import build_cli, ecg_builder

REPO = pathlib.Path(__file__).parents[2]
FILE_FS = 250  # written at 250 Hz, built at 100 Hz: resample by 2/5
SPEC = signal_lib.SignalSpec(sample_rate=100, duration_s=2.0)
LABELS = ["NORM", "MI", "STTC"]
PTBXL_SPELLING = {"aVR": "AVR", "aVL": "AVL", "aVF": "AVF"}


# -------------------------------------------------------------------------------- toy builder


FREEZE_COUNTS = []  # gc.get_freeze_count() as each record a build in this process reads


def read_toy(task: ecg_builder.RecordTask) -> ecg_builder.RawRecord:
  FREEZE_COUNTS.append(gc.get_freeze_count())
  if task.field("explode"):
    raise RuntimeError("the reader met something it did not expect")
  report = task.field("report", "")
  if task.field("report_hex"):
    report = bytes.fromhex(task.field("report_hex"))
  return ecg_builder.RawRecord(
      signal=readers.read_wfdb(task.field("path")), report=report,
      labels={"labels": ecg_builder.multi_hot(task.field("labels", ()), LABELS)},
      age=task.field("age"), sex=task.field("sex", contract.UNKNOWN))


class EcgBaseToyCorpus(ecg_builder.EcgBuilder):
  """A toy ECG corpus (WFDB files and an index.json) for the EcgBuilder tests."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Write the toy corpus with write_corpus()."
  BUILDER_CONFIGS = [
      ecg_builder.EcgConfig(name="100hz", signal=SPEC),
      ecg_builder.EcgConfig(name="100hz_any_report", signal=SPEC, require_report=False),
  ]

  def label_sets(self):
    return {"labels": LABELS}

  def list_records(self, manual_dir):
    tasks, index_skips = [], []
    for row in json.loads((manual_dir / "index.json").read_text()):
      if not row.get("patient_id"):
        index_skips.append((row["record_id"], "missing_metadata", "no patient id"))
        continue
      source = {k: tuple(v) if isinstance(v, list) else v for k, v in row.items()
                if k not in ("record_id", "patient_id", "split")}
      source["path"] = str(manual_dir / row["file"])
      tasks.append(ecg_builder.RecordTask(record_id=row["record_id"],
                                          patient_id=row["patient_id"], split=row["split"],
                                          source=tuple(sorted(source.items()))))
    return tasks, index_skips

  def record_reader(self):
    return read_toy


# ------------------------------------------------------------------------------------ corpus


def write_wfdb(folder, name, x_mv, rng):
  """Writes [T, 12] millivolts (LEAD_NAMES order) with the leads shuffled and PTB-XL's
  spellings; returns the path."""
  order = rng.permutation(12)
  names = [PTBXL_SPELLING.get(LEAD_NAMES[i], LEAD_NAMES[i]) for i in order]
  wfdb.wrsamp(name, fs=FILE_FS, units=["mV"] * 12, sig_name=names, p_signal=x_mv[:, order],
              fmt=["16"] * 12, adc_gain=[1000] * 12, baseline=[0] * 12, write_dir=str(folder))
  return folder / name


def write_corpus(folder, rng, faults=True):
  """Good records in train and test, planted faults in every split; validation has only
  faults. Returns {record_id: (split, reason or None)} for what was planted."""
  folder.mkdir(parents=True, exist_ok=True)
  records = synthetic.generate_corpus(8, FILE_FS, 2.5, seed=int(rng.integers(1 << 16)))
  waves = [r.ecg.astype(np.float64) for r in records]
  rows, planted = [], {}

  def add(record_id, split, reason=None, patient_id=None, wave=None, **fields):
    file = fields.pop("file", record_id)
    if wave is not None:
      write_wfdb(folder, file, wave, rng)
    labels = sorted(rng.choice(LABELS, size=int(rng.integers(0, 3)), replace=False).tolist())
    row = {"record_id": record_id, "patient_id": patient_id or f"p_{record_id}", "split": split,
           "file": file, "report": f"  Sinus rhythm.\n  Record   {record_id}. ",
           "labels": labels, "age": int(rng.integers(20, 90)), "sex": int(rng.integers(2))}
    row.update(fields)
    rows.append(row)
    planted.setdefault(record_id, (split, reason))

  wave = iter(waves * 3)
  if faults:  # a split's first records skipped: the build looks ahead for a kept one
    add("f_missing", "train", "missing_file")
    clipped = next(wave).copy()
    for lead in (1, 6, 11):
      clipped[:, lead] = np.minimum(clipped[:, lead], np.quantile(clipped[:, lead], 0.7))
    add("f_clipped", "test", "saturated_leads", wave=clipped)
  for i in range(6):
    add(f"tr{i}", "train", wave=next(wave), patient_id=f"pa{i // 2}")
  for i in range(3):
    add(f"te{i}", "test", wave=next(wave))
  rows[-8]["age"] = None  # unknown age: -1
  rows[-7]["age"] = float("nan")
  if not faults:
    return rows, planted
  add("f_truncated", "train", "unreadable_signal", wave=next(wave))
  with open(folder / "f_truncated.dat", "r+b") as f:
    f.truncate(24 * 300 + 7)
  add("f_short", "train", "wrong_duration", wave=next(wave)[:FILE_FS])
  flat = next(wave).copy()
  flat[:, [0, 3, 7]] = 0.2
  flat[:, 9] = -0.1
  add("f_flat", "train", "flat_leads", wave=flat)
  holes = next(wave).copy()
  holes.flat[rng.choice(holes.size, size=holes.size // 20, replace=False)] = np.nan
  add("f_nan", "train", "too_many_nonfinite", wave=holes)
  add("f_empty", "train", "empty_report", wave=next(wave), report=" \n\t ")
  add("f_bytes", "train", "undecodable_report", wave=next(wave),
      report_hex="Sinus rhythm \xff".encode("latin-1").hex())
  add("f_boom", "train", "unreadable_signal", wave=next(wave), explode=True)
  add("f_header", "validation", "header_data_mismatch", wave=next(wave))
  hea = folder / "f_header.hea"
  hea.write_text(hea.read_text().replace(f"f_header 12 {FILE_FS} 625",
                                         f"f_header 12 {FILE_FS} 600"))  # 25 frames more
  add("f_missing2", "validation", "missing_file")
  # the same record id again, in another split and another file: the first is kept
  add("tr3", "test", "duplicate_record_id", file="tr3_again", wave=next(wave))
  add("f_no_patient", "train", "missing_metadata", patient_id="")
  rows[-1]["patient_id"] = ""
  return rows, planted


def save_index(folder, rows):
  (folder / "index.json").write_text(json.dumps(rows))


def build(config, manual_dir, data_dir, beam=False, **download_kwargs):
  builder = EcgBaseToyCorpus(config=config, data_dir=str(data_dir), file_format="array_record")
  if beam:
    from apache_beam.options.pipeline_options import PipelineOptions
    download_kwargs["beam_options"] = PipelineOptions(
        ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), **download_kwargs))
  return builder


def examples_by_id(builder):
  out = {}
  for split, source in builder.as_data_source().items():
    for example in source:
      record_id = example["record_id"].decode()
      assert record_id not in out
      out[record_id] = (split, example)
  return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  folder = tmp_path_factory.mktemp("toy_corpus")
  rows, planted = write_corpus(folder, np.random.default_rng(2024))
  save_index(folder, rows)
  return folder, rows, planted


@pytest.fixture(scope="module")
def local_build(corpus, tmp_path_factory):
  folder, _, _ = corpus
  return build("100hz", folder, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def beam_build(corpus, tmp_path_factory):
  pytest.importorskip("apache_beam")
  folder, _, _ = corpus
  # Beam's worker processes import this module (the reader) by name.
  path = os.pathsep.join([str(pathlib.Path(__file__).parent), str(REPO),
                          os.environ.get("PYTHONPATH", "")])
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("PYTHONPATH", path)
    return build("100hz", folder, tmp_path_factory.mktemp("beam"), beam=True)


# ---------------------------------------------------------------------------- local build


def expected_ecg(path):
  """The contract's int16 record from the raw WFDB samples: scipy resampling 250 -> 100 Hz,
  the first 2 s, columns moved to the canonical order by name."""
  x, fields = wfdb.rdsamp(str(path))
  y = scipy.signal.resample_poly(x, 2, 5, axis=0)[:200]
  out = np.zeros((200, 12))
  for column, name in enumerate(fields["sig_name"]):
    out[:, LEAD_NAMES.index({v: k for k, v in PTBXL_SPELLING.items()}.get(name, name))] = (
        y[:, column])
  return np.rint(out * 1000)


def test_kept_examples_are_the_records_prepared(corpus, local_build):
  folder, rows, planted = corpus
  examples = examples_by_id(local_build)
  good = {rid for rid, (_, reason) in planted.items() if reason is None}
  assert set(examples) == good
  first_row = {}
  for row in rows:
    first_row.setdefault(row["record_id"], row)
  for record_id, (split, example) in examples.items():
    row = first_row[record_id]
    assert split == row["split"]
    assert example["ecg"].dtype == np.int16 and example["ecg"].shape == (200, 12)
    np.testing.assert_array_equal(example["ecg"], expected_ecg(folder / row["file"]))
    assert example["lead_mask"].all()
    assert example["report"].decode() == f"Sinus rhythm. Record {record_id}."
    np.testing.assert_array_equal(example["labels"], [n in row["labels"] for n in LABELS])
    assert example["patient_id"].decode() == row["patient_id"]
    age = row["age"]
    assert example["age"] == (-1 if age is None or math.isnan(age) else age)
    assert example["sex"] == row["sex"]
  # the duplicate id's second file (in test) was not used: tr3 is train's
  assert examples["tr3"][0] == "train"
  info = local_build.info
  assert info.metadata["label_names"] == LABELS
  assert info.metadata["lead_names"] == list(LEAD_NAMES)
  assert info.metadata["sample_rate"] == 100
  assert info.metadata["signal_spec"]["duration_s"] == 2.0


def test_report_counts_every_record_with_its_reason(corpus, local_build):
  _, rows, planted = corpus
  report = skips.read_report(local_build.data_dir)
  assert report["seen"] == len(rows) == 22
  assert report["kept"] == 9 and report["kept"] + report["skipped"] == report["seen"]
  expected = {}
  for record_id, (split, reason) in planted.items():
    if reason is not None:
      expected.setdefault(reason, []).append(record_id)
  expected["duplicate_record_id"] = ["tr3"]
  got = {}
  for section in report["splits"].values():
    assert section["kept"] + section["skipped"] == section["seen"]
    for reason, r in section["reasons"].items():
      got.setdefault(reason, []).extend(r["first_ids"])
  assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in expected.items()}
  assert report["skipped_by_reason"] == {k: len(v) for k, v in sorted(expected.items())}
  assert {name: (s["seen"], s["kept"]) for name, s in report["splits"].items()} == {
      "index": (2, 0), "train": (14, 6), "validation": (2, 0), "test": (4, 3)}
  boom = report["splits"]["train"]["reasons"]["unreadable_signal"]
  assert dict(zip(boom["first_ids"], boom["first_details"]))["f_boom"].startswith("RuntimeError")


def test_a_split_with_every_record_skipped_is_reported_not_written(local_build):
  assert set(local_build.info.splits) == {"train", "test"}
  report = skips.read_report(local_build.data_dir)
  assert report["omitted_splits"] == ["validation"]
  assert "split not written: validation" in skips.format_summary(report)
  assert sorted(report["splits"]["validation"]["reasons"]) == ["header_data_mismatch",
                                                                "missing_file"]
  # the files alone read back by name, as the input pipeline does
  sources = tfds.data_source("ecg_base_toy_corpus/100hz", download=False,
                             data_dir=str(pathlib.Path(local_build.data_dir).parents[2]))
  assert {name: len(s) for name, s in sources.items()} == {"train": 6, "test": 3}
  assert not list(pathlib.Path(local_build.data_dir).glob("skips-*.json"))


def test_beam_build_equals_the_local_build(local_build, beam_build):
  local, beam = examples_by_id(local_build), examples_by_id(beam_build)
  assert set(local) == set(beam)
  for record_id, (split, example) in local.items():
    beam_split, beam_example = beam[record_id]
    assert beam_split == split
    assert example.keys() == beam_example.keys()
    for key in example:
      np.testing.assert_array_equal(example[key], beam_example[key])
  assert skips.read_report(beam_build.data_dir) == skips.read_report(local_build.data_dir)
  assert set(beam_build.info.splits) == {"train", "test"}


def test_shards_are_written_with_zstd_level_1(local_build, beam_build):
  """Both ways of building write through shard_writer's options (level 3 is TFDS's)."""
  for builder in (local_build, beam_build):
    shards = sorted(pathlib.Path(builder.data_dir).glob("*.array_record-*"))
    assert shards, builder.data_dir
    for shard in shards:
      options = ArrayRecordReader(str(shard)).writer_options_string().split(",")
      assert "zstd:1" in options and "group_size:1" in options, (shard, options)


def test_a_build_runs_with_the_objects_it_started_with_frozen(local_build):
  """While records are read, the garbage collector skips what the process held when the
  build started (the imported modules' objects); after the build it is as it was."""
  assert FREEZE_COUNTS and min(FREEZE_COUNTS) > 10_000
  assert gc.get_freeze_count() == 0


def test_splits_without_records_and_reports_not_required(tmp_path):
  rng = np.random.default_rng(7)
  rows, _ = write_corpus(tmp_path / "manual", rng, faults=False)
  rows = [r for r in rows if r["split"] == "train"]  # no validation, no test
  rows[0]["report"] = "   "
  save_index(tmp_path / "manual", rows)
  builder = build("100hz_any_report", tmp_path / "manual", tmp_path / "data")
  assert set(builder.info.splits) == {"train"}
  report = skips.read_report(builder.data_dir)
  assert (report["seen"], report["kept"], report["omitted_splits"]) == (6, 6, [])
  assert set(report["splits"]) == {"index", "train"}
  assert examples_by_id(builder)[rows[0]["record_id"]][1]["report"] == b""


def test_stopping_early_still_reports_what_was_seen(corpus, tmp_path):
  folder, _, _ = corpus
  builder = build("100hz", folder, tmp_path, max_examples_per_split=2)
  report = skips.read_report(builder.data_dir)
  assert report["splits"]["train"]["kept"] == 2
  for section in report["splits"].values():
    assert section["kept"] + section["skipped"] == section["seen"]
  assert builder.info.splits["train"].num_examples == 2


# ---------------------------------------------------------------------------- corpus errors


def test_missing_manual_dir_is_a_corpus_error(tmp_path):
  with pytest.raises(skips.CorpusError, match="no such folder") as e:
    build("100hz", tmp_path / "nowhere", tmp_path / "data")
  assert str(tmp_path / "nowhere") in str(e.value) and "\n" not in str(e.value)


def test_no_records_is_a_corpus_error(tmp_path):
  (tmp_path / "manual").mkdir()
  save_index(tmp_path / "manual", [])
  with pytest.raises(skips.CorpusError, match="no usable records"):
    build("100hz", tmp_path / "manual", tmp_path / "data")
  save_index(tmp_path / "manual", [{"record_id": "a", "patient_id": "", "split": "train"}])
  with pytest.raises(skips.CorpusError, match="1 index entries were skipped"):
    build("100hz", tmp_path / "manual", tmp_path / "data")


def test_every_record_skipped_is_a_corpus_error(tmp_path):
  rows = [{"record_id": f"m{i}", "patient_id": f"p{i}", "split": split, "file": f"m{i}"}
          for i, split in enumerate(["train", "train", "test"])]
  (tmp_path / "manual").mkdir()
  save_index(tmp_path / "manual", rows)
  with pytest.raises(skips.CorpusError, match=r"every one of the 3 records.*3 missing_file"):
    build("100hz", tmp_path / "manual", tmp_path / "data")


# ---------------------------------------------------------------------------------- helpers


def reference_split(patient_id, salt, fractions=(0.8, 0.1, 0.1)):
  u = int.from_bytes(hashlib.sha256(f"{salt}:{patient_id}".encode()).digest()[:8], "big") / 2**64
  edges = np.cumsum(fractions) / sum(fractions)
  return ("train", "validation", "test")[int(np.sum(u >= edges[:2]))]


@pytest.mark.parametrize("name", ["ptbxl", "synthetic_ecg_reports", "mimic_iv_ecg",
                                  "physionet_challenge", "ecg_manifest"])
def test_every_builder_is_at_the_contracts_latest_version(name):
  """A contract change (e.g. `ecg` stored as raw bytes) changes what every build stores, so
  every builder moves to the version that notes it: an older build is then never opened. A
  builder's own later change (ptbxl 1.2.0) keeps every contract note and notes itself."""
  importlib.import_module(f"tfds_builders.{name}")  # registers it
  builder = tfds.builder_cls(name)
  latest = max(contract.RELEASE_NOTES, key=tfds.core.Version)
  assert builder.RELEASE_NOTES.items() >= contract.RELEASE_NOTES.items()
  assert str(builder.VERSION) == max(builder.RELEASE_NOTES, key=tfds.core.Version)
  assert builder.VERSION >= tfds.core.Version(latest)
  assert builder.RELEASE_NOTES[str(builder.VERSION)]


def test_hash_split():
  rng = np.random.default_rng(11)
  ids = [f"patient-{i}-{rng.integers(1 << 30)}" for i in range(5000)]
  splits = {pid: ecg_builder.hash_split(pid, "toy") for pid in ids}
  assert splits == {pid: reference_split(pid, "toy") for pid in ids}  # the format is pinned
  counts = {name: list(splits.values()).count(name) for name in contract.SPLITS}
  for name, p in zip(contract.SPLITS, (0.8, 0.1, 0.1)):
    assert abs(counts[name] - 5000 * p) < 4 * np.sqrt(5000 * p * (1 - p)), counts
  # the salt matters; other fractions are honoured
  other = [ecg_builder.hash_split(pid, "other") for pid in ids]
  assert np.mean([a != splits[b] for a, b in zip(other, ids)]) > 0.2
  uneven = [ecg_builder.hash_split(pid, "toy", (0.5, 0.0, 0.5)) for pid in ids]
  assert "validation" not in uneven and abs(uneven.count("test") - 2500) < 4 * np.sqrt(1250)
  assert uneven == [reference_split(pid, "toy", (0.5, 0.0, 0.5)) for pid in ids]


def test_hash_split_at_the_top_of_the_hash_range(monkeypatch):
  digest = types.SimpleNamespace(digest=lambda: b"\xff" * 32)  # u rounds to 1.0
  top = types.SimpleNamespace(sha256=lambda data: digest)
  monkeypatch.setattr(ecg_builder, "hashlib", top)
  assert ecg_builder.hash_split("anyone", "salt") == "test"
  assert ecg_builder.hash_split("anyone", "salt", (0.7, 0.2, 0.1)) == "test"


def test_multi_hot():
  out = ecg_builder.multi_hot(["MI", "unknown", "NORM", "MI"], LABELS)
  assert out.dtype == np.bool_
  np.testing.assert_array_equal(out, [True, True, False])
  assert not ecg_builder.multi_hot([], LABELS).any()


def test_config_from_json():
  config = EcgBaseToyCorpus.builder_config_cls(**json.loads(
      '{"name": "j250", "signal": {"sample_rate": 250, "duration_s": 4, '
      '"bandpass_hz": [0.5, 40], "crop": "center"}, "require_report": false}'))
  assert isinstance(config, ecg_builder.EcgConfig)
  assert config.signal == signal_lib.SignalSpec(sample_rate=250, duration_s=4,
                                                bandpass_hz=(0.5, 40), crop="center")
  assert config.require_report is False
  builder = EcgBaseToyCorpus(config=config, data_dir="/tmp/unused-ecg-toy")
  assert builder.info.features["ecg"].shape == (1000, 12)
  spec = builder.info.metadata["signal_spec"]
  assert {key: spec[key] for key in ("sample_rate", "duration_s", "crop")} == {
      "sample_rate": 250, "duration_s": 4, "crop": "center"}
  assert list(spec["bandpass_hz"]) == [0.5, 40]
  with pytest.raises(TypeError):
    ecg_builder.EcgConfig(name="x", signal={"sample_hz": 250})


# ---------------------------------------------------------------------------------- the CLI


def test_build_cli_turns_corpus_errors_into_one_line():
  def fail():
    raise skips.CorpusError("/data/ptbxl: no such folder")

  local = types.SimpleNamespace(data_dir="")  # TFDS's default data_dir: nothing staged
  with pytest.raises(SystemExit) as e:
    build_cli._build(types.SimpleNamespace(execute=fail, paths=local))
  assert e.value.code == "error: /data/ptbxl: no such folder"
  with pytest.raises(ZeroDivisionError):  # anything else is a bug: the traceback is kept
    build_cli._build(types.SimpleNamespace(execute=lambda: 1 / 0, paths=local))


BUILDER_PACKAGE = {
    "__init__.py": "from .toy_cli_ecg_dataset_builder import Builder\n",
    "__main__.py": """\
        from tfds_builders import build_cli

        if __name__ == "__main__":
          build_cli.main(__package__)
        """,
    "toy_cli_ecg_dataset_builder.py": """\
        import tensorflow_datasets as tfds
        from tfds_builders import ecg_builder


        class Builder(ecg_builder.EcgBuilder):
          \"\"\"A builder whose corpus is never there.\"\"\"

          VERSION = tfds.core.Version("1.0.0")
          MANUAL_DOWNLOAD_INSTRUCTIONS = "Nothing to download."
          BUILDER_CONFIGS = [ecg_builder.EcgConfig(name="default")]

          def label_sets(self):
            return {"labels": ["a"]}

          def list_records(self, manual_dir):
            return [], []

          def record_reader(self):
            raise AssertionError("never reached")
        """,
}


def test_module_entry_point_exits_with_one_line(tmp_path):
  package = tmp_path / "toy_cli_ecg"
  package.mkdir()
  for name, text in BUILDER_PACKAGE.items():
    (package / name).write_text(textwrap.dedent(text))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
  for manual_dir, message in [(tmp_path / "nowhere", "no such folder"),
                              (tmp_path, "no usable records")]:
    run = subprocess.run([sys.executable, "-m", "toy_cli_ecg", "--manual_dir", str(manual_dir),
                          "--data_dir", str(tmp_path / "data")], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {manual_dir}: {message}"), run.stderr
    assert "Traceback" not in run.stderr
