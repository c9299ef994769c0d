"""Mesh from config and global batch assembly."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from ecgclip_jax import parallel


def test_mesh_shape_resolves_the_rest():
  assert parallel.mesh_shape({"data": -1}, 8) == {"data": 8}
  assert parallel.mesh_shape({"data": -1, "fsdp": 2}, 8) == {"data": 4, "fsdp": 2}
  with pytest.raises(ValueError, match="at most one"):
    parallel.mesh_shape({"data": -1, "fsdp": -1}, 8)
  with pytest.raises(ValueError, match="needs 6 devices"):
    parallel.mesh_shape({"data": 3, "fsdp": 2}, 8)


def test_global_batch_is_sharded_over_data_axes():
  mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
  assert parallel.data_parallel_size(mesh) == 8
  rows = np.random.default_rng().normal(size=(16, 5)).astype(np.float32)
  batch = parallel.global_batch({"x": rows}, mesh)
  assert batch["x"].sharding.spec == PartitionSpec(("data", "fsdp"))
  assert len(batch["x"].addressable_shards) == 8
  assert {s.data.shape for s in batch["x"].addressable_shards} == {(2, 5)}
  np.testing.assert_array_equal(np.asarray(batch["x"]), rows)


def test_batch_size_must_split_over_data_parallel_devices():
  mesh = parallel.make_mesh({"data": -1})
  assert parallel.check_batch_size(16, mesh) == 16  # one process holds the whole batch
  with pytest.raises(ValueError, match="not divisible by the data-parallel size 8"):
    parallel.check_batch_size(12, mesh)


def test_fsdp_rule_shards_large_arrays_on_their_largest_divisible_dimension():
  assert parallel.fsdp_spec((3, 512, 64), 4, 1024) == PartitionSpec(None, "fsdp", None)
  assert parallel.fsdp_spec((6, 10), 4, 16) == PartitionSpec()  # no dimension divides by 4
  assert parallel.fsdp_spec((384,), 4, 1024) == PartitionSpec()  # small: replicated
  assert parallel.fsdp_spec((1024, 384), 1, 1) == PartitionSpec()  # no fsdp axis
  assert parallel.fsdp_spec((8, 12), 4, 16) == PartitionSpec(None, "fsdp")


def test_data_parallel_and_fsdp_meshes_train_to_the_same_parameters(tiny_config, tmp_path):
  """The same steps under {data: 8} and {data: 2, fsdp: 4}: a config change only."""
  from ecgclip_jax import training
  tiny_config.eval.at_end_of_training = False
  tiny_config.total_steps = 3
  tiny_config.checkpoint_every_steps = 3
  data_parallel = training.train_and_evaluate(tiny_config, str(tmp_path / "dp"))
  tiny_config.mesh.data, tiny_config.mesh.fsdp = 2, 4
  tiny_config.sharding.fsdp_min_size = 256
  fsdp = training.train_and_evaluate(tiny_config, str(tmp_path / "fsdp"))

  sharded = [x for x in jax.tree.leaves(fsdp.params) if not x.sharding.is_fully_replicated]
  # Kernels and embeddings are split; what stays whole (norms, biases) is a small share.
  assert sum(x.size for x in sharded) > 0.9 * sum(x.size for x in jax.tree.leaves(fsdp.params))
  assert all("fsdp" in x.sharding.spec for x in sharded)
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(data_parallel.params))
  # Optimizer moments follow their parameters' sharding.
  moments = [x for x in jax.tree.leaves(fsdp.opt_state) if x.ndim >= 2]
  assert moments and any(not x.sharding.is_fully_replicated for x in moments)
  for name in ("params", "model_state", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(data_parallel, name)),
                    jax.tree.leaves(getattr(fsdp, name)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
