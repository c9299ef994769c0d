"""Command-line plumbing shared by the entry points (train, evaluate)."""

from __future__ import annotations

import re
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from ecgclip_jax import parallel

# What a user can fix from the message alone: shown as one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ConnectionError,
               FloatingPointError)


def define_config_and_workdir(workdir_help: str):
  """The `--config configs/X.py` (with `--config.key=value` overrides) and `--workdir` flags."""
  config = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                           lock_config=True)
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flags_as_required(["config", "workdir"])
  return config, workdir


def define_distributed_flags() -> Callable[[], None]:
  """Flags that join this process to a multi-process run; returns the function that joins
  (call it before anything touches a device). Unset: launch/local.sh's JAX_* variables, a
  Slurm job or TPU slice, or one process (see parallel.initialize_distributed)."""
  address = flags.DEFINE_string("coordinator_address", "", "HOST:PORT of process 0.")
  count = flags.DEFINE_integer("num_processes", 0, "Processes in the run.")
  index = flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1.")
  init_timeout = flags.DEFINE_integer(
      "initialization_timeout_s", 300, "Give up joining the run after this many seconds.")
  heartbeat_timeout = flags.DEFINE_integer(
      "heartbeat_timeout_s", 100, "A process silent this long fails the run (not a hang).")

  def start() -> None:
    parallel.initialize_distributed(
        address.value, count.value, index.value,
        initialization_timeout_s=init_timeout.value, heartbeat_timeout_s=heartbeat_timeout.value)

  return start


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with an unknown `--config.key` override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # raised by ml_collections for a missing key
    hint = re.search(r'Did you mean "([^"]+)"', str(e.args[0] if e.args else ""))
    keys = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config key among {', '.join(keys)}"
             + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --help for usage.")


def run(job: Callable[[], object]) -> None:
  """absl's app.run, with library INFO logs (Orbax, TFDS) hidden unless --verbosity is set,
  so the console shows the job's own progress lines. A user error (bad config, missing
  folder, unwritable workdir) ends with one line; --verbosity=1 shows its traceback."""
  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    verbose = flags.FLAGS["verbosity"].present
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    try:
      job()
    except USER_ERRORS as e:
      if verbose:
        raise
      sys.exit(f"error: {e}")

  app.run(main, flags_parser=_parse_flags)
