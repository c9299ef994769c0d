"""Orbax checkpoints holding everything a run needs to continue exactly.

Items per step: `state` (parameters, BatchNorm statistics, optimizer state, step, RNG) and
`config` (the resolved config as JSON). The data position is the step itself (see
pipeline.GlobalBatchSampler), so a checkpoint restores into any process layout. Saves are
asynchronous and coordinated by Orbax across processes; the manager keeps the newest N, and
removes an old step only after the new one is committed.

The training job's saves are sealed (integrity.py) and its restores verified: a damaged step
is reported in one line, moved to WORKDIR/checkpoints_unusable/ (kept for inspection, out of
Orbax's sight) and the next older step is used.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy

from ecgclip_jax import config_defaults, integrity, parallel, storage, train_state

ITEMS = ("state", "config")


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints; local paths made absolute, bucket URLs (gs://...) kept."""
  return os.path.join(storage.absolute(workdir), "checkpoints")


def make_manager(workdir: str, *, keep: int = 3, keep_every: int = 0, read_only: bool = False,
                 before_commit: Callable[[], None] | None = None) -> ocp.CheckpointManager:
  """The caller decides when a save is due; the manager keeps the newest `keep` and, with
  `keep_every`, every step divisible by it (Orbax's preservation policies), so probes can
  restore earlier steps. `before_commit` runs on process 0 once every process has written
  a step, before Orbax commits it."""
  policy = None
  if not read_only:
    policies = [preservation_policy.LatestN(keep)]
    if keep_every:
      policies.append(preservation_policy.EveryNSteps(keep_every))
    policy = preservation_policy.AnyPreservationPolicy(policies)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, create=not read_only,
      enable_async_checkpointing=True, read_only=read_only,
      async_options=ocp.AsyncOptions(post_finalization_callback=before_commit))
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


_all_finite = jax.jit(train_state.all_finite)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         config: ml_collections.ConfigDict) -> None:
  """Starts an asynchronous save of everything needed to continue from `step`; refuses
  parameters or optimizer state holding NaN or Inf, which no later run could use."""
  if not bool(_all_finite(state)):
    raise FloatingPointError(f"refusing to checkpoint step {step}: the train state holds "
                             "non-finite values")
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(json.loads(config.to_json()))))


class SealedCheckpoints:
  """The training job's checkpoint manager: each save is sealed with a manifest of its files
  before Orbax commits it (on process 0, once every process has written its part), and
  `restore_newest_intact` checks the seal before trusting a step."""

  def __init__(self, workdir: str, keep: int, keep_every: int = 0):
    self.directory = epath.Path(checkpoint_dir(workdir))
    self.unusable_directory = self.directory.parent / "checkpoints_unusable"
    self._saving: int | None = None
    self.manager = make_manager(workdir, keep=keep, keep_every=keep_every,
                                before_commit=self._seal)

  def _seal(self) -> None:
    """Runs after every process has written the step and before Orbax commits it: the
    files are still in the temporary folder (or, on a bucket, in place before the marker)."""
    final = self.directory / str(self._saving)
    pending = [p for p in self.directory.glob(f"{self._saving}.orbax-checkpoint-tmp*")
               if p.is_dir()]
    integrity.write_manifest(pending[0] if pending else final)

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict) -> None:
    self.manager.wait_until_finished()  # one save in flight: `_seal` knows its step
    self._saving = step
    save(self.manager, step, state, config)

  def restore_newest_intact(self, abstract_state: Any,
                            log: Callable[[str], None]) -> tuple[int | None, Any]:
    """`(step, state)` of the newest step that passes its seal and restores, or
    `(None, None)` when there is none. Each step passed over is reported in one line and
    moved aside. The seal is checked once, by process 0 (it reads every byte of the step),
    and its verdict shared; a restore counts only if it succeeded on every process. A sealed
    step whose files are intact but do not restore (the config changed the model) is an
    error, not damage: it stays where it is."""
    steps = parallel.from_process_zero(
        sorted(self.manager.all_steps(), reverse=True) if jax.process_index() == 0 else None)
    for step in steps:
      folder = self.directory / str(step)
      problem, sealed = parallel.from_process_zero(
          (integrity.problem(folder), integrity.is_sealed(folder))
          if jax.process_index() == 0 else None)
      if problem is None:
        state, error = None, None
        try:
          state = restore(self.manager, step, abstract_state)
        except Exception as e:  # TensorStore and Orbax raise many kinds  # noqa: BLE001
          error = e
        if parallel.on_every_process(error is None):
          return step, state
        if sealed:  # its files are intact: the config does not fit it; nothing to set aside
          raise error or RuntimeError(f"checkpoint step {step} failed to restore on another "
                                      "process (its files are intact)")
        problem = ("restore failed: " + (str(error).strip().split("\n")[0][:200] if error
                                         else "on another process"))
      log(f"checkpoint step {step} is unusable: {problem}; moved to "
          f"{self.unusable_directory / str(step)}, trying the previous step")
      if jax.process_index() == 0:
        self.unusable_directory.mkdir(parents=True, exist_ok=True)
        folder.rename(self.unusable_directory / str(step))
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"ecgclip_jax set aside step {step}")
      self.manager.reload()
    return None, None

  def wait_until_finished(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores `state` onto the shardings of `abstract_state`, whatever the mesh or process
  layout it was saved from; the stored config is read by `restore_config`."""
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))["state"]


def restore_weights(manager: ocp.CheckpointManager, step: int, abstract_weights: Any) -> Any:
  """Only what inference needs, `(params, model_state)` of checkpoint `step`, onto the
  shardings of `abstract_weights`: the optimizer moments (twice the parameters' size) are
  never read."""
  params, model_state = abstract_weights
  item = {"params": params, "model_state": model_state}
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True)))["state"]
  return restored["params"], restored["model_state"]


def restore_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The resolved config a checkpoint was trained with: downstream jobs rebuild the model
  from it, so they need no config file of their own (see config_defaults.from_stored)."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return config_defaults.from_stored(restored["config"])


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
