"""Orbax checkpoints holding everything a run needs to continue exactly.

Items per step: `state` (parameters, BatchNorm statistics, optimizer state, step, RNG) and
`config` (the resolved config as JSON). The data position is the step itself (see
pipeline.GlobalBatchSampler), so a checkpoint restores into any process layout. Saves are
asynchronous and coordinated by Orbax across processes; the manager keeps the newest N.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from ecgclip_jax import config_defaults

ITEMS = ("state", "config")


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints; local paths made absolute, bucket URLs (gs://...) kept."""
  return os.path.join(workdir if "://" in workdir else os.path.abspath(workdir), "checkpoints")


def make_manager(workdir: str, *, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The caller decides when a save is due; the manager keeps the newest `keep`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else keep, create=not read_only,
      enable_async_checkpointing=True, read_only=read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict) -> None:
  """Starts an asynchronous save of everything needed to continue from `step`."""
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(json.loads(config.to_json()))))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores `state` onto the shardings of `abstract_state`, whatever the mesh or process
  layout it was saved from; the stored config is read by `restore_config`."""
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]


def restore_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The resolved config a checkpoint was trained with: downstream jobs rebuild the model
  from it, so they need no config file of their own. It is laid over today's defaults, so
  keys added since the checkpoint was written read as their defaults."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  config = config_defaults.default_config()
  with config.unlocked():
    config.update(restored["config"])
  return config


def resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  """The requested step, or the latest; a clear error when there is none."""
  available = manager.all_steps()
  if not available:
    raise FileNotFoundError(f"no checkpoint found under {manager.directory}")
  if step is None:
    return max(available)
  if step not in available:
    raise FileNotFoundError(f"no checkpoint for step {step} under {manager.directory}; "
                            f"available steps: {sorted(available)}")
  return step
