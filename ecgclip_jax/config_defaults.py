"""Every configuration key the trainer understands, with its default.

Config files start from `default_config()` and override values; the returned ConfigDict is
locked, so a misspelt key fails where it is written, and `validate_config` rejects keys a
config file added after unlocking. Keeping the schema in one place is what lets the trainer
say "unknown config key" before anything compiles.
"""

from __future__ import annotations

import difflib

import ml_collections

from ecgclip_jax.losses import LOSSES

NORMALIZATIONS = ("minmax", "zscore", "none")
COMPUTE_DTYPES = ("float32", "bfloat16")


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
      eval_split="test",
      normalization="zscore",  # one of NORMALIZATIONS
      num_samples=1000,  # expected record length (rate x seconds); checked against the data
      worker_count=0,  # grain worker processes per JAX process
  )
  c.text = dict(
      encoder_dir="",  # Hugging Face folder; '' = the bundled all-MiniLM-L6-v2
      pretrained=True,  # load model.safetensors (False: random init from config.json)
      max_length=64,
      pooling="mean",  # "mean" or "cls"
      trainable_top_layers=-1,  # -1: whole text tower trains; 0: frozen; k: top k layers train
  )
  c.ecg = dict(
      arch="resnet18",  # "resnet18" or "resnet34"
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
      clip_grad_norm=1.0,
  )
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3

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


def validate_config(config: ml_collections.ConfigDict) -> None:
  """One clear line per problem, raised before any data is read or anything compiles."""
  known = _leaf_keys(default_config())
  unknown = sorted(_leaf_keys(config) - known)
  if unknown:
    key = unknown[0]
    hint = difflib.get_close_matches(key, known, n=1)
    raise ValueError(f"unknown config key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
  missing = sorted(known - _leaf_keys(config))
  if missing:
    raise ValueError(f"config is missing key {missing[0]!r}: start config files from default_config()")
  if config.data.normalization not in NORMALIZATIONS:
    raise ValueError(f"data.normalization={config.data.normalization!r}; choose one of {NORMALIZATIONS}")
  if config.model.loss not in LOSSES:
    raise ValueError(f"model.loss={config.model.loss!r}; choose one of {LOSSES}")
  if config.model.dtype not in COMPUTE_DTYPES:
    raise ValueError(f"model.dtype={config.model.dtype!r}; choose one of {COMPUTE_DTYPES}")
  for key in ("batch_size", "total_steps", "log_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "grad_accum_steps"):
    if config[key] <= 0:
      raise ValueError(f"{key} must be positive, got {config[key]}")
  if config.eval.batch_size <= 0:
    raise ValueError(f"eval.batch_size must be positive, got {config.eval.batch_size}")
