"""How fast the train step runs here: compile time, step time, examples/s per chip, FLOPs,
MFU, device memory, where the step's time goes; optionally the input pipeline alone and the
PyTorch reference of the same model.

    python -m ecgclip_jax.benchmark --config configs/demo.py [--steps 20] [--json FILE]
        [--pipeline_workers 0,1,2] [--torch [--notorch_compile]] [--noparts]
        [--config.key=value ...]

Synthetic inputs and fresh weights; the step is jitted exactly as training runs it. Without
--pipeline_workers it imports no grain, TFDS or tokenizer, so it runs on a bare accelerator
image. --torch needs the benchmark extra (`pip install -e '.[benchmark]'`).
"""

import json

from absl import flags

from ecgclip_jax import benchmarking, cli


def main():
  config = cli.define_config()
  steps = flags.DEFINE_integer("steps", 20, "Timed steps (after warm-up) of each measurement.")
  out = flags.DEFINE_string("json", None, "Also write every figure to this JSON file.")
  parts = flags.DEFINE_bool("parts", True, "Time the ECG tower, text tower and loss alone.")
  workers = flags.DEFINE_list("pipeline_workers", [],
                              "Grain worker counts to time the real input pipeline with.")
  compare_torch = flags.DEFINE_bool("torch", False, "Also time the PyTorch reference.")
  torch_compile = flags.DEFINE_bool("torch_compile", True, "With --torch, also time it under "
                                    "torch.compile (minutes of compilation on a CPU).")
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    result = benchmarking.benchmark(
        config.value, steps.value, parts=parts.value,
        pipeline_workers=[int(w) for w in workers.value], compare_torch=compare_torch.value,
        torch_modes=("eager", "compiled") if torch_compile.value else ("eager",),
        log=lambda line: print(line, flush=True))
    if out.value:
      with open(out.value, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)

  cli.run(job, compilation_cache=False)  # compile times are part of the figures


if __name__ == "__main__":
  main()
