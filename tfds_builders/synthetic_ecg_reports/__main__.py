"""`python -m tfds_builders.synthetic_ecg_reports [tfds build flags]`: the stock `tfds build`
for this folder, reachable without TensorFlow (the `tfds` script imports it at start-up), and
writing array_record unless `--file_format` says otherwise (tfrecord would need TensorFlow)."""

import pathlib
import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils

if __name__ == "__main__":
  sys.argv.insert(1, str(pathlib.Path(__file__).parent))
  if not any(arg.startswith("--file_format") for arg in sys.argv):
    sys.argv.append("--file_format=array_record")
  app.run(lambda args: args.execute(),
          flags_parser=cli_utils.make_flags_parser(build.Args, description="tfds build"))
