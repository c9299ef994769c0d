"""Mesh from config and global batch assembly."""

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
