"""Training steps whose loss or gradients are NaN/Inf: the configured policy (`nonfinite` in
the config). The step function has already kept the state as it was (train_state); here the
host counts the step, records the batch's record ids in WORKDIR/nonfinite_batches.jsonl, and
either goes on ("skip") or stops with a diagnostic ("stop", or too many in a row). Each step
is checked one step late, so the host never waits for the step it has just dispatched.
"""

from __future__ import annotations

import json
from typing import Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from ecgclip_jax.data import contract
from ecgclip_jax.metrics_writer import read_jsonl_until

_ID_BYTES = 64  # record ids travel between processes as fixed-width bytes
POLICIES = ("skip", "stop")


class NonFiniteStepError(FloatingPointError):
  """The run stopped at a non-finite step; its last checkpoint is untouched."""


def _all_record_ids(local_ids: np.ndarray) -> list[str]:
  """Every process's record ids of one global batch (a collective: all processes call it)."""
  ids = [contract.text(x) for x in np.asarray(local_ids).ravel()]
  if jax.process_count() == 1:
    return ids
  padded = np.zeros((len(ids), _ID_BYTES), np.uint8)
  for row, record_id in zip(padded, ids):
    raw = record_id.encode()[:_ID_BYTES]
    row[:len(raw)] = np.frombuffer(raw, np.uint8)
  gathered = np.asarray(multihost_utils.process_allgather(padded, tiled=True))
  return [bytes(row).rstrip(b"\0").decode(errors="replace") for row in gathered]


class NonFiniteSteps:
  """Call `watch` after dispatching every step and `finish` after the last one."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, first_step: int,
               log: Callable[[str], None]):
    self.policy, self.max_consecutive = config.policy, config.max_consecutive
    self.path = epath.Path(workdir) / "nonfinite_batches.jsonl"
    self._log = log
    entries = read_jsonl_until(self.path, first_step) if jax.process_index() == 0 else ""
    self.skipped = len(entries.splitlines())
    self.in_a_row = 0
    self._pending = None

  def watch(self, step: int, metrics: dict[str, jax.Array], record_ids: np.ndarray) -> None:
    """Checks the previous step, then keeps this one for the next call."""
    self.finish()
    self._pending = (step, metrics, record_ids)

  def finish(self) -> None:
    if self._pending is not None:
      self._check(*self._pending)
      self._pending = None

  def _check(self, step: int, metrics: dict[str, jax.Array], record_ids: np.ndarray) -> None:
    if bool(metrics["finite"]):
      self.in_a_row = 0
      return
    self.skipped += 1
    self.in_a_row += 1
    loss, bad = float(metrics["loss"]), int(metrics["nonfinite_grads"])
    ids = _all_record_ids(record_ids)
    if jax.process_index() == 0:
      with self.path.open("a") as f:
        f.write(json.dumps({"step": step, "loss": repr(loss), "nonfinite_grads": bad,
                            "record_ids": ids}) + "\n")
    what = (f"step {step}: loss {loss}, {bad:,} non-finite gradient values; batch of "
            f"{len(ids)} records listed in {self.path}")
    if self.policy == "stop":
      raise NonFiniteStepError(f"{what}. Stopped (nonfinite.policy='stop'); the state was "
                               "not updated and the last checkpoint is untouched")
    if self.in_a_row >= self.max_consecutive:
      raise NonFiniteStepError(
          f"{what}. Stopped after {self.in_a_row} non-finite steps in a row "
          f"(nonfinite.max_consecutive): the run has diverged; lower optim.learning_rate or "
          f"resume from an earlier checkpoint")
    self._log(f"{what}; update skipped ({self.skipped} so far)")
