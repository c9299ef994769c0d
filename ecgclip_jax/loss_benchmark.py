"""Per-device memory and FLOPs of each contrastive loss, from XLA's compiled program.

    python -m ecgclip_jax.loss_benchmark [--devices 8] [--batch_sizes 4096,8192,16384,32768]
                                         [--embed_dim 256]

Compiles (never runs) `jax.value_and_grad` of every loss w.r.t. both embeddings, the scale
and the bias, with the batch split over a {"data": devices} mesh of simulated CPU devices,
and prints one markdown row per loss and global batch size, so the choice of `model.loss`
can be made from what each implementation makes a device hold.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import jax
import jax.numpy as jnp

from ecgclip_jax import losses, parallel

MIB = 2**20
BLOCK_ELEMENTS = {"N x N": lambda n, N: N * N, "n x N": lambda n, N: n * N,
                  "n x n": lambda n, N: n * n}
# name -> (loss(ecg, text, scale, bias, mesh), largest logits block per device in theory)
IMPLEMENTATIONS = {
    "clip": (functools.partial(losses.contrastive_loss, "clip"), "N x N"),
    "clip_shard_map": (functools.partial(losses.contrastive_loss, "clip_shard_map"), "n x N"),
    "siglip": (functools.partial(losses.contrastive_loss, "siglip"), "n x n"),
    "siglip_loss (global, XLA)": (lambda e, t, s, b, mesh: losses.siglip_loss(e, t, s, b),
                                  "N x N"),
}
HEADER = ("| loss | N | n | logits block (as written) | block MiB | temp MiB | argument MiB "
          "| output MiB | total MiB | GFLOP | compile s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")
FOOTNOTE = ("GFLOP is XLA's cost_analysis(), which counts a loop body once. The siglip ring's scan "
            "runs P-1 times: its matmuls really cost (3 + 4 (P-1)) x 2 n n D, not the 7 x 2 n n D "
            "counted (P=8: 31/24 of the global siglip's 3 x 2 n N D, as the backward pass "
            "recomputes each step's logits).")


def flops(compiled) -> float:
  """`cost_analysis()` is a dict in recent jax and a list of per-module dicts in older."""
  costs = compiled.cost_analysis()
  if isinstance(costs, dict):
    costs = [costs]
  return sum(cost.get("flops", 0.0) for cost in costs)


def compile_value_and_grad(loss, mesh, batch_size: int, embed_dim: int):
  """The compiled forward and backward pass for batch-sharded float32 embeddings, with the
  gradients batch-sharded like the embeddings (as the trainer's would be)."""
  rows, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
  embedding = jax.ShapeDtypeStruct((batch_size, embed_dim), jnp.float32, sharding=rows)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
  value_and_grad = jax.value_and_grad(lambda e, t, s, b: loss(e, t, s, b, mesh),
                                      argnums=(0, 1, 2, 3))
  out_shardings = (replicated, (rows, rows, replicated, replicated))
  return jax.jit(value_and_grad, out_shardings=out_shardings).lower(
      embedding, embedding, scalar, scalar).compile()


def row(name: str, block: str, compiled, batch_size: int, devices: int, seconds: float) -> str:
  memory = compiled.memory_analysis()
  n = batch_size // devices
  block_mib = BLOCK_ELEMENTS[block](n, batch_size) * 4 / MIB
  total = (memory.temp_size_in_bytes + memory.argument_size_in_bytes
           + memory.output_size_in_bytes - memory.alias_size_in_bytes)
  cells = (name, batch_size, n, block, f"{block_mib:,.0f}",
           f"{memory.temp_size_in_bytes / MIB:,.1f}",
           f"{memory.argument_size_in_bytes / MIB:,.1f}",
           f"{memory.output_size_in_bytes / MIB:,.1f}", f"{total / MIB:,.1f}",
           f"{flops(compiled) / 1e9:,.1f}", f"{seconds:.1f}")
  return "| " + " | ".join(str(cell) for cell in cells) + " |"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--batch_sizes", default="4096,8192,16384,32768")
  parser.add_argument("--embed_dim", type=int, default=256)
  args = parser.parse_args(argv)
  jax.config.update("jax_num_cpu_devices", args.devices)  # before any device is touched
  mesh = parallel.make_mesh({"data": args.devices})
  print(f"{args.devices} devices, embed_dim {args.embed_dim}, float32; per device, from "
        f"compiled.memory_analysis() and cost_analysis() of value_and_grad", flush=True)
  print(HEADER, flush=True)
  for batch_size in (int(size) for size in args.batch_sizes.split(",")):
    for name, (loss, block) in IMPLEMENTATIONS.items():
      print(f"compiling {name} at N={batch_size} ...", file=sys.stderr, flush=True)
      start = time.perf_counter()
      compiled = compile_value_and_grad(loss, mesh, batch_size, args.embed_dim)
      seconds = time.perf_counter() - start
      print(row(name, block, compiled, batch_size, args.devices, seconds), flush=True)
  print(f"\n{FOOTNOTE}")


if __name__ == "__main__":
  main()
