"""Where the project's own files (configs, prompts, task sets) are found from any folder."""

from __future__ import annotations

import os

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_file(path: str, folder: str, what: str) -> str:
  """A relative path is looked up in `folder` (the file naming it, or the current folder),
  then in the project checkout, so commands work from anywhere."""
  candidates = [path] if os.path.isabs(path) else [os.path.join(folder, path),
                                                   os.path.join(PROJECT_ROOT, path)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f"{what} not found: {path} (looked in {', '.join(candidates)})")
