"""Training metrics as TensorBoard events (tensorboardX: no TensorFlow) and JSON lines."""

from __future__ import annotations

import json
import os

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
  """Writes scalars from process 0 only; other processes hold a no-op writer."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if self._active:
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    for name, value in scalars.items():
      self._tensorboard.add_scalar(name, value, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    self._tensorboard.flush()

  def close(self) -> None:
    if self._active:
      self._tensorboard.close()
      self._jsonl.close()
