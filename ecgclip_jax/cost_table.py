"""How the train step's cost grows: step time, examples/s, FLOPs and memory per device
against the global batch size, the record length and the device count, one factor at a time
from the config's batch and length on one device, as markdown tables (the README's).

    python -m ecgclip_jax.cost_table --config configs/demo.py [--batch_sizes 16,32,64,128]
        [--num_samples 1000,2500,5000] [--devices 1,2,4,8] [--steps 10] [--json FILE]
        [--config.key=value ...]

Each setting is one run of the benchmark command (--noparts) in a fresh process, on
synthetic inputs. On a CPU the device counts are simulated (JAX_NUM_CPU_DEVICES); on an
accelerator a setting needing other than the devices present is skipped, with a note in its
row. Progress goes to stderr, the tables to stdout.
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from ecgclip_jax import cli, cost_sweep


def main():
  config = cli.define_config()
  batch_sizes = flags.DEFINE_list("batch_sizes", ["16", "32", "64", "128"],
                                  "Global batch sizes (at the config's record length, 1 device).")
  num_samples = flags.DEFINE_list("num_samples", ["1000", "2500", "5000"],
                                  "Record lengths in samples (at the config's batch, 1 device).")
  devices = flags.DEFINE_list("devices", ["1", "2", "4", "8"],
                              "Device counts (at the config's batch and record length).")
  steps = flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up) of each setting.")
  out = flags.DEFINE_string("json", None, "Also write every setting's figures to this JSON file.")

  def job():
    tables, result = cost_sweep.cost_tables(
        config.value, config_flags.get_config_filename(flags.FLAGS["config"]),
        config_flags.get_override_values(flags.FLAGS["config"]),
        [int(b) for b in batch_sizes.value], [int(n) for n in num_samples.value],
        [int(d) for d in devices.value], steps.value,
        log=lambda line: print(line, file=sys.stderr, flush=True))
    print(tables)
    if out.value:
      with open(out.value, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)

  cli.run(job, compilation_cache=False)  # it compiles nothing itself


if __name__ == "__main__":
  main()
