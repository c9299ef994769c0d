"""Crash-proof training: a run killed with SIGKILL at random points, one of them while an
asynchronous checkpoint save is being written, and relaunched each time, ends with exactly
the parameters, optimizer state, BatchNorm statistics and RNG of the run that was never
interrupted (bitwise, on CPU). In two processes: test_multihost's kill -9 test, beside the
two-process run it compares with."""

import json
import os
import random

from train_runs import (assert_bit_identical, committed_steps, restored_state, run_until_killed,
                        saves_in_progress)

TOTAL_STEPS = 10
RUN = [f"--config.total_steps={TOTAL_STEPS}", "--config.checkpoint_every_steps=2",
       "--config.keep_checkpoints=1"]  # keep 1: a kill mid-save must not lose the only one


def last_logged_step(workdir):
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (FileNotFoundError, ValueError):  # not yet written, or a line half written
    return 0


def losses(workdir):
  return {(line := json.loads(text))["step"]: line["loss"]
          for text in open(workdir / "metrics.jsonl")}


def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_result(run_args, tmp_path):
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed)
  straight = tmp_path / "straight"
  out, _ = run_until_killed(run_args, straight, 1, extra=RUN)
  assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out, out

  killed = tmp_path / "killed"
  newest, hit_a_save, log = 0, False, []
  # The first kill lands while a save is being written; the others after a random step
  # beyond the checkpoint the relaunched run resumes from.
  for kill in range(2):
    at_step = None if kill == 0 else rng.randint(min(newest + 1, TOTAL_STEPS - 1),
                                                 TOTAL_STEPS - 1)
    out, unfinished = run_until_killed(
        run_args, killed, 1,
        lambda w, s=at_step: saves_in_progress(w) if s is None else last_logged_step(w) >= s,
        extra=RUN)
    log.append(f"--- kill {kill} at step {at_step} (seed {seed}):\n{out}")
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" not in out, "\n".join(log)  # it was killed
    hit_a_save |= kill == 0 and unfinished
    intact = committed_steps(killed)
    # Never without the last good checkpoint, and never back behind it.
    assert not intact or max(intact) >= newest, "\n".join(log)
    newest = max(intact, default=0)
  assert hit_a_save, "no kill landed inside a save:\n" + "\n".join(log)
  out, _ = run_until_killed(run_args, killed, 1, extra=RUN)
  assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in out, out

  assert_bit_identical(restored_state(killed, TOTAL_STEPS), restored_state(straight, TOTAL_STEPS))
  # Every step logged once, with the uninterrupted run's loss.
  assert losses(killed) == losses(straight)
  assert [json.loads(t)["step"] for t in open(killed / "metrics.jsonl")] == list(
      range(1, TOTAL_STEPS + 1))
