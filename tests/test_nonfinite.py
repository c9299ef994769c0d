"""Non-finite steps: a batch that makes the loss or gradients NaN leaves the state as it was,
and the trainer skips and counts it (recording the batch's record ids) or stops with a
diagnostic, per `nonfinite.policy`; nothing non-finite reaches a checkpoint."""

import json

import jax
import numpy as np
import pytest

from ecgclip_jax import checkpoint, nonfinite, parallel, train_state, training
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.models import hf_import

POISONED = 5  # the record whose ECG holds a NaN


def contract_records(config, n=32, poisoned=(POISONED,)):
  """`n` records of the tiny corpus as plain dicts, the `poisoned` ones with a NaN sample."""
  source = sources.open_dataset(config.data).source("train")
  records = [dict(source[i]) for i in range(n)]
  for i in poisoned:
    ecg = records[i]["ecg"].astype(np.float32)
    ecg[len(ecg) // 2, 1] = np.nan
    records[i]["ecg"] = ecg
  return records


def record_id(record):
  return record["record_id"].decode()


def test_a_non_finite_step_leaves_the_state_as_it_was(tiny_config):
  mesh = parallel.make_mesh(tiny_config.mesh)
  trainer = train_state.Trainer(tiny_config, mesh)
  state = trainer.init(jax.random.key(0), load_pretrained_text=False)
  tokenizer = hf_import.load_tokenizer(tiny_config.text.encoder_dir)
  records = contract_records(tiny_config, n=16)
  transform = pipeline.RecordTransform(tokenizer, tiny_config.text.max_length, "zscore")
  examples = [transform.map(r) for r in records]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  step = jax.jit(trainer.train_step)
  poisoned_state, metrics = step(state, batch)
  assert not bool(metrics["finite"]) and int(metrics["nonfinite_grads"]) > 0
  assert int(poisoned_state.step) == int(state.step) + 1
  for name in ("params", "model_state", "opt_state", "rng"):
    for a, b in zip(jax.tree.leaves(getattr(state, name)),
                    jax.tree.leaves(getattr(poisoned_state, name))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
  # The same batch without the NaN trains (Adam's moments move; step 0's learning rate is 0).
  batch["ecg"] = np.nan_to_num(batch["ecg"])
  clean_state, metrics = step(state, batch)
  assert bool(metrics["finite"]) and int(metrics["nonfinite_grads"]) == 0
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.opt_state),
                                                      jax.tree.leaves(clean_state.opt_state)))


def test_skip_policy_skips_counts_and_records_the_batch(tiny_config, tmp_path, capsys):
  """32 records, batches of 16: the poisoned record is in one batch of each epoch, so 2 of
  the 4 steps are skipped; the others train and every checkpoint is finite."""
  tiny_config.eval.at_end_of_training = False
  records = contract_records(tiny_config)
  state = training.train_and_evaluate(tiny_config, str(tmp_path), train_source=records)
  assert int(state.step) == 4
  assert bool(jax.jit(train_state.all_finite)(state))
  skipped = [json.loads(line) for line in open(tmp_path / "nonfinite_batches.jsonl")]
  assert len(skipped) == 2
  for entry in skipped:
    assert record_id(records[POISONED]) in entry["record_ids"]
    assert len(entry["record_ids"]) == 16 and entry["nonfinite_grads"] > 0
  out = capsys.readouterr().out
  assert f"step {skipped[0]['step']}: loss " in out and "update skipped (1 so far)" in out
  assert record_id(records[POISONED]) not in out  # ids go to the file, not the console
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert logged[-1]["nonfinite_steps"] == 2
  # The learning rate logged is the one each update applied: the schedule at the count of
  # updates applied before it, which the skipped steps did not advance.
  skipped_steps = {entry["step"] for entry in skipped}
  schedule = train_state.learning_rate_schedule(tiny_config)
  for line in logged:
    applied_before = sum(1 for s in range(1, line["step"]) if s not in skipped_steps)
    assert line["learning_rate"] == pytest.approx(float(schedule(applied_before)), rel=1e-6)
  assert any(float(schedule(line["step"] - 1)) != pytest.approx(line["learning_rate"])
             for line in logged)  # the step number would have said otherwise
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == [2, 4]


def test_stop_policy_stops_before_saving_anything_after_the_bad_step(tiny_config, tmp_path):
  tiny_config.eval.at_end_of_training = False
  tiny_config.nonfinite.policy = "stop"
  tiny_config.checkpoint_every_steps = 1
  records = contract_records(tiny_config)
  with pytest.raises(nonfinite.NonFiniteStepError, match=r"step (\d): loss \S+, [\d,]+ non-finite "
                     r"gradient values; .* Stopped \(nonfinite.policy='stop'\)") as error:
    training.train_and_evaluate(tiny_config, str(tmp_path), train_source=records)
  bad_step = int(error.value.args[0].split(":")[0].split()[1])
  saved = checkpoint.make_manager(str(tmp_path), read_only=True).all_steps()
  assert saved == list(range(1, bad_step))
  [entry] = [json.loads(line) for line in open(tmp_path / "nonfinite_batches.jsonl")]
  assert entry["step"] == bad_step and record_id(records[POISONED]) in entry["record_ids"]


def test_too_many_non_finite_steps_in_a_row_stop_a_skipping_run(tiny_config, tmp_path):
  tiny_config.eval.at_end_of_training = False
  tiny_config.nonfinite.max_consecutive = 2
  records = contract_records(tiny_config, poisoned=range(32))
  with pytest.raises(nonfinite.NonFiniteStepError, match="after 2 non-finite steps in a row"):
    training.train_and_evaluate(tiny_config, str(tmp_path), train_source=records)
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == []
