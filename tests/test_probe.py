"""The downstream job end to end: a real checkpoint, real builds, every method, real tables."""

import csv
import dataclasses
import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax import training
from ecgclip_jax.data import sources
from ecgclip_jax.evaluators import downstream, finetune, results, tasks

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = "configs/prompts/synthetic_ecg_reports.json"


def _rows(out_dir):
  with open(out_dir / "results.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_pretrained_and_random_init_runs_side_by_side(tiny_config, tmp_path, capsys):
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 2
  training.train_and_evaluate(tiny_config, str(tmp_path / "run"))
  task_set = dataclasses.replace(tasks.resolve_task_set("synthetic"),
                                 num_patients=tiny_config.data.num_patients)
  tiny_finetune = finetune.FinetuneConfig(max_epochs=1, batch_size=16, eval_batch_size=16)

  pretrained = downstream.load_run(str(tmp_path / "run"), None, "pretrained", None)
  assert pretrained.pretrained and "step 2" in pretrained.name
  out = tmp_path / "pretrained"
  downstream.run_probe(pretrained, task_set, str(out),
                  methods=["zero_shot", "linear_probe", "finetune"], label_fractions=[0.5, 1.0],
                  seeds=2, n_bootstrap=50, prompts=PROMPTS,
                  data_dir=tiny_config.data.data_dir, finetune_config=tiny_finetune)
  rows = _rows(out)
  test_split = sources.open_dataset(tiny_config.data).source("test")
  truth = np.stack([test_split[i]["labels"] for i in range(len(test_split))])
  names = sources.open_dataset(tiny_config.data).label_names
  cells = {(r["method"], float(r["fraction"])) for r in rows}
  assert cells == {("zero_shot", 1.0), ("linear_probe", 0.5), ("linear_probe", 1.0),
                   ("finetune", 0.5), ("finetune", 1.0)}
  for method, fraction in cells:
    cell = [r for r in rows if (r["method"], float(r["fraction"])) == (method, fraction)]
    assert [r["task"] for r in cell].count(results.MACRO) == 1
    for r in cell:
      if r["task"] == results.MACRO:
        continue
      # Every test record counted exactly once, positives straight from the split.
      assert int(r["n"]) == len(test_split)
      assert int(r["positives"]) == truth[:, names.index(r["task"])].sum()
      if r["status"] == "ok":
        assert 0 <= float(r["prauc_lo"]) <= float(r["prauc_hi"]) <= 1
    scored = [float(r["prauc"]) for r in cell if r["status"] == "ok" and r["task"] != "macro"]
    macro = next(r for r in cell if r["task"] == results.MACRO)
    assert float(macro["prauc"]) == pytest.approx(np.mean(scored))
  meta = json.loads((out / "meta.json").read_text())
  assert meta["splits"]["test"] == len(test_split) and meta["seeds"] == 2
  assert "macro" in (out / "results.md").read_text()

  random_run = downstream.load_run(None, None, "random", tiny_config)
  assert not random_run.pretrained
  downstream.run_probe(random_run, task_set, str(tmp_path / "random"),
                  methods=["linear_probe", "zero_shot"], label_fractions=[1.0], seeds=1,
                  n_bootstrap=20, prompts=PROMPTS, data_dir=tiny_config.data.data_dir)
  assert {r["method"] for r in _rows(tmp_path / "random")} == {"linear_probe"}  # no zero-shot

  table = results.comparison([str(out), str(tmp_path / "random")])
  assert pretrained.name in table and random_run.name in table
  assert "finetune" in table and "linear_probe" in table


def test_a_task_file_joins_outcomes_to_the_dataset_by_record_id(tiny_config, tmp_path):
  from tfds_builders.ecg_manifest import ecg_manifest_dataset_builder as manifest
  config = manifest.ManifestConfig(name="example", label_names=("sinus_rhythm", "afib", "lbbb"),
                                   signal={"sample_rate": 100})
  builder = manifest.Builder(config=config, data_dir=str(tmp_path / "tfds"),
                             file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(REPO / "tfds_builders" / "ecg_manifest" / "example")))
  task_set = tasks.resolve_task_set("hospital_example")
  run = downstream.load_run(None, None, "random", tiny_config)
  downstream.run_probe(run, task_set, str(tmp_path / "out"), methods=["linear_probe"],
                  label_fractions=[1.0], seeds=1, n_bootstrap=20, prompts="",
                  data_dir=str(tmp_path / "tfds"))
  rows = _rows(tmp_path / "out")
  assert {r["task"] for r in rows} == {"macro", "incident_af_1y", "reduced_ef", "hyperkalemia"}
  meta = json.loads((tmp_path / "out" / "meta.json").read_text())
  test_ids = {_text(r["record_id"]) for r in builder.as_data_source("test")}
  task_ids = {line.split(",")[0] for line in
              (REPO / "configs" / "tasks" / "hospital_example_tasks.csv").read_text().split()[1:]}
  assert meta["splits"]["test"] == len(test_ids & task_ids)


def _text(value):
  return value.decode() if isinstance(value, bytes) else value
