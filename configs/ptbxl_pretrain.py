# Pre-training on PTB-XL's free-text reports (mostly German; use a multilingual or German
# BERT-family encoder through --config.text.encoder_dir for real runs), 100 Hz x 10 s,
# official folds (1-8 train, 10 test), zero-shot on the SCP statements of
# configs/prompts/ptbxl.json. The dataset is built from the download on first use.
#
# Full PTB-XL (21,799 records, PhysioNet ptb-xl 1.0.3):
#   python -m ecgclip_jax.train --config configs/ptbxl_pretrain.py --workdir workdirs/ptbxl \
#       --config.data.manual_dir=/path/to/ptb-xl-1.0.3
#
# Small scale on the shared slice (400 records; CPU, a few minutes):
#   python -m ecgclip_jax.train --config configs/ptbxl_pretrain.py:slice \
#       --workdir workdirs/ptbxl_slice --config.data.manual_dir=../shared/data/ptbxl
from ecgclip_jax.config_defaults import default_config


def get_config(scale: str = "full"):
  if scale not in ("full", "slice"):
    raise ValueError(f"configs/ptbxl_pretrain.py takes 'full' or 'slice', got {scale!r}")
  c = default_config()
  c.data.name = "ptbxl"
  c.data.builder_config = "100hz"
  c.data.num_samples = 1000
  c.data.normalization = "zscore"
  c.text.max_length = 64
  c.text.trainable_top_layers = 2
  c.ecg.arch = "resnet18"
  c.model.embed_dim = 256
  c.batch_size = 128
  c.total_steps = 4000  # ~30 epochs of the 17k training records
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.checkpoint_every_steps = 500
  c.eval.split = "test"
  c.eval.prompts = "configs/prompts/ptbxl.json"
  if scale == "slice":
    c.ecg.width_multiplier = 0.25
    c.model.embed_dim = 128
    c.text.trainable_top_layers = 1
    c.batch_size = 32
    c.total_steps = 60
    c.optim.warmup_steps = 10
    c.log_every_steps = 10
    c.checkpoint_every_steps = 30
    c.eval.batch_size = 64
  return c
