"""Orbax round trip of a real training run's checkpoint."""

import jax
import numpy as np

from ecgclip_jax import checkpoint, parallel, train_state, training


def test_checkpoint_round_trip_restores_state_and_config(tiny_config, tmp_path):
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 2
  state = training.train_and_evaluate(tiny_config, str(tmp_path))

  mesh = parallel.make_mesh(tiny_config.mesh)
  abstract = train_state.Trainer(tiny_config).abstract_state(parallel.replicated(mesh))
  manager = checkpoint.make_manager(str(tmp_path), read_only=True)
  restored = checkpoint.restore(manager, 2, abstract)

  # The resolved config travels with the weights.
  assert checkpoint.restore_config(manager, 2).to_dict() == tiny_config.to_dict()
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(restored.step) == 2


def test_keep_the_newest_n_and_every_kth_step(tiny_config, tmp_path):
  """keep_checkpoints=2 with keep_checkpoints_every=4: after saves at steps 1..10 the
  newest two (9, 10) and the multiples of 4 (4, 8) are on disk; the rest were deleted."""
  tiny_config.keep_checkpoints, tiny_config.keep_checkpoints_every = 2, 4
  checkpoints = checkpoint.SealedCheckpoints(str(tmp_path), keep=2, keep_every=4)
  state = {"w": np.arange(3.0, dtype=np.float32)}
  for step in range(1, 11):
    checkpoints.save(step, {"w": state["w"] + step}, tiny_config)
  checkpoints.wait_until_finished()
  checkpoints.close()
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == [4, 8, 9, 10]
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "4", "8", "9"]
