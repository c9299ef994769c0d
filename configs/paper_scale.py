# The benchmark's paper-scale setting: the ECGCLIP paper's ResNet-34 on 500 Hz x 10 s records
# and a BERT-base-sized text tower (12 x 768, random weights from
# configs/text_encoders/bert_base/config.json: speed does not depend on the weights), global
# batch 256, bfloat16 compute. For measuring speed only (no dataset is read):
#
#   python -m ecgclip_jax.benchmark --config configs/paper_scale.py [--torch]
import os

from ecgclip_jax.config_defaults import default_config

BERT_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_encoders", "bert_base")


def get_config():
  c = default_config()
  c.data.builder_config = "500hz"
  c.data.num_samples = 5000
  c.text.encoder_dir = BERT_BASE
  c.text.pretrained = False
  c.text.max_length = 128
  c.text.trainable_top_layers = -1
  c.ecg.arch = "resnet34"
  c.model.embed_dim = 256
  c.model.dtype = "bfloat16"
  c.batch_size = 256
  return c
