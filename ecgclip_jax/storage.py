"""Files on a local disk or in a bucket (gs://, through etils' epath, which reaches GCS with
gcsfs: the `gcs` extra): the clients a path needs, folder walks, builds staged locally and
uploaded. Imports no JAX: dataset builders and their Beam workers use it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import tempfile
from typing import Iterator

from etils import epath

def is_remote(path) -> bool:
  return "://" in os.fspath(path)


# What each URL scheme needs: epath reaches gs:// through fsspec's gcsfs, and tensorboardX
# writes its events there with google-cloud-storage (Orbax and array_record bring their own).
CLIENTS = {"gs": (("gcsfs", "gcsfs"), ("google.cloud.storage", "google-cloud-storage"))}


def client_problem(paths) -> str | None:
  """One line naming the clients that the cloud paths among `paths` need but this
  environment lacks, or None."""
  schemes = sorted({os.fspath(p).split("://", 1)[0] for p in paths if p and is_remote(p)})
  missing = []
  for scheme in schemes:
    if scheme not in CLIENTS:
      return f"{scheme}:// paths are not supported (only {', '.join(CLIENTS)}://)"
    missing += [package for module, package in CLIENTS[scheme] if _spec_missing(module)]
  if not missing:
    return None
  return (f"{', '.join(f'{s}://' for s in schemes)} paths need {', '.join(missing)}, not "
          f"installed here: pip install 'ecgclip_jax[gcs]'")


def _spec_missing(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is None
  except ModuleNotFoundError:  # a parent package is missing
    return True


def absolute(path: str) -> str:
  """`path` as it names the same place from any working directory (a URL as it is)."""
  return path if is_remote(path) else os.path.abspath(path)


def file_size(path) -> int:
  """A file's bytes, from a pathlib or epath path: os.stat_result names them st_size, epath's
  StatResult for a bucket file `length`."""
  stat = path.stat()
  return stat.st_size if hasattr(stat, "st_size") else stat.length


def walk(folder: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """`os.walk(folder)` (top-down), also for a folder in a bucket: etils' own walk yields a
  bucket's folders without their gs://, so fsspec's is used and the scheme put back (one
  listing per folder)."""
  if not is_remote(folder):
    yield from os.walk(folder)
    return
  filesystem = epath.backend.fsspec_backend.fs(folder)
  for root, folders, files in filesystem.walk(folder):
    yield filesystem.unstrip_protocol(root), folders, files


# ------------------------------------------------------------------ builds into a bucket
# array_record's writer opens local files only (its reader does read gs:// paths), so a
# build whose data_dir is a bucket is written to a local staging folder and then uploaded,
# each version folder's dataset_info.json last: TFDS takes a version folder that has one as
# finished, so a build cut off mid-upload is rebuilt, never half read. The staging folder
# needs room for the whole build (a local SSD on a TPU VM; $ECGCLIP_BUILD_STAGING_DIR).
FINISHED_MARKER = "dataset_info.json"
STAGING_ENV = "ECGCLIP_BUILD_STAGING_DIR"


@contextlib.contextmanager
def local_data_dir(data_dir: str | None) -> Iterator[str | None]:
  """A local data_dir to build into: `data_dir` itself when it is local (or None, TFDS's
  default), else a staging folder whose contents are uploaded to `data_dir` once the build
  inside succeeded."""
  if not data_dir or not is_remote(data_dir):
    yield data_dir
    return
  with tempfile.TemporaryDirectory(prefix="ecgclip-build-",
                                   dir=os.environ.get(STAGING_ENV)) as staging:
    yield staging
    upload(staging, data_dir)


def upload(local_root: str, remote_root: str) -> None:
  files = sorted(p for p in pathlib.Path(local_root).rglob("*") if p.is_file())
  files.sort(key=lambda p: p.name == FINISHED_MARKER)  # stable: markers after everything else
  print(f"Uploading {len(files)} files to {remote_root} ...", flush=True)
  for path in files:
    target = epath.Path(remote_root) / path.relative_to(local_root)
    target.parent.mkdir(parents=True, exist_ok=True)
    epath.Path(path).copy(target, overwrite=True)


def forget_listings(path: str) -> None:
  """Drops gcsfs' cached folder listings, which it never expires: a process that polls a
  bucket for new files (evaluate --watch) would otherwise see its first listing forever.
  (With TensorFlow importable, epath uses tf.io.gfile, which caches nothing.)"""
  if is_remote(path):
    filesystem = epath.backend.fsspec_backend.fs(path)
    filesystem.invalidate_cache()


def write_text(path: str, text: str) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
