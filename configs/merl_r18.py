# MERL baseline recipe (Liu et al., 2024): ResNet-18 ECG tower with attention pooling,
# per-record min-max normalization, 500 Hz x 10 s records, global batch 1024.
#
#   python -m ecgclip_jax.train --config configs/merl_r18.py --workdir gs://BUCKET/merl_r18 \
#       --config.text.encoder_dir=/path/to/hf_text_encoder --config.data.name=mimic_iv_ecg \
#       --config.data.builder_config=500hz
#
# Tiny smoke run on CPU (synthetic corpus, bundled MiniLM):
#   python -m ecgclip_jax.train --config configs/merl_r18.py --workdir /tmp/merl \
#       --config.batch_size=8 --config.total_steps=2 --config.data.num_patients=40 \
#       --config.ecg.width_multiplier=0.125 --config.eval.batch_size=16
from ecgclip_jax.config_defaults import default_config


def get_config():
  c = default_config()
  c.data.builder_config = "500hz"
  c.data.num_samples = 5000
  c.data.normalization = "minmax"
  c.data.worker_count = 4
  c.text.max_length = 128
  c.text.pooling = "mean"
  c.text.trainable_top_layers = -1
  c.ecg.arch = "resnet18"
  c.ecg.pooling = "attention"
  c.model.embed_dim = 256
  c.batch_size = 1024
  c.total_steps = 50_000
  c.optim.learning_rate = 2e-4
  c.optim.warmup_steps = 2_000
  c.optim.weight_decay = 1e-8
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.eval.batch_size = 1024
  return c
