"""The PTB-XL builder on the real PTB-XL slice in ../shared/data/ptbxl (400 records).

Every expectation is computed here from the CSV files and `wfdb` directly, not through the
builder's own helpers: labels from `ast.literal_eval(scp_codes)` and scp_statements.csv,
splits from strat_fold, signals from `wfdb.rdsamp`.
"""

import ast
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
import wfdb

from ecgclip_jax.data import skips, sources
from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.evaluators import zero_shot
from tfds_builders import ptbxl
from tfds_builders.ptbxl import ptbxl_dataset_builder as lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "ptbxl"
SPLIT_OF_FOLD = {**{f: "train" for f in range(1, 9)}, 9: "validation", 10: "test"}
LABEL_SET_NAMES = ("labels", "labels_diagnostic", "labels_subdiagnostic",
                   "labels_superdiagnostic", "labels_form", "labels_rhythm")

HAVE_DATA = (DATA / "ptbxl_database.csv").is_file()
NO_DATA = f"PTB-XL slice not found at {DATA} (a fresh clone has no ../shared/data)"
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=NO_DATA)


# --- independent readers of the download ------------------------------------------------------


def read_rows(folder) -> list[dict]:
  with open(pathlib.Path(folder) / "ptbxl_database.csv", newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def write_rows(folder, rows) -> None:
  with open(pathlib.Path(folder) / "ptbxl_database.csv", "w", newline="",
            encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def read_statements(folder=DATA) -> list[dict]:
  with open(pathlib.Path(folder) / "scp_statements.csv", newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def is_one(value: str) -> bool:
  return value.strip() != "" and float(value) == 1.0


def expected_label_names(scp_codes: str, statements: list[dict]) -> dict[str, set]:
  """The benchmark's aggregations (utils.compute_label_aggregations), written out again."""
  by_code = {s[""]: s for s in statements}
  codes = ast.literal_eval(scp_codes).keys()
  diagnostic = [c for c in codes if is_one(by_code[c]["diagnostic"])]
  return {
      "labels": set(codes),
      "labels_diagnostic": set(diagnostic),
      "labels_subdiagnostic": {by_code[c]["diagnostic_subclass"] for c in diagnostic},
      "labels_superdiagnostic": {by_code[c]["diagnostic_class"] for c in diagnostic},
      "labels_form": {c for c in codes if is_one(by_code[c]["form"])},
      "labels_rhythm": {c for c in codes if is_one(by_code[c]["rhythm"])},
  }


def expected_sex(value: str) -> int:
  return {"0": 1, "1": 0}.get(value.strip().removesuffix(".0"), -1)


def expected_age(value: str) -> int:
  if value.strip() in ("", "nan"):
    return -1
  return 90 if float(value) == 300 else int(float(value))


def wfdb_uv(record_path) -> np.ndarray:
  """`wfdb.rdsamp` in µV, columns reordered from the file's leads to the contract's."""
  signal, fields = wfdb.rdsamp(str(record_path))
  spelled = {name.casefold(): name for name in LEAD_NAMES}
  order = [[spelled[n.casefold()] for n in fields["sig_name"]].index(lead) for lead in LEAD_NAMES]
  return signal[:, order] * 1000.0


# --- builds -----------------------------------------------------------------------------------


def build(manual_dir, data_dir, config="100hz", beam=False):
  builder = ptbxl.Builder(config=config, data_dir=str(data_dir))
  beam_options = None
  if beam:
    from apache_beam.options.pipeline_options import PipelineOptions
    beam_options = PipelineOptions(["--direct_num_workers=2",
                                    "--direct_running_mode=multi_processing"])
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                   beam_options=beam_options),
      file_format="array_record")
  return builder


def examples_of(builder) -> dict[str, tuple[str, dict]]:
  """record_id -> (split, example) over every split."""
  out = {}
  for split, source in builder.as_data_source().items():
    for example in source:
      out[example["record_id"].decode()] = (split, example)
  return out


def make_subset(folder, ecg_ids, rates=("lr", "hr")) -> pathlib.Path:
  """A copy of the slice holding only `ecg_ids`: trimmed CSV, their records, the statements."""
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  shutil.copy(DATA / "scp_statements.csv", folder)
  wanted = {str(i) for i in ecg_ids}
  rows = [row for row in read_rows(DATA) if row["ecg_id"] in wanted]
  write_rows(folder, rows)
  for row in rows:
    for rate in rates:
      name = row[f"filename_{rate}"]
      (folder / name).parent.mkdir(parents=True, exist_ok=True)
      for suffix in (".hea", ".dat"):
        shutil.copy(DATA / (name + suffix), folder / (name + suffix))
  return folder


def ids_per_split(count: int) -> list[int]:
  """The first `count` ecg_ids of each split, so that a subset has all three."""
  picked = {split: [] for split in ("train", "validation", "test")}
  for row in read_rows(DATA):
    bucket = picked[SPLIT_OF_FOLD[int(row["strat_fold"])]]
    if len(bucket) < count:
      bucket.append(int(row["ecg_id"]))
  return sorted(i for bucket in picked.values() for i in bucket)


@pytest.fixture(scope="module")
def built_100hz(tmp_path_factory):
  if not HAVE_DATA:
    pytest.skip(NO_DATA)
  builder = build(DATA, tmp_path_factory.mktemp("tfds_100hz"))
  return builder, examples_of(builder)


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
  if not HAVE_DATA:
    pytest.skip(NO_DATA)
  return make_subset(tmp_path_factory.mktemp("ptbxl_subset"), ids_per_split(10))


@pytest.fixture(scope="module")
def built_500hz(subset, tmp_path_factory):
  builder = build(subset, tmp_path_factory.mktemp("tfds_500hz"), config="500hz")
  return builder, examples_of(builder)


# --- the shipped vocabularies -----------------------------------------------------------------


@needs_data
def test_shipped_statements_are_scp_statements_csv():
  rows = read_statements()
  assert lib.read_scp_statements(DATA / "scp_statements.csv") == ptbxl.SCP_STATEMENTS
  sets = ptbxl.LABEL_SETS
  assert sets["labels"] == [row[""] for row in rows]  # every row, file order
  assert sets["labels_diagnostic"] == [r[""] for r in rows if is_one(r["diagnostic"])]
  assert sets["labels_form"] == [r[""] for r in rows if is_one(r["form"])]
  assert sets["labels_rhythm"] == [r[""] for r in rows if is_one(r["rhythm"])]
  assert set(sets["labels_subdiagnostic"]) == {r["diagnostic_subclass"] for r in rows
                                               if is_one(r["diagnostic"])}
  assert sets["labels_superdiagnostic"] == ["NORM", "MI", "STTC", "CD", "HYP"]
  assert {name: len(v) for name, v in sets.items()} == {
      "labels": 71, "labels_diagnostic": 44, "labels_subdiagnostic": 23,
      "labels_superdiagnostic": 5, "labels_form": 19, "labels_rhythm": 12}


def test_field_mappings():
  assert lib.patient_id_of("15709.0") == "15709"
  assert lib.patient_id_of(" 42 ") == "42"
  assert lib.patient_id_of("") is None and lib.patient_id_of("nan") is None
  assert (lib.sex_of("0"), lib.sex_of("1"), lib.sex_of(""), lib.sex_of("2")) == (1, 0, -1, -1)
  assert (lib.age_of("56.0"), lib.age_of("300.0"), lib.age_of(""), lib.age_of("nan")) == (
      56, 90, -1, -1)
  assert lib.statements_of("{'NORM': 100.0, 'SR': 0.0}") == ("NORM", "SR")
  assert lib.statements_of("{}") == ()
  for bad in ("", "{'NORM': 100.0", "['NORM']", "{'XYZ': 100.0}", "__import__('os')"):
    with pytest.raises(ValueError):
      lib.statements_of(bad)


def test_statement_labels_count_zero_likelihood_statements():
  """As in the benchmark, a statement counts whatever its likelihood (SR is 0.0 here)."""
  labels = ptbxl.statement_labels(lib.statements_of("{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}"))
  names = {name: {ptbxl.LABEL_SETS[name][i] for i in np.flatnonzero(v)}
           for name, v in labels.items()}
  assert names == {"labels": {"NORM", "LVOLT", "SR"}, "labels_diagnostic": {"NORM"},
                   "labels_subdiagnostic": {"NORM"}, "labels_superdiagnostic": {"NORM"},
                   "labels_form": {"LVOLT"}, "labels_rhythm": {"SR"}}


def test_prompt_file_names_only_statements_of_labels():
  path = ROOT / "configs" / "prompts" / "ptbxl.json"
  prompts = zero_shot.load_prompts(str(path), ptbxl.LABEL_SETS["labels"])  # raises otherwise
  assert {"NORM", "SR", "AFIB", "LVH", "IMI", "CLBBB", "CRBBB"} <= set(prompts)
  assert all(len(texts) >= 2 and all(isinstance(t, str) and t for t in texts)
             for texts in prompts.values())


# --- the 100 Hz build of the whole slice ------------------------------------------------------


def test_counts_add_up(built_100hz):
  builder, examples = built_100hz
  rows = read_rows(DATA)
  report = skips.read_report(builder.data_dir)
  assert report["seen"] == len(rows) == 400
  assert report["kept"] + report["skipped"] == report["seen"]
  assert report["kept"] == len(examples) == builder.info.splits.total_num_examples
  assert report["skipped"] == 0  # the slice is clean
  for split in ("train", "validation", "test"):
    assert report["splits"][split]["kept"] == builder.info.splits[split].num_examples


def test_splits_follow_strat_fold_and_are_patient_disjoint(built_100hz):
  _, examples = built_100hz
  for row in read_rows(DATA):
    split, example = examples[row["ecg_id"]]
    assert split == SPLIT_OF_FOLD[int(row["strat_fold"])]
    assert example["patient_id"].decode() == str(int(float(row["patient_id"])))
  splits_of_patient = {}
  for split, example in examples.values():
    splits_of_patient.setdefault(example["patient_id"].decode(), set()).add(split)
  assert all(len(s) == 1 for s in splits_of_patient.values())
  assert len(splits_of_patient) < len(examples)  # some patients have several ECGs


def test_labels_match_scp_codes(built_100hz):
  builder, examples = built_100hz
  statements = read_statements()
  vocab = builder.info.metadata["label_sets"]
  assert list(vocab) == list(LABEL_SET_NAMES)
  assert builder.info.metadata["label_names"] == vocab["labels"]
  superclasses_seen = set()
  for row in read_rows(DATA):
    _, example = examples[row["ecg_id"]]
    expected = expected_label_names(row["scp_codes"], statements)
    for name in LABEL_SET_NAMES:
      vector = example[name]
      assert vector.dtype == np.bool_ and vector.shape == (len(vocab[name]),)
      assert {vocab[name][i] for i in np.flatnonzero(vector)} == expected[name], (
          row["ecg_id"], name)
    superclasses_seen |= expected["labels_superdiagnostic"]
  assert superclasses_seen == {"NORM", "MI", "STTC", "CD", "HYP"}  # the test is not vacuous


def test_report_sex_age_and_ids(built_100hz):
  _, examples = built_100hz
  ages = set()
  for row in read_rows(DATA):
    _, example = examples[row["ecg_id"]]
    assert example["record_id"].decode() == row["ecg_id"]
    assert example["report"].decode() == " ".join(row["report"].split())
    assert int(example["sex"]) == expected_sex(row["sex"])
    assert int(example["age"]) == expected_age(row["age"])
    ages.add(int(example["age"]))
  assert -1 in ages  # the slice has records without an age
  assert {int(e["sex"]) for _, e in examples.values()} == {0, 1}


def test_signals_equal_wfdb_at_100hz(built_100hz):
  builder, examples = built_100hz
  assert builder.info.features["ecg"].shape == (1000, 12)
  assert builder.info.metadata["lead_names"] == list(LEAD_NAMES)
  rows = read_rows(DATA)
  for row in rows[::40]:
    _, example = examples[row["ecg_id"]]
    assert example["ecg"].dtype == np.int16 and example["lead_mask"].all()
    np.testing.assert_allclose(example["ecg"], wfdb_uv(DATA / row["filename_lr"]), rtol=0,
                               atol=0.5 + 1e-9)


def test_metadata_describes_every_statement(built_100hz):
  builder, _ = built_100hz
  metadata = builder.info.metadata
  descriptions = {r[""]: r["description"] for r in read_statements()}
  assert metadata["statement_descriptions"] == descriptions
  assert set(metadata["superclass_descriptions"]) == set(
      metadata["label_sets"]["labels_superdiagnostic"])
  assert metadata["sample_rate"] == 100
  # Readable by name from the files alone, as the input pipeline does.
  by_name = tfds.data_source("ptbxl/100hz", data_dir=builder.data_dir_root)
  assert sum(map(len, by_name.values())) == 400


# --- 500 Hz, Beam, faults, errors and the command line on small copies -------------------------


def test_500hz_subset(subset, built_500hz):
  builder, examples = built_500hz
  rows = read_rows(subset)
  assert len(examples) == len(rows) == 30
  assert builder.info.features["ecg"].shape == (5000, 12)
  assert builder.info.metadata["sample_rate"] == 500
  assert {split for split, _ in examples.values()} == {"train", "validation", "test"}
  statements = read_statements()
  for row in rows:
    split, example = examples[row["ecg_id"]]
    assert split == SPLIT_OF_FOLD[int(row["strat_fold"])]
    np.testing.assert_allclose(example["ecg"], wfdb_uv(subset / row["filename_hr"]), rtol=0,
                               atol=0.5 + 1e-9)
    vocab = builder.info.metadata["label_sets"]
    assert ({vocab["labels"][i] for i in np.flatnonzero(example["labels"])}
            == expected_label_names(row["scp_codes"], statements)["labels"])


@needs_data
def test_beam_build_equals_local_build(tmp_path):
  small = make_subset(tmp_path / "small", ids_per_split(4), rates=("lr",))
  local = examples_of(build(small, tmp_path / "local"))
  beam_builder = build(small, tmp_path / "beam", beam=True)
  beam = examples_of(beam_builder)
  assert len(local) == 12 and set(beam) == set(local)
  for record_id, (split, example) in local.items():
    beam_split, beam_example = beam[record_id]
    assert beam_split == split and set(beam_example) == set(example)
    for key, value in example.items():
      np.testing.assert_array_equal(beam_example[key], value, err_msg=f"{record_id} {key}")
  report = skips.read_report(beam_builder.data_dir)
  assert (report["seen"], report["kept"], report["skipped"]) == (12, 12, 0)


def test_planted_faults_are_counted_with_their_reason(subset, tmp_path):
  folder = tmp_path / "faulty"
  shutil.copytree(subset, folder)
  rows = read_rows(folder)
  ids = [row["ecg_id"] for row in rows]
  by_id = {row["ecg_id"]: row for row in rows}
  (folder / (by_id[ids[0]]["filename_lr"] + ".dat")).unlink()
  dat = folder / (by_id[ids[1]]["filename_lr"] + ".dat")
  dat.write_bytes(dat.read_bytes()[:dat.stat().st_size // 2 + 1])  # cut mid-sample
  by_id[ids[3]]["patient_id"] = ""
  by_id[ids[4]]["scp_codes"] = "{'NORM': 100.0"
  rows.append(dict(by_id[ids[5]]))  # the same ecg_id twice
  write_rows(folder, rows)

  builder = build(folder, tmp_path / "tfds")
  report = skips.read_report(builder.data_dir)
  assert report["seen"] == len(rows) == 31
  assert report["skipped_by_reason"] == {
      "missing_file": 1, "unreadable_signal": 1, "missing_metadata": 2,
      "duplicate_record_id": 1}
  assert report["kept"] == 31 - 5 == builder.info.splits.total_num_examples
  first_ids = {}
  details = {}
  for section in report["splits"].values():
    for reason, r in section["reasons"].items():
      first_ids.setdefault(reason, []).extend(r["first_ids"])
      details.setdefault(reason, []).extend(r["first_details"])
  assert first_ids["missing_file"] == [ids[0]]
  assert first_ids["unreadable_signal"] == [ids[1]]
  assert sorted(first_ids["missing_metadata"]) == sorted([ids[3], ids[4]])
  assert first_ids["duplicate_record_id"] == [ids[5]]
  assert any("patient_id" in d for d in details["missing_metadata"])
  assert any("scp_codes" in d for d in details["missing_metadata"])
  kept = examples_of(builder)
  assert ids[5] in kept and not {ids[0], ids[1], ids[3], ids[4]} & set(kept)


def test_a_blank_report_is_kept_with_its_labels_and_left_out_of_training(subset, tmp_path,
                                                                         capsys):
  """One build for evaluation and pre-training: a record whose report is blank (as ecg_id 443
  of the full database; the slice has none, so one is planted) keeps its labels, and only
  contrastive training leaves it out."""
  folder = tmp_path / "blank"
  shutil.copytree(subset, folder)
  rows = read_rows(folder)
  blank = next(row for row in rows if SPLIT_OF_FOLD[int(row["strat_fold"])] == "train")
  blank["report"] = " \t "
  write_rows(folder, rows)
  builder = build(folder, tmp_path / "tfds")
  report = skips.read_report(builder.data_dir)
  assert (report["seen"], report["kept"], report["skipped"]) == (30, 30, 0)
  assert report["blank_reports"] == 1
  assert "blank_reports: 1" in capsys.readouterr().out  # the build's summary

  split, example = examples_of(builder)[blank["ecg_id"]]
  assert split == "train" and example["report"] == b""
  expected = expected_label_names(blank["scp_codes"], read_statements())
  vocab = builder.info.metadata["label_sets"]
  for name in LABEL_SET_NAMES:
    assert {vocab[name][i] for i in np.flatnonzero(example[name])} == expected[name]
  assert expected["labels"]  # the record has labels to keep

  train_ids = {r["record_id"].decode() for r in builder.as_data_source("train")}
  records, left_out = sources.Dataset(builder).contrastive_source("train")
  assert left_out == 1 and len(records) == len(train_ids) - 1 == 9
  assert {r["record_id"].decode() for r in records} == train_ids - {blank["ecg_id"]}


def _break(folder: pathlib.Path, how: str) -> pathlib.Path:
  if how == "missing_folder":
    return folder / "not-there"
  if how == "missing_database":
    (folder / "ptbxl_database.csv").unlink()
    return folder / "ptbxl_database.csv"
  if how == "missing_statements":
    (folder / "scp_statements.csv").unlink()
    return folder / "scp_statements.csv"
  if how == "missing_records":
    shutil.rmtree(folder / "records100")
    return folder / "records100"
  if how == "other_statements":
    text = (folder / "scp_statements.csv").read_text(encoding="utf-8")
    (folder / "scp_statements.csv").write_text(text.replace(
        "IMI,inferior myocardial infarction,1.0,,,MI,IMI",
        "IMI,inferior myocardial infarction,1.0,,,STTC,IMI"), encoding="utf-8")
    return folder / "scp_statements.csv"
  raise ValueError(how)


@pytest.mark.parametrize("how", ["missing_folder", "missing_database", "missing_statements",
                                 "missing_records", "other_statements"])
def test_corpus_errors_name_the_path(subset, tmp_path, how):
  folder = tmp_path / "copy"
  shutil.copytree(subset, folder)
  path = _break(folder, how)
  manual_dir = path if how == "missing_folder" else folder
  with pytest.raises(skips.CorpusError) as error:
    build(manual_dir, tmp_path / "tfds")
  message = str(error.value)
  assert message.startswith(str(path)) and "\n" not in message
  if how == "other_statements":
    assert "IMI" in message


@needs_data
def test_command_line_builds_and_reports(tmp_path):
  small = make_subset(tmp_path / "small", ids_per_split(2), rates=("lr",))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  command = [sys.executable, "-m", "tfds_builders.ptbxl", "--config", "100hz"]
  result = subprocess.run(command + ["--manual_dir", str(small), "--data_dir",
                                     str(tmp_path / "tfds")],
                          check=False, capture_output=True, text=True, env=env, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  out = tmp_path / "tfds" / "ptbxl" / "100hz" / str(ptbxl.Builder.VERSION)
  assert len(list(out.glob("ptbxl-*.array_record-*"))) == 3
  report = json.loads((out / "build_report.json").read_text())
  assert (report["seen"], report["kept"]) == (6, 6)
  assert "6 records seen: 6 kept, 0 skipped" in result.stdout

  wrong = tmp_path / "no-such-download"
  result = subprocess.run(command + ["--manual_dir", str(wrong), "--data_dir",
                                     str(tmp_path / "tfds_wrong")],
                          check=False, capture_output=True, text=True, env=env, cwd=ROOT)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and str(wrong) in errors[0]
  assert result.stderr.strip().splitlines()[-1] == errors[0]
