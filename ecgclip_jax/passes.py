"""Jitted functions over every record of a source, sharded over the mesh: each record
exactly once (the padding of the last batch masked out), results in source order on every
host. Evaluation, probes, fine-tuning and the Python API all embed through `run_over_split`.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ecgclip_jax import parallel
from ecgclip_jax.data import pipeline
from ecgclip_jax.progress import Progress


def gather(array: jax.Array) -> np.ndarray:
  """The whole global array on every host."""
  return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def run_over_split(source, outputs: Mapping[str, Callable[[dict], jax.Array]], mesh, *,
                   batch_size: int, normalization: str, tokenizer=None,
                   max_text_length: int = 0, label_feature: str | None = "labels",
                   progress: str = "", read_threads: int = 0) -> dict[str, np.ndarray]:
  """`outputs` (name -> jitted fn(global batch)) of every record of `source`, and its
  `label_feature` labels (None: none), each exactly once, in source order, on every host.
  `progress` names the pass in its progress lines (printed only when it takes a while);
  `read_threads`: pipeline.read_options."""
  per_process = parallel.check_batch_size(batch_size, mesh)
  batches = pipeline.make_eval_batches(
      source, tokenizer=tokenizer, max_text_length=max_text_length,
      normalization=normalization, per_process_batch_size=per_process,
      process_index=jax.process_index(), process_count=jax.process_count(),
      label_feature=label_feature, read_threads=read_threads)
  names = (*outputs, *(("labels",) if label_feature is not None else ()), "mask", "index")
  parts = {name: [] for name in names}
  meter = Progress(progress or "embedding", len(source),
                   wait=lambda: jax.block_until_ready([parts[name][-1:] for name in outputs]))
  for local in batches:  # outputs stay on device: the host waits only to report progress
    batch = parallel.global_batch({k: v for k, v in local.items() if k != "lead_mask"}, mesh)
    for name, fn in outputs.items():
      parts[name].append(fn(batch))
    for name in names[len(outputs):]:
      parts[name].append(batch[name])
    meter.update(batch_size)
  meter.done()
  out = {name: gather(jnp.concatenate(values)) for name, values in parts.items()}
  real = out.pop("mask")
  out = {name: values[real] for name, values in out.items()}
  order = np.argsort(out.pop("index"))
  return {name: values[order] for name, values in out.items()}
