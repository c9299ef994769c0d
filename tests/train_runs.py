"""The trainer as a subprocess, the way users run it: the tiny run's command line, a clean
environment, a run killed with SIGKILL, and the state a run left in its checkpoints."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np

from ecgclip_jax import checkpoint, integrity, parallel, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")


def train_command(run_args, workdir, *extra):
  return [sys.executable, "-m", "ecgclip_jax.train", f"--workdir={workdir}", *run_args, *extra]


# Commands a test starts compile at XLA's lowest backend optimization and with XLA:CPU's
# older loop emitters: their programs are tiny and run a few steps, and a process of a
# multi-process run cannot use the compilation cache (parallel.initialize_distributed), so
# compiling is most of its time. Measured on the tiny run: the optimization level took a
# two-process launch from 86 s to 64 s (median of 3 pairs); the loop emitters then take a
# one-process launch from 44 s to 36 s wall (51 s to 38 s of CPU; train-step compile 9.5 s
# to 6.0 s). Results differ from the default compiler's by float rounding (params 2e-5
# relative L2), so runs compared bit for bit all go through env_with.
COMMAND_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def env_with(**values):
  """The environment of a command a test starts: none of the test process's JAX settings
  (device count, cache), CPU, COMMAND_XLA_FLAGS."""
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return env | {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": COMMAND_XLA_FLAGS} | values


def launch(run_args, workdir, processes, *extra):
  """The trainer in its own session: 1 process of 2 devices, or `processes` of 2 each under
  launch/local.sh."""
  command = train_command(run_args, workdir, *extra)
  if processes > 1:
    command = ["bash", LOCAL_SH, f"--num_processes={processes}", "--cpu_devices=2", "--",
               *command]
  return subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=env_with(JAX_NUM_CPU_DEVICES="2"),
                          start_new_session=True)


def kill_all(proc):
  """SIGKILL to the trainer and, under local.sh, to every process it started."""
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=60)


def saves_in_progress(workdir):
  folder = workdir / "checkpoints"
  if not folder.exists():
    return []
  return [p for p in folder.iterdir() if "orbax-checkpoint-tmp" in p.name]


def run_until_killed(run_args, workdir, processes, kill_when=None, extra=()):
  """Runs the trainer, and SIGKILLs it the moment `kill_when(workdir)` holds (polled every
  millisecond, from the files the run writes: its piped output can lag behind). Returns the
  output and whether a checkpoint save was left unfinished."""
  proc = launch(run_args, workdir, processes, *extra)

  def watch():
    while proc.poll() is None:
      if kill_when(workdir):
        kill_all(proc)
        return
      time.sleep(0.001)

  watcher = threading.Thread(target=watch, daemon=True)
  if kill_when is not None:
    watcher.start()
  output = proc.communicate(timeout=600)[0]
  if kill_when is not None:
    watcher.join()
  return output, bool(saves_in_progress(workdir))


def committed_steps(workdir):
  manager = checkpoint.make_manager(str(workdir), read_only=True)
  return [s for s in manager.all_steps()
          if integrity.problem(workdir / "checkpoints" / str(s)) is None]


def assert_bit_identical(a, b):
  for name in ("step", "params", "model_state", "opt_state", "rng"):
    for x, y in zip(jax.tree.leaves(getattr(a, name)), jax.tree.leaves(getattr(b, name))):
      assert np.array_equal(np.asarray(x), np.asarray(y)), name


def restored_state(workdir, step):
  manager = checkpoint.make_manager(str(workdir), read_only=True)
  trainer = train_state.Trainer(checkpoint.restore_config(manager, step))
  mesh = parallel.make_mesh({"data": -1})
  return checkpoint.restore(manager, step, trainer.abstract_state(parallel.replicated(mesh)))


def make_tiny_config(text_encoder_dir, data_dir):
  """A run small enough to train in seconds: 40 synthetic patients at 100 Hz, a 2-layer
  32-wide text tower, ResNet-18 at 1/8 width, 16-d embeddings, 4 steps of batch 16."""
  from ecgclip_jax.config_defaults import default_config
  c = default_config()
  c.data.data_dir = data_dir
  c.data.builder_config = "100hz"
  c.data.num_patients = 40
  c.data.num_samples = 1000
  c.text.encoder_dir = text_encoder_dir
  c.text.pretrained = False
  c.text.max_length = 24
  c.text.trainable_top_layers = 1
  c.ecg.width_multiplier = 0.125
  c.model.embed_dim = 16
  c.batch_size = 16
  c.total_steps = 4
  c.optim.warmup_steps = 1
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval.batch_size = 16
  return c


def largest_array_file(step_dir):
  """The biggest of the state's data files (TensorStore's `d/` folders)."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return max(files, key=os.path.getsize)


def truncate_array_file(step_dir):
  path = largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)
  return re.escape(os.path.relpath(path, step_dir)) + r" has [\d,]+ bytes, expected [\d,]+"
