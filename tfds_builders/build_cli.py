"""`python -m tfds_builders.<name> [tfds build flags]`: the stock `tfds build` for one builder
folder, reachable without TensorFlow (the `tfds` script imports it at start-up).

Writes array_record unless `--file_format` says otherwise (tfrecord would need TensorFlow).
A `--data_dir` in a bucket is built locally and uploaded (ecgclip_jax.storage).
A corpus that cannot be built at all (wrong folder, missing index file) stops with one line.
"""

import dataclasses
import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

from ecgclip_jax import storage
from ecgclip_jax.data.skips import CorpusError


def _build(args) -> None:
  """Builds; a `--data_dir` in a bucket is built in a local staging folder and uploaded."""
  data_dir = args.paths.data_dir
  try:
    with storage.local_data_dir(data_dir) as local:
      if local != data_dir:
        args = dataclasses.replace(args, paths=dataclasses.replace(args.paths, data_dir=local))
      args.execute()
  except CorpusError as e:
    sys.exit(f"error: {e}")


def main(package: str) -> None:
  """Runs `tfds build` for the builder package `package` (its `__main__` passes
  `__package__`), imported by its full name so that Beam worker processes can unpickle its
  reader."""
  sys.argv[1:1] = [package.rsplit(".", 1)[-1], f"--imports={package}"]
  if not any(arg.startswith("--file_format") for arg in sys.argv):
    sys.argv.append("--file_format=array_record")
  app.run(_build, flags_parser=cli_utils.make_flags_parser(build.Args, description="tfds build"))
