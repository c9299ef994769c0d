"""Training metrics as TensorBoard events (tensorboardX: no TensorFlow) and JSON lines, in a
local workdir or a bucket (gs://: tensorboardX writes there itself; the JSON lines go
through etils.epath)."""

from __future__ import annotations

import json
import os

import jax
from etils import epath

from ecgclip_jax import storage


def _entry_step(line: str) -> int | None:
  """The step of one JSON line; None if the line is not a whole entry."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def read_jsonl_until(path: epath.Path, step: int) -> str:
  """The lines of a per-step JSON-lines file up to `step`, rewritten without the later ones:
  a run resumed from `step` writes those steps again, so a killed run leaves no duplicates.
  A half-written last line (a kill during the append) is dropped with a notice; a damaged
  line before it is an error, since that is not how an append fails."""
  if not path.exists():
    return ""
  lines = [line for line in path.read_text().splitlines(keepends=True) if line.strip()]
  steps = [_entry_step(line) for line in lines]
  if steps and steps[-1] is None:
    print(f"{path}: dropped a half-written last line (the run was stopped while writing "
          f"it): {lines[-1].strip()[:80]!r}", flush=True)
    lines, steps = lines[:-1], steps[:-1]
  if None in steps:
    raise ValueError(f"{path}, line {steps.index(None) + 1}: not a JSON entry with a step; "
                     f"the file is damaged (move it aside to resume)")
  kept = "".join(line for line, entry_step in zip(lines, steps) if entry_step <= step)
  path.write_text(kept)
  return kept


class MetricWriter:
  """Writes scalars from process 0 only; other processes hold a no-op writer. `first_step`
  is the step the run starts after: anything logged beyond it by a killed run is dropped
  (from the JSON lines; in TensorBoard, a purge marker at `first_step + 1` hides the older
  event files' later steps, so redone steps show once)."""

  def __init__(self, workdir: str, first_step: int = 0):
    self._active = jax.process_index() == 0
    if self._active:
      from tensorboardX import SummaryWriter  # only process 0 writes events

      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                        purge_step=first_step + 1 if first_step else None)
      self._jsonl_path = epath.Path(workdir) / "metrics.jsonl"
      self._remote = storage.is_remote(workdir)
      self._lines = read_jsonl_until(self._jsonl_path, first_step)

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    line = json.dumps({"step": step, **scalars}) + "\n"
    if self._remote:  # bucket objects cannot be appended to; the file stays small
      self._lines += line
      self._jsonl_path.write_text(self._lines)
    else:
      with self._jsonl_path.open("a") as f:
        f.write(line)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._active:
      self._tensorboard.close()
