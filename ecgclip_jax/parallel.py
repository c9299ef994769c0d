"""Multi-host start, device mesh from the config, shardings, and global batch assembly.

The batch dimension is split over every data-parallel mesh axis. Each process contributes
its own rows and `jax.make_array_from_process_local_data` stitches them into one global
array.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXES = ("data", "fsdp")  # mesh axes the batch is split over
LOCAL_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")  # launch/local.sh


def _cluster_detected() -> bool:
  """A multi-process Slurm job or a multi-worker TPU slice, which jax configures itself."""
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  tpu = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return slurm or tpu


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1, *, initialization_timeout_s: int = 300,
                           heartbeat_timeout_s: int = 100) -> None:
  """Joins this process to the run's others, before anything touches a device.

  Where the layout comes from, first match wins: the arguments (train's flags); the
  variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` (set by
  launch/local.sh); a Slurm job or TPU slice, which jax detects; else one process.
  Never a hang: an unreachable coordinator is a ConnectionError after
  `initialization_timeout_s`, and when a peer dies (no heartbeat for `heartbeat_timeout_s`)
  jax's coordination service terminates every other process with a message naming it.
  """
  if not coordinator_address and os.environ.get(LOCAL_ENV[0]):
    missing = [name for name in LOCAL_ENV if not os.environ.get(name)]
    if missing:
      raise ValueError(f"{LOCAL_ENV[0]} is set but {', '.join(missing)} is not: set all of "
                       f"{', '.join(LOCAL_ENV)}")
    coordinator_address = os.environ[LOCAL_ENV[0]]
    num_processes = int(os.environ[LOCAL_ENV[1]])
    process_id = int(os.environ[LOCAL_ENV[2]])
  timeouts = dict(initialization_timeout=initialization_timeout_s,
                  heartbeat_timeout_seconds=heartbeat_timeout_s)
  if coordinator_address:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"distributed run: need num_processes >= 1 and 0 <= process_id < "
                       f"num_processes, got {num_processes} and {process_id}")
    if process_id != 0:
      _wait_for_coordinator(coordinator_address, initialization_timeout_s)
  elif not _cluster_detected():
    return
  jax.distributed.initialize(coordinator_address or None, num_processes or None,
                             None if process_id < 0 else process_id, **timeouts)
  if jax.process_count() > 1 and jax.default_backend() == "cpu":
    # CPU collectives (Gloo) give every process 30 s to reach the first one: a process that
    # loads its programs from the compilation cache while another compiles can miss that.
    # And the cache cannot serve all of them: a program's cache key differs between CPU
    # processes and only process 0 writes entries, so process 1 compiles every time
    # (measured with JAX_EXPLAIN_CACHE_MISSES on jax 0.10).
    jax.config.update("jax_compilation_cache_dir", None)


def _wait_for_coordinator(address: str, timeout_s: int) -> None:
  """Fails with one clear line when process 0's coordinator never answers; jax itself would
  abort the interpreter with a C++ stack trace after the same timeout."""
  host, _, port = address.rpartition(":")
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
        return
    except OSError as e:
      if time.monotonic() > deadline:
        raise ConnectionError(
            f"could not join the run: the coordinator {address} did not answer within "
            f"{timeout_s} s ({e.strerror or e}); is process 0 running, and is the address "
            f"reachable from this host?") from None
      time.sleep(0.5)


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


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> PartitionSpec:
  """The FSDP rule for one array: at least `min_size` elements -> split over the `fsdp` axis
  along its largest dimension that divides evenly; smaller arrays (norms, biases, scalars),
  or arrays with no such dimension, stay replicated."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return PartitionSpec()
  divisible = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
  if not divisible:
    return PartitionSpec()
  split = max(divisible, key=lambda d: shape[d])
  return PartitionSpec(*("fsdp" if d == split else None for d in range(len(shape))))


def state_shardings(abstract_state: Any, mesh: Mesh, fsdp_min_size: int) -> Any:
  """Shardings for every array of the train state (parameters and optimizer moments alike)
  from the FSDP rule; with no `fsdp` axis, or one of size 1, everything is replicated (pure
  data parallel)."""
  fsdp_size = mesh.shape.get("fsdp", 1)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp_size, fsdp_min_size)),
      abstract_state)


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


def shard_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array that every process holds in full, its rows split over the batch axes
  (each process places only its own devices' rows)."""
  array = np.asarray(array)
  return jax.make_array_from_callback(array.shape, batch_sharding(mesh), lambda i: array[i])


def place(tree: Any, shardings: Any) -> Any:
  """Host values that every process computed alike (fresh weights of one seed, a loaded
  file) on their shardings (a tree like `tree`, or one sharding for all). Not
  jax.device_put: across processes it first checks each leaf equal on every process, an
  all-gather of the whole array per leaf (340 at each start of the tests' tiny two-process
  run; every weight over the network on a cluster); here each process copies only its own
  devices' shards."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, tree)

  def put(value, sharding):
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(put, tree, shardings)


def on_every_process(flag: bool) -> bool:
  """True on every process if `flag` holds on every process (a collective): the one answer
  to a question each host answers from its own disk, such as "is my cache valid"."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray([flag], np.bool_), tiled=True)
  return bool(np.all(flags))


def from_process_zero(value: Any) -> Any:
  """Process 0's `value` (anything JSON can carry) on every process (a collective): one
  answer where hosts could see a file system differently, such as the steps saved so far."""
  if jax.process_count() == 1:
    return value
  data = np.frombuffer(json.dumps(value).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int64)))
  buffer = data if jax.process_index() == 0 else np.zeros(size, np.uint8)  # same shape
  return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))).decode())


def bytes_per_device(tree: Any) -> int:
  """The most bytes of `tree`'s arrays that any one device holds (its shards)."""
  per_device: dict[Any, int] = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values(), default=0)
