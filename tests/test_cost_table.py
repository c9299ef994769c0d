"""The cost table command on a tiny model, as users run it: one benchmark process per
setting, each row labelled with what that process measured, a failing setting reported in its
row, and figures that move the way the factor says they must (memory and FLOPs up with the
batch and the record length, per-device memory and FLOPs down with more devices). Speed
itself is never asserted."""

import json
import os
import subprocess
import sys

import pytest

from ecgclip_jax import cost_sweep
from train_runs import env_with

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cells of a row: batch, samples, devices, step ms, examples/s, GFLOP/device, argument MiB,
# output MiB, temp MiB, total MiB, allocator peak MiB.
STEP_MS, EXAMPLES_S, GFLOP, TEMP, TOTAL, ALLOCATOR = 3, 4, 5, 8, 9, 10


def _tables(stdout: str) -> dict[str, list[list[str]]]:
  """{heading: rows of cells} of the markdown tables the command printed."""
  tables, heading = {}, None
  for line in stdout.splitlines():
    if line.startswith("By "):
      heading = line
      tables[heading] = []
    elif line.startswith("| ") and not line.startswith("| batch"):
      tables[heading].append([cell.strip() for cell in line.strip().strip("|").split("|")])
  return tables


def _number(cell: str) -> float:
  return float(cell.replace(",", ""))


def test_cost_table_of_a_tiny_model(tiny_text_encoder_dir, tmp_path):
  out = tmp_path / "cost.json"
  command = [
      sys.executable, "-m", "ecgclip_jax.cost_table",
      "--config", os.path.join(REPO, "configs", "demo.py"), "--batch_sizes", "8,16",
      "--num_samples", "400,800", "--devices", "1,2,3", "--steps", "1", "--json", str(out),
      f"--config.text.encoder_dir={tiny_text_encoder_dir}", "--config.text.pretrained=False",
      "--config.batch_size=8", "--config.data.num_samples=400", "--config.text.max_length=16",
      "--config.text.trainable_top_layers=0",  # no dropout in the step: it compiles faster
      "--config.ecg.width_multiplier=0.125", "--config.model.embed_dim=16"]
  # The settings' processes share the test run's compilation cache, down to the many small
  # programs of the (identical) weight initialization; each train step is a new program.
  env = env_with(JAX_COMPILATION_CACHE_DIR=os.environ["ECGCLIP_COMPILATION_CACHE_DIR"],
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=1800)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "[5/5] batch 8, 400 samples, 3 devices: failed" in result.stderr, result.stderr

  tables = _tables(result.stdout)
  assert list(tables) == ["By batch size (400 samples, 1 device):",
                          "By record length (batch 8, 1 device):",
                          "By devices (batch 8, 400 samples):"], result.stdout
  by_batch, by_length, by_devices = tables.values()
  settings = lambda rows: [tuple(int(cell) for cell in row[:3]) for row in rows]
  assert settings(by_batch) == [(8, 400, 1), (16, 400, 1)]
  assert settings(by_length) == [(8, 400, 1), (8, 800, 1)]
  assert settings(by_devices) == [(8, 400, 1), (8, 400, 2), (8, 400, 3)]
  base = by_batch[0]
  assert by_length[0] == base and by_devices[0] == base  # one run, shown in every table

  *measured, indivisible = by_batch + by_length[1:] + by_devices[1:]
  assert "not divisible" in indivisible[STEP_MS], indivisible  # its row, not a crash
  for row in measured:
    assert all(_number(cell) > 0 for cell in row[STEP_MS:ALLOCATOR]), row
    assert row[ALLOCATOR] == "n/a", row  # a CPU reports no allocator peak
    batch, step_s = int(row[0]), _number(row[STEP_MS]) / 1e3
    assert _number(row[EXAMPLES_S]) == pytest.approx(batch / step_s, rel=0.01), row

  ratio = lambda rows, column: _number(rows[1][column]) / _number(rows[0][column])
  # Twice the batch or the length: about twice the FLOPs, more memory (the weights and
  # optimizer state stay the same). Two devices: each does half the work on half the batch.
  assert 1.8 < ratio(by_batch, GFLOP) < 2.2 and 1.8 < ratio(by_length, GFLOP) < 2.2
  assert ratio(by_batch, TOTAL) > 1 and ratio(by_batch, TEMP) > 1.5
  assert ratio(by_length, TOTAL) > 1 and ratio(by_length, TEMP) > 1.5
  assert 0.4 < ratio(by_devices, GFLOP) < 0.6
  assert ratio(by_devices, TOTAL) < 1 and ratio(by_devices, TEMP) < 0.75

  figures = json.loads(out.read_text())
  assert figures["platform"] == "cpu" and figures["base"] == {
      "batch_size": 8, "num_samples": 400, "devices": 1}
  assert [len(group) for group in figures["sweeps"].values()] == [2, 2, 3]
  assert "not divisible" in figures["sweeps"]["devices"][2]["error"]
  assert figures["sweeps"]["devices"][1]["figures"]["step"]["devices"] == 2


def test_on_an_accelerator_a_setting_needs_the_devices_present():
  """The benchmark takes every device there is: a row for another count would be mislabelled."""
  outcome = cost_sweep.run_setting(cost_sweep.Setting(8, 400, devices=2), [], 1, "gpu", 1)
  assert outcome["error"].startswith("skipped: the benchmark uses all 1 gpu devices here")
