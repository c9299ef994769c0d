"""Where the project's own files (configs, prompts, task sets) are found from any folder."""

from __future__ import annotations

import os

from etils import epath

from ecgclip_jax import storage

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_file(path: str, folder: str, what: str) -> str:
  """A relative path is looked up in `folder` (the file naming it, or the current folder),
  then in the project checkout, so commands work from anywhere; a URL (gs://) is taken as
  it is."""
  return _resolve(path, folder, what, lambda p: p.is_file())


def resolve_folder(path: str, folder: str, what: str) -> str:
  """`resolve_file` for a folder."""
  return _resolve(path, folder, what, lambda p: p.is_dir())


def _resolve(path: str, folder: str, what: str, exists) -> str:
  absolute = os.path.isabs(path) or storage.is_remote(path)
  candidates = [path] if absolute else [os.path.join(folder, path),
                                        os.path.join(PROJECT_ROOT, path)]
  for candidate in candidates:
    if exists(epath.Path(candidate)):
      return storage.absolute(candidate)
  raise FileNotFoundError(f"{what} not found: {path} (looked in {', '.join(candidates)})")
