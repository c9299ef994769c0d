"""A PyTorch twin of the JAX model and train step, for the JAX vs PyTorch speed comparison
(issue 19).

MERL (Liu et al., 2024), the reference this project follows, is written in PyTorch with the
same 1-D ResNet layout, so "is JAX any faster?" means: this model, this step, in PyTorch.
Only the speed benchmark imports this module; the package never depends on torch.

Mirrored: the ResNet-1D (resnet1d.py), the projections, L2 normalization and clamped logit
scale (clip.py), BERT via transformers' own `BertModel` (no pooler; bert.py's layout), masked
mean / CLS pooling, the CLIP loss (losses.clip_loss), the text-tower freezing and dropout
policy (train_state.trainable_mask / Trainer.text_trains), global-norm clipping and AdamW
with weight decay on ndim >= 2 parameters only. Under `model.dtype="bfloat16"` the towers run
under autocast and the projections, normalization and loss in float32, as in clip.py.
Not mirrored: the warmup-cosine schedule (the learning rate is the constant
`optim.learning_rate`: it costs the same), the non-finite-step skip, gradient accumulation,
attention pooling and `ecg.remat` (the last three are refused).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
import transformers
from torch import nn
from torch.nn import functional as F

from ecgclip_jax import train_state
from ecgclip_jax.models import build as build_lib
from ecgclip_jax.models import resnet1d

MAX_LOGIT_SCALE = 100.0


def _norm(kind: str, features: int) -> nn.Module:
  if kind == "group":
    return nn.GroupNorm(resnet1d.group_norm_groups(features), features, eps=1e-5)
  return nn.BatchNorm1d(features, eps=1e-5, momentum=0.1)


def _conv(i: int, o: int, k: int, s: int) -> nn.Conv1d:
  return nn.Conv1d(i, o, k, s, padding=k // 2, bias=False)


class BasicBlock1D(nn.Module):
  """Two k=3 convolutions with a 1x1 projection shortcut when the shape changes."""

  def __init__(self, in_features: int, features: int, stride: int, norm: str):
    super().__init__()
    self.conv1, self.norm1 = _conv(in_features, features, 3, stride), _norm(norm, features)
    self.conv2, self.norm2 = _conv(features, features, 3, 1), _norm(norm, features)
    self.down = None
    if stride != 1 or in_features != features:
      self.down = nn.Sequential(_conv(in_features, features, 1, stride), _norm(norm, features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.norm1(self.conv1(x)))
    y = self.norm2(self.conv2(y))
    return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet1D(nn.Module):
  """`[B, leads, T]` -> `[B, feature_dim]`: stem conv k=7 s=2, four stages, mean over time."""

  def __init__(self, config: resnet1d.ResNet1DConfig):
    super().__init__()
    widths = config.widths
    self.stem = nn.Sequential(nn.Conv1d(config.in_leads, widths[0], 7, 2, padding=3, bias=False),
                              _norm(config.norm, widths[0]), nn.ReLU())
    blocks, in_features = [], widths[0]
    for depth, width, stride in zip(resnet1d.STAGE_DEPTHS[config.arch], widths,
                                    resnet1d.STAGE_STRIDES):
      for b in range(depth):
        blocks.append(BasicBlock1D(in_features, width, stride if b == 0 else 1, config.norm))
        in_features = width
    self.blocks = nn.Sequential(*blocks)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.blocks(self.stem(x)).mean(dim=-1)


def _lecun_normal_(module: nn.Module) -> None:
  """Flax's default kernel init (truncated-normal LeCun) and zero biases."""
  for m in module.modules():
    if isinstance(m, (nn.Conv1d, nn.Linear)):
      std = 1.0 / math.sqrt(m.weight[0].numel()) / 0.87962566103423978
      nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
      if m.bias is not None:
        nn.init.zeros_(m.bias)


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
  x = x.float()
  return x * torch.rsqrt(torch.clamp((x * x).sum(-1, keepdim=True), min=eps * eps))


class Reference(nn.Module):
  """The two-tower model: `forward(ecg [B, T, 12], input_ids, attention_mask)` gives the
  unit embeddings `(ecg_emb, text_emb)`, float32."""

  def __init__(self, config, text_config: dict):
    super().__init__()
    if config.ecg.pooling != "avg" or config.ecg.remat:
      raise ValueError("the PyTorch reference has average pooling only and no ecg.remat")
    ecg_config = resnet1d.ResNet1DConfig(arch=config.ecg.arch,
                                         width_multiplier=config.ecg.width_multiplier,
                                         norm=config.ecg.norm)
    embed_dim = config.model.embed_dim
    self.ecg_encoder = ResNet1D(ecg_config)
    self.ecg_projection = nn.Linear(ecg_config.feature_dim, embed_dim)
    bert_config = transformers.BertConfig.from_dict(text_config)
    self.text_encoder = transformers.BertModel(bert_config, add_pooling_layer=False)
    self.text_projection = nn.Linear(bert_config.hidden_size, embed_dim)
    _lecun_normal_(self.ecg_encoder)
    _lecun_normal_(self.ecg_projection)
    _lecun_normal_(self.text_projection)
    log_scale = torch.tensor(math.log(config.model.logit_scale_init), dtype=torch.float32)
    if config.model.learn_logit_scale:
      self.logit_scale = nn.Parameter(log_scale)
    else:
      self.register_buffer("logit_scale", log_scale)
    self.text_pooling = config.text.pooling
    self.compute_dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
    self.text_trains = True  # set by `freeze_text`
    self.deterministic_modules: list[nn.Module] = []  # frozen, and run without dropout

  def freeze_text(self, trainable_top_layers: int, frozen_layers_dropout: bool = True) -> None:
    """train_state's freezing policy (`first_trainable_text_layer`), and its dropout: none
    when no text layer trains, and none in the frozen layers unless `frozen_layers_dropout`."""
    layers = self.text_encoder.encoder.layer
    first = train_state.first_trainable_text_layer(trainable_top_layers, len(layers))
    for p in self.text_encoder.embeddings.parameters():
      p.requires_grad_(first < 0)
    for i, layer in enumerate(layers):
      for p in layer.parameters():
        p.requires_grad_(i >= first)
    self.text_trains = first < len(layers)
    frozen = [] if first < 0 else [self.text_encoder.embeddings, *layers[:first]]
    self.deterministic_modules = ([self.text_encoder] if not self.text_trains else
                                  [] if frozen_layers_dropout else frozen)

  def train(self, mode: bool = True):
    super().train(mode)
    if mode:
      for module in self.deterministic_modules:
        module.eval()
    return self

  def scale(self) -> torch.Tensor:
    return torch.clamp(torch.exp(self.logit_scale), max=MAX_LOGIT_SCALE)

  def forward(self, ecg: torch.Tensor, text: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """`text`: `input_ids` and `attention_mask`, or the frozen tower's precomputed
    `text_features` (as the JAX step takes them)."""
    autocast = (torch.autocast(ecg.device.type, dtype=torch.bfloat16)
                if self.compute_dtype == torch.bfloat16 else contextlib.nullcontext())
    with autocast:  # the towers only, as in clip.py
      features = self.ecg_encoder(ecg.transpose(1, 2))
    return (l2_normalize(self.ecg_projection(features.float())),
            l2_normalize(self.text_projection(self.text_features(text, autocast))))

  def text_features(self, text: dict[str, torch.Tensor], autocast) -> torch.Tensor:
    if "text_features" in text:
      return text["text_features"].float()
    with autocast:
      hidden = self.text_encoder(input_ids=text["input_ids"],
                                 attention_mask=text["attention_mask"]).last_hidden_state
    if self.text_pooling == "cls":
      return hidden[:, 0].float()
    mask = text["attention_mask"][..., None].float()
    return (hidden.float() * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)


def clip_loss(ecg_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """losses.clip_loss: symmetric cross-entropy of the scaled cosine similarities."""
  logits = scale * ecg_emb.float() @ text_emb.float().T
  targets = torch.arange(logits.shape[0], device=logits.device)
  return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def build(config, text_config: dict, device: str = "cpu") -> tuple[Reference, torch.optim.Optimizer]:
  """The model on `device` with the JAX trainer's frozen parameters frozen, and AdamW over
  the trainable ones (weight decay on ndim >= 2 only; constant learning rate; fused on CUDA)."""
  model = Reference(config, text_config)
  model.freeze_text(config.text.trainable_top_layers, config.text.frozen_layers_dropout)
  model.to(device)
  trainable = [p for p in model.parameters() if p.requires_grad]
  o = config.optim
  groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": o.weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
  optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=(o.b1, o.b2),
                                fused=torch.device(device).type == "cuda")
  return model, optimizer


def parameter_counts(model: Reference) -> dict[str, int]:
  """Parameters per tower (projection included), in all, and trainable; no BatchNorm statistics."""
  count = lambda *modules: sum(p.numel() for m in modules for p in m.parameters())
  return {"ecg": count(model.ecg_encoder, model.ecg_projection),
          "text": count(model.text_encoder, model.text_projection),
          "total": count(model),
          "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def make_step(model: Reference, optimizer: torch.optim.Optimizer, config, compile: bool = False):
  """`step(batch) -> loss` (a tensor, not synced): forward, CLIP loss, backward, global-norm
  clipping, AdamW. `compile=True` runs the forward and loss through `torch.compile`."""
  if (config.grad_accum_steps != 1 or config.model.loss not in ("clip", "clip_shard_map")
      or config.model.uma_weight):
    raise ValueError("the PyTorch reference has the CLIP loss (no UMA) without gradient "
                     "accumulation")
  params = [p for group in optimizer.param_groups for p in group["params"]]

  def loss_fn(ecg, text):
    return clip_loss(*model(ecg, text), model.scale())

  forward = torch.compile(loss_fn) if compile else loss_fn

  def step(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.train()
    loss = forward(batch["ecg"], {k: v for k, v in batch.items() if k != "ecg"})
    loss.backward()
    if config.optim.clip_grad_norm:  # 0: no clipping, as in train_state.make_optimizer
      torch.nn.utils.clip_grad_norm_(params, config.optim.clip_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()

  return step


def load_text_config(config) -> dict:
  """The Hugging Face config.json of the config's text encoder folder (`build`'s argument)."""
  return json.loads((Path(build_lib.text_encoder_dir(config)) / "config.json").read_text())
