"""Device mesh from the config, shardings, and global batch assembly.

The batch dimension is split over every data-parallel mesh axis; parameters are
replicated (FSDP rules come with the pod-scale work). Each process contributes its own
rows and `jax.make_array_from_process_local_data` stitches them into one global array.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")  # mesh axes the batch is split over


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Resolves one `-1` ("the rest of the devices") and checks the product."""
  sizes = dict(axes)
  unknown = [name for name, size in sizes.items() if size == -1]
  if len(unknown) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {sizes}")
  known = math.prod(size for size in sizes.values() if size != -1)
  if unknown:
    if num_devices % known:
      raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by {known}")
    sizes[unknown[0]] = num_devices // known
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, "
                     f"but {num_devices} are available")
  return sizes


def make_mesh(axes: Mapping[str, int], devices: list[Any] | None = None) -> Mesh:
  """A mesh with Auto axes (jax.make_mesh would default to Explicit)."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = mesh_shape(axes, len(devices))
  return jax.make_mesh(tuple(sizes.values()), tuple(sizes), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(sizes))


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  return tuple(axis for axis in DATA_AXES if axis in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[axis] for axis in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Per-process batch size; fails early when the global batch cannot be split evenly."""
  dp = data_parallel_size(mesh)
  if global_batch_size % dp:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"data-parallel size {dp} (mesh {dict(mesh.shape)})")
  if global_batch_size % jax.process_count():
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{jax.process_count()} processes")
  return global_batch_size // jax.process_count()


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles every process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for name, value in local_batch.items()}
