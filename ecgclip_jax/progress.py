"""Progress lines for work that can take more than a few seconds: done / total, rate, ETA.

Only process 0 prints. A pass that ends within `after_s` seconds prints nothing, so quick
calls (a handful of ECGs from a notebook) stay quiet; a long one prints a line at most every
`every_s` seconds and a closing line with its total time.
"""

from __future__ import annotations

import time
from typing import Callable

import jax


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """`update(n)` after each piece of work; `done()` at the end. `wait` is called before a
  line is printed, so that asynchronously dispatched device work is counted when it has
  run, not when it was queued."""

  def __init__(self, what: str, total: int, unit: str = "records", *, every_s: float = 10.0,
               after_s: float = 5.0, wait: Callable[[], object] = lambda: None):
    self.what, self.total, self.unit = what, total, unit
    self.every_s, self.after_s, self.wait = every_s, after_s, wait
    self.count, self.start = 0, time.time()
    self._printed_at = None

  def _print(self, line: str) -> None:
    if jax.process_index() == 0:
      print(line, flush=True)
    self._printed_at = time.time()

  def update(self, n: int) -> None:
    self.count = min(self.count + n, self.total)
    now = time.time()
    since = now - (self._printed_at or self.start)
    if self.count >= self.total or now - self.start < self.after_s or since < self.every_s:
      return
    self.wait()
    elapsed = time.time() - self.start
    rate = self.count / elapsed
    eta = format_eta((self.total - self.count) / rate) if rate else "?"
    self._print(f"{self.what}: {self.count:,}/{self.total:,} {self.unit}, "
                f"{rate:,.1f} {self.unit}/s, ETA {eta}")

  def done(self) -> None:
    self.wait()  # the work queued last has run: the total time counts it
    elapsed = time.time() - self.start
    if self._printed_at is not None or elapsed >= self.after_s:
      self._print(f"{self.what}: {self.count:,} {self.unit} in {elapsed:.1f} s "
                  f"({self.count / max(elapsed, 1e-9):,.1f} {self.unit}/s)")
