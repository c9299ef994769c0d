"""The trainer end to end on a tiny synthetic corpus: checkpoints, exact resume, errors."""

import json
import os
import shutil
import signal

import jax
import numpy as np
import pytest

from ecgclip_jax import checkpoint, training
from ecgclip_jax.config_defaults import config_problems, default_config, validate_config
from ecgclip_jax.data import sources


def test_train_writes_checkpoints_metrics_and_eval(tiny_config, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  state = training.train_and_evaluate(tiny_config, workdir)
  assert int(state.step) == 4
  manager = checkpoint.make_manager(workdir, read_only=True)
  assert manager.all_steps() == [2, 4]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]
  assert all(np.isfinite(l["loss"]) and l["logit_scale"] > 0 for l in lines)
  # The profiler is tested in a command of its own (test_cloud_storage), not here: this test
  # once segfaulted its long-lived pytest-xdist worker while tracing (cause not found).
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert json.load(open(os.path.join(workdir, "config.json"))) == json.loads(
      tiny_config.to_json())  # the resolved config, readable without Orbax
  metrics = json.load(open(os.path.join(workdir, "eval", "4", "metrics.json")))
  assert metrics["step"] == 4
  assert 0 <= metrics["zero_shot"]["macro"]["auroc"] <= 1
  out = capsys.readouterr().out
  assert "step 4/4" in out and "ex/s" in out and "ETA" in out
  assert "macro (zero-shot)" in out


def test_resume_from_a_checkpoint_continues_exactly(tiny_config, tmp_path, capsys):
  """Resuming from the step-2 checkpoint of a 4-step run reproduces that run's step 4:
  parameters, BatchNorm statistics, optimizer state and data-iterator position all restored.
  The logs a kill -9 left mid-append (a torn last line) are resumed too."""
  tiny_config.eval.at_end_of_training = False
  straight_dir = tmp_path / "straight"
  straight = training.train_and_evaluate(tiny_config, str(straight_dir))

  resumed_dir = tmp_path / "resumed"
  shutil.copytree(straight_dir / "checkpoints" / "2", resumed_dir / "checkpoints" / "2")
  straight_lines = [json.loads(l) for l in open(straight_dir / "metrics.jsonl")]
  logged = open(straight_dir / "metrics.jsonl").read().splitlines(keepends=True)
  (resumed_dir / "metrics.jsonl").write_text("".join(logged[:3]) + logged[3][:9])
  (resumed_dir / "nonfinite_batches.jsonl").write_text('{"step": 1, "loss": "nan", "rec')
  capsys.readouterr()
  resumed = training.train_and_evaluate(tiny_config, str(resumed_dir))
  assert capsys.readouterr().out.count("dropped a half-written last line") == 2
  assert int(resumed.step) == 4
  lines = [json.loads(l) for l in open(resumed_dir / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [1, 2, 3, 4]  # steps 1-2 kept; 3-4 written again
  assert (resumed_dir / "nonfinite_batches.jsonl").read_text() == ""
  assert lines[-1]["loss"] == pytest.approx(straight_lines[-1]["loss"], rel=1e-5)
  for name in ("params", "model_state", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(straight, name)), jax.tree.leaves(getattr(resumed, name))):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_a_frozen_text_tower_trains_the_same_on_precomputed_features(tiny_config, tmp_path):
  """text.precompute_features: the frozen tower's features of every training record,
  computed once before the first step and fed with their records, train the same weights
  as running the tower in every step (float32, 4 AdamW steps; rtol 1e-4 / atol 1e-6)."""
  tiny_config.text.trainable_top_layers = 0
  tiny_config.eval.at_end_of_training = False
  states = {}
  for precompute in (True, False):
    tiny_config.text.precompute_features = precompute
    states[precompute] = training.train_and_evaluate(tiny_config, str(tmp_path / str(precompute)))
  for name in ("params", "model_state"):
    for got, want in zip(jax.tree.leaves(getattr(states[True], name)),
                         jax.tree.leaves(getattr(states[False], name))):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_training_leaves_out_records_without_a_report_and_drops_leads(tiny_config, tmp_path,
                                                                       capsys):
  """Every other training record has no report, and no ECG either: reading one would fail
  the run, so finishing shows none entered training; the log counts them. Lead dropout
  (every record reduced) changes what the same records train on: the first loss moves."""
  tiny_config.eval.at_end_of_training = False  # as other tests: their compiled step serves
  train = list(sources.open_dataset(tiny_config.data).source("train"))
  source = [r if i % 2 else {**{k: v for k, v in r.items() if k != "ecg"}, "report": b""}
            for i, r in enumerate(train)]
  first_loss = {}
  for rate in (0.0, 1.0):
    tiny_config.data.lead_dropout = rate
    workdir = tmp_path / str(rate)
    training.train_and_evaluate(tiny_config, str(workdir), train_source=source)
    first_loss[rate] = json.loads(open(workdir / "metrics.jsonl").readline())["loss"]
  without_report = len(train) - len(train) // 2
  assert capsys.readouterr().out.count(
      f"left {without_report} training records without a report out of contrastive training "
      f"({len(train) // 2} remain)") == 2
  assert np.isfinite(first_loss[1.0]) and first_loss[1.0] != first_loss[0.0]


def test_rerun_of_a_finished_run_does_not_train_again(tiny_config, tmp_path, capsys):
  tiny_config.eval.at_end_of_training = False
  training.train_and_evaluate(tiny_config, str(tmp_path))
  capsys.readouterr()
  state = training.train_and_evaluate(tiny_config, str(tmp_path))
  assert int(state.step) == 4
  out = capsys.readouterr().out
  assert "resumed from checkpoint step 4" in out and "training already complete" in out


def test_locked_defaults_reject_misspelt_keys_where_written():
  c = default_config()
  with pytest.raises(AttributeError):
    c.optim.learning_rat = 1.0
  validate_config(c)


def test_lead_dropout_settings_are_checked_up_front():
  c = default_config()
  c.data.lead_dropout, c.data.lead_dropout_sets = 1.5, "I;I,II;V7"
  problems = config_problems(c)
  assert "data.lead_dropout must be in [0, 1], got 1.5" in problems
  assert any(p.startswith("data.lead_dropout_sets: 'V7' is not a lead") for p in problems)


def test_sigterm_in_a_single_process_run_is_noticed_at_the_next_step():
  from ecgclip_jax import preemption
  before = signal.getsignal(signal.SIGTERM)
  watch = preemption.PreemptionWatch()
  assert not watch.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)
  assert watch.reached(2)
  watch.close()
  assert signal.getsignal(signal.SIGTERM) is before
