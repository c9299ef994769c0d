"""Task sets from published split files (MERL's): the PTB-XL task sets on the real slice, and
ICBEB and Chapman on small fixtures in their exact layouts, every count and label computed
here from the CSVs with the csv module; then a probe on split files with both selection
rules."""

import csv
import dataclasses
import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax.data.leads import LEAD_NAMES
from ecgclip_jax.evaluators import downstream, results, split_files, tasks, zero_shot
from tfds_builders import physionet_challenge as pc
from tfds_builders import ptbxl

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "tfds_builders"))
from challenge_fixture import write_record  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[2]
PTBXL = ROOT.parent / "shared" / "data" / "ptbxl"
MERL = ROOT / "configs" / "tasks" / "merl_splits"
ICBEB_HEADER = ("patient_id,ecg_id,filename,validation,age,sex,scp_codes,"
                "AFIB,VPC,NORM,1AVB,CRBBB,STE,PAC,CLBBB,STD")
ROLE_FILES = {"train": "train", "validation": "val", "test": "test"}
# MERL's PTB-XL split files, rows with ecg_id <= 400 (the shared slice): train, val, test.
SLICE_ROWS = {"merl_ptbxl_super": (270, 61, 53), "merl_ptbxl_sub": (270, 61, 53),
              "merl_ptbxl_form": (63, 21, 13), "merl_ptbxl_rhythm": (259, 63, 53)}


def csv_rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def build(builder_class, config, manual_dir, data_dir):
  builder = builder_class(config=config, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir)))
  return builder


def build_sources(builder):
  return [builder.as_data_source(split) for split in builder.info.splits]


def check_matches(task_set, builder, expected_rows):
  """Every role: the records found are the file's rows the build has, in file order, with
  the file's labels by column name; the rest are counted missing."""
  have = {r["record_id"].decode() for s in build_sources(builder) for r in s}
  matches = split_files.match_splits(task_set.split_files, build_sources(builder))
  names = split_files.task_names(task_set.split_files)
  for role, match in matches.items():
    rows = expected_rows[role]
    ids = [split_files.record_key(r[task_set.split_files["id_column"]]) for r in rows]
    found = [(i, r) for i, r in zip(ids, rows) if i in have]
    assert match.counts()["rows"] == len(rows)
    assert [m["record_id"].decode() for m in match.records] == [i for i, _ in found]
    assert match.missing == [i for i in ids if i not in have]
    np.testing.assert_array_equal(
        match.labels, np.array([[r[n] == "1" for n in names] for _, r in found], bool)
        .reshape(-1, len(names)))
    assert match.known.all()
  return matches


@pytest.fixture(scope="module")
def ptbxl_500hz(tmp_path_factory):
  if not (PTBXL / "ptbxl_database.csv").is_file():
    pytest.skip(f"PTB-XL slice not found at {PTBXL} (a fresh clone has no ../shared/data)")
  return build(ptbxl.Builder, "500hz", PTBXL, tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", sorted(SLICE_ROWS))
def test_merl_ptbxl_task_sets_on_the_shared_slice(ptbxl_500hz, name):
  task_set = tasks.resolve_task_set(name)
  assert (task_set.dataset, task_set.builder_config) == ("ptbxl", "500hz")
  folder = pathlib.Path(task_set.split_files["folder"])
  expected = {role: csv_rows(next(folder.glob(f"*_{suffix}.csv")))
              for role, suffix in ROLE_FILES.items()}
  matches = check_matches(task_set, ptbxl_500hz, expected)
  assert tuple(len(matches[r].records) for r in ROLE_FILES) == SLICE_ROWS[name]
  assert all(len(m.records) + len(m.missing) == m.rows for m in matches.values())
  if name == "merl_ptbxl_sub":  # the val and test files order their columns differently
    assert split_files.label_columns(pathlib.Path(matches["validation"].file), "AMI") != \
        split_files.task_names(task_set.split_files)


def icbeb_fixture(root: pathlib.Path):
  """CPSC 2018 records as the challenge ships them (training/cpsc_2018/g1/A####), three of
  them 6 s long, and ICBEB split files in MERL's columns naming one record that is absent."""
  rng = np.random.default_rng(0)
  records = {f"A{i:04d}": 3000 if i % 8 == 0 else 5000 + 500 * (i % 3) for i in range(1, 25)}
  for name, samples in records.items():
    val = rng.integers(-2000, 2000, (12, samples))
    write_record(root / "training" / "cpsc_2018" / "g1", name, val, 500, 1000, list(LEAD_NAMES),
                 comments=("#Age: 53", "#Sex: Male", "#Dx: 426783006"))
  names = list(records) + ["A9999"]
  splits = {"train": names[:15], "val": names[15:20], "test": names[20:]}
  folder = root / "icbeb"
  folder.mkdir()
  for split, ids in splits.items():
    lines = [ICBEB_HEADER]
    for k, record in enumerate(ids):
      labels = ["1" if (k + j) % 3 == 0 else "0" for j in range(9)]
      lines.append(f"{k},{k},{record},False,50.0,1,{{}}," + ",".join(labels))
    (folder / f"icbeb_{split}.csv").write_text("\n".join(lines) + "\n")
  return records, folder


def task_set_file(tmp_path, name, folder, **fields):
  base = json.loads((ROOT / "configs" / "tasks" / f"{name}.json").read_text())
  base["split_files"]["folder"] = str(folder)
  path = tmp_path / f"{name}.json"
  path.write_text(json.dumps({**base, **fields}))
  return tasks.load_task_set(str(path))


def test_merl_icbeb_reads_the_first_2500_samples_of_every_record(tmp_path):
  records, folder = icbeb_fixture(tmp_path)
  builder = build(pc.Builder, "cpsc2018_5s", tmp_path / "training" / "cpsc_2018",
                  tmp_path / "tfds")
  task_set = task_set_file(tmp_path, "merl_icbeb", folder)
  expected = {role: csv_rows(folder / f"icbeb_{suffix}.csv")
              for role, suffix in ROLE_FILES.items()}
  matches = check_matches(task_set, builder, expected)
  assert matches["test"].missing == ["A9999"]
  assert sum(len(m.records) for m in matches.values()) == len(records)  # 6 s records kept
  for original in (r["ecg"] for r in matches["train"].records):
    record = split_files.first_samples({"ecg": original}, task_set.crop_samples)
    np.testing.assert_array_equal(record["ecg"][:2500], original[:2500])
    assert not record["ecg"][2500:].any() and original[2500:3000].any()


def test_merl_chapman_matches_the_wfdb_release_by_file_name(tmp_path):
  """PhysioNet's ecg-arrhythmia layout (WFDBRecords/NN/NNN/JS#####) and MERL's chapman CSVs,
  whose ids are paths in that layout."""
  header = (MERL / "chapman" / "chapman_train.csv").read_text().split("\n", 1)[0]
  rng = np.random.default_rng(1)
  paths = [f"/chapman/WFDBRecords/{i // 1000 + 1:02d}/{i // 100 + 10:03d}/JS{i:05d}.mat"
           for i in range(1, 13)]
  for path in paths[:-1]:  # the last is named by a split file but not downloaded
    parts = pathlib.PurePosixPath(path).parts
    write_record(tmp_path.joinpath("WFDBRecords", *parts[3:5]), parts[5][:-4],
                 rng.integers(-500, 500, (12, 5000)), 500, 1000, list(LEAD_NAMES),
                 comments=("#Age: 85", "#Sex: Male", "#Dx: 164889003,59118001", "#Rx: Unknown"))
  columns = header.split(",")
  for split, chosen in (("train", paths[:6]), ("val", paths[6:9]), ("test", paths[9:])):
    lines = [header]
    for k, path in enumerate(chosen):
      labels = ["1" if (k + j) % 5 == 0 else "0" for j in range(len(columns) - 3)]
      lines.append(f'{path},60,"SB,TWC",' + ",".join(labels))
    (tmp_path / f"chapman_{split}.csv").write_text("\n".join(lines) + "\n")
  builder = build(pc.Builder, "chapman_ningbo", tmp_path / "WFDBRecords", tmp_path / "tfds")
  task_set = task_set_file(tmp_path, "merl_chapman", tmp_path)
  expected = {role: csv_rows(tmp_path / f"chapman_{suffix}.csv")
              for role, suffix in ROLE_FILES.items()}
  matches = check_matches(task_set, builder, expected)
  assert len(split_files.task_names(task_set.split_files)) == 38
  assert matches["test"].missing == ["JS00012"]


def test_probe_on_split_files_reports_both_selections_and_the_missing(tiny_config, tmp_path):
  _, folder = icbeb_fixture(tmp_path)
  build(pc.Builder, "cpsc2018_5s", tmp_path / "training" / "cpsc_2018", tmp_path / "tfds")
  task_set = task_set_file(tmp_path, "merl_icbeb", folder)
  tiny_config.data.num_samples = 5000
  run = downstream.load_run(None, None, "random", tiny_config)
  out = tmp_path / "out"
  downstream.run_probe(run, task_set, str(out), methods=["linear_probe"], label_fractions=[1.0],
                       seeds=2, n_bootstrap=0, prompts="", data_dir=str(tmp_path / "tfds"),
                       selections=["validation", "max_test"])
  rows = results.read_results(out / "results.csv")
  macro = {r["method"]: r for r in rows if r["task"] == results.MACRO}
  assert set(macro) == {"linear_probe", "linear_probe_max_test"}
  # The test-selected epoch is the best over the epochs run, so never below ours.
  assert macro["linear_probe_max_test"]["auroc"] >= macro["linear_probe"]["auroc"] - 1e-9
  meta = json.loads((out / "meta.json").read_text())
  assert meta["split_files"]["test"]["missing_examples"] == ["A9999"]
  assert meta["splits"] == {"train": 15, "validation": 5, "test": 4}
  text = (out / "results.md").read_text()
  assert "Selected on the TEST set" in text and "4 of 5 records found, 1 missing" in text


def test_split_files_errors_are_one_line(tmp_path):
  _, folder = icbeb_fixture(tmp_path)
  with pytest.raises(ValueError, match="split_files must be"):
    task_set_file(tmp_path, "merl_icbeb", folder, split_files={"folder": str(folder)})
  with pytest.raises(ValueError, match="task_file or split_files"):
    task_set_file(tmp_path, "merl_icbeb", folder, task_file=str(folder / "icbeb_val.csv"))
  (folder / "icbeb_val.csv").rename(folder / "icbeb_validation.csv")
  task_set = task_set_file(tmp_path, "merl_icbeb", folder)
  with pytest.raises(ValueError, match=r"expected one \*_val.csv file"):
    split_files.match_splits(task_set.split_files, [])
  shutil.copy(folder / "icbeb_validation.csv", folder / "icbeb_val.csv")
  bad = dataclasses.replace(task_set, split_files={**task_set.split_files,
                                                   "first_label_column": "AF"})
  with pytest.raises(ValueError, match="no column 'AF'"):
    split_files.match_splits(bad.split_files, [])


@pytest.mark.parametrize("name", [*sorted(SLICE_ROWS), "merl_icbeb", "merl_chapman"])
def test_merl_zero_shot_prompts_cover_every_merl_task(name):
  """MERL's CKEPE_prompt.json is a bank for all its task sets: one prompt string per class."""
  names = split_files.task_names(tasks.resolve_task_set(name).split_files)
  bank = str(MERL / "zeroshot" / "CKEPE_prompt.json")
  prompts = zero_shot.load_prompts(bank, names, bank=True)
  assert list(prompts) == [n for n in json.loads(pathlib.Path(bank).read_text()) if n in names]
  assert set(prompts) == set(names)
  assert all(len(texts) == 1 and len(texts[0]) > 20 for texts in prompts.values())
  with pytest.raises(ValueError, match="names labels the dataset does not have"):
    zero_shot.load_prompts(bank, names)
