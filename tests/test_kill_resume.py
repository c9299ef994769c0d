"""Crash-proof training: a run killed with SIGKILL at random points, one of them while an
asynchronous checkpoint save is being written, and relaunched each time, ends with exactly
the parameters, optimizer state, BatchNorm statistics and RNG of the run that was never
interrupted (bitwise, on CPU), in one process and in two."""

import json
import os
import random
import signal
import subprocess
import threading
import time

import jax
import numpy as np
import pytest

from ecgclip_jax import checkpoint, integrity
from train_runs import LOCAL_SH, ROOT, env_with, restored_state, train_command

TOTAL_STEPS = 10
RUN = [f"--config.total_steps={TOTAL_STEPS}", "--config.checkpoint_every_steps=2",
       "--config.keep_checkpoints=1"]  # keep 1: a kill mid-save must not lose the only one


def launch(run_args, workdir, processes):
  command = train_command(run_args, workdir, *RUN)
  if processes > 1:
    command = ["bash", LOCAL_SH, f"--num_processes={processes}", "--cpu_devices=2", "--",
               *command]
  return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env_with(JAX_NUM_CPU_DEVICES="2"),
                          start_new_session=True)


def kill_all(proc):
  """SIGKILL to the trainer and, under local.sh, to every process it started."""
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)


def saves_in_progress(workdir):
  folder = workdir / "checkpoints"
  if not folder.exists():
    return []
  return [p for p in folder.iterdir() if "orbax-checkpoint-tmp" in p.name]


def last_logged_step(workdir):
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (FileNotFoundError, ValueError):  # not yet written, or a line half written
    return 0


def run_until_killed(run_args, workdir, processes, kill_when=None):
  """Runs the trainer, and SIGKILLs it the moment `kill_when(workdir)` holds (polled every
  millisecond, from the files the run writes: its piped output can lag behind). Returns the
  output and whether a checkpoint save was left unfinished."""
  proc = launch(run_args, workdir, processes)

  def watch():
    while proc.poll() is None:
      if kill_when(workdir):
        kill_all(proc)
        return
      time.sleep(0.001)

  watcher = threading.Thread(target=watch, daemon=True)
  if kill_when is not None:
    watcher.start()
  output = proc.communicate(timeout=600)[0]
  if kill_when is not None:
    watcher.join()
  return output, bool(saves_in_progress(workdir))


def committed_steps(workdir):
  manager = checkpoint.make_manager(str(workdir), read_only=True)
  return [s for s in manager.all_steps()
          if integrity.problem(workdir / "checkpoints" / str(s)) is None]


def assert_bit_identical(a, b):
  for name in ("step", "params", "model_state", "opt_state", "rng"):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      assert np.array_equal(np.asarray(x), np.asarray(y)), name


def losses(workdir):
  return {(line := json.loads(text))["step"]: line["loss"]
          for text in open(workdir / "metrics.jsonl")}


@pytest.mark.parametrize("processes,kills", [(1, 2), (2, 1)])
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_result(
    run_args, tmp_path, processes, kills):
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed)
  straight = tmp_path / "straight"
  out, _ = run_until_killed(run_args, straight, processes)
  assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out, out

  killed = tmp_path / "killed"
  newest, hit_a_save, log = 0, False, []
  # The first kill lands while a save is being written; the others after a random step
  # beyond the checkpoint the relaunched run resumes from.
  for kill in range(kills):
    at_step = None if kill == 0 else rng.randint(min(newest + 1, TOTAL_STEPS - 1),
                                                 TOTAL_STEPS - 1)
    out, unfinished = run_until_killed(
        run_args, killed, processes,
        lambda w, s=at_step: saves_in_progress(w) if s is None else last_logged_step(w) >= s)
    log.append(f"--- kill {kill} at step {at_step} (seed {seed}):\n{out}")
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" not in out, "\n".join(log)  # it was killed
    hit_a_save |= kill == 0 and unfinished
    intact = committed_steps(killed)
    # Never without the last good checkpoint, and never back behind it.
    assert not intact or max(intact) >= newest, "\n".join(log)
    newest = max(intact, default=0)
  assert hit_a_save, "no kill landed inside a save:\n" + "\n".join(log)
  out, _ = run_until_killed(run_args, killed, processes)
  assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out, out

  assert_bit_identical(restored_state(killed, TOTAL_STEPS), restored_state(straight, TOTAL_STEPS))
  # Every step logged once, with the uninterrupted run's loss.
  assert losses(killed) == losses(straight)
  assert [json.loads(t)["step"] for t in open(killed / "metrics.jsonl")] == list(
      range(1, TOTAL_STEPS + 1))
