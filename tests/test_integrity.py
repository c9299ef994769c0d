"""Damaged checkpoints: each kind of damage is found before restore, reported in one line
naming the step and the problem, set aside, and the previous intact step is used."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgclip_jax import checkpoint, integrity, training
from ecgclip_jax.config_defaults import default_config
from train_runs import largest_array_file, truncate_array_file


def flip_a_byte(step_dir):
  path = largest_array_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  return re.escape(os.path.relpath(path, step_dir)) + " fails its CRC-32 check"


def delete(name, message):
  def damage(step_dir):
    os.remove(step_dir / name)
    return message
  return damage


def overwrite(name, text, message):
  def damage(step_dir):
    (step_dir / name).write_text(text)
    return message
  return damage


DAMAGE = {
    "truncated array file": truncate_array_file,
    "flipped byte": flip_a_byte,
    "missing commit marker": delete("commit_success.txt",
                                    "commit marker commit_success.txt is missing"),
    "deleted tree metadata": delete(os.path.join("state", "_METADATA"),
                                    "state/_METADATA is missing"),
    "deleted step metadata": delete("_CHECKPOINT_METADATA", "_CHECKPOINT_METADATA is missing"),
    "unreadable manifest": overwrite(integrity.MANIFEST, "{",
                                     "integrity manifest .* is unreadable"),
}


def fresh_state(step):
  values = np.random.default_rng(step).normal(size=(3, 5000)).astype(np.float32)
  return {"w": jnp.asarray(values), "step": jnp.int32(step)}


def abstract():
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                      fresh_state(0))


def save_steps(workdir, steps, keep=5):
  checkpoints = checkpoint.SealedCheckpoints(str(workdir), keep=keep)
  for step in steps:
    checkpoints.save(step, fresh_state(step), default_config())
  checkpoints.close()


def restore(workdir):
  lines = []
  checkpoints = checkpoint.SealedCheckpoints(str(workdir), keep=5)
  step, state = checkpoints.restore_newest_intact(abstract(), lines.append)
  remaining = checkpoints.manager.all_steps()
  checkpoints.close()
  return step, state, lines, remaining


def test_intact_checkpoints_are_sealed_and_pass(tmp_path):
  save_steps(tmp_path, [1, 2])
  for step in (1, 2):
    assert integrity.problem(tmp_path / "checkpoints" / str(step)) is None
    assert (tmp_path / "checkpoints" / str(step) / integrity.MANIFEST).exists()
  step, state, lines, _ = restore(tmp_path)
  assert step == 2 and not lines
  np.testing.assert_array_equal(state["w"], fresh_state(2)["w"])


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_newest_step_is_reported_set_aside_and_the_previous_one_used(tmp_path, kind):
  save_steps(tmp_path, [1, 2, 3])
  message = DAMAGE[kind](tmp_path / "checkpoints" / "3")
  step, state, lines, remaining = restore(tmp_path)
  assert step == 2
  np.testing.assert_array_equal(state["w"], fresh_state(2)["w"])
  assert len(lines) == 1 and "\n" not in lines[0]
  assert re.match(f"checkpoint step 3 is unusable: {message}", lines[0]), lines[0]
  assert remaining == [1, 2]
  assert (tmp_path / "checkpoints_unusable" / "3").is_dir()  # kept for inspection


def test_two_damaged_steps_fall_back_two_steps(tmp_path):
  save_steps(tmp_path, [1, 2, 3])
  truncate_array_file(tmp_path / "checkpoints" / "3")
  delete("commit_success.txt", "")(tmp_path / "checkpoints" / "2")
  step, state, lines, _ = restore(tmp_path)
  assert step == 1 and [line.split(":")[0] for line in lines] == [
      "checkpoint step 3 is unusable", "checkpoint step 2 is unusable"]
  np.testing.assert_array_equal(state["w"], fresh_state(1)["w"])


def test_an_unsealed_step_that_fails_to_restore_is_passed_over(tmp_path):
  """Steps written before seals existed are trusted only as far as they restore."""
  manager = checkpoint.make_manager(str(tmp_path), keep=5)
  for step in (1, 2):
    checkpoint.save(manager, step, fresh_state(step), default_config())
  manager.close()
  truncate_array_file(tmp_path / "checkpoints" / "2")
  step, _, lines, _ = restore(tmp_path)
  assert step == 1
  assert lines[0].startswith("checkpoint step 2 is unusable: restore failed: ")


def test_an_intact_step_that_does_not_fit_the_model_is_an_error_not_damage(tmp_path):
  """A changed config (another shape) must not make a run set its checkpoints aside."""
  save_steps(tmp_path, [1])
  checkpoints = checkpoint.SealedCheckpoints(str(tmp_path), keep=5)
  other = jax.tree.map(lambda x: jax.ShapeDtypeStruct((7, *x.shape[1:]) if x.ndim else (),
                                                      x.dtype, sharding=x.sharding), abstract())
  with pytest.raises(Exception):
    checkpoints.restore_newest_intact(other, pytest.fail)
  checkpoints.close()
  assert (tmp_path / "checkpoints" / "1").is_dir()
  assert not (tmp_path / "checkpoints_unusable").exists()


def test_no_intact_step_means_a_fresh_start(tmp_path):
  save_steps(tmp_path, [1])
  truncate_array_file(tmp_path / "checkpoints" / "1")
  step, state, lines, _ = restore(tmp_path)
  assert (step, state) == (None, None) and len(lines) == 1


def test_non_finite_state_is_never_written(tmp_path):
  checkpoints = checkpoint.SealedCheckpoints(str(tmp_path), keep=5)
  bad = fresh_state(1)
  bad["w"] = bad["w"].at[1, 7].set(jnp.inf)
  with pytest.raises(FloatingPointError, match="refusing to checkpoint step 1"):
    checkpoints.save(1, bad, default_config())
  checkpoints.close()
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == []


def test_training_resumes_from_the_step_before_a_damaged_one(tiny_config, tmp_path, capsys):
  """End to end: the rerun reports the damaged step 4, resumes from 2 and reaches the same
  step-4 state as the first run."""
  tiny_config.eval.at_end_of_training = False
  first = training.train_and_evaluate(tiny_config, str(tmp_path))
  truncate_array_file(tmp_path / "checkpoints" / "4")
  capsys.readouterr()
  again = training.train_and_evaluate(tiny_config, str(tmp_path))
  out = capsys.readouterr().out
  assert "checkpoint step 4 is unusable: state/" in out
  assert "resumed from checkpoint step 2" in out
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
