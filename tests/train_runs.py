"""The trainer as a subprocess, the way users run it: the tiny run's command line, a clean
environment, and the state a finished run left in its checkpoints."""

import os
import sys

from ecgclip_jax import checkpoint, parallel, train_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(ROOT, "launch", "local.sh")


def train_command(run_args, workdir, *extra):
  return [sys.executable, "-m", "ecgclip_jax.train", f"--workdir={workdir}", *run_args, *extra]


def env_with(**values):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return env | {"JAX_PLATFORMS": "cpu"} | values


def restored_state(workdir, step):
  manager = checkpoint.make_manager(str(workdir), read_only=True)
  trainer = train_state.Trainer(checkpoint.restore_config(manager, step))
  mesh = parallel.make_mesh({"data": -1})
  return checkpoint.restore(manager, step, trainer.abstract_state(parallel.replicated(mesh)))


