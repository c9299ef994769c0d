"""How the train step's cost grows with the global batch size, the record length and the
device count: the benchmark command (benchmark.py) once per setting, one factor varied at a
time from the config's own batch and length on one device, as markdown tables.

Each setting runs in a fresh process: a simulated CPU device count is fixed when JAX starts,
and each run then has the machine's memory to itself. This process never starts a JAX
backend, so it holds no accelerator memory either. The cost table command (cost_table.py)
prints the tables.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import ml_collections

MIB = 2**20
# The config keys each setting sets; the user's other overrides pass through unchanged.
SWEPT_KEYS = ("batch_size", "data.num_samples")
COLUMNS = ("batch", "samples", "devices", "step ms (median)", "examples/s", "GFLOP/device",
           "argument MiB", "output MiB", "temp MiB", "total MiB", "allocator peak MiB")


@dataclasses.dataclass(frozen=True)
class Setting:
  batch_size: int  # global, over all devices
  num_samples: int  # record length
  devices: int

  def __str__(self) -> str:
    return (f"batch {self.batch_size}, {self.num_samples} samples, {self.devices} "
            f"device{'s' if self.devices > 1 else ''}")


def sweeps(base: Setting, batch_sizes: list[int], num_samples: list[int],
           devices: list[int]) -> dict[str, list[Setting]]:
  """One factor at a time: each sweep holds the other two at `base`. A factor with no
  values has no sweep."""
  varied = {"batch size": [dataclasses.replace(base, batch_size=b) for b in batch_sizes],
            "record length": [dataclasses.replace(base, num_samples=n) for n in num_samples],
            "devices": [dataclasses.replace(base, devices=d) for d in devices]}
  return {factor: settings for factor, settings in varied.items() if settings}


def backend() -> tuple[str, int]:
  """JAX's default platform and its device count, asked in a child process (see above)."""
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; print(jax.default_backend(), jax.device_count())"],
      capture_output=True, text=True)
  if probe.returncode:
    raise RuntimeError(f"JAX does not start here:\n{probe.stderr[-2000:]}")
  platform, count = probe.stdout.split()[-2:]
  return platform, int(count)


def _failure(process: subprocess.CompletedProcess) -> str:
  """Why a benchmark process ended without figures, in one line for a table cell."""
  if process.returncode < 0:
    name = signal.Signals(-process.returncode).name
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
  lines = [line.strip() for line in (process.stderr or process.stdout).splitlines()
           if line.strip()]
  reason = lines[-1].removeprefix("error: ") if lines else f"exit status {process.returncode}"
  return "failed: " + reason[:200]


def run_setting(setting: Setting, config_args: list[str], steps: int, platform: str,
                available: int) -> dict[str, Any]:
  """`{"figures": the benchmark's JSON}` of one setting, or `{"error": why there are none}`.
  On a CPU the device count is simulated; on an accelerator the benchmark takes every
  device present, so only a setting with that many runs."""
  if platform != "cpu" and setting.devices != available:
    return {"error": f"skipped: the benchmark uses all {available} {platform} devices here; "
                     f"for {setting.devices}, make that many visible (CUDA_VISIBLE_DEVICES) or "
                     f"simulate them on CPU (JAX_PLATFORMS=cpu)"}
  env = dict(os.environ)
  if platform == "cpu":
    env["JAX_NUM_CPU_DEVICES"] = str(setting.devices)
  with tempfile.TemporaryDirectory() as folder:
    out = os.path.join(folder, "figures.json")
    process = subprocess.run(
        [sys.executable, "-m", "ecgclip_jax.benchmark", *config_args,
         f"--config.batch_size={setting.batch_size}",
         f"--config.data.num_samples={setting.num_samples}", f"--steps={steps}", "--noparts",
         f"--json={out}"], env=env, capture_output=True, text=True)
    if process.returncode or not os.path.exists(out):
      return {"error": _failure(process)}
    with open(out, encoding="utf-8") as f:
      figures = json.load(f)
  ran = Setting(figures["config"]["batch_size"], figures["config"]["num_samples"],
                figures["step"]["devices"])
  if ran != setting:  # the row must say what was measured
    return {"error": f"failed: ran {ran} instead"}
  return {"figures": figures}


def _mib(value: int | None) -> str:
  return "n/a" if value is None else f"{value / MIB:,.1f}"


def total_bytes(memory: dict[str, int]) -> int | None:
  """What the compiled step holds on a device at once: its arguments, outputs and temporary
  buffers, less the outputs that reuse donated arguments (the new state)."""
  if not memory:
    return None
  return memory["argument"] + memory["output"] + memory["temp"] - memory.get("alias", 0)


def row(setting: Setting, outcome: dict[str, Any]) -> str:
  cells = [str(setting.batch_size), str(setting.num_samples), str(setting.devices)]
  if "error" in outcome:
    cells += [outcome["error"].replace("|", "/")] + [""] * (len(COLUMNS) - 4)
  else:
    step = outcome["figures"]["step"]
    memory = step["memory_bytes"]
    cells += [f"{step['step_ms_median']:,.1f}",
              f"{step['examples_per_s_per_chip'] * step['devices']:,.1f}",
              f"{step['xla_flops_per_chip'] / 1e9:,.3f}",
              *(_mib(memory.get(name)) for name in ("argument", "output", "temp")),
              _mib(total_bytes(memory)), _mib(step["peak_memory_bytes"])]
  return "| " + " | ".join(cells) + " |"


def markdown(base: Setting, varied: dict[str, list[Setting]],
             outcomes: dict[Setting, dict[str, Any]], steps: int, platform: str) -> str:
  held = {"batch size": f"{base.num_samples} samples, 1 device",
          "record length": f"batch {base.batch_size}, 1 device",
          "devices": f"batch {base.batch_size}, {base.num_samples} samples"}
  blocks = []
  for factor, settings in varied.items():
    blocks.append("\n".join([f"By {factor} ({held[factor]}):", "",
                             "| " + " | ".join(COLUMNS) + " |",
                             "|" + "---|" * len(COLUMNS),
                             *(row(s, outcomes[s]) for s in settings)]))
  kinds = [o["figures"]["step"]["device_kind"] for o in outcomes.values() if "figures" in o]
  simulated = (" Simulated devices share this CPU's cores: more of them split the batch and "
               "its memory, not the time, so their step times show the sharding's overhead."
               if platform == "cpu" else "")
  blocks.append(
      f"Measured on {kinds[0] if kinds else platform}. Step time: the median of {steps} steps after "
      "warm-up; examples/s: over all devices. Per device: XLA's FLOP count and "
      "memory_analysis() of the compiled step (total: arguments + outputs + temporaries - "
      "the donated state the outputs reuse); allocator peak: the device allocator's "
      f"high-water mark (none on CPU).{simulated}")
  return "\n\n".join(blocks)


def cost_tables(config: ml_collections.ConfigDict, config_file: str, overrides: dict[str, Any],
                batch_sizes: list[int], num_samples: list[int], devices: list[int], steps: int,
                log: Callable[[str], None] = print) -> tuple[str, dict[str, Any]]:
  """Runs every distinct setting once (the base, `config`'s batch and length on one device,
  is in each sweep) and returns the markdown tables and every figure; a setting that fails
  (out of memory, a batch that the devices do not divide) is reported in its row.
  `config_file` and `overrides` (the command line's `--config` and `--config.key=value`s)
  make each benchmark run's config."""
  base = Setting(config.batch_size, config.data.num_samples, devices=1)
  config_args = [f"--config={config_file}"] + [
      f"--config.{key}={value}" for key, value in overrides.items() if key not in SWEPT_KEYS]
  varied = sweeps(base, batch_sizes, num_samples, devices)
  settings = list(dict.fromkeys(s for group in varied.values() for s in group))
  platform, available = backend()
  log(f"{len(settings)} settings on {platform}, one benchmark process each")
  outcomes = {}
  for i, setting in enumerate(settings, 1):
    start = time.perf_counter()
    outcome = outcomes[setting] = run_setting(setting, config_args, steps, platform, available)
    if "error" in outcome:
      summary = outcome["error"]
    else:
      step = outcome["figures"]["step"]
      summary = (f"{step['step_ms_median']:,.1f} ms/step, "
                 f"{_mib(total_bytes(step['memory_bytes']))} MiB per device")
    log(f"[{i}/{len(settings)}] {setting}: {summary} ({time.perf_counter() - start:.0f} s)")
  result = {"platform": platform, "steps": steps, "base": dataclasses.asdict(base),
            "sweeps": {factor: [dataclasses.asdict(s) | outcomes[s] for s in group]
                       for factor, group in varied.items()}}
  return markdown(base, varied, outcomes, steps, platform), result
