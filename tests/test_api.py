"""The Python API on a real trained checkpoint: the README example as written, the same
numbers as the evaluation pass, the portable model folder round trip (in a process that has
neither the workdir nor TFDS data), and inference sharded by the FSDP rule."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import ecgclip_jax
from ecgclip_jax import api, evaluation, parallel, training
from ecgclip_jax.data import contract, pipeline, sources, synthetic
from ecgclip_jax.data.leads import LEAD_NAMES
from train_runs import env_with, make_tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_text_encoder_dir, tfds_data_dir, tmp_path_factory):
  """A tiny run trained for 2 steps, at `<cwd>/workdirs/demo` as the README example names it."""
  cwd = tmp_path_factory.mktemp("api")
  config = make_tiny_config(tiny_text_encoder_dir, tfds_data_dir)
  config.eval.at_end_of_training = False
  config.total_steps = 2
  workdir = cwd / "workdirs" / "demo"
  training.train_and_evaluate(config, str(workdir))
  return cwd, workdir, config


def _python_block(markdown: str, heading: str) -> str:
  section = markdown.split(heading, 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs_as_written(trained, monkeypatch, capsys):
  cwd, _, _ = trained
  rng = np.random.default_rng(0)
  ecgs = np.stack([synthetic.synthesize(synthetic.labels_of(name), 500, seed=int(rng.integers(99)),
                                        duration_s=10)[0].ecg
                   for name in ("normal_sinus_rhythm", "atrial_fibrillation")])
  np.save(cwd / "ecgs.npy", ecgs)  # [2, 5000, 12] mV at 500 Hz, as the example says
  monkeypatch.chdir(cwd)
  exec(_python_block((REPO / "README.md").read_text(), "## Use from Python"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "normal_sinus_rhythm" in printed and "[[" in printed


def test_api_embeddings_are_the_evaluation_pass_embeddings(trained):
  _, workdir, config = trained
  model = ecgclip_jax.load(str(workdir))
  assert model.step == 2 and model.embed_dim == config.model.embed_dim
  dataset = sources.open_dataset(config.data)
  reference = evaluation.embed_split(model, dataset, "test")  # what `evaluate` scores
  test = dataset.source("test")
  n = min(12, len(test))
  raw_mv = np.stack([test[i]["ecg"] / 1000.0 for i in range(n)])  # [n, 1000, 12] at 100 Hz
  # The leads given in another order and spelling: the model reorders them itself.
  order = np.random.default_rng(1).permutation(12)
  leads = [LEAD_NAMES[j].upper() for j in order]
  emb = model.embed_ecg(raw_mv[:, :, order], sample_rate=100, leads=leads)
  np.testing.assert_allclose(emb, reference["ecg_emb"][:n], rtol=0, atol=1e-5)
  one = model.embed_ecg(raw_mv[0] * 1000, sample_rate=100, units="uV")
  np.testing.assert_allclose(one, reference["ecg_emb"][0], rtol=0, atol=1e-5)
  reports = [contract.text(test[i]["report"]) for i in range(n)]
  np.testing.assert_allclose(model.embed_text(reports), reference["text_emb"][:n], rtol=0,
                             atol=1e-5)
  ecg = np.stack([test[i]["ecg"] for i in range(n)])
  masks = np.stack([test[i]["lead_mask"] for i in range(n)])
  np.testing.assert_allclose(model.embed_ecg_prepared(ecg, masks), reference["ecg_emb"][:n],
                             rtol=0, atol=1e-5)

  scores = model.zero_shot(raw_mv[:3], {"mine": "atrial fibrillation", "other": ["normal ECG"]},
                           sample_rate=100)
  classes = model.embed_text(["atrial fibrillation", "normal ECG"])
  np.testing.assert_allclose(scores["mine"], emb[:3] @ classes[0], atol=1e-5)
  assert set(model.zero_shot(raw_mv[0], sample_rate=100)) == set(model.inputs.prompts)

  with pytest.raises(ValueError, match=r"record 1 cannot be used: too_many_nonfinite"):
    model.embed_ecg(np.stack([raw_mv[0], np.pad(raw_mv[1][:300], ((0, 700), (0, 0)),
                                                constant_values=np.nan)]), sample_rate=100)
  with pytest.raises(ValueError, match=r"looks \[N, lead, time\]"):
    model.embed_ecg(raw_mv.transpose(0, 2, 1), sample_rate=100)
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 7"):
    ecgclip_jax.load(f"{workdir}@7")


def _unit_mean(vectors):
  mean = np.mean(vectors, axis=0)
  return mean / np.linalg.norm(mean)


def test_records_of_other_lengths_as_windows_padded_or_rejected(trained):
  """A longer record read whole is the renormalized mean of its windows' embeddings, each
  embedded on its own; by default it is cropped as the build crops. A shorter one is the
  zero-padded record's embedding, or rejected. Each says how it was fit."""
  _, workdir, _ = trained
  model = ecgclip_jax.load(str(workdir))
  x = np.round(synthetic.synthesize(synthetic.labels_of("atrial_fibrillation"), 100,
                                    duration_s=20, seed=3)[0].ecg, 3)  # [2000, 12] mV
  halves = model.embed_ecg(np.stack([x[:1000], x[1000:]]), sample_rate=100)
  emb, fit = model.embed_ecg(x, sample_rate=100, long="window", notes=True)
  np.testing.assert_allclose(emb, _unit_mean(halves), rtol=0, atol=1e-6)
  assert fit == {"windows": 2, "padded_samples": 0,
                 "note": "20.00 s: 2 windows of 10 s, 10 s apart, averaged"}
  np.testing.assert_allclose(model.embed_ecg(x, sample_rate=100), halves[0], rtol=0, atol=1e-6)

  # Overlapping windows, 2.5 s apart: starts 0, 250 and 500 of a 15 s record.
  windows = model.embed_ecg(np.stack([x[s:s + 1000] for s in (0, 250, 500)]), sample_rate=100)
  overlap, fits = model.embed_ecg(x[None, :1500], sample_rate=100, long="window",
                                  window_stride_s=2.5, notes=True)
  np.testing.assert_allclose(overlap[0], _unit_mean(windows), rtol=0, atol=1e-6)
  assert [f["windows"] for f in fits] == [3]

  # Zero-shot scores with the windows' mean embedding.
  scores, fit = model.zero_shot(x, {"afib": "atrial fibrillation"}, sample_rate=100,
                                long="window", notes=True)
  assert fit["windows"] == 2
  assert scores["afib"] == pytest.approx(float(emb @ model.embed_text(["atrial fibrillation"])[0]),
                                         abs=1e-5)

  # 9.95 s (above the build's 9.9 s minimum): padded with zeros, or rejected.
  padded, fit = model.embed_ecg(x[:995], sample_rate=100, notes=True)
  np.testing.assert_allclose(padded, model.embed_ecg(np.pad(x[:995], ((0, 5), (0, 0))),
                                                     sample_rate=100), rtol=0, atol=1e-6)
  assert fit == {"windows": 1, "padded_samples": 5, "note": "9.95 s: zero-padded by 0.05 s"}
  with pytest.raises(ValueError, match=r"record 0 cannot be used: wrong_duration: 9.95 s < "
                     r"10.00 s \(short='reject'\)"):
    model.embed_ecg(x[:995], sample_rate=100, short="reject")


def test_text_features_by_report_length_are_the_full_length_features(trained):
  """Model.text_features (what text.precompute_features feeds the train step) pads each
  group of reports only to its length bucket: in source order, the pooled features of one
  pass at text.max_length (float32; atol 1e-5), which the projection turns into the
  model's report embeddings."""
  _, workdir, config = trained
  model = ecgclip_jax.load(str(workdir))
  train = sources.open_dataset(config.data).source("train")
  counts = pipeline.token_counts(train, model.tokenizer, config.text.max_length)
  assert len(np.unique(np.minimum(-(-counts // 8) * 8, config.text.max_length))) >= 2
  full = model.embed_source(train, ("text_features", "text_emb"), label_feature=None)
  features = model.text_features(train)
  np.testing.assert_allclose(features, full["text_features"], rtol=0, atol=1e-5)
  projected = jax.jit(lambda weights, x: model.model_def.model(*weights).project_text(x))
  np.testing.assert_allclose(projected(model.weights, features), full["text_emb"], rtol=0,
                             atol=1e-5)


def test_export_round_trip_needs_no_workdir_tfds_or_checkpoint(trained, tmp_path):
  _, workdir, config = trained
  env = env_with(PYTHONPATH=str(REPO))
  out = tmp_path / "exported"
  subprocess.run([sys.executable, "-m", "ecgclip_jax.export", f"--workdir={workdir}",
                  f"--out={out}"], check=True, env=env, timeout=600, cwd=REPO)
  assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "README.md",
                                             "text_encoder"}
  assert "tokenizer_config.json" in os.listdir(out / "text_encoder")
  stored = json.loads((out / "config.json").read_text())
  assert stored["trained"]["step"] == 2 and stored["inputs"]["normalization"] == "zscore"
  assert "## Training" in (out / "README.md").read_text()

  dataset = sources.open_dataset(config.data)
  test = dataset.source("test")
  ecg = np.stack([test[i]["ecg"] for i in range(len(test))])
  reports = [contract.text(test[i]["report"]) for i in range(len(test))]
  np.save(tmp_path / "ecg.npy", ecg)
  (tmp_path / "reports.json").write_text(json.dumps(reports))
  moved = tmp_path / "moved"
  shutil.copytree(out, moved)  # a colleague's copy, with the workdir and the TFDS data gone
  script = f"""
import json, sys
import numpy as np
import ecgclip_jax
model = ecgclip_jax.load({str(moved)!r})
np.save({str(tmp_path / "folder_ecg.npy")!r}, model.embed_ecg_prepared(np.load({str(tmp_path / "ecg.npy")!r})))
np.save({str(tmp_path / "folder_text.npy")!r},
        model.embed_text(json.loads(open({str(tmp_path / "reports.json")!r}).read())))
# Neither our Orbax checkpoint code nor TFDS ran (grain itself imports orbax).
loaded = [m for m in ("ecgclip_jax.checkpoint", "ecgclip_jax.data.sources", "tensorflow_datasets")
          if m in sys.modules]
assert not loaded, loaded
"""
  env |= {"TFDS_DATA_DIR": str(tmp_path / "no_tfds_data"), "HOME": str(tmp_path)}
  subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=600,
                 cwd=tmp_path)

  model = ecgclip_jax.load(str(workdir))
  np.testing.assert_allclose(np.load(tmp_path / "folder_ecg.npy"),
                             model.embed_ecg_prepared(ecg), rtol=0, atol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / "folder_text.npy"), model.embed_text(reports),
                             rtol=0, atol=1e-6)
  folder = ecgclip_jax.load(str(out))
  for a, b in zip(jax.tree.leaves(folder.weights), jax.tree.leaves(model.weights)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert folder.inputs == model.inputs


def test_inference_restores_weights_only_and_shards_them_by_the_fsdp_rule(trained, capsys):
  _, workdir, config = trained
  replicated = api.load_checkpoint(str(workdir), mesh={"data": -1})
  fsdp = api.load_checkpoint(str(workdir), mesh={"data": 1, "fsdp": -1})
  assert len(jax.devices()) == 8
  # Parameters and BatchNorm statistics only: the restored tree has no optimizer state.
  assert [type(w) for w in fsdp.weights] == [dict, dict]
  for a, b in zip(jax.tree.leaves(fsdp.weights), jax.tree.leaves(replicated.weights)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  full = sum(x.nbytes for x in jax.tree.leaves(replicated.weights))
  expected = sum(x.nbytes // 8 if parallel.fsdp_spec(x.shape, 8, config.sharding.fsdp_min_size)
                 else x.nbytes for x in jax.tree.leaves(fsdp.weights))
  assert parallel.bytes_per_device(replicated.weights) == full
  assert parallel.bytes_per_device(fsdp.weights) == expected < full / 2

  # The evaluation pass's report-embedding step (the tiny model's one array above
  # fsdp_min_size is the text tower's word table): its parameter bytes on one device.
  tokens = np.zeros((16, config.text.max_length), np.int32)
  def parameter_bytes(model):
    ids = parallel.shard_rows(tokens, model.mesh)
    compiled = jax.jit(model.model_def.embed_text).lower(*model.weights, ids, ids).compile()
    return compiled.memory_analysis().argument_size_in_bytes - 2 * ids.nbytes // 8

  print(f"\nper-device parameter bytes, 8 devices: replicated {full:,} (report-embedding "
        f"step {parameter_bytes(replicated):,}), FSDP {expected:,} (step "
        f"{parameter_bytes(fsdp):,})")
  assert parameter_bytes(fsdp) < parameter_bytes(replicated) / 2
  test = sources.open_dataset(config.data).source("test")
  np.testing.assert_allclose(fsdp.embed_source(test)["ecg_emb"],
                             replicated.embed_source(test)["ecg_emb"], rtol=0, atol=1e-5)
