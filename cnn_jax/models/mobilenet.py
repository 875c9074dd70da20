"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018); variants are data.

Both are built from `cnn_jax.nn.layers.DepthwiseConv`, which runs the shift-and-add formulation on
CPU (XLA's grouped convolution is 15-90x slower there) and the grouped convolution on GPU/TPU.

- v1: 3x3 conv 32 /2, 13 depthwise-separable blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 +
  BN + ReLU; the paper's Table 1), global average pool, FC. 4,231,976 parameters at width 1.0
  with 1000 classes (BN and FC bias included).
- v2: torchvision's layout: 3x3 conv 32 /2, inverted residual blocks from the paper's Table 2
  (1x1 expand + BN + ReLU6, depthwise 3x3 + BN + ReLU6, 1x1 linear projection + BN; shortcut when
  stride 1 and in == out), 1x1 conv to 1280 + BN + ReLU6, global pool, dropout 0.2, FC.
  3,504,872 parameters, as torchvision's `mobilenet_v2()`.

Features (`features=True`), strides relative to the input:
  'stem' 2; 'stage1' 2, 'stage2' 4, 'stage3' 8, 'stage4' 16, 'stage5' 32; 'pre_logits'; 'logits'.
'stageK' is the output of the last block that runs at stride 2^K:
  v1: block1 (64 ch), block3 (128), block5 (256), block11 (512), block13 (1024).
  v2: block1 (16 ch), block3 (24), block6 (32), block13 (96), block17 (320); v2's 1x1 conv to
  1280 comes after 'stage5' (timm's feature layout). DeepLab v3+ takes its low-level feature from
  'stage2' (stride 4) and its high-level one from 'stage5'.
v2's `replace_stride_with_dilation` (ResNet's field and semantics, for DeepLab): flag k makes the
inverted-residual row that would reach stride 2^(k + 3) (8, 16, 32) run at stride 1 and multiply
the dilation of the depthwise convs from there on by 2 instead (the row's first block keeps the
previous dilation, as torchvision's ResNet and TF DeepLab's MobileNet do); the feature names
keep their nominal stride ('stage5' is still the last block, at stride 16 with the last flag).
Block k of v2 is torchvision's `features[k]` (the stem is `features[0]`, the last conv
`features[18]`, the head `classifier[1]`), so weight import maps names one to one.
"""

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
  conv_kernel_init,
)

ModuleDef = Any

# v1, the paper's Table 1: (output channels, stride) of each depthwise-separable block.
V1_BLOCKS: tuple[tuple[int, int], ...] = (
  (64, 1),
  (128, 2),
  (128, 1),
  (256, 2),
  (256, 1),
  (512, 2),
  *((512, 1),) * 5,
  (1024, 2),
  (1024, 1),
)
# One block per stride: still five strides (32x32 inputs end at 1x1), 5 blocks instead of 13.
V1_TINY_BLOCKS: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 2), (512, 2), (1024, 2))

# v2, the paper's Table 2: (expansion t, output channels c, repeats n, stride of the first s).
V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
V2_TINY_SETTING: tuple[tuple[int, int, int, int], ...] = (
  (1, 16, 1, 1),
  (6, 24, 1, 2),
  (6, 32, 1, 2),
  (6, 64, 1, 2),
  (6, 160, 1, 2),
)

# torchvision's classifier init for the MobileNets: N(0, 0.01) weights, zero bias.
head_kernel_init = nn.initializers.normal(0.01)


def make_divisible(value: float, divisor: int = 8) -> int:
  """Rounds a channel count to the nearest multiple of `divisor` (torchvision's rule for v2).

  Never below `divisor`, and never more than 10% below `value` (rounding 0.9x down is undone).
  """
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


def v1_channels(channels: int, width_multiplier: float) -> int:
  """v1's channel rounding, as the paper's TF-slim code: floor(c * alpha), at least 8.

  For the paper's alphas (1, 0.75, 0.5, 0.25) this equals c * alpha exactly.
  """
  return max(int(channels * width_multiplier), 8)


def _norm(train: bool, dtype: Any, axis_name: str | None) -> ModuleDef:
  return partial(
    BatchNorm,  # flax's, with a training forward that is cheaper on XLA:CPU (cnn_jax.nn.layers)
    use_running_average=not train,
    momentum=0.9,  # torch's momentum=0.1 counts the other way round
    epsilon=1e-5,
    dtype=dtype,
    axis_name=axis_name,
  )


def _pointwise(dtype: Any) -> ModuleDef:
  # The 1x1 convs run as one matmul on CPU (2-3.5x faster there than XLA's 1x1 convolution),
  # as nn.Conv elsewhere; the parameters are nn.Conv's either way.
  return partial(PointwiseConv, use_bias=False, dtype=dtype, kernel_init=conv_kernel_init)


def _stage_name(stride: int) -> str:
  return f'stage{int(math.log2(stride))}'


def _check(name: str, width_multiplier: float, dropout_rate: float, impl: str) -> None:
  if not width_multiplier > 0:
    raise UserError(f'{name}.width_multiplier={width_multiplier}; expected a positive number')
  if not 0 <= dropout_rate < 1:
    raise UserError(f'{name}.dropout_rate={dropout_rate}; expected a value in [0, 1)')
  if impl not in ('auto', 'shift', 'grouped'):
    raise UserError(f"{name}.depthwise_impl={impl!r}; expected 'auto', 'shift' or 'grouped'")


def _head(module: nn.Module, x: jax.Array, feats: dict, train: bool) -> dict[str, jax.Array]:
  """Global pool, dropout, FC; adds 'pre_logits' and float32 'logits' to `feats`."""
  x = GlobalAvgPool(name='pool')(x)  # (B, C)
  feats['pre_logits'] = x
  x = nn.Dropout(module.dropout_rate, deterministic=not train, name='dropout')(x)
  x = nn.Dense(module.num_classes, dtype=module.dtype, kernel_init=head_kernel_init, name='head')(x)
  # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
  x = jnp.asarray(x, jnp.float32)
  feats['logits'] = x
  return feats


class SeparableBlock(nn.Module):
  """v1's depthwise-separable block: depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU."""

  features: int
  conv: ModuleDef
  depthwise: ModuleDef
  norm: ModuleDef
  strides: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.depthwise(strides=self.strides, name='dw_conv')(x)
    x = nn.relu(self.norm(name='dw_bn')(x))
    x = self.conv(self.features, (1, 1), padding=0, name='pw_conv')(x)
    return nn.relu(self.norm(name='pw_bn')(x))


class InvertedResidual(nn.Module):
  """v2's block: 1x1 expand (skipped when t = 1), depthwise 3x3, linear 1x1 projection.

  ReLU6 after the expansion and the depthwise conv, none after the projection (the "linear
  bottleneck"); the input is added back when the stride is 1 and the channel count is unchanged.
  """

  features: int
  expansion: int
  conv: ModuleDef
  depthwise: ModuleDef
  norm: ModuleDef
  strides: int = 1
  dilation: int = 1  # of the depthwise conv (padded by the same amount: same size out)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expansion))
    y = x
    if self.expansion != 1:
      y = self.conv(hidden, (1, 1), padding=0, name='expand_conv')(y)  # (B, H, W, t * C_in)
      y = nn.relu6(self.norm(name='expand_bn')(y))
    y = self.depthwise(
      strides=self.strides, padding=self.dilation, dilation=self.dilation, name='dw_conv'
    )(y)  # (B, H/s, W/s, t * C_in)
    y = nn.relu6(self.norm(name='dw_bn')(y))
    y = self.conv(self.features, (1, 1), padding=0, name='project_conv')(y)
    y = self.norm(name='project_bn')(y)  # no activation: ReLU in a narrow layer loses information
    if self.strides == 1 and in_features == self.features:
      return x + y
    return y


class MobileNetV1(nn.Module):
  """MobileNet v1 (Howard et al. 2017); `width_multiplier` is the paper's alpha.

  The resolution multiplier rho is just the input size. `dropout_rate` defaults to 0 (the paper
  names none). `__call__` returns float32 logits or, with `features=True`, the feature dict
  described in the module docstring.
  """

  blocks: Sequence[tuple[int, int]] = V1_BLOCKS
  width_multiplier: float = 1.0
  stem_features: int = 32
  dropout_rate: float = 0.0
  depthwise_impl: str = 'auto'  # 'auto' | 'shift' | 'grouped' (cnn_jax.nn.depthwise)
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    _check('MobileNetV1', self.width_multiplier, self.dropout_rate, self.depthwise_impl)
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    pointwise = _pointwise(self.dtype)
    depthwise = partial(DepthwiseConv, padding=1, dtype=self.dtype, impl=self.depthwise_impl)
    norm = _norm(train, self.dtype, self.norm_axis_name)
    feats = {}

    x = jnp.asarray(x, self.dtype)
    stem = v1_channels(self.stem_features, self.width_multiplier)
    x = conv(stem, (3, 3), 2, padding=1, name='stem_conv')(x)  # (B, H/2, W/2, 32 alpha)
    x = nn.relu(norm(name='stem_bn')(x))
    feats['stem'] = x

    stride = 2
    for i, (channels, s) in enumerate(self.blocks):
      x = SeparableBlock(
        v1_channels(channels, self.width_multiplier),
        conv=pointwise,
        depthwise=depthwise,
        norm=norm,
        strides=s,
        name=f'block{i + 1}',
      )(x)
      stride *= s
      feats[_stage_name(stride)] = x  # the last block at this stride wins

    if self.num_classes == 0:  # a head-less backbone: no pool or FC
      return feats if features else x
    feats = _head(self, x, feats, train)
    return feats if features else feats['logits']


class MobileNetV2(nn.Module):
  """MobileNet v2 (Sandler et al. 2018), torchvision's layout and rounding.

  Channels are `make_divisible(c * width_multiplier, 8)`; the last conv has
  `make_divisible(last_features * max(1, width_multiplier))` channels (never narrower than 1280
  for the full model, as in torchvision). `__call__` returns float32 logits or, with
  `features=True`, the feature dict described in the module docstring.
  """

  setting: Sequence[tuple[int, int, int, int]] = V2_SETTING  # (t, c, n, s) rows
  width_multiplier: float = 1.0
  stem_features: int = 32
  last_features: int = 1280
  dropout_rate: float = 0.2
  depthwise_impl: str = 'auto'  # 'auto' | 'shift' | 'grouped' (cnn_jax.nn.depthwise)
  # Per nominal stride 8, 16, 32: dilate instead of striding (module docstring); DeepLab sets it.
  replace_stride_with_dilation: Sequence[bool] = (False, False, False)
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    _check('MobileNetV2', self.width_multiplier, self.dropout_rate, self.depthwise_impl)
    if self.num_classes < 0:
      raise UserError(f'MobileNetV2.num_classes={self.num_classes}; 0 builds no head, else > 0')
    flags = tuple(bool(f) for f in self.replace_stride_with_dilation)
    if len(flags) != 3:
      raise UserError(
        f'MobileNetV2.replace_stride_with_dilation={flags}; expected 3 flags (strides 8, 16, 32)'
      )
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    pointwise = _pointwise(self.dtype)
    depthwise = partial(DepthwiseConv, padding=1, dtype=self.dtype, impl=self.depthwise_impl)
    norm = _norm(train, self.dtype, self.norm_axis_name)
    feats = {}

    x = jnp.asarray(x, self.dtype)
    stem = make_divisible(self.stem_features * self.width_multiplier)
    x = conv(stem, (3, 3), 2, padding=1, name='stem_conv')(x)  # (B, H/2, W/2, 32)
    x = nn.relu6(norm(name='stem_bn')(x))
    feats['stem'] = x

    stride, dilation, index = 2, 1, 0  # stride: nominal (as if nothing were dilated)
    for t, c, n, s in self.setting:
      reached = stride * s  # flags index the rows reaching strides 8, 16, 32
      row_dilation = dilation
      dilate = s > 1 and reached in (8, 16, 32) and flags[int(math.log2(reached)) - 3]
      if dilate:  # this row's stride becomes dilation, from its second block on
        dilation *= s
      for j in range(n):
        index, strides = index + 1, s if j == 0 and not dilate else 1
        x = InvertedResidual(
          make_divisible(c * self.width_multiplier),
          expansion=t,
          conv=pointwise,
          depthwise=depthwise,
          norm=norm,
          strides=strides,
          dilation=row_dilation if j == 0 else dilation,
          name=f'block{index}',
        )(x)
        stride *= s if j == 0 else 1
        feats[_stage_name(stride)] = x  # the last block at this (nominal) stride wins

    if self.num_classes == 0:  # a head-less backbone (DeepLab): no last 1x1 conv, pool or FC
      return feats if features else x
    last = make_divisible(self.last_features * max(1.0, self.width_multiplier))
    x = pointwise(last, (1, 1), padding=0, name='last_conv')(x)  # (B, H/32, W/32, 1280)
    x = nn.relu6(norm(name='last_bn')(x))

    feats = _head(self, x, feats, train)
    return feats if features else feats['logits']


def mobilenet_v1(**kwargs: Any) -> MobileNetV1:
  """MobileNet v1 with the paper's 13 blocks; e.g. `width_multiplier=0.5` for 0.5-MobileNet."""
  return MobileNetV1(**kwargs)


def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
  """MobileNet v2 with the paper's 17 blocks (torchvision's `mobilenet_v2`)."""
  return MobileNetV2(**kwargs)


def mobilenet_v1_tiny(**kwargs: Any) -> MobileNetV1:
  """Width 0.25, one block per stride (5 blocks), 10 classes: for tests."""
  defaults = dict(blocks=V1_TINY_BLOCKS, width_multiplier=0.25, num_classes=10)
  return MobileNetV1(**(defaults | kwargs))


def mobilenet_v2_tiny(**kwargs: Any) -> MobileNetV2:
  """Width 0.25, one block per table row (5 blocks), a 64-wide last conv, 10 classes: for tests."""
  defaults = dict(setting=V2_TINY_SETTING, width_multiplier=0.25, last_features=64, num_classes=10)
  return MobileNetV2(**(defaults | kwargs))
