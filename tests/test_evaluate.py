"""The evaluation job restores a real checkpoint and scores every test record exactly once."""

import json

import pytest

from ecgclip_jax import evaluation, training
from ecgclip_jax.data import sources


def test_evaluate_a_tiny_checkpoint(tiny_config, tmp_path, capsys):
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 2
  training.train_and_evaluate(tiny_config, str(tmp_path))

  results = evaluation.evaluate_checkpoint(str(tmp_path))  # the model from the checkpoint
  test_split = sources.open_dataset(tiny_config.data).source("test")
  assert results["step"] == 2
  # eval batch 16 over 8 devices: the split is padded, yet each record counts once.
  assert results["num_examples"] == len(test_split)
  assert len(test_split) % tiny_config.eval.batch_size != 0
  on_disk = json.loads((tmp_path / "eval" / "2" / "metrics.json").read_text())
  assert on_disk == json.loads(json.dumps(results))
  zs = on_disk["zero_shot"]
  assert set(zs["per_label"]) | set(zs["undefined"]) == set(sources.open_dataset(tiny_config.data).label_names)
  for m in zs["per_label"].values():
    assert 0 <= m["auroc"] <= 1 and 0 < m["prauc"] <= 1
  recalls = on_disk["retrieval"]["ecg_to_report"]
  assert recalls["recall@1"] <= recalls["recall@5"] <= recalls["recall@10"] <= 1
  assert "macro (zero-shot)" in capsys.readouterr().out


def test_watch_evaluates_each_checkpoint_once_and_missing_step_is_a_clear_error(
    tiny_config, tmp_path, capsys):
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 4  # checkpoints at steps 2 and 4
  assert evaluation.watch(str(tmp_path), tiny_config, poll_seconds=0.01,
                          idle_timeout=0.05) == []
  assert "no new checkpoint" in capsys.readouterr().out  # nothing to watch yet: gives up

  training.train_and_evaluate(tiny_config, str(tmp_path))
  assert evaluation.watch(str(tmp_path), tiny_config, poll_seconds=0.01) == [2, 4]
  for step in (2, 4):
    assert json.loads((tmp_path / "eval" / str(step) / "metrics.json").read_text())["step"] == step
  # A restarted watcher finds everything evaluated and the final step present: returns at once.
  assert evaluation.watch(str(tmp_path), poll_seconds=0.01) == []  # final step: stored config

  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .* available steps: \[2, 4\]"):
    evaluation.evaluate_checkpoint(str(tmp_path), step=7)
