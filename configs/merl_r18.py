# MERL recipe (Liu et al., ICML 2024; code: github.com/cheliu-computation/MERL-ICML2024):
# ResNet-18 ECG tower with attention pooling, per-record min-max normalization, 500 Hz x 10 s,
# a frozen text tower (CLS pooling, reports up to 256 tokens), the CLIP loss at a fixed
# temperature 0.07 plus MERL's uni-modal alignment (UMA) with weight 1.
#
#   python -m ecgclip_jax.train --config configs/merl_r18.py --workdir gs://BUCKET/merl_r18 \
#       --config.text.encoder_dir=/path/to/MedCPT-Query-Encoder --config.data.name=mimic_iv_ecg \
#       --config.data.builder_config=500hz
#
# Small scale on the PTB-XL slice at 500 Hz (400 records; CPU, minutes; launch/merl_protocol.sh
# pre-trains with it, then probes on MERL's PTB-XL splits):
#   python -m ecgclip_jax.train --config configs/merl_r18.py:ptbxl_slice \
#       --workdir workdirs/merl_slice --config.data.manual_dir=../shared/data/ptbxl
#
# Tiny smoke run on CPU (synthetic corpus, bundled MiniLM):
#   python -m ecgclip_jax.train --config configs/merl_r18.py --workdir /tmp/merl \
#       --config.batch_size=8 --config.total_steps=2 --config.data.num_patients=40 \
#       --config.ecg.width_multiplier=0.125 --config.eval.batch_size=16
#
# Text encoder: MERL uses ncbi/MedCPT-Query-Encoder (BERT-base). Nothing is downloaded at
# run time, so pass its Hugging Face folder (safetensors) as text.encoder_dir; the default
# '' is the bundled all-MiniLM-L6-v2, for smoke runs only.
#
# Every value is the released code's (pretrain/config.yaml, main.py, launch.sh;
# utils/utils_builder.py, utils_trainer.py, utils_loss.py): it produced the released
# checkpoints. The paper's implementation paragraph was not at hand when this was written;
# its objective, L_CMA + L_UMA, is what the code computes. The code's values:
#   - AdamW, lr 1e-3, weight decay 1e-8, betas (0.9, 0.999); no gradient clipping.
#   - CosineAnnealingWarmRestarts(T_0=5000, T_mult=1, eta_min=1e-8) stepped every batch, no
#     warmup: the learning rate restarts at 1e-3 every 5,000 steps.
#   - 8 GPUs x 128 = global batch 1024, 21 epochs (range(0, max_epochs + 1), max_epochs 20)
#     of 738 batches (771,693 pairs less 2% held out, drop_last): 15,498 updates. Steps are
#     set, not epochs: our builder's patient split keeps 80% for training, so an epoch here
#     is shorter. The run ends 498 steps into the fourth cycle, near the peak rate, as MERL's.
#   - Text: MedCPT's embeddings under no_grad (frozen), 256 tokens; temperature 0.07 fixed.
#   - UMA: dropout(p=0.1)(linear_i(mean over time of the ECG features)), i = 1, 2, contrasted
#     with clip_loss at 0.07; loss = cma + uma (losses.uma_loss, models/clip.py).
# Where this differs from the code:
#   - MERL's text feature is MedCPT's pooler_output (the CLS state through BERT's pretrained
#     dense + tanh pooler), and its frozen tower runs in train mode, so with dropout; here the
#     CLS state itself (bert.py has no pooler), computed once without dropout
#     (text.precompute_features: the step runs only the projection).
#   - MERL's text projection is Linear(768, 256)-GELU-Linear(256, 256); here one Linear.
#   - MERL's ECG head: a 1x1 conv 512 -> 256, then attention pooling (4 heads, learned query)
#     that outputs the embedding, and its UMA heads read that conv's time mean; here attention
#     pooling over the 512 channels (8 heads, mean-token query) then Linear 512 -> 256, and
#     the UMA heads read the 512 channels' time mean (each head an affine map, as MERL's
#     conv-then-linear is).
#   - MERL all-gathers embeddings without gradient and puts back its own rows, so each GPU
#     differentiates through its own rows and DDP averages: the global batch's gradient / 8.
#     Here the global loss is differentiated in full; with Adam and no clipping a constant
#     scale of the gradient leaves the updates the same (up to Adam's epsilon).
#   - fp16 autocast there, float32 here (--config.model.dtype=bfloat16 for speed); AdamW's
#     1e-8 decay applies to matrices only here, to every parameter there.
from ecgclip_jax.config_defaults import default_config


def get_config(scale: str = "full"):
  if scale not in ("full", "ptbxl_slice"):
    raise ValueError(f"configs/merl_r18.py takes 'full' or 'ptbxl_slice', got {scale!r}")
  c = default_config()
  c.data.builder_config = "500hz"
  c.data.num_samples = 5000
  c.data.normalization = "minmax"
  c.data.worker_count = 4
  c.text.max_length = 256
  c.text.pooling = "cls"
  c.text.trainable_top_layers = 0
  c.ecg.arch = "resnet18"
  c.ecg.pooling = "attention"
  c.model.embed_dim = 256
  c.model.logit_scale_init = 1 / 0.07
  c.model.learn_logit_scale = False
  c.model.uma_weight = 1.0
  c.model.uma_dropout = 0.1
  c.batch_size = 1024
  c.total_steps = 21 * 738
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-8
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.warmup_steps = 0
  c.optim.restart_every_steps = 5000
  c.optim.end_learning_rate_factor = 1e-8 / 1e-3
  c.optim.clip_grad_norm = 0.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 738  # one per MERL epoch
  c.eval.batch_size = 1024
  if scale == "ptbxl_slice":  # the recipe at a size 2 CPU cores train in minutes
    c.data.name = "ptbxl"
    c.data.worker_count = 0
    c.ecg.width_multiplier = 0.25
    c.model.embed_dim = 128
    c.batch_size = 32
    c.total_steps = 60
    c.optim.restart_every_steps = 0  # one cosine over the 60 steps
    c.log_every_steps = 10
    c.checkpoint_every_steps = 30
    c.eval.batch_size = 64
    c.eval.prompts = "configs/prompts/ptbxl.json"
  return c
