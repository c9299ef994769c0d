"""1-D ResNet ECG encoder in MERL's layout (Liu et al., 2024).

Stem: conv k=7 s=2 (no max-pool, so a 100 Hz record keeps enough time resolution),
then BasicBlock stages with widths 64->512 and strides 1/2/2/2: the total stride is 16.
Input is channels-last `[B, T, leads]` (the data contract is time-major).
Parameter paths: `stem_conv`, `stem_norm`, `stages/<s>/<b>/{conv1,norm1,conv2,norm2,down_conv,down_norm}`,
`pool` (attention pooling only). The `*norm` modules are BatchNorm (`norm="batch"`, with
running statistics) or GroupNorm (`norm="group"`: no statistics, and each example is
normalized on its own, so the output does not depend on the batch it shares).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

STAGE_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
BASE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
TOTAL_STRIDE = 2 * 2 * 2 * 2  # stem stride x the three strided stages


@dataclasses.dataclass(frozen=True)
class ResNet1DConfig:
  arch: str = "resnet18"
  width_multiplier: float = 1.0
  in_leads: int = 12
  pooling: str = "avg"  # "avg" or "attention" (MERL's attention pooling)
  attention_heads: int = 8
  num_samples: int = 1000  # input length; only attention pooling needs it
  dtype: str = "float32"  # compute dtype; parameters stay float32
  norm: str = "batch"  # "batch" or "group" (see group_norm_groups)
  remat: bool = False  # recompute each residual block's activations in the backward pass

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(max(8, int(round(w * self.width_multiplier))) for w in BASE_WIDTHS)

  @property
  def feature_dim(self) -> int:
    return self.widths[-1]


NORMS = ("batch", "group")
POOLINGS = ("avg", "attention")
MAX_GROUPS = 32  # GroupNorm's usual group count (Wu & He, 2018)


def group_norm_groups(features: int) -> int:
  """The largest divisor of `features` up to 32: 32 groups for every width from 32 up in
  the standard layouts; narrower layers (width multipliers < 0.5) get one channel a group."""
  return max(g for g in range(1, MAX_GROUPS + 1) if features % g == 0)


def _norm(kind: str, features: int, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm | nnx.GroupNorm:
  if kind == "group":
    return nnx.GroupNorm(features, group_norm_groups(features), epsilon=1e-5, dtype=dtype,
                         rngs=rngs)
  # PyTorch's momentum 0.1 is Flax's 0.9.
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


def _normalize(norm: nnx.BatchNorm | nnx.GroupNorm, x: jax.Array, train: bool) -> jax.Array:
  """BatchNorm uses batch statistics only in training; GroupNorm is the same in both modes."""
  if isinstance(norm, nnx.BatchNorm):
    return norm(x, use_running_average=not train)
  return norm(x)


class BasicBlock1D(nnx.Module):
  """Two k=3 convolutions with a projection shortcut when shape changes."""

  def __init__(self, in_features: int, features: int, stride: int, dtype, norm: str, *,
               rngs: nnx.Rngs):
    conv = lambda i, o, k, s: nnx.Conv(i, o, k, s, padding=[(k // 2, k // 2)], use_bias=False,
                                       dtype=dtype, rngs=rngs)
    self.conv1 = conv(in_features, features, 3, stride)
    self.norm1 = _norm(norm, features, dtype, rngs)
    self.conv2 = conv(features, features, 3, 1)
    self.norm2 = _norm(norm, features, dtype, rngs)
    if stride != 1 or in_features != features:
      self.down_conv = conv(in_features, features, 1, stride)
      self.down_norm = _norm(norm, features, dtype, rngs)
    else:
      self.down_conv = self.down_norm = None

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = nnx.relu(_normalize(self.norm1, self.conv1(x), train))
    y = _normalize(self.norm2, self.conv2(y), train)
    shortcut = x
    if self.down_conv is not None:
      shortcut = _normalize(self.down_norm, self.down_conv(x), train)
    return nnx.relu(y + shortcut)


# The backward pass recomputes the block's activations from its input instead of keeping
# them: memory for a long record's activations falls to the blocks' inputs (`train` static).
_remat_block = nnx.remat(BasicBlock1D.__call__, static_argnums=(2,))


class AttentionPool1D(nnx.Module):
  """CLIP-style attention pooling over time, as MERL pools its ResNet features.

  The query is the mean token; keys/values are the mean token plus every time step,
  each with a learned positional embedding.
  """

  def __init__(self, length: int, features: int, num_heads: int, dtype, *, rngs: nnx.Rngs):
    self.positions = nnx.Param(
        jax.random.normal(rngs.params(), (length + 1, features)) / features**0.5)
    self.attention = nnx.MultiHeadAttention(
        num_heads=num_heads, in_features=features, decode=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.shape[1] + 1 != self.positions[...].shape[0]:
      raise ValueError(
          f"attention pooling was built for {self.positions[...].shape[0] - 1} time steps, "
          f"got {x.shape[1]}: set ecg.num_samples to the input length")
    tokens = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    tokens = tokens + self.positions[...].astype(tokens.dtype)
    return self.attention(tokens[:, :1], tokens, tokens)[:, 0]


class ResNet1D(nnx.Module):
  """Maps `[B, T, leads]` to a pooled `[B, feature_dim]` representation."""

  def __init__(self, config: ResNet1DConfig, *, rngs: nnx.Rngs):
    if config.arch not in STAGE_DEPTHS:
      raise ValueError(f"unknown ECG encoder {config.arch!r}; choose one of {sorted(STAGE_DEPTHS)}")
    if config.norm not in NORMS:
      raise ValueError(f"unknown ECG norm {config.norm!r}; choose one of {NORMS}")
    self.config = config
    dtype = jnp.dtype(config.dtype)
    widths = config.widths
    self.stem_conv = nnx.Conv(config.in_leads, widths[0], 7, 2, padding=[(3, 3)],
                              use_bias=False, dtype=dtype, rngs=rngs)
    self.stem_norm = _norm(config.norm, widths[0], dtype, rngs)
    stages = []
    in_features = widths[0]
    for depth, width, stride in zip(STAGE_DEPTHS[config.arch], widths, STAGE_STRIDES):
      blocks = []
      for b in range(depth):
        blocks.append(BasicBlock1D(in_features, width, stride if b == 0 else 1, dtype,
                                   config.norm, rngs=rngs))
        in_features = width
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    if config.pooling == "attention":
      length = -(-config.num_samples // TOTAL_STRIDE)
      self.pool = AttentionPool1D(length, widths[-1], config.attention_heads, dtype, rngs=rngs)
    elif config.pooling == "avg":
      self.pool = None
    else:
      raise ValueError(f"unknown ECG pooling {config.pooling!r}; choose one of {POOLINGS}")

  def __call__(self, ecg: jax.Array, train: bool = False) -> jax.Array:
    return self.pooled(self.feature_map(ecg, train))

  def feature_map(self, ecg: jax.Array, train: bool = False) -> jax.Array:
    """The last stage's output `[B, ceil(T / 16), feature_dim]`, before pooling."""
    x = nnx.relu(_normalize(self.stem_norm, self.stem_conv(ecg), train))
    call_block = _remat_block if self.config.remat else BasicBlock1D.__call__
    for stage in self.stages:
      for block in stage:
        x = call_block(block, x, train)
    return x

  def pooled(self, feature_map: jax.Array) -> jax.Array:
    if self.pool is None:
      return feature_map.mean(axis=1)
    return self.pool(feature_map)
