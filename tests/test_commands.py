"""Every command's --help lists the flags it defines, under `python -m` and console scripts.

Each help run imports jax/flax/tfds (about 10 s of CPU each), so all of them start together,
in one test (one pytest-xdist worker runs them all, once)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

# module -> (flags its --help must list, whether it is an absl command)
COMMANDS = {
    "ecgclip_jax.train": (["config", "workdir", "compilation_cache_dir", "coordinator_address",
                           "num_processes", "process_id", "initialization_timeout_s"], True),
    "ecgclip_jax.evaluate": (["config", "workdir", "step", "watch", "poll_seconds",
                              "idle_timeout", "embedding_map", "map_max_points"], True),
    "ecgclip_jax.probe": (["config", "workdir", "step", "tasks", "out", "methods", "fractions",
                           "embedding_map", "map_max_points"], True),
    "ecgclip_jax.predict": (["workdir", "step", "input", "sample_rate", "top_k", "output",
                             "embeddings"], True),
    "ecgclip_jax.interpret.explain": (["workdir", "classes", "methods", "out", "baseline"], True),
    "ecgclip_jax.export": (["workdir", "step", "out"], True),
    "ecgclip_jax.compare": (["metric", "out", "per_task"], False),
    "ecgclip_jax.loss_benchmark": (["devices", "batch_sizes", "embed_dim"], False),
    "ecgclip_jax.remat_benchmark": (["num_samples", "batch_size", "arch"], False),
    "ecgclip_jax.benchmark": (["config", "steps", "json", "parts", "pipeline_workers", "torch"],
                              True),
    "ecgclip_jax.cost_table": (["config", "batch_sizes", "num_samples", "devices", "steps",
                                "json"], True),
}
SCRIPTS = ["ecgclip-train", "ecgclip-evaluate", "ecgclip-probe", "ecgclip-predict",
           "ecgclip-export", "ecgclip-explain", "ecgclip-compare", "ecgclip-loss-benchmark",
           "ecgclip-remat-benchmark", "ecgclip-benchmark", "ecgclip-cost-table"]
# Scripts whose --help runs too (each run costs a jax/tfds import): the command module's flags
# are then not registered under the main module, which cli.run must make up for.
SCRIPT_RUNS = {"ecgclip-train": ["config", "workdir", "coordinator_address"]}


def _lists_flag(text: str, name: str, absl: bool = True) -> bool:
  """Whether the flag list (not the usage text above it) has a line for the flag: absl's
  `  --name: help` (`--[no]name:` for booleans) after `flags:`, argparse's `  --name ...`."""
  if absl:
    return re.search(rf"^\s+--(\[no\])?{re.escape(name)}:", text.partition("\nflags:\n")[2],
                     re.MULTILINE) is not None
  return re.search(rf"^\s+--{re.escape(name)}\b", text, re.MULTILINE) is not None


def _helps():
  """{module or script: (exit code, stdout + stderr)} of `--help`, run in parallel."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  commands = {module: [sys.executable, "-m", module, "--help"] for module in COMMANDS}
  commands |= {script: [os.path.join(BIN, script), "--help"] for script in SCRIPT_RUNS
               if os.path.exists(os.path.join(BIN, script))}
  running = {key: subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
             for key, argv in commands.items()}
  results = {}
  for key, process in running.items():
    try:
      output, _ = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      process.kill()
      output, _ = process.communicate()
    results[key] = (process.returncode, output)
  return results


def test_every_command_and_console_script_lists_its_flags():
  helps = _helps()
  for module, (expected, is_absl) in COMMANDS.items():
    returncode, output = helps[module]
    assert returncode == 0, output[-3000:]
    missing = [name for name in expected if not _lists_flag(output, name, is_absl)]
    assert not missing, f"--help of {module} lacks {missing}:\n{output}"
    if is_absl:  # absl's own flags stay under --helpfull
      assert not _lists_flag(output, "verbosity"), output
  missing = [s for s in SCRIPTS if not os.path.exists(os.path.join(BIN, s))]
  assert not missing, f"not installed next to {sys.executable}: {missing} (pip install -e .)"
  for script, expected in SCRIPT_RUNS.items():
    returncode, output = helps[script]
    assert returncode == 0, output[-3000:]
    absent = [name for name in expected if not _lists_flag(output, name)]
    assert not absent, f"{script} --help lacks {absent}:\n{output}"
    assert not _lists_flag(output, "verbosity"), output
