"""A `jax.profiler` trace of a window of training steps (config `profile`), written into the
workdir's TensorBoard folder, where TensorBoard's Profile tab reads it
(`pip install tensorboard-plugin-profile`).

Only process 0 traces, and only its own host, as MaxText does by default: every host of an
SPMD run executes the same program. The trace is written locally and then copied when the
workdir is a bucket (the profiler's exporter writes to local files only here)."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable

import jax
import ml_collections

from ecgclip_jax import storage


class ProfileWindow:
  """Starts a trace before step `start_step` and writes it after step
  `start_step + num_steps - 1`; a window that is off (num_steps 0), already passed by a
  resumed run, or on another process than 0 does nothing."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, first_step: int,
               log: Callable[[str], None]):
    self.first = config.start_step
    self.last = config.start_step + config.num_steps - 1
    self._log = log
    self._target = os.path.join(workdir, "tensorboard")
    self._local_dir: str | None = None
    self._enabled = config.num_steps > 0 and jax.process_index() == 0
    if self._enabled and self.first <= first_step:
      log(f"profile window (steps {self.first}-{self.last}) starts at or before the resumed "
          f"step {first_step}: no trace this run")
      self._enabled = False

  def begin(self, step: int) -> None:
    if self._enabled and step == self.first:
      self._local_dir = (self._target if not storage.is_remote(self._target)
                         else tempfile.mkdtemp(prefix="ecgclip-profile-"))
      jax.profiler.start_trace(self._local_dir)

  def end(self, step: int, outputs: Any) -> None:
    """After the step: at the window's last step, waits for its device work and writes."""
    if self._local_dir is not None and step == self.last:
      jax.block_until_ready(outputs)
      self.close()

  def close(self) -> None:
    """Writes a trace still open (a run that stopped inside its window)."""
    if self._local_dir is None:
      return
    jax.profiler.stop_trace()
    if self._local_dir != self._target:
      storage.upload(self._local_dir, self._target)
      shutil.rmtree(self._local_dir)
    self._log(f"profile of steps {self.first}-{self.last} written to "
              f"{self._target}/plugins/profile (TensorBoard's Profile tab)")
    self._local_dir = None
