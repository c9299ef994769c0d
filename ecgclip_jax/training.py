"""Contrastive ECG–report pre-training: `train_and_evaluate(config, workdir)`, the one entry
point of the train command (train.py).

Builds the corpus when missing, resumes from the newest checkpoint in DIR/checkpoints (in
any process layout), and ends with the evaluation of the final weights (evaluation.py). Several processes
join one run through --coordinator_address/--num_processes/--process_id, the JAX_* variables
of launch/local.sh, or a detected Slurm job or TPU slice (parallel.initialize_distributed).
On SIGTERM every process stops at one agreed step, saves it and exits 0 (preemption.py).

A run killed at any moment (kill -9, a lost host) loses only the steps since its last
committed checkpoint, and the rerun continues bit for bit as if it had never stopped: the
state, RNG and data position all come from the checkpoint. A damaged newest checkpoint is
reported and passed over for the one before (checkpoint.SealedCheckpoints); a NaN/Inf step
is skipped or stops the run, per `nonfinite` in the config (nonfinite.py).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import ml_collections
from etils import epath

from ecgclip_jax import (api, checkpoint, evaluation, inference, nonfinite, parallel, preemption,
                         preflight, profiling, train_state)
from ecgclip_jax.data import pipeline, sources
from ecgclip_jax.metrics_writer import MetricWriter
from ecgclip_jax.models import build, hf_import
from ecgclip_jax.progress import format_eta


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       train_source: Sequence[dict[str, Any]] | None = None
                       ) -> train_state.TrainState:
  """Trains to `config.total_steps` and evaluates. `train_source` replaces the configured
  dataset's training split with any random-access sequence of data-contract records. Records
  without a report never enter training (sources.with_reports); the log counts them."""
  # =====================================================================================
  # Checks a user can act on, before any data is read or anything compiles.
  # =====================================================================================
  preflight.check_run(config, workdir)
  if jax.process_index() == 0:  # what this start runs with, readable before any checkpoint
    (epath.Path(workdir) / "config.json").write_text(config.to_json(indent=2) + "\n")
  mesh = parallel.make_mesh(config.mesh)
  per_process_batch = parallel.check_batch_size(config.batch_size, mesh)
  trainer = train_state.Trainer(config, mesh)
  shapes = trainer.abstract_state()
  preflight.check_disk_space(workdir, shapes)
  log(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} devices, "
      f"{jax.process_count()} process(es); global batch {config.batch_size}")

  # =====================================================================================
  # Model and state: resumed from the newest intact checkpoint, or fresh; sharded by the
  # FSDP rule.
  # =====================================================================================
  shardings = parallel.state_shardings(shapes, mesh, config.sharding.fsdp_min_size)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, shardings)
  checkpoints = checkpoint.SealedCheckpoints(workdir, keep=config.keep_checkpoints,
                                             keep_every=config.keep_checkpoints_every)
  restored_step, state = checkpoints.restore_newest_intact(abstract, log)
  if state is None:
    state = parallel.place(
        trainer.init(jax.random.key(config.seed), load_pretrained_text=config.text.pretrained),
        shardings)
    log(f"initialized a new run in {workdir}")
  else:
    log(f"resumed from checkpoint step {restored_step} in {checkpoints.directory}")
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
  if train_source is None:
    train_source, without_report = dataset.contrastive_source(config.data.train_split)
  else:
    train_source, without_report = sources.with_reports(train_source)
  if without_report:
    log(f"left {without_report:,} training records without a report out of contrastive "
        f"training ({len(train_source):,} remain)")
  tokenizer = None  # the step reads precomputed features, not tokens
  if train_state.precomputes_text_features(config):  # the same on every start: frozen tower
    train_source = pipeline.WithTextFeatures(train_source, _model(
        config, state, workdir, mesh, trainer).text_features(
            train_source, progress="text features of the frozen text tower (once per run)"))
  else:
    tokenizer = hf_import.load_tokenizer(build.text_encoder_dir(config))
  train_iter = pipeline.make_train_iterator(
      train_source, tokenizer=tokenizer, max_text_length=config.text.max_length,
      normalization=config.data.normalization, per_process_batch_size=per_process_batch,
      seed=config.seed, process_index=jax.process_index(),
      process_count=jax.process_count(), worker_count=config.data.worker_count,
      start_step=int(state.step), read_threads=config.data.read_threads,
      lead_dropout=(pipeline.LeadDropout(config.data.lead_dropout,
                                         config.data.lead_dropout_sets)
                    if config.data.lead_dropout else None))

  # =====================================================================================
  # Training loop.
  # =====================================================================================
  step_fn = trainer.sharded_step(shardings)
  first_step = int(state.step)
  writer = MetricWriter(workdir, first_step)
  nonfinite_steps = nonfinite.NonFiniteSteps(config.nonfinite, workdir, first_step, log)
  watch = preemption.PreemptionWatch()
  profile = profiling.ProfileWindow(config.profile, workdir, first_step, log)
  window_start, window_steps = None, 0
  preempted = False
  try:
    for step in range(first_step + 1, config.total_steps + 1):
      profile.begin(step)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):  # steps in the trace
        local_batch = next(train_iter)
        record_ids = local_batch.pop("record_id")
        state, metrics = step_fn(state, parallel.global_batch(local_batch, mesh))
      profile.end(step, metrics)
      nonfinite_steps.watch(step, metrics, record_ids)
      window_steps += 1
      if window_start is None:  # the first step compiles; time from its end
        jax.block_until_ready(metrics)
        window_start, window_steps = time.time(), 0
      if step % config.log_every_steps == 0 or step == config.total_steps:
        nonfinite_steps.finish()
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()
                   if k not in ("finite", "nonfinite_grads")}
        metrics["nonfinite_steps"] = nonfinite_steps.skipped
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
        nonfinite_steps.finish()  # a stop policy ends the run before this step is saved
        checkpoints.save(step, state, config)
      if preempted:
        log(f"preemption notice: saved step {step}; stopping (rerun the command to resume)")
        break
    nonfinite_steps.finish()
  finally:  # also when the loop fails: a save in flight still lands
    profile.close()
    checkpoints.close()
    watch.close()
    writer.close()
  if first_step >= config.total_steps:
    log(f"training already complete at step {first_step}")

  # =====================================================================================
  # Evaluation of the final weights.
  # =====================================================================================
  if config.eval.at_end_of_training and not preempted:
    evaluation.run_evaluation(_model(config, state, workdir, mesh, trainer), workdir)
  return state


def _model(config: ml_collections.ConfigDict, state: train_state.TrainState, workdir: str,
           mesh: jax.sharding.Mesh, trainer: train_state.Trainer) -> inference.Model:
  """The run's weights at `state` as an inference.Model (its evaluation and embedding
  passes)."""
  step = int(state.step)
  return inference.Model(config, (state.params, state.model_state), mesh,
                         lambda: api.dataset_inputs(config), name=api.run_name(workdir, step),
                         identity=f"{workdir}@{step}", step=step, model_def=trainer.model_def)
