"""The embedding caches that evaluation jobs keep (probe features, predict's report bank), in
a local folder or a bucket, shared by all processes or private to each (`{process}`).

Every process of a multi-host job must take the same branch at a collective, so whether a
cache is usable is agreed by all processes (`parallel.on_every_process`), never decided by
one host's view of its disk (docs/architecture.md, rule 11)."""

from __future__ import annotations

import io

import jax
import numpy as np
from etils import epath

from ecgclip_jax import parallel

PROCESS_FIELD = "{process}"  # in a cache folder: one private folder per process (local SSDs)


def cache_folder(folder: str) -> str:
  """This process's cache folder: `folder` with `{process}` set to the process index."""
  return folder.replace(PROCESS_FIELD, str(jax.process_index()))


def _writes_cache(folder: str) -> bool:
  """Process 0 writes a shared cache folder; every process writes its private one."""
  return jax.process_index() == 0 or PROCESS_FIELD in folder


def load_cache(folder: str, name: str, key: str) -> dict[str, np.ndarray] | None:
  """The arrays cached as `name` in this process's `folder` under `key`, if every process
  has them (else None on every process, which then all compute them again together)."""
  path = epath.Path(cache_folder(folder)) / name
  arrays = None
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as cached:
      if str(cached["key"]) == key:
        arrays = {k: cached[k] for k in cached.files if k != "key"}
  return arrays if parallel.on_every_process(arrays is not None) else None


def save_cache(folder: str, name: str, key: str, arrays: dict[str, np.ndarray]) -> str:
  """Writes the cache (see `_writes_cache`); returns a note for the log. A folder that
  cannot be written (a read-only workdir) costs only the cache."""
  path = epath.Path(cache_folder(folder)) / name
  if not _writes_cache(folder):
    return f"cached by process 0 in {path}"
  buffer = io.BytesIO()
  np.savez(buffer, key=np.asarray(key), **arrays)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
  except OSError as e:
    return f"not cached: {e}"
  return f"cached in {path}"
