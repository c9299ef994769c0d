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


def run_until_killed(run_args, workdir, processes, *, at_step=None, during_save=False):
  """Runs the trainer and kills it after the line for `at_step`, or as soon as a checkpoint
  save is being written. Returns (output, whether the kill hit an unfinished save)."""
  proc = launch(run_args, workdir, processes)
  killed = threading.Event()

  def kill_during_save():
    while proc.poll() is None and not killed.is_set():
      if saves_in_progress(workdir):
        kill_all(proc)
        killed.set()
      time.sleep(0.001)

  watcher = threading.Thread(target=kill_during_save, daemon=True)
  if during_save:
    watcher.start()
  output = []
  for line in iter(proc.stdout.readline, ""):
    output.append(line)
    if at_step is not None and line.removeprefix("[0] ").startswith(f"step {at_step}/"):
      kill_all(proc)
      killed.set()
      break
  proc.wait(timeout=300)
  killed.set()
  if during_save:
    watcher.join()
  return "".join(output), bool(saves_in_progress(workdir))


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


@pytest.mark.parametrize("processes,kills", [(1, 3), (2, 2)])
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_result(
    run_args, tmp_path, processes, kills):
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed)
  straight = tmp_path / "straight"
  out, _ = run_until_killed(run_args, straight, processes)
  assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out, out

  killed = tmp_path / "killed"
  newest, hit_a_save, log = 0, False, []
  # Kill points: random steps in order, and one kill while a save is being written.
  points = sorted(rng.sample(range(1, TOTAL_STEPS), kills - 1))
  plan = [("save", None)] + [("step", s) for s in points]
  for kind, step in plan:
    out, unfinished = run_until_killed(run_args, killed, processes, at_step=step,
                                       during_save=kind == "save")
    log.append(f"--- kill {kind} {step} (seed {seed}):\n{out}")
    hit_a_save |= kind == "save" and unfinished
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
