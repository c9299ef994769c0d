"""Contrastive ECG–report pre-training, then evaluation of the final weights.

    python -m ecgclip_jax.train --config configs/demo.py --workdir DIR [--config.total_steps=N]

Rerunning resumes from the newest intact checkpoint in DIR (see training.py). Several
processes join one run through --coordinator_address/--num_processes/--process_id, the JAX_*
variables of launch/local.sh, or a detected Slurm job or TPU slice.
"""

from ecgclip_jax import cli, training


def main():
  config, workdir = cli.define_config_and_workdir("Directory for checkpoints, metrics, eval.")
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    training.train_and_evaluate(config.value, workdir.value)

  cli.run(job)


if __name__ == "__main__":
  main()
