"""Real multi-process runs on localhost (launch/local.sh, jax.distributed, gloo collectives):
2 processes x 2 CPU devices train exactly like 1 process x 4, checkpoints restore into another
process layout, a kill -9 of both in the middle of a save loses nothing, SIGTERM on one host
stops every host at one saved step, and a lost peer or an unreachable coordinator is an error
within a bounded time, never a hang."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ecgclip_jax import checkpoint, integrity
from ecgclip_jax.evaluators import results
from train_runs import (LOCAL_SH, ROOT, assert_bit_identical, committed_steps, env_with,
                        restored_state, run_until_killed, saves_in_progress, train_command,
                        truncate_array_file)

# Reductions over 4 devices run in another order across 2 processes (gloo) than within one,
# so results agree to float32 rounding, not bitwise: losses to 1e-5 relative, and parameters
# and BatchNorm statistics as a whole to 1e-4 relative (L2). Single elements are not
# compared: Adam divides by sqrt(v), so rounding in a near-zero gradient can flip that
# element's update
# (seen: 1 element in 1M off by 1.4e-3 = 1.4 lr). A wrong data order or wrong batch
# statistics moves the state by ~1e-2 relative, a hundred times the tolerance.
# Adam's moments agree only to 4e-3 L2 (against a norm of 4.2 that includes the step
# counts), which is consistent with layout alone: in one process, this model's gradients
# on 1 and on 4 devices agree to 2e-6 relative L2, yet single elements built from
# cancelling sums differ by up to 10%; and the flipped Adam updates above feed steps 2, 3.
GLOBAL_RTOL = {"params": 1e-4, "model_state": 1e-4, "opt_state": 5e-3}
LOSS_RTOL = 1e-5


def run_single(run_args, workdir, devices, *extra):
  out = subprocess.run(train_command(run_args, workdir, *extra), cwd=ROOT, text=True,
                       capture_output=True, env=env_with(JAX_NUM_CPU_DEVICES=str(devices)),
                       timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def run_local(run_args, workdir, processes=2, devices=2, *extra):
  out = subprocess.run(
      ["bash", LOCAL_SH, f"--num_processes={processes}", f"--cpu_devices={devices}", "--",
       *train_command(run_args, workdir, *extra)],
      cwd=ROOT, text=True, capture_output=True, env=env_with(), timeout=600)
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def assert_same_state(a, b):
  assert int(a.step) == int(b.step)
  for name in ("params", "model_state", "opt_state"):
    xs, ys = (np.concatenate([np.ravel(np.asarray(leaf)).astype(np.float64)
                              for leaf in jax.tree.leaves(getattr(s, name))]) for s in (a, b))
    assert np.linalg.norm(xs - ys) <= GLOBAL_RTOL[name] * np.linalg.norm(ys), name


@pytest.fixture(scope="module")
def one_by_four(run_args, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("1x4")
  out = run_single(run_args, workdir, 4)
  assert "mesh {'data': 4, 'fsdp': 1} over 4 cpu devices, 1 process(es)" in out
  return workdir


@pytest.fixture(scope="module")
def two_by_two(run_args, tmp_path_factory):
  """The tiny run in 2 processes of 2 devices: its workdir and output."""
  workdir = tmp_path_factory.mktemp("2x2")
  return workdir, run_local(run_args, workdir)


def test_two_processes_of_two_devices_train_like_one_process_of_four(one_by_four, two_by_two):
  tmp_path, out = two_by_two
  assert "[0] mesh {'data': 4, 'fsdp': 1} over 4 cpu devices, 2 process(es)" in out
  assert "[1] step" not in out, "only process 0 logs"
  assert [line.split()[2] for line in out.splitlines() if line.startswith("[0] step ")] == [
      "1/3", "2/3", "3/3"]
  # One metrics file, written by process 0; one checkpoint per step, coordinated by Orbax.
  assert len(open(tmp_path / "metrics.jsonl").readlines()) == 3
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == [2, 3]
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
  reference_losses = [json.loads(line)["loss"] for line in open(one_by_four / "metrics.jsonl")]
  np.testing.assert_allclose(losses, reference_losses, rtol=LOSS_RTOL)
  final = restored_state(tmp_path, 3)
  reference = restored_state(one_by_four, 3)
  assert_same_state(final, reference)
  # The runs did train: the parameters moved away from the step-2 checkpoint.
  before = restored_state(one_by_four, 2)
  moved = [not np.allclose(x, y) for x, y in zip(jax.tree.leaves(before.params),
                                                   jax.tree.leaves(final.params))]
  assert sum(moved) > len(moved) // 2


def test_kill_9_of_both_processes_during_a_save_then_the_rerun_gives_the_uninterrupted_result(
    run_args, two_by_two, tmp_path):
  """SIGKILL to every process while their first asynchronous save is being written: no step
  counts as saved, and the relaunch ends bit-identical to the run never interrupted."""
  out, unfinished = run_until_killed(run_args, tmp_path, 2, saves_in_progress)
  assert unfinished and "step 3/3" not in out, out
  assert committed_steps(tmp_path) == [], out
  out, _ = run_until_killed(run_args, tmp_path, 2)
  assert "[0] step 3/3" in out, out
  straight, _ = two_by_two
  assert_bit_identical(restored_state(tmp_path, 3), restored_state(straight, 3))
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  reference = [json.loads(line) for line in open(straight / "metrics.jsonl")]
  assert [(m["step"], m["loss"]) for m in logged] == [(m["step"], m["loss"]) for m in reference]


def test_a_checkpoint_of_one_process_resumes_in_two(run_args, one_by_four, tmp_path):
  """4 devices in 1 process -> 2 x 2: the restored run reads the same data from its step
  and reaches the uninterrupted run's step 3. A damaged newer step is passed over by both
  processes on process 0's verdict."""
  os.makedirs(tmp_path / "checkpoints")
  os.symlink(one_by_four / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
  shutil.copytree(one_by_four / "checkpoints" / "3", tmp_path / "checkpoints" / "3")
  truncate_array_file(tmp_path / "checkpoints" / "3")
  out = run_local(run_args, tmp_path)
  assert "[0] checkpoint step 3 is unusable" in out, out
  assert "[0] resumed from checkpoint step 2" in out
  assert_same_state(restored_state(tmp_path, 3), restored_state(one_by_four, 3))


def test_sigterm_to_one_process_saves_one_agreed_step_and_the_rerun_resumes(run_args, tmp_path):
  long_run = ["--config.total_steps=100000", "--config.checkpoint_every_steps=100000"]
  launcher = subprocess.Popen(
      ["bash", LOCAL_SH, "--num_processes=2", "--cpu_devices=2", "--",
       *train_command(run_args, tmp_path, *long_run)],
      cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env_with(),
      start_new_session=True)
  lines = iter(launcher.stdout.readline, "")
  seen = []
  for line in lines:
    seen.append(line)
    if line.startswith("[0] step 3/"):
      break
  else:
    pytest.fail("".join(seen))
  # SIGTERM to process 1 only, as a preempted host would get it.
  workers = subprocess.run(["pgrep", "-f", "--", f"--workdir={tmp_path}"], capture_output=True,
                           text=True).stdout.split()
  targets = [pid for pid in workers
             if "JAX_PROCESS_ID=1" in open(f"/proc/{pid}/environ").read().replace("\0", " ")]
  assert targets, workers
  os.kill(int(targets[0]), signal.SIGTERM)
  rest = launcher.communicate(timeout=300)[0]
  output = "".join(seen) + rest
  assert launcher.returncode == 0, output
  saved = checkpoint.make_manager(str(tmp_path), read_only=True).all_steps()
  assert len(saved) == 1 and saved[0] >= 3, output
  assert f"[0] preemption notice: saved step {saved[0]}" in output
  # The saved step is sealed and intact, so a relaunch resumes from it (resuming in two
  # processes: test_a_checkpoint_of_one_process_resumes_in_two and the kill -9 test).
  step_dir = tmp_path / "checkpoints" / str(saved[0])
  assert integrity.is_sealed(step_dir) and integrity.problem(step_dir) is None


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_an_unreachable_coordinator_is_an_error_within_the_timeout(run_args, tmp_path):
  start = time.time()
  out = subprocess.run(
      train_command(run_args, tmp_path, f"--coordinator_address=localhost:{_free_port()}",
                    "--num_processes=2", "--process_id=1", "--initialization_timeout_s=5"),
      cwd=ROOT, text=True, capture_output=True, env=env_with(), timeout=120)
  assert out.returncode != 0
  assert "error: could not join the run: the coordinator localhost:" in out.stderr
  assert "did not answer within 5 s" in out.stderr
  assert "Traceback" not in out.stderr
  assert time.time() - start < 60


def test_a_peer_that_dies_stops_the_others_within_the_heartbeat_timeout(run_args, tmp_path):
  """Without the launcher's supervision (as on a pod): process 1 is killed outright and
  process 0 must fail on its own, with JAX's message naming the lost task."""
  port = _free_port()
  long_run = ["--config.total_steps=100000", "--config.checkpoint_every_steps=100000",
              "--heartbeat_timeout_s=5"]
  procs = [subprocess.Popen(
      train_command(run_args, tmp_path, *long_run), cwd=ROOT, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env=env_with(JAX_NUM_CPU_DEVICES="2", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
      for i in range(2)]
  try:
    seen = []
    for line in iter(procs[0].stdout.readline, ""):
      seen.append(line)
      if line.startswith("step 2/"):
        break
    else:
      pytest.fail("".join(seen))
    procs[1].kill()
    killed_at = time.time()
    rest = procs[0].communicate(timeout=120)[0]
    assert procs[0].returncode != 0
    assert time.time() - killed_at < 60
    assert "another task died" in rest or "unhealthy" in rest, rest[-2000:]
  finally:
    for p in procs:
      p.kill()


def run_job_command(command, processes=2):
  """`command` in 1 process of 4 devices or in `processes` of 2 (launch/local.sh)."""
  if processes > 1:
    command = ["bash", LOCAL_SH, f"--num_processes={processes}", "--cpu_devices=2", "--",
               *command]
  out = subprocess.run(command, cwd=ROOT, text=True, capture_output=True, timeout=600,
                       env=env_with(JAX_NUM_CPU_DEVICES="4"))
  assert out.returncode == 0, out.stdout + out.stderr
  return out.stdout


def run_job(module, *args, processes=1):
  """An evaluation job (python -m ecgclip_jax.MODULE), in 1 process or several."""
  return run_job_command([sys.executable, "-m", f"ecgclip_jax.{module}", *args], processes)


def macro_scores(out_dir):
  return {(r["method"], r["task"]): (r["prauc"], r["auroc"])
          for r in results.read_results(out_dir / "results.csv") if r["prauc"] is not None}


def test_evaluate_probe_and_predict_in_two_processes_give_the_one_process_outputs(
    one_by_four, tmp_path):
  """Two processes with private cache folders ('{process}'), one of which has lost its
  cache: every process still takes the same branch (recomputes), nothing hangs, and the
  outputs match one process (to float32 rounding of the sharded passes)."""
  eval_file = one_by_four / "eval" / "3" / "metrics.json"
  run_job("evaluate", f"--workdir={one_by_four}", "--embedding_map=none")
  one = json.loads(eval_file.read_text())
  run_job("evaluate", f"--workdir={one_by_four}", "--embedding_map=none", processes=2)
  two = json.loads(eval_file.read_text())
  for section in ("zero_shot", "retrieval"):
    np.testing.assert_allclose(*(np.array(jax.tree.leaves(r[section]), float)
                                 for r in (two, one)), rtol=1e-4, atol=1e-6)

  task_set = json.loads((Path(ROOT) / "configs" / "tasks" / "synthetic.json").read_text())
  (tmp_path / "tiny.json").write_text(json.dumps(task_set | {"num_patients": 40}))
  probe = ["--workdir", str(one_by_four), "--tasks", str(tmp_path / "tiny.json"),
           "--methods=linear_probe", "--fractions=1.0", "--seeds=1", "--n_bootstrap=10",
           "--embedding_map=none", f"--cache_dir={tmp_path}/cache-{{process}}"]
  run_job("probe", *probe, f"--out={tmp_path / 'one'}")  # its features cached in cache-0
  assert os.path.exists(tmp_path / "cache-0" / "test.npz")
  # Process 0 now has a valid cache, process 1 none.
  out = run_job("probe", *probe, f"--out={tmp_path / 'two'}", processes=2)
  assert "[0]   embedded" in out, out  # process 0 recomputed with process 1: no hang
  assert "cached in" in out and os.path.exists(tmp_path / "cache-1" / "test.npz")
  one, two = (macro_scores(tmp_path / name) for name in ("one", "two"))
  assert two.keys() == one.keys()
  np.testing.assert_allclose(list(two.values()), list(one.values()), rtol=1e-3)

  ecg = tmp_path / "ecg.npy"
  np.save(ecg, np.random.default_rng(0).normal(size=(1000, 12)).astype(np.float32))
  predict = ["--workdir", str(one_by_four), f"--input={ecg}", "--sample_rate=100",
             f"--cache_dir={tmp_path}/bank-{{process}}"]
  run_job("predict", *predict, f"--output={tmp_path / 'one.json'}")
  run_job("predict", *predict, f"--output={tmp_path / 'two.json'}", processes=2)
  one, two = (json.loads((tmp_path / f"{n}.json").read_text())["records"][0]
              for n in ("one", "two"))
  assert [r["report"] for r in one["nearest_reports"]] == [
      r["report"] for r in two["nearest_reports"]]
  np.testing.assert_allclose(list(two["scores"].values()), list(one["scores"].values()),
                             atol=1e-3)


AGREEMENT = """
from ecgclip_jax import parallel
parallel.initialize_distributed()
import jax
i = jax.process_index()
print("zero", parallel.from_process_zero({"steps": [2, 4][: 2 - i], "seen": f"process {i}"}))
print("every", parallel.on_every_process(True), parallel.on_every_process(i == 0))
import numpy as np
mesh = parallel.make_mesh({"data": 1, "fsdp": -1})
value = np.arange(24.0).reshape(8, 3)  # every process holds it, as fresh weights of one seed
placed = parallel.place({"w": value, "b": value[0]}, {
    "w": jax.NamedSharding(mesh, jax.P("fsdp")), "b": parallel.replicated(mesh)})
shards = placed["w"].addressable_shards
print("rows", *sorted(s.index[0].start for s in shards),
      all(np.array_equal(s.data, value[s.index]) for s in shards),
      all(np.array_equal(s.data, value[0]) for s in placed["b"].addressable_shards))
"""


def test_answers_agreed_across_processes():
  """Process 0's answer reaches every process (values of different sizes on each), a flag
  holds everywhere only if it holds on every process, and a host value placed on a sharding
  over both processes holds, on each, exactly its own devices' rows."""
  out = run_job_command([sys.executable, "-c", AGREEMENT])
  for process in (0, 1):
    assert f"[{process}] zero {{'steps': [2, 4], 'seen': 'process 0'}}" in out, out
    assert f"[{process}] every True False" in out, out
  # 4 devices of 2 rows each, 2 devices a process: each process holds 2 of the 4 blocks.
  starts = [line.split()[2:4] for line in out.splitlines() if " rows " in line]
  assert sorted(int(start) for pair in starts for start in pair) == [0, 2, 4, 6], out
  assert sum(line.endswith(" True True") for line in out.splitlines()) == 2, out
