"""Downstream evaluation job: linear probes and fine-tuning at label fractions, zero-shot,
with bootstrap confidence intervals, for a pre-trained checkpoint or a random init.

    python -m ecgclip_jax.probe --workdir workdirs/demo --tasks synthetic --out results/demo
    python -m ecgclip_jax.probe --init random --config configs/demo.py --tasks synthetic \\
        --out results/demo_random

A pre-trained run rebuilds its model from the config stored in its checkpoint (`--step`, or
the latest); a random-init baseline builds the same architecture from `--config` with fresh
weights (see evaluators/downstream.py). Writes OUT/results.csv, OUT/results.md, OUT/meta.json
and figures, and prints a one-screen summary.
"""

import dataclasses

from absl import flags
from ml_collections import config_flags

from ecgclip_jax import cli
from ecgclip_jax.evaluators import downstream, finetune, tasks
from ecgclip_jax.interpret import embedding_map


def main():
  config = config_flags.DEFINE_config_file(
      "config", None, "Model config (configs/*.py): required for --init random; with a "
      "checkpoint only its eval.batch_size and mesh are used.", lock_config=True)
  workdir, step = cli.define_model_flags("Pre-training workdir holding checkpoints/.")
  init = flags.DEFINE_enum("init", "pretrained", ["pretrained", "random"], "Weights to start from.")
  task_flag = flags.DEFINE_string("tasks", None, "Task set: a name under configs/tasks/ or a path.")
  out = flags.DEFINE_string("out", None, "Output folder for results.csv / results.md.")
  method_flag = flags.DEFINE_list("methods", ["linear_probe", "finetune", "zero_shot"],
                                  f"Any of {downstream.METHODS}.")
  fraction_flag = flags.DEFINE_list("fractions", ["0.01", "0.1", "1.0"], "Label fractions.")
  selection = flags.DEFINE_list(
      "selection", ["validation"], f"Any of {downstream.SELECTIONS}: how a linear probe picks "
      "its epoch. max_test is MERL's rule (best test macro AUROC over the epochs), reported as "
      "linear_probe_max_test beside ours and marked as selected on the test set.")
  seeds = flags.DEFINE_integer("seeds", 3, "Seeds (label subsets and initializations) per cell.")
  n_bootstrap = flags.DEFINE_integer("n_bootstrap", 1000, "Bootstrap resamples for the CIs.")
  prompts = flags.DEFINE_string("prompts", "", "Zero-shot prompt file (JSON: task -> prompts).")
  data_dir = flags.DEFINE_string("data_dir", "", "TFDS data_dir of the task set's dataset.")
  manual_dir = flags.DEFINE_string("manual_dir", "", "Download to build the dataset from.")
  epochs = flags.DEFINE_integer("finetune_epochs", None, "Fine-tuning epochs (max, early stop).")
  lead_sets = flags.DEFINE_string(
      "leads", "all", "Lead sets to score, ';'-separated: each 'all', 'limb' (I, II, III, aVR, "
      "aVL, aVF) or a comma list of leads ('I', 'I,II'); each is scored with the other leads "
      "absent, as a device without them would record, e.g. --leads 'all;I;I,II;limb'.")
  length = cli.define_length_flags("window", "Task records")
  map_options = embedding_map.define_flags()
  cache_dir = cli.define_cache_flag("OUT/cache")
  flags.mark_flags_as_required(["tasks", "out"])
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    run = downstream.load_run(workdir.value, step.value, init.value, config.value)
    finetune_config = finetune.FinetuneConfig()
    if epochs.value is not None:
      finetune_config = dataclasses.replace(finetune_config, max_epochs=epochs.value)
    downstream.run_probe(
        run, tasks.resolve_task_set(task_flag.value), out.value, methods=method_flag.value,
        label_fractions=[float(f) for f in fraction_flag.value], seeds=seeds.value,
        n_bootstrap=n_bootstrap.value, prompts=prompts.value, data_dir=data_dir.value,
        manual_dir=manual_dir.value, finetune_config=finetune_config,
        map_options=map_options(), cache_dir=cache_dir.value, selections=selection.value,
        length=length(), lead_sets=lead_sets.value.split(";"))

  cli.run(job)


if __name__ == "__main__":
  main()
