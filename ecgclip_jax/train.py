"""Contrastive ECG–report pre-training.

    python -m ecgclip_jax.train --config configs/demo.py --workdir DIR [--config.total_steps=N]

Builds the corpus when missing, resumes from the newest checkpoint in DIR/checkpoints (in
any process layout), and ends with the evaluation job (see evaluate.py). Several processes
join one run through --coordinator_address/--num_processes/--process_id, the JAX_* variables
of launch/local.sh, or a detected Slurm job or TPU slice (parallel.initialize_distributed).
On SIGTERM every process stops at one agreed step, saves it and exits 0 (preemption.py).
"""

from __future__ import annotations

import time

import jax
import ml_collections
from etils import epath
from ecgclip_jax import checkpoint, cli, evaluate, parallel, preemption, train_state
from ecgclip_jax.config_defaults import validate_config
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.metrics_writer import MetricWriter
from ecgclip_jax.models import hf_import


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def check_workdir(workdir: str) -> None:
  """A local folder or a bucket URL (gs://..., through etils.epath) this process can write."""
  try:
    folder = epath.Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write_probe_{jax.process_index()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None


def format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_state.TrainState:
  # =====================================================================================
  # Checks a user can act on, before any data is read or anything compiles.
  # =====================================================================================
  validate_config(config)
  check_workdir(workdir)
  encoder_dir = train_state.text_encoder_dir(config)
  hf_import.check_encoder_dir(encoder_dir)
  mesh = parallel.make_mesh(config.mesh)
  per_process_batch = parallel.check_batch_size(config.batch_size, mesh)
  log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
      f"{jax.process_count()} process(es); global batch {config.batch_size}")

  # =====================================================================================
  # Model and state: fresh, or resumed from the newest checkpoint, sharded by the FSDP rule.
  # =====================================================================================
  trainer = train_state.Trainer(config, mesh)
  replicated = parallel.replicated(mesh)
  shapes = trainer.abstract_state()
  shardings = parallel.state_shardings(shapes, mesh, config.sharding.fsdp_min_size)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  latest = manager.latest_step()
  if latest is None:
    state = jax.device_put(
        trainer.init(jax.random.key(config.seed), load_pretrained_text=config.text.pretrained),
        shardings)
    log(f"initialized a new run in {workdir}")
  else:
    state = checkpoint.restore(manager, latest, abstract)
    log(f"resumed from checkpoint step {latest} in {checkpoint.checkpoint_dir(workdir)}")
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  num_trainable = sum(x.size for x in jax.tree.leaves(train_state.partition(
      state.params, trainer.mask)[0]))
  num_sharded = sum(x.size for x in jax.tree.leaves(state.params)
                    if not x.sharding.is_fully_replicated)
  log(f"parameters: {num_params:,} ({num_trainable:,} trainable, {num_sharded:,} sharded "
      f"over fsdp)")

  # =====================================================================================
  # Data: this process's rows of every global batch, from the restored step on.
  # =====================================================================================
  dataset = sources.open_dataset(config.data)
  train_source = dataset.source(config.data.train_split)
  tokenizer = hf_import.load_tokenizer(encoder_dir)
  train_iter = pipeline.make_train_iterator(
      train_source, tokenizer=tokenizer, max_text_length=config.text.max_length,
      normalization=config.data.normalization, per_process_batch_size=per_process_batch,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), worker_count=config.data.worker_count,
      start_step=int(state.step))

  # =====================================================================================
  # Training loop.
  # =====================================================================================
  step_fn = jax.jit(trainer.train_step, in_shardings=(shardings, parallel.batch_sharding(mesh)),
                    out_shardings=(shardings, replicated), donate_argnums=0)
  writer = MetricWriter(workdir)
  watch = preemption.PreemptionWatch()
  first_step = int(state.step)
  window_start, window_steps = None, 0
  preempted = False
  for step in range(first_step + 1, config.total_steps + 1):
    batch = parallel.global_batch(next(train_iter), mesh)
    state, metrics = step_fn(state, batch)
    window_steps += 1
    if window_start is None:  # the first step compiles; time from its end
      jax.block_until_ready(metrics)
      window_start, window_steps = time.time(), 0
    if step % config.log_every_steps == 0 or step == config.total_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      elapsed = time.time() - window_start
      if window_steps:
        metrics["examples_per_second"] = window_steps * config.batch_size / elapsed
      writer.write(step, metrics)
      speed = "compiled"
      if window_steps:
        eta = format_eta((config.total_steps - step) * elapsed / window_steps)
        speed = f"{metrics['examples_per_second']:.1f} ex/s  ETA {eta}"
      log(f"step {step}/{config.total_steps}  loss {metrics['loss']:.4f}  "
          f"logit_scale {metrics['logit_scale']:.2f}  lr {metrics['learning_rate']:.2e}  {speed}")
      window_start, window_steps = time.time(), 0
    preempted = watch.reached(step)
    if preempted or step % config.checkpoint_every_steps == 0 or step == config.total_steps:
      checkpoint.save(manager, step, state, config)
    if preempted:
      log(f"preemption notice: saved step {step}; stopping (rerun the command to resume)")
      break
  manager.wait_until_finished()
  watch.close()
  writer.close()
  if first_step >= config.total_steps:
    log(f"training already complete at step {first_step}")

  # =====================================================================================
  # Evaluation of the final weights.
  # =====================================================================================
  if config.eval.at_end_of_training and not preempted:
    evaluate.run_evaluation(config, workdir, int(state.step),
                            evaluate.Embedder(trainer, mesh, tokenizer), dataset,
                            (state.params, state.model_state))
  manager.close()
  return state


def main():
  config, workdir = cli.define_config_and_workdir("Directory for checkpoints, metrics, eval.")
  join_run = cli.define_distributed_flags()

  def job():
    join_run()
    train_and_evaluate(config.value, workdir.value)

  cli.run(job)


if __name__ == "__main__":
  main()
