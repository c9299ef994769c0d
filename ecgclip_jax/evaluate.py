"""Evaluation job: restore a checkpoint, embed the test split, score zero-shot and retrieval.

    python -m ecgclip_jax.evaluate --workdir DIR [--step N] [--config configs/demo.py]
    python -m ecgclip_jax.evaluate --workdir DIR --watch

The model comes from the checkpoint (its stored config); `--config`, if given, sets only the
evaluation side (`eval.*`, `mesh`) and, with --watch, the final step to wait for. Writes
`DIR/eval/<step>/metrics.json` with zero-shot PR/ROC curves and an embedding map beside it
and prints a per-label table (see evaluation.py); with --watch, for every checkpoint as
training writes it.
"""

from absl import flags
from ml_collections import config_flags

from ecgclip_jax import cli, evaluation
from ecgclip_jax.interpret import embedding_map


def main():
  config = config_flags.DEFINE_config_file(
      "config", None, "Optional: evaluation settings (eval.*, mesh); the model always comes "
      "from the checkpoint.", lock_config=True)
  workdir, step = cli.define_model_flags("Training workdir holding checkpoints/.")
  watch = flags.DEFINE_bool(
      "watch", False, "Evaluate every checkpoint as it lands, until the final step.")
  poll = flags.DEFINE_float("poll_seconds", 60, "With --watch: seconds between looks.")
  idle = flags.DEFINE_float("idle_timeout", 3 * 3600,
                            "With --watch: stop after this many seconds without a checkpoint.")
  map_options = embedding_map.define_flags()
  flags.mark_flags_as_required(["workdir"])
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    if watch.value:
      evaluation.watch(workdir.value, config.value, poll.value, idle.value, map_options())
    else:
      evaluation.evaluate_checkpoint(workdir.value, step.value, config.value, map_options())

  cli.run(job)


if __name__ == "__main__":
  main()
