"""Memory of the train-step gradient with and without `ecg.remat`, from the compiled program.

    python -m ecgclip_jax.remat_benchmark [--num_samples 1000,5000] [--batch_size 32]
                                          [--width_multiplier 1.0] [--arch resnet18]
                                          [--dtype float32] [--text_encoder_dir DIR]

Compiles (never runs) `Trainer.loss_and_grads` on one device and prints one markdown row per
record length and remat setting: XLA's temp memory of the whole gradient, and the bytes the
ECG tower's forward pass saves for its backward pass (jax.vjp's residuals; remat changes
nothing else). On CPU the temp column does not fall with remat (XLA:CPU's compiled program
keeps none of remat's optimization barriers), so there the residual column is the measure;
on GPU and TPU, where the barriers hold, temp memory is the number to read.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from ecgclip_jax import train_state
from ecgclip_jax.config_defaults import default_config
from ecgclip_jax.models import build, resnet1d

MIB = 2**20
HEADER = ("| arch | width | dtype | batch | samples | remat | temp MiB | ECG residuals MiB |\n"
          "|---|---|---|---|---|---|---|---|")


def train_forward(graphdef: nnx.GraphDef):
  """The ECG tower's training pass as a pure function
  `(params, batch_stats, ecg) -> (features, new batch_stats)`."""
  def forward(params, batch_stats, ecg):
    model = nnx.merge(graphdef, params, batch_stats)
    return model(ecg, train=True), nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
  return forward


def residual_bytes(fn, *args) -> int:
  """Bytes `fn`'s forward pass keeps for the backward pass w.r.t. its first argument (shapes
  only: `args` may be jax.ShapeDtypeStruct)."""
  pullback = jax.eval_shape(lambda first, *rest: jax.vjp(lambda p: fn(p, *rest), first)[1],
                            *args)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(pullback))


def measure(config) -> tuple[int, int]:
  """(compiled temp bytes of the train-step gradient, ECG tower residual bytes)."""
  trainer = train_state.Trainer(config)
  b, t, length = config.batch_size, config.data.num_samples, config.text.max_length
  batch = {"ecg": jax.ShapeDtypeStruct((b, t, 12), jnp.float32),
           "input_ids": jax.ShapeDtypeStruct((b, length), jnp.int32),
           "attention_mask": jax.ShapeDtypeStruct((b, length), jnp.int32)}
  compiled = jax.jit(trainer.loss_and_grads).lower(trainer.abstract_state(), batch).compile()
  tower = nnx.eval_shape(lambda: resnet1d.ResNet1D(build.ecg_encoder_config(config),
                                                   rngs=nnx.Rngs(0)))
  graphdef, params, stats = nnx.split(tower, nnx.Param, nnx.BatchStat)
  saved = residual_bytes(train_forward(graphdef), nnx.to_pure_dict(params),
                         nnx.to_pure_dict(stats), batch["ecg"])
  return compiled.memory_analysis().temp_size_in_bytes, saved


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_samples", default="1000,5000")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--width_multiplier", type=float, default=1.0)
  parser.add_argument("--arch", default="resnet18")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--text_encoder_dir", default="", help="'' = the bundled MiniLM")
  args = parser.parse_args(argv)
  print(f"{jax.devices()[0].platform}: Trainer.loss_and_grads, one device", flush=True)
  print(HEADER, flush=True)
  for num_samples in (int(n) for n in args.num_samples.split(",")):
    for remat in (False, True):
      config = default_config()
      config.text.encoder_dir = args.text_encoder_dir
      config.batch_size, config.data.num_samples = args.batch_size, num_samples
      config.ecg.arch, config.ecg.width_multiplier = args.arch, args.width_multiplier
      config.ecg.remat, config.model.dtype = remat, args.dtype
      temp, saved = measure(config)
      cells = (args.arch, args.width_multiplier, args.dtype, args.batch_size, num_samples,
               remat, f"{temp / MIB:,.1f}", f"{saved / MIB:,.1f}")
      print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)


if __name__ == "__main__":
  main()
