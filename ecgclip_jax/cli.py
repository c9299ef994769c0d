"""Command-line plumbing shared by the absl commands (train, evaluate, probe, predict, export,
explain): flags, one-line user errors, and a `--help` that lists every flag."""

from __future__ import annotations

import os
import re
import sys
from typing import Callable

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ecgclip_jax import parallel, storage
from ecgclip_jax.data import signal

# What a user can fix from the message alone: shown as one line, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, ConnectionError,
               FloatingPointError)


def define_config():
  """The required `--config configs/X.py` flag, with `--config.key=value` overrides."""
  config = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                           lock_config=True)
  flags.mark_flag_as_required("config")
  return config


def define_config_and_workdir(workdir_help: str):
  """`define_config` and the required `--workdir` flag."""
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  flags.mark_flag_as_required("workdir")
  return define_config(), workdir


def define_model_flags(workdir_help: str = "Training workdir (checkpoints/) or exported "
                       "model folder."):
  """`--workdir` (where the model is) and `--step` (which checkpoint), for the jobs that
  restore a trained model."""
  workdir = flags.DEFINE_string("workdir", None, workdir_help)
  step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  return workdir, step


def define_cache_flag(default: str):
  """`--cache_dir`: where embeddings computed once are kept (`default` when unset)."""
  return flags.DEFINE_string(
      "cache_dir", "", f"Folder for cached embeddings (default: {default}); "
      "'{process}' in it is replaced by the process index, a private folder per host (each "
      "then writes its own; a shared folder is written by process 0).")


def define_length_flags(default_long: str, what: str) -> Callable[[], signal.Length]:
  """`--long`, `--window_stride_s`, `--short`: what to do with `what` (inputs) longer or
  shorter than the model's input; returns the function that reads them as a signal.Length."""
  long = flags.DEFINE_enum(
      "long", default_long, signal.LONG_CHOICES, f"{what} longer than the model's input: "
      "'crop' as the model's dataset build did, or 'window': read whole, as windows of the "
      "model's length whose embeddings are averaged.")
  window_stride_s = flags.DEFINE_float(
      "window_stride_s", None, "--long window: seconds between window starts (default: the "
      "window length; a last window is aligned to the end either way).")
  short = flags.DEFINE_enum(
      "short", "pad", signal.SHORT_CHOICES, f"{what} shorter than the model's input: 'pad' "
      "with zeros at the end (predict: down to the build's minimum duration), or 'reject'.")
  return lambda: signal.Length(long.value, window_stride_s.value, short.value)


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


def _help_exits_zero(parse: Callable[[str], object]) -> Callable[[str], object]:
  """absl's help flags print the usage, then exit with status 1; a help asked for is a
  success (status 0, as argparse commands and most tools do)."""
  def parse_then_exit_zero(argument: str) -> object:
    try:
      return parse(argument)
    except SystemExit as e:
      if e.code == 1:
        sys.exit(0)
      raise
  return parse_then_exit_zero


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with an unknown `--config.key` override reported in one line and
  `--help` / `--helpfull` ending with status 0."""
  for name in ("help", "helpshort", "helpfull", "helpxml"):
    if name in flags.FLAGS:  # defined by app.run before it calls this parser
      flags.FLAGS[name].parse = _help_exits_zero(flags.FLAGS[name].parse)
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # raised by ml_collections for a missing key
    hint = re.search(r'Did you mean "([^"]+)"', str(e.args[0] if e.args else ""))
    keys = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    sys.exit(f"error: unknown config key among {', '.join(keys)}"
             + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --help for usage.")


# Modules whose flags `--help` lists: ours, and ml_collections' (`--config`). Absl's own
# (--verbosity, --logtostderr, ...) and those of libraries stay under --helpfull.
_HELP_MODULE_PREFIXES = ("ecgclip_jax", "ml_collections.config_flags")


def _attribute_flags_to_main() -> None:
  """Makes absl's short `--help` list every flag this project defines.

  `--help` shows only the key flags of the main module (`sys.argv[0]`), but most flags are
  defined in cli.py or helper modules (embedding_map), and under a console script even the
  command module's own flags are registered under `ecgclip_jax.X`, not the main module.
  Declares each as a key flag of the main module: `--helpfull` still lists them once, under
  the module that defines them."""
  main_module = sys.argv[0]
  for module, module_flags in list(flags.FLAGS.flags_by_module_dict().items()):
    if module == main_module or not any(
        module == p or module.startswith(p + ".") for p in _HELP_MODULE_PREFIXES):
      continue
    for flag in module_flags:
      flags.FLAGS.register_key_flag_for_module(main_module, flag)


# JAX's persistent compilation cache: a resumed, re-launched or repeated job loads the
# programs it compiled before instead of compiling them again. Tests point it at a temporary
# folder through the environment variable.
COMPILATION_CACHE_ENV = "ECGCLIP_COMPILATION_CACHE_DIR"
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "ecgclip_jax", "xla")


def _define_compilation_cache_flag():
  return flags.DEFINE_string(
      "compilation_cache_dir",
      os.environ.get(COMPILATION_CACHE_ENV, DEFAULT_COMPILATION_CACHE),
      f"Persistent XLA compilation cache (local or gs://); '' turns it off. Default: "
      f"${COMPILATION_CACHE_ENV}, else {DEFAULT_COMPILATION_CACHE}.")


def use_compilation_cache(path: str) -> None:
  if path:
    jax.config.update("jax_compilation_cache_dir",
                      path if storage.is_remote(path) else os.path.expanduser(path))


def _flag_paths() -> list[str]:
  """Every string given to a flag (single or list), for the cloud-client check."""
  values = []
  for flag in flags.FLAGS:
    value = flags.FLAGS[flag].value
    values += [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
  return values


def run(job: Callable[[], object], compilation_cache: bool = True) -> None:
  """absl's app.run, with library INFO logs (Orbax, TFDS) hidden unless --verbosity is set,
  so the console shows the job's own progress lines. A user error (bad config, missing
  folder, unwritable workdir) ends with one line; --verbosity=1 shows its traceback. With
  `compilation_cache` the command takes --compilation_cache_dir (on by default)."""
  cache_dir = _define_compilation_cache_flag() if compilation_cache else None

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if cache_dir is not None:
      use_compilation_cache(cache_dir.value)
    verbose = flags.FLAGS["verbosity"].present
    if not verbose:
      logging.set_verbosity(logging.WARNING)
    if problem := storage.client_problem(_flag_paths()):
      sys.exit(f"error: {problem}")
    try:
      job()
    except USER_ERRORS as e:
      if verbose:
        raise
      sys.exit(f"error: {e}")

  _attribute_flags_to_main()
  # --help starts with __main__'s docstring; a console script's __main__ is a bare wrapper,
  # so show the command module's, as `python -m ecgclip_jax.X --help` does.
  entry, command = sys.modules.get("__main__"), sys.modules.get(getattr(job, "__module__", ""))
  if entry is not None and command is not None and not entry.__doc__:
    entry.__doc__ = command.__doc__
  app.run(main, flags_parser=_parse_flags)
