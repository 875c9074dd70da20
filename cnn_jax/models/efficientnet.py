"""EfficientNet B0-B7 (Tan & Le 2019) in torchvision's layout; variants are data.

B0 is the MnasNet-like stage table below (MBConv = inverted residual + squeeze-excite, SiLU);
B1-B7 scale its widths by `round_filters`, its depths by `round_repeats` and the input resolution
by the hand-set table `EFFICIENTNET_PARAMS` (from the paper's code; not alpha^phi exactly).
Compound scaling by alpha^phi, beta^phi, gamma^phi is a separate path with the same rounding
(`compound_multipliers`, `scaled_layout`, `round_resolution`; `efficientnet`, registered as
'efficientnet_scaled').
Parameter counts equal torchvision's efficientnet_b0..b7 (5,288,548 ... 66,347,960).

Deviations from torchvision, on purpose:
- BatchNorm uses the paper's TF code values, decay 0.99 (flax momentum=0.99, torch momentum=0.01)
  and epsilon 1e-3. torchvision agrees for B5-B7 (weights ported from TF) but builds B0-B4 with
  torch's defaults (eps 1e-5, momentum 0.1 = flax 0.9); importing those weights should pass
  `bn_epsilon=1e-5` (and `bn_momentum=0.9` for fine-tuning like torchvision).
- The last 1x1 conv has `round_filters(1280, width)` channels (the paper's code); torchvision uses
  4x the last stage's channels. Both give the same number for all eight variants.
- The squeeze-excite FCs use `cnn_jax.nn.layers.SqueezeExcite`'s init, not kaiming fan_out.
"""

import dataclasses
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import (
  BatchNorm,
  Conv,
  DepthwiseConv,
  GlobalAvgPool,
  PointwiseConv,
  SqueezeExcite,
  conv_kernel_init,
  stochastic_depth,
)

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class MBConvStage:
  """One row of the B0 table: `repeats` MBConv blocks; the first carries the stride."""

  expand_ratio: int
  kernel_size: int
  strides: int
  in_features: int
  out_features: int
  repeats: int


# EfficientNet-B0, the paper's Table 1 (stages 2-8; stage 1 is the stem, stage 9 the head).
B0_STAGES: tuple[MBConvStage, ...] = (
  MBConvStage(1, 3, 1, 32, 16, 1),
  MBConvStage(6, 3, 2, 16, 24, 2),
  MBConvStage(6, 5, 2, 24, 40, 2),
  MBConvStage(6, 3, 2, 40, 80, 3),
  MBConvStage(6, 5, 1, 80, 112, 3),
  MBConvStage(6, 5, 2, 112, 192, 4),
  MBConvStage(6, 3, 1, 192, 320, 1),
)

# B0 without its two stride-1 stages that change width (80 -> 112, 192 -> 320) and with one block
# per stage but two in the fourth: every stage ends a feature level, and one block (mbconv4_block2)
# has a shortcut with a non-zero stochastic depth probability. For tests only.
TINY_STAGES: tuple[MBConvStage, ...] = (
  MBConvStage(1, 3, 1, 32, 16, 1),
  MBConvStage(6, 3, 2, 16, 24, 1),
  MBConvStage(6, 5, 2, 24, 40, 1),
  MBConvStage(6, 3, 2, 40, 80, 2),
  MBConvStage(6, 5, 2, 80, 192, 1),
)

# Variant -> (width_mult, depth_mult, native resolution, dropout before the classifier): the
# paper's hand-set table (its code's `efficientnet_params`), pinned in DESIGN.md.
EFFICIENTNET_PARAMS: dict[str, tuple[float, float, int, float]] = {
  'b0': (1.0, 1.0, 224, 0.2),
  'b1': (1.0, 1.1, 240, 0.2),
  'b2': (1.1, 1.2, 260, 0.3),
  'b3': (1.2, 1.4, 300, 0.3),
  'b4': (1.4, 1.8, 380, 0.4),
  'b5': (1.6, 2.2, 456, 0.4),
  'b6': (1.8, 2.6, 528, 0.5),
  'b7': (2.0, 3.1, 600, 0.5),
}


def round_filters(filters: int, width_mult: float, divisor: int = 8) -> int:
  """`filters * width_mult` rounded to the nearest multiple of `divisor` (at least `divisor`).

  Rounds half up, then adds one `divisor` if that lost more than 10%: the paper's
  `round_filters` and torchvision's `_make_divisible`, e.g. round_filters(32, 2.0) = 64,
  round_filters(40, 0.25) = 16 (10 -> 8 would lose 20%).
  """
  scaled = filters * width_mult
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_mult: float) -> int:
  """`ceil(repeats * depth_mult)`, e.g. round_repeats(4, 3.1) = 13.

  Plain float arithmetic like the paper's code and torchvision (3 * 1.4 = 4.199... -> 5), so
  block counts and parameter counts match theirs.
  """
  return int(math.ceil(repeats * depth_mult))


def round_resolution(resolution: int, resolution_mult: float) -> int:
  """`resolution * resolution_mult` to the nearest pixel (half up, at least 1), e.g. 16 * 1.15 = 18.

  The paper gives no rule for this (B1-B7's sizes are hand-set); compound-scaled nets here use it.
  """
  return max(1, int(resolution * resolution_mult + 0.5))


def compound_multipliers(
  alpha: float, beta: float, gamma: float, phi: float
) -> tuple[float, float, float]:
  """(depth, width, resolution) multipliers alpha^phi, beta^phi, gamma^phi (Tan & Le 2019, eq. 3).

  With alpha * beta^2 * gamma^2 ~= 2 the multiply-adds grow by about 2^phi: a conv net's cost is
  linear in depth and quadratic in width and in resolution.
  """
  return alpha**phi, beta**phi, gamma**phi


def scaled_layout(
  width_mult: float,
  depth_mult: float,
  stages: Sequence[MBConvStage] = B0_STAGES,
  last_features: int = 1280,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(blocks per stage, channels) of `EfficientNet(width_mult, depth_mult, stages)`, no tracing.

  Channels: the stem, each stage's output, the last 1x1 conv. Two multipliers with the same
  layout build the same network (e.g. depth 1.1 and 1.2 of B0 both give 23 blocks).
  """
  repeats = tuple(round_repeats(s.repeats, depth_mult) for s in stages)
  channels = (stages[0].in_features, *(s.out_features for s in stages), last_features)
  return repeats, tuple(round_filters(c, width_mult) for c in channels)


def _variant_key(variant: str) -> str:
  key = variant.removeprefix('efficientnet_')
  if key not in EFFICIENTNET_PARAMS:
    raise UserError(
      f'unknown EfficientNet variant {variant!r}; expected one of {", ".join(EFFICIENTNET_PARAMS)}'
    )
  return key


def native_resolution(variant: str) -> int:
  """The input size a variant was scaled for: 'b3' or 'efficientnet_b3' -> 300."""
  return EFFICIENTNET_PARAMS[_variant_key(variant)][2]


class MBConv(nn.Module):
  """Inverted residual with squeeze-excite (Sandler et al. 2018; Tan & Le 2019).

  1x1 expand (skipped when expand_ratio is 1) - kxk depthwise - SE - 1x1 project (linear);
  identity shortcut with stochastic depth when the shape is unchanged.
  """

  in_features: int
  out_features: int
  expand_ratio: int
  kernel_size: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  stochastic_depth_prob: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    # torchvision's adjust_channels(in, ratio); the identity whenever `in` is a multiple of 8.
    hidden = round_filters(self.in_features, self.expand_ratio)
    y = x
    if hidden != self.in_features:
      y = self.conv(hidden, (1, 1), padding=0, name='expand_conv')(y)
      y = nn.silu(self.norm(name='expand_bn')(y))
    k = self.kernel_size
    y = DepthwiseConv(
      (k, k), strides=self.strides, padding=(k - 1) // 2, dtype=self.dtype, name='dw_conv'
    )(y)
    y = nn.silu(self.norm(name='dw_bn')(y))
    # SE width from the block's *input* channels (a quarter), as in the paper's code: B0's
    # 16 -> 24 block squeezes 96 channels to 4.
    y = SqueezeExcite(
      max(1, self.in_features // 4), activation=nn.silu, dtype=self.dtype, name='se'
    )(y)
    y = self.conv(self.out_features, (1, 1), padding=0, name='project_conv')(y)
    y = self.norm(name='project_bn')(y)
    if self.strides == 1 and self.in_features == self.out_features:
      y = stochastic_depth(y, self.stochastic_depth_prob, train=train)
      y = y + x
    return y


class EfficientNet(nn.Module):
  """EfficientNet (Tan & Le 2019); `efficientnet_variant('b0'..'b7')` fills in the published ones.

  `__call__` returns float32 logits, or with `features=True` a dict of
  - 'stem': 3x3/2 conv + BN + SiLU, stride 2;
  - 'stage1'..'stage5': the outputs of the last MBConv stage at strides 2, 4, 8, 16, 32 (for the
    B0 table: MBConv stages 1, 2, 3, 5 and 7, i.e. 16/24/40/112/320 channels at width 1);
  - 'pre_logits': the pooled output of the last 1x1 conv (1280 channels at width 1);
  - 'logits'.
  Submodules: 'stem_conv', 'stem_bn', 'mbconv{s}_block{j}' (torchvision's features.{s}.{j-1}),
  'last_conv', 'last_bn' (features.8) and 'head' (classifier.1).
  """

  width_mult: float = 1.0
  depth_mult: float = 1.0
  dropout: float = 0.2  # before the classifier
  stochastic_depth_prob: float = 0.2  # block i of n drops with p * i / n (torchvision)
  stages: Sequence[MBConvStage] = B0_STAGES  # unscaled (width 1, depth 1) table
  last_features: int = 1280  # the last 1x1 conv, before width scaling
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis
  bn_momentum: float = 0.99  # the paper's TF decay; torch's momentum=0.01
  bn_epsilon: float = 1e-3  # the paper's TF code (torchvision: B5-B7 only; 1e-5 for B0-B4)

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check_fields()
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    # The 1x1 convs run as one matmul on CPU (2-3.5x faster there than XLA's 1x1 convolution),
    # as nn.Conv elsewhere; BatchNorm is flax's with a training forward that is cheaper on
    # XLA:CPU. Parameters are those of nn.Conv and nn.BatchNorm either way (cnn_jax.nn.layers).
    pointwise = partial(
      PointwiseConv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init
    )
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    width = partial(round_filters, width_mult=self.width_mult)
    repeats = [round_repeats(s.repeats, self.depth_mult) for s in self.stages]
    total_blocks = sum(repeats)
    feats = {}

    x = jnp.asarray(x, self.dtype)
    x = conv(width(self.stages[0].in_features), (3, 3), 2, padding=1, name='stem_conv')(x)
    x = nn.silu(norm(name='stem_bn')(x))  # (B, H/2, W/2, 32 * width)
    feats['stem'] = x

    block_index = 0
    level = 1
    for i, stage in enumerate(self.stages):
      for j in range(repeats[i]):
        x = MBConv(
          in_features=width(stage.in_features if j == 0 else stage.out_features),
          out_features=width(stage.out_features),
          expand_ratio=stage.expand_ratio,
          kernel_size=stage.kernel_size,
          conv=pointwise,
          norm=norm,
          strides=stage.strides if j == 0 else 1,
          # Linear in depth: 0 for the first block, 0.2 * (n-1)/n for the last (torchvision).
          stochastic_depth_prob=self.stochastic_depth_prob * block_index / total_blocks,
          dtype=self.dtype,
          name=f'mbconv{i + 1}_block{j + 1}',
        )(x, train=train)
        block_index += 1
      # A feature level ends where the next stage halves the resolution (or the stages end).
      if i + 1 == len(self.stages) or self.stages[i + 1].strides > 1:
        feats[f'stage{level}'] = x
        level += 1

    x = pointwise(width(self.last_features), (1, 1), padding=0, name='last_conv')(x)
    x = nn.silu(norm(name='last_bn')(x))
    x = GlobalAvgPool(name='pool')(x)  # (B, 1280 * width)
    feats['pre_logits'] = x
    x = nn.Dropout(self.dropout, deterministic=not train, name='dropout')(x)
    # torchvision's Linear init: U(-1/sqrt(out), 1/sqrt(out)), zero bias.
    head_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=head_init, name='head')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(x, jnp.float32)
    feats['logits'] = x
    return feats if features else x

  def _check_fields(self) -> None:
    for field in ('width_mult', 'depth_mult'):
      if not getattr(self, field) > 0:
        raise UserError(f'EfficientNet.{field}={getattr(self, field)!r}; expected > 0')
    for field in ('dropout', 'stochastic_depth_prob'):
      if not 0 <= getattr(self, field) < 1:
        raise UserError(f'EfficientNet.{field}={getattr(self, field)!r}; expected in [0, 1)')
    if not self.stages:
      raise UserError('EfficientNet.stages is empty; expected at least one MBConvStage')
    for i, stage in enumerate(self.stages):
      if stage.strides not in (1, 2) or stage.expand_ratio < 1 or stage.repeats < 1:
        raise UserError(
          f'EfficientNet.stages[{i}]={stage}; expected strides 1 or 2, expand_ratio >= 1, '
          'repeats >= 1'
        )


def efficientnet(
  width_mult: float = 1.0, depth_mult: float = 1.0, dropout: float = 0.2, **kwargs: Any
) -> EfficientNet:
  """B0 scaled by any width and depth multipliers; kwargs set fields.

  Registered as 'efficientnet_scaled': the path of compound-scaling sweeps
  (cnn_jax/recipes/scaling.py,
  configs/efficientnet_sweep.py), where the resolution is config.image_size. The named B0-B7 come
  from `EFFICIENTNET_PARAMS` instead (`efficientnet_variant`).
  """
  return EfficientNet(width_mult=width_mult, depth_mult=depth_mult, dropout=dropout, **kwargs)


def efficientnet_variant(variant: str, **kwargs: Any) -> EfficientNet:
  """The published EfficientNet-`variant` ('b0'..'b7') from `EFFICIENTNET_PARAMS`."""
  width_mult, depth_mult, _, dropout = EFFICIENTNET_PARAMS[_variant_key(variant)]
  defaults = dict(width_mult=width_mult, depth_mult=depth_mult, dropout=dropout)
  return EfficientNet(**(defaults | kwargs))


def efficientnet_tiny(**kwargs: Any) -> EfficientNet:
  """`TINY_STAGES` at width 0.25 (6 blocks, 8-48 channels, 57,352 parameters), for tests."""
  defaults = dict(stages=TINY_STAGES, width_mult=0.25, num_classes=10)
  return EfficientNet(**(defaults | kwargs))
