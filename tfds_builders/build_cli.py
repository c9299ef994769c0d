"""`python -m tfds_builders.<name> [tfds build flags]`: the stock `tfds build` for one builder
folder, reachable without TensorFlow (the `tfds` script imports it at start-up).

Writes array_record unless `--file_format` says otherwise (tfrecord would need TensorFlow).
A corpus that cannot be built at all (wrong folder, missing index file) stops with one line.
"""

import pathlib
import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

from ecgclip_jax.data.skips import CorpusError


def _build(args) -> None:
  try:
    args.execute()
  except CorpusError as e:
    sys.exit(f"error: {e}")


def main(builder_file: str) -> None:
  """Runs `tfds build` on the folder holding `builder_file` (a builder's `__main__.py`)."""
  sys.argv.insert(1, str(pathlib.Path(builder_file).parent))
  if not any(arg.startswith("--file_format") for arg in sys.argv):
    sys.argv.append("--file_format=array_record")
  app.run(_build, flags_parser=cli_utils.make_flags_parser(build.Args, description="tfds build"))
