"""Command-line plumbing shared by the entry points (train, evaluate)."""

from __future__ import annotations

from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags


def define_config_and_workdir(workdir_help: str):
  """The `--config configs/X.py` (with `--config.key=value` overrides) and `--workdir` flags."""
  config = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def run(job: Callable[[], object]) -> None:
  """absl's app.run, with library INFO logs (Orbax, TFDS) hidden unless --verbosity is set,
  so the console shows the job's own progress lines."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    job()

  app.run(main)
