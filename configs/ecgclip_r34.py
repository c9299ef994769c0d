# ECGCLIP paper recipe: ResNet-34 ECG tower on 500 Hz x 10 s records, a BERT-family text
# tower from a local Hugging Face folder, global batch 1024 split over every device.
#
#   python -m ecgclip_jax.train --config configs/ecgclip_r34.py --workdir gs://BUCKET/ecgclip_r34 \
#       --config.text.encoder_dir=/path/to/hf_text_encoder --config.data.name=mimic_iv_ecg \
#       --config.data.builder_config=500hz
#
# Tiny smoke run on CPU (synthetic corpus, bundled MiniLM):
#   python -m ecgclip_jax.train --config configs/ecgclip_r34.py --workdir /tmp/r34 \
#       --config.batch_size=8 --config.total_steps=2 --config.data.num_patients=40 \
#       --config.ecg.width_multiplier=0.125 --config.eval.batch_size=16
from ecgclip_jax.config_defaults import default_config


def get_config():
  c = default_config()
  c.data.builder_config = "500hz"
  c.data.num_samples = 5000
  c.data.normalization = "zscore"
  c.data.worker_count = 4
  c.text.max_length = 128
  c.text.pooling = "mean"
  c.text.trainable_top_layers = -1
  c.ecg.arch = "resnet34"
  c.ecg.pooling = "avg"
  c.model.embed_dim = 256
  c.batch_size = 1024
  c.total_steps = 50_000
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 2_000
  c.optim.weight_decay = 0.05
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2_000
  c.eval.batch_size = 1024
  return c
