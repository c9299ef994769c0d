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
