"""Preemption: SIGTERM on any host -> every host stops after the same step.

A multi-process run uses JAX's preemption sync service (started by jax.distributed): the
notice reaches every process, and `reached_preemption_sync_point` turns true on all of them
at one agreed step. A single process catches SIGTERM itself. Either way the trainer then
saves a checkpoint at that step and exits 0; the relaunched run resumes from it.
"""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Call `reached(step)` after every step, on every process."""

  def __init__(self):
    self._multihost = jax.process_count() > 1
    self._notice = False
    if not self._multihost:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    self._notice = True

  def reached(self, step: int) -> bool:
    if self._multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._notice

  def close(self) -> None:
    """Gives SIGTERM back to whoever handled it before."""
    if not self._multihost:
      signal.signal(signal.SIGTERM, self._previous)
