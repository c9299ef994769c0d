"""The probe's task data when its records are longer or shorter than the model's input:
accepted at the model's sample rate, embedded as windows averaged per record (and cached per
record), refused at another rate."""

import dataclasses
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ecgclip_jax import api
from ecgclip_jax.data import leads
from ecgclip_jax.evaluators import downstream, results, tasks
from tfds_builders.ecg_manifest import ecg_manifest_dataset_builder as manifest

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "tfds_builders" / "ecg_manifest" / "example"


def _build_example(data_dir, name, signal):
  config = manifest.ManifestConfig(name=name, label_names=("sinus_rhythm", "afib", "lbbb"),
                                   signal=signal)
  manifest.Builder(config=config, data_dir=str(data_dir), file_format="array_record"
                   ).download_and_prepare(download_config=tfds.download.DownloadConfig(
                       manual_dir=str(EXAMPLE)))
  return tasks.TaskSet(name=name, dataset="ecg_manifest", builder_config=name)


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_task_data_of_another_length_is_embedded_as_windows(tiny_config, tmp_path, capsys):
  data_dir = tmp_path / "tfds"
  # The example's 10 s records at 100 Hz kept as 20 s (the build pads them): 2 windows each.
  long_set = _build_example(data_dir, "example_20s",
                            {"sample_rate": 100, "duration_s": 20, "min_duration_s": 5})
  model = api.initialize(tiny_config)
  dataset = downstream.open_task_data(long_set, model, str(data_dir), "")
  assert dataset.num_samples == 2000 != tiny_config.data.num_samples
  source = dataset.source("train")
  out = downstream.embed_cached(model, source, "labels", str(tmp_path / "cache"), "train.npz",
                                "key", "train")
  assert "records of 20.00 s: 2 windows of 10 s, 10 s apart, averaged" in capsys.readouterr().out

  halves = [{"ecg": record["ecg"][start:start + 1000], "lead_mask": record["lead_mask"]}
            for record in source for start in (0, 1000)]
  each = model.embed_source(halves, ("features", "ecg_emb"), label_feature=None)
  n = len(source)
  np.testing.assert_allclose(out["features"], each["features"].reshape(n, 2, -1).mean(1),
                             rtol=0, atol=1e-5)
  np.testing.assert_allclose(out["ecg_emb"], _unit(each["ecg_emb"].reshape(n, 2, -1).mean(1)),
                             rtol=0, atol=1e-6)
  np.testing.assert_array_equal(out["labels"], np.stack([r["labels"] for r in source]))
  cached = downstream.embed_cached(model, source, "labels", str(tmp_path / "cache"),
                                   "train.npz", "key", "train")
  assert set(cached) == set(out)  # per record, read back without embedding again
  for name, values in out.items():
    np.testing.assert_array_equal(cached[name], values)

  # Shorter records (5 s) are zero-padded to the model's 10 s.
  short = [{"ecg": record["ecg"][:500], "lead_mask": record["lead_mask"]} for record in source]
  padded = [{"ecg": np.pad(r["ecg"], ((0, 500), (0, 0))), "lead_mask": r["lead_mask"]}
            for r in short]
  np.testing.assert_allclose(model.embed_windows(short, label_feature=None)["ecg_emb"],
                             model.embed_source(padded, label_feature=None)["ecg_emb"],
                             rtol=0, atol=1e-6)
  assert "records of 5.00 s: zero-padded by 5.00 s" in capsys.readouterr().out

  other_rate = _build_example(data_dir, "example_50hz", {"sample_rate": 50})
  with pytest.raises(ValueError, match=r"example_50hz: .* is sampled at 50 Hz, but the model "
                     r"was trained at 100 Hz"):
    downstream.open_task_data(other_rate, model, str(data_dir), "")


def test_reduced_lead_sets_are_scored_side_by_side(tiny_config, tmp_path):
  """--leads: each lead set's features are the model's features of records whose other
  leads are zero and absent, and the table has a column per lead set."""
  task_set = dataclasses.replace(tasks.resolve_task_set("synthetic"),
                                 num_patients=tiny_config.data.num_patients)
  run = downstream.load_run(None, None, "random", tiny_config)
  out = tmp_path / "out"
  downstream.run_probe(run, task_set, str(out), methods=["linear_probe"], label_fractions=[1.0],
                       seeds=1, n_bootstrap=0, prompts="", data_dir=tiny_config.data.data_dir,
                       lead_sets=["all", "ii, i", "limb"], map_options=downstream.NO_MAP)
  rows = results.read_results(out / "results.csv")
  assert {r["leads"] for r in rows} == {"all", "I,II", "limb"}
  assert "| task | n | pos. | leads all 100% | leads I,II 100% | leads limb 100% |" in (
      out / "results.md").read_text()

  dataset = downstream.open_task_data(task_set, run.model, tiny_config.data.data_dir, "")
  test = dataset.source("test")
  kept = np.isin(np.arange(12), [0, 1])
  by_hand = [{"ecg": np.where(kept, r["ecg"], 0), "lead_mask": r["lead_mask"] & kept}
             for r in test]
  expected = run.model.embed_source(by_hand, ("features",), label_feature=None)["features"]
  _, splits, _ = downstream.prepare_splits(task_set, dataset, run, str(tmp_path / "cache"),
                                           lead_set=leads.parse_lead_set("I,II"))
  np.testing.assert_allclose(splits["test"].features, expected, rtol=0, atol=1e-6)
  _, every_lead, _ = downstream.prepare_splits(task_set, dataset, run, str(tmp_path / "cache"))
  assert np.abs(every_lead["test"].features - expected).max() > 1e-3
