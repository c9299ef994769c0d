"""Checkpoint seals: a manifest of every file's size and CRC-32, written inside the step's
folder before Orbax commits it, so a partial or damaged checkpoint is found before restore.

Orbax alone restores a step whose commit marker or tree metadata was deleted, and reports a
truncated array file only as a long TensorStore error halfway through the restore. A sealed
step is checked file by file instead, and the problem is named in one line.
"""

from __future__ import annotations

import json
import zlib

from etils import epath

from ecgclip_jax import storage

MANIFEST = "ecgclip_manifest.json"
COMMIT_MARKER = "commit_success.txt"  # written by Orbax when it commits a step
STEP_METADATA = "_CHECKPOINT_METADATA"  # Orbax adds the commit time after the seal: must exist
_CHUNK = 1 << 22


def _crc32(path: epath.Path) -> int:
  crc = 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _files(folder: epath.Path) -> list[epath.Path]:
  """Every file below `folder`, local or in a bucket."""
  return sorted(epath.Path(root) / name for root, _, names in storage.walk(str(folder))
                for name in names if name != MANIFEST)


def write_manifest(folder: epath.PathLike) -> None:
  """Seals `folder` (a step being committed): every file with its size and CRC-32."""
  folder = epath.Path(folder)
  files = {str(p.relative_to(folder)): {"bytes": storage.file_size(p),
                                         "crc32": _crc32(p)} for p in _files(folder)}
  files[STEP_METADATA] = {}
  (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def is_sealed(folder: epath.PathLike) -> bool:
  return (epath.Path(folder) / MANIFEST).exists()


def problem(folder: epath.PathLike) -> str | None:
  """What is wrong with a committed step, in a few words, or None when it is intact. A step
  written before seals existed has no manifest: only its commit marker is checked here."""
  folder = epath.Path(folder)
  if not (folder / COMMIT_MARKER).exists():
    return f"commit marker {COMMIT_MARKER} is missing (the save did not finish)"
  if not is_sealed(folder):
    return None
  try:
    files = json.loads((folder / MANIFEST).read_text())["files"]
  except (ValueError, KeyError):
    return f"integrity manifest {MANIFEST} is unreadable"
  for name, want in files.items():
    path = folder / name
    if not path.exists():
      return f"{name} is missing"
    if not want:
      continue
    size = storage.file_size(path)
    if size != want["bytes"]:
      return f"{name} has {size:,} bytes, expected {want['bytes']:,} (truncated or overwritten)"
    if _crc32(path) != want["crc32"]:
      return f"{name} fails its CRC-32 check (corrupt)"
  return None
