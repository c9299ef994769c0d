"""Every configuration key the trainer understands, with its default.

Config files start from `default_config()` and override values; the returned ConfigDict is
locked, so a misspelt key fails where it is written, and `validate_config` rejects keys a
config file added after unlocking. Keeping the schema in one place is what lets the trainer
say "unknown config key" before anything compiles.
"""

from __future__ import annotations

import difflib
import functools

import ml_collections

from ecgclip_jax import losses, nonfinite
from ecgclip_jax.data import leads, normalize
from ecgclip_jax.models import bert, build, resnet1d

# Every key with a fixed set of values, and the module that owns the set.
CHOICES = {
    "data.normalization": normalize.NORMALIZATION_METHODS,
    "text.pooling": bert.POOLING_METHODS,
    "ecg.arch": tuple(resnet1d.STAGE_DEPTHS),
    "ecg.pooling": resnet1d.POOLINGS,
    "ecg.norm": resnet1d.NORMS,
    "model.dtype": build.COMPUTE_DTYPES,
    "model.loss": losses.LOSSES,
    "nonfinite.policy": nonfinite.POLICIES,
}


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = dict(
      name="synthetic_ecg_reports",  # a package under tfds_builders/
      builder_config="100hz",
      data_dir="",  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
      manual_dir="",  # real corpora: the untouched download, built into data_dir on first use
      num_patients=0,  # synthetic corpus size; 0 = the builder config's own size
      corpus_seed=0,  # synthetic corpus draw; another seed gives disjoint patients and records
      train_split="train",
      normalization="zscore",  # one of normalize.NORMALIZATION_METHODS
      num_samples=1000,  # expected record length (rate x seconds); checked against the data
      worker_count=0,  # grain worker processes per JAX process
      # Threads reading records a batch ahead (per process, per worker). 0: in the consuming
      # thread, fastest on a local disk (threads only contend for the GIL); raise it for
      # storage with latency (a bucket).
      read_threads=0,
      # Lead dropout in pre-training, so one model also serves the inputs of smaller devices:
      # the probability that a training record keeps only one reduced lead set, drawn
      # uniformly from `lead_dropout_sets` (";"-separated, each as leads.parse_lead_set reads
      # it, or "random": each lead kept with probability 1/2). The other leads become absent,
      # exactly as in a recording that lacks them (pipeline.LeadDropout). 0: off.
      lead_dropout=0.0,
      lead_dropout_sets="I;I,II;limb;random",
  )
  c.text = dict(
      encoder_dir="",  # Hugging Face folder; '' = the bundled all-MiniLM-L6-v2
      pretrained=True,  # load model.safetensors (False: random init from config.json)
      max_length=64,
      pooling="mean",  # one of bert.POOLING_METHODS: "mean" or "cls"
      trainable_top_layers=-1,  # -1: whole text tower trains; 0: frozen; k: top k layers train
      # Dropout in the frozen layers below the trainable ones, as in a Hugging Face model in
      # train mode (MERL's code too). False: they run as a fixed feature extractor (faster).
      frozen_layers_dropout=True,
      # With the whole tower frozen (trainable_top_layers 0): each training report's pooled
      # features computed once before the first step, so the step runs only the projection.
      precompute_features=True,
  )
  c.ecg = dict(
      arch="resnet18",  # one of resnet1d.STAGE_DEPTHS: "resnet18" or "resnet34"
      width_multiplier=1.0,
      pooling="avg",  # "avg" or "attention"
      norm="batch",  # "batch" (BatchNorm) or "group" (GroupNorm: independent of the batch)
      remat=False,  # recompute each residual block's activations in the backward pass
  )
  c.model = dict(
      embed_dim=256,
      logit_scale_init=1 / 0.07,
      learn_logit_scale=True,
      dtype="float32",  # compute dtype of both towers ("bfloat16"); parameters stay float32
      loss="clip",  # one of losses.LOSSES: "clip", "clip_shard_map", "siglip"
      siglip_bias_init=-10.0,  # SigLIP's learnable logit bias (used by loss="siglip")
      # MERL's uni-modal alignment (losses.uma_loss): this weight times the CLIP loss between
      # two dropout views of each ECG, added to the loss; 0 = off (no UMA heads are built).
      uma_weight=0.0,
      uma_dropout=0.1,  # the views' dropout rate (MERL: nn.Dropout(p=0.1))
  )
  # Axis name -> size; -1 takes the remaining devices. The batch is split over `data` and
  # `fsdp`; parameters and optimizer state are sharded over `fsdp` (FSDP: data=1, fsdp=-1).
  c.mesh = dict(data=-1, fsdp=1)
  c.sharding = dict(
      fsdp_min_size=2**16,  # arrays with fewer elements stay replicated
  )

  c.batch_size = 256  # global, over all processes and devices
  c.grad_accum_steps = 1  # microbatches per step (the loss still sees the whole batch)
  c.total_steps = 1000
  c.optim = dict(
      learning_rate=1e-3,
      end_learning_rate_factor=0.01,
      warmup_steps=100,
      weight_decay=0.05,
      b1=0.9,
      b2=0.98,
      clip_grad_norm=1.0,  # 0 = no clipping
      # > 0: the cosine restarts every this many steps after the warmup (SGDR, PyTorch's
      # CosineAnnealingWarmRestarts with T_mult=1); 0: one cosine over the whole run.
      restart_every_steps=0,
  )
  # A NaN/Inf loss or gradient: "skip" leaves the state as it was (the step still counts) and
  # records the batch in WORKDIR/nonfinite_batches.jsonl; "stop" ends the run with a
  # diagnostic. Either way the last checkpoint stays as it was.
  c.nonfinite = dict(
      policy="skip",  # one of nonfinite.POLICIES
      max_consecutive=10,  # skipping stops the run after this many non-finite steps in a row
  )
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3  # the newest N checkpoints are kept ...
  c.keep_checkpoints_every = 0  # ... and every step divisible by K (0: none), for probes

  # A jax.profiler trace of steps start_step .. start_step+num_steps-1 (0 steps: none) into
  # WORKDIR/tensorboard, for TensorBoard's Profile tab. Start after the compile and warm-up.
  c.profile = dict(start_step=10, num_steps=0)

  c.eval = dict(
      split="test",
      batch_size=256,  # global
      prompts="configs/prompts/synthetic_ecg_reports.json",  # zero-shot; "" = retrieval only
      at_end_of_training=True,
  )
  c.lock()
  return c


def _leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for name, value in config.items():
    path = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      keys |= _leaf_keys(value, path + ".")
    else:
      keys.add(path)
  return keys


def _type_problem(key: str, value, default) -> str | None:
  """A value whose type cannot stand for the default's (an int for a float is fine)."""
  if isinstance(default, bool) or isinstance(value, bool):
    ok = isinstance(value, bool) and isinstance(default, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float))
  else:
    ok = isinstance(value, type(default))
  if ok:
    return None
  return f"{key}={value!r} has type {type(value).__name__}; expected {type(default).__name__}"


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """One line per problem: unknown or missing keys, wrong types, values out of range."""
  defaults = default_config()
  known, given = _leaf_keys(defaults), _leaf_keys(config)
  problems = []
  for key in sorted(given - known):
    hint = difflib.get_close_matches(key, known, n=1)
    problems.append(f"unknown config key {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else ""))
  for key in sorted(known - given):
    problems.append(f"config is missing key {key!r}: start config files from default_config()")
  lookup = lambda c, key: functools.reduce(lambda node, name: node[name], key.split("."), c)
  for key in sorted(known & given):
    problems.append(_type_problem(key, lookup(config, key), lookup(defaults, key)))
  problems = [p for p in problems if p]
  if problems:  # the checks below read the values
    return problems
  for key, allowed in CHOICES.items():
    if lookup(config, key) not in allowed:
      problems.append(f"{key}={lookup(config, key)!r}; choose one of {allowed}")
  for key in ("batch_size", "total_steps", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "grad_accum_steps", "eval.batch_size", "text.max_length",
              "nonfinite.max_consecutive"):
    if lookup(config, key) <= 0:
      problems.append(f"{key} must be positive, got {lookup(config, key)}")
  for key in ("keep_checkpoints_every", "profile.num_steps", "model.uma_weight",
              "optim.clip_grad_norm", "optim.restart_every_steps"):
    if lookup(config, key) < 0:
      problems.append(f"{key} must be >= 0, got {lookup(config, key)}")
  if not 0 <= config.model.uma_dropout < 1:
    problems.append(f"model.uma_dropout must be in [0, 1), got {config.model.uma_dropout}")
  if not 0 <= config.data.lead_dropout <= 1:
    problems.append(f"data.lead_dropout must be in [0, 1], got {config.data.lead_dropout}")
  try:
    leads.parse_dropout_sets(config.data.lead_dropout_sets)
  except ValueError as e:
    problems.append(f"data.lead_dropout_sets: {e}")
  if config.profile.start_step <= 0:
    problems.append(f"profile.start_step must be positive, got {config.profile.start_step}")
  return problems


def from_stored(stored: dict) -> ml_collections.ConfigDict:
  """A config saved with a checkpoint or model folder, laid over today's defaults: keys added
  since it was written read as their defaults, keys since removed (data.eval_split) are
  dropped."""
  config = default_config()

  def lay(node: ml_collections.ConfigDict, values: dict) -> None:
    for key, value in values.items():
      if key not in node:
        continue
      if isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
        lay(node[key], value)
      else:
        node[key] = value

  with config.unlocked():
    lay(config, stored)
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises one ValueError listing every problem (a line each), before any data is read or
  anything compiles."""
  if problems := config_problems(config):
    raise ValueError("\n".join(problems))
