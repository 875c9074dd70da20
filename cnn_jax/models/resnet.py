"""ResNets (He et al. 2016) and their plain twins, one module family; variants are data.

- ImageNet depths 18/34/50/101/152: torchvision's v1.5 layout (stride on the 3x3 of the bottleneck,
  projection shortcuts where the shape changes); parameter counts equal torchvision's.
- CIFAR depths 20/32/44/56/110 (6n + 2): 3x3 stem with 16 channels, three stages of n basic blocks
  with 16/32/64 channels, shortcut option 'A' (parameter-free) as in the paper's Section 4.2.
- `residual=False` drops every shortcut: the "plain" nets of the degradation experiment.
- `se_reduction=r` ends every residual branch with squeeze-and-excitation (Hu et al. 2018) of
  C / r channels, after the last BN and before the addition: SE-ResNet (`seresnet(50)`: r = 16).
- `replace_stride_with_dilation` (torchvision's field): later stages keep their resolution and
  dilate their 3x3 convs instead (DeepLab's atrous backbones, output stride 16 or 8).
  `multi_grid` gives the last stage's blocks DeepLab v3's Multi-Grid unit rates (Chen et al.
  2017, Section 3.2); `block_dilations()` lists every block's rate.
- `deformable_stages` swaps the 3x3 convs of the named stages for modulated deformable convs
  (Zhu et al. 2019, `cnn_jax.nn.deformable`).
- Noise for Noisy Student's student (Xie et al. 2020): `stochastic_depth_prob` (Huang et al.
  2016, linear decay over the blocks, `block_drop_probs`) and `dropout_rate` before the
  classifier; both act in training only and default to 0 (the net is then unchanged).
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.deformable import DeformableConv
from cnn_jax.nn.layers import (
  BatchNorm,
  Conv,
  GlobalAvgPool,
  MaxPool,
  SqueezeExcite,
  conv_kernel_init,
  dense_kernel_init,
  stochastic_depth,
)

ModuleDef = Any

# Blocks per stage. ImageNet nets: the paper's Table 1; CIFAR nets: n = (depth - 2) / 6 per stage.
STAGE_SIZES: dict[int, tuple[int, ...]] = {
  18: (2, 2, 2, 2),
  34: (3, 4, 6, 3),
  50: (3, 4, 6, 3),
  101: (3, 4, 23, 3),
  152: (3, 8, 36, 3),
  20: (3, 3, 3),
  32: (5, 5, 5),
  44: (7, 7, 7),
  56: (9, 9, 9),
  110: (18, 18, 18),
}
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
_BLOCKS = ('basic', 'bottleneck')
_STEMS = ('imagenet', 'cifar')
_SHORTCUTS = ('A', 'B')
# DeepLab's backbones by output stride (input size / stage4 size): which of stages 2-4 dilate.
DILATION_FOR_OUTPUT_STRIDE: dict[int, tuple[bool, bool, bool]] = {
  32: (False, False, False),
  16: (False, False, True),
  8: (False, True, True),
}


def _conv3x3(block: nn.Module, features: int, strides: int, name: str) -> nn.Module:
  """The block's 3x3 conv: regular or deformable, dilated by `block.dilation` (padding = dilation
  keeps the size at stride 1)."""
  d = block.dilation
  if block.deform_conv is not None:
    return block.deform_conv(features, (3, 3), strides, padding=d, dilation=d, name=name)
  return block.conv(features, (3, 3), strides, padding=d, kernel_dilation=d, name=name)


def _last_norm(block: nn.Module, y: jax.Array, name: str) -> jax.Array:
  """The branch's last BN (zero scale with zero_init_residual), then SE if the block has one."""
  # Zero scale makes each block start as the identity (Goyal et al. 2017); without shortcuts a
  # zero branch would pass no signal, so plain nets ignore it.
  zero = block.zero_init_residual and block.residual
  y = block.norm(scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name=name)(y)
  if block.se_reduction:
    c = y.shape[-1]
    if c // block.se_reduction < 1:
      raise UserError(f'ResNet.se_reduction={block.se_reduction} leaves no channels of {c}')
    y = SqueezeExcite(c // block.se_reduction, dtype=block.dtype, name='se')(y)
  return y


def block_drop_probs(num_blocks: int, prob: float) -> tuple[float, ...]:
  """Huang et al. 2016's linear decay rule: block l of L (from 1) drops with `prob` * l / L.

  The last block drops with `prob` itself (Huang et al.: 0.5 on CIFAR; Noisy Student: 0.2, i.e.
  survival 0.8), the first with `prob` / L; ResNet-110's 54 blocks at 0.5: 0.0093 ... 0.5.
  """
  return tuple(prob * block / num_blocks for block in range(1, num_blocks + 1))


def _merge(block: nn.Module, x: jax.Array, y: jax.Array, train: bool) -> jax.Array:
  """The block's output from its input `x` and residual branch `y`: relu(shortcut(x) + y).

  Stochastic depth (Huang et al. 2016) as in EfficientNet's MBConv here (torchvision's 'row'
  mode): one keep/drop draw per example from the 'dropout' rng (mask (B, 1, 1, 1)), survivors
  scaled by 1 / (1 - p), the identity in eval. Every block with a shortcut drops, projection
  ('B') and zero-pad ('A') ones included: a dropped example leaves relu(shortcut(x)), as in
  Huang et al.'s CIFAR nets (all 54 blocks of ResNet-110 count in the rule). Plain nets have
  no shortcut to fall back on (`ResNet._check_fields` refuses them).
  """
  if not block.residual:
    return nn.relu(y)
  if block.stochastic_depth_prob > 0:  # no module at 0: the net stays exactly the old one
    y = stochastic_depth(y, block.stochastic_depth_prob, train=train)
  return nn.relu(_shortcut(block, x, y))


def _shortcut(block: nn.Module, x: jax.Array, y: jax.Array) -> jax.Array:
  """Adds the shortcut of `x` to the residual branch output `y` (called inside block.__call__)."""
  if x.shape == y.shape:
    return x + y
  if block.shortcut == 'A':
    # Option A: subsample by the stride and pad the new channels with zeros; no parameters.
    x = x[:, :: block.strides, :: block.strides, :]
    extra = y.shape[-1] - x.shape[-1]
    if extra < 0:
      raise UserError(f"shortcut 'A' cannot reduce channels ({x.shape[-1]} -> {y.shape[-1]})")
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra))) + y
  # Option B: 1x1 projection (with the block's stride) + BN where the shape changes.
  x = block.conv(y.shape[-1], (1, 1), block.strides, padding=0, name='proj_conv')(x)
  return block.norm(name='proj_bn')(x) + y


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34 and the CIFAR nets); both carry the block's dilation."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False
  dilation: int = 1
  se_reduction: int = 0  # 0: no SE
  deform_conv: ModuleDef | None = None  # factory for the 3x3 convs; None: `conv`
  stochastic_depth_prob: float = 0.0  # of dropping the residual branch (training)
  dtype: Any = jnp.float32  # of the SE layer

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = _conv3x3(self, self.features, self.strides, 'conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv3x3(self, self.features, 1, 'conv2')(y)
    y = _last_norm(self, y, 'bn2')
    return _merge(self, x, y, train)


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (carries the stride: torchvision's v1.5), 1x1 expand to 4x `features`."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False
  dilation: int = 1  # of the 3x3 conv
  se_reduction: int = 0  # 0: no SE
  deform_conv: ModuleDef | None = None  # factory for the 3x3 conv; None: `conv`
  stochastic_depth_prob: float = 0.0  # of dropping the residual branch (training)
  dtype: Any = jnp.float32  # of the SE layer

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = self.conv(self.features, (1, 1), padding=0, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv3x3(self, self.features, self.strides, 'conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.features * self.expansion, (1, 1), padding=0, name='conv3')(y)
    y = _last_norm(self, y, 'bn3')
    return _merge(self, x, y, train)


class ResNet(nn.Module):
  """ResNet or plain net; `resnet(depth)` fills in the published variants.

  `__call__` returns float32 logits, or with `features=True` a dict with 'stem', 'stage1', ...,
  'pre_logits' and 'logits'. `num_classes=0` drops the classifier (no 'head' parameters): the
  call then returns the last stage's feature map in the compute dtype, and `features=True` the
  dict without 'pre_logits' and 'logits' (the backbone of FCN / DeepLab). Strides of 'stem',
  'stage1', ... w.r.t. the input: 4, 4, 8, 16, 32 (ImageNet stem), 1, 1, 2, 4 (CIFAR stem); a
  dilated stage keeps its input's stride; `feature_strides()` lists them.

  Stages are numbered from 1 like the features ('stage1' is the paper's conv2_x, 'stage4' its
  conv5_x); `replace_stride_with_dilation[k]` refers to stage k + 2, `deformable_stages` lists
  stage numbers: DCNv2's conv3_x-conv5_x is (2, 3, 4), DCNv1's conv5_x is (4,).
  """

  stage_sizes: Sequence[int]
  block: str = 'basic'  # 'basic' | 'bottleneck'
  widths: Sequence[int] = (64, 128, 256, 512)  # per stage; bottleneck width for 'bottleneck'
  stem: str = 'imagenet'  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'cifar': 3x3/1 conv
  residual: bool = True  # False: the plain net (no shortcuts at all)
  shortcut: str = 'B'  # where the shape changes: 'A' zero-pad identity, 'B' 1x1 projection
  zero_init_residual: bool = False  # ignored when residual=False
  num_classes: int = 1000  # 0: head-less (returns the last feature map)
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis
  se_reduction: int = 0  # > 0: SE with C / se_reduction hidden channels in every block
  # One flag per stage after the first (torchvision's order): True keeps that stage's resolution
  # and multiplies the dilation by 2 instead; flags for stages the net lacks must be False.
  replace_stride_with_dilation: tuple[bool, ...] = (False, False, False)
  # DeepLab v3's Multi-Grid: unit rates of the last stage's blocks, one per block; block j's 3x3
  # convs dilate by the stage's rate times multi_grid[j] (rate 2 at output stride 16 with
  # (1, 2, 4): 2, 4, 8), its first block included. () keeps torchvision's rule (the first block
  # of a dilated stage at the previous stage's rate: 1, 2, 2).
  multi_grid: tuple[int, ...] = ()
  deformable_stages: tuple[int, ...] = ()  # stages (numbered from 1) with deformable 3x3 convs
  # Training-only noise (Noisy Student's student: 0.2 and 0.5), both in [0, 1). Stochastic depth:
  # block l of L drops its residual branch with stochastic_depth_prob * l / L (block_drop_probs).
  stochastic_depth_prob: float = 0.0
  dropout_rate: float = 0.0  # on the pooled features, before 'head'

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check_fields()
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    # DCNv2 recipe: offsets and modulation from a zero-initialised conv; main kernel as `conv`.
    deform = partial(DeformableConv, dtype=self.dtype, kernel_init=conv_kernel_init)
    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
    drop_probs = block_drop_probs(sum(self.stage_sizes), self.stochastic_depth_prob)
    feats = {}

    x = jnp.asarray(x, self.dtype)
    if self.stem == 'imagenet':
      x = conv(self.widths[0], (7, 7), 2, padding=3, name='stem_conv')(x)  # (B, H/2, W/2, 64)
      x = nn.relu(norm(name='stem_bn')(x))
      # (B, H/4, W/4, 64); padding 1 like torch's, which pads with -inf.
      x = MaxPool((3, 3), (2, 2), padding=((1, 1), (1, 1)), name='stem_pool')(x)
    else:
      x = conv(self.widths[0], (3, 3), padding=1, name='stem_conv')(x)  # (B, H, W, 16)
      x = nn.relu(norm(name='stem_bn')(x))
    feats['stem'] = x

    dilations = self.block_dilations()
    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      # Each stage after the first halves H and W, or keeps them and dilates its 3x3 convs.
      stride = 1 if i == 0 or self._dilates(i) else 2
      for j in range(num_blocks):
        x = block_cls(
          width,
          conv=conv,
          norm=norm,
          strides=stride if j == 0 else 1,
          residual=self.residual,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
          dilation=dilations[i][j],
          se_reduction=self.se_reduction,
          deform_conv=deform if i + 1 in self.deformable_stages else None,
          stochastic_depth_prob=drop_probs[sum(self.stage_sizes[:i]) + j],
          dtype=self.dtype,
          name=f'stage{i + 1}_block{j + 1}',
        )(x, train=train)
      feats[f'stage{i + 1}'] = x

    if not self.num_classes:  # head-less: a backbone for dense prediction (no 'pool', 'head')
      return feats if features else x  # (B, H/32, W/32, C) at output stride 32
    x = GlobalAvgPool(name='pool')(x)  # (B, C)
    feats['pre_logits'] = x
    if self.dropout_rate > 0:  # no module at 0, like stochastic depth
      x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_kernel_init, name='head')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(x, jnp.float32)
    feats['logits'] = x
    return feats if features else x

  def block_dilations(self) -> tuple[tuple[int, ...], ...]:
    """The 3x3 convs' dilation of every block, stage by stage: ((1, 1, 1), ..., (1, 2, 2)) for
    ResNet-50 at output stride 16, (..., (2, 4, 8)) with multi_grid=(1, 2, 4)."""
    self._check_fields()
    out, rate = [], 1
    last = len(self.stage_sizes) - 1
    for i, num_blocks in enumerate(self.stage_sizes):
      previous = rate
      if self._dilates(i):  # the stride of the stage's first block becomes 2x more dilation
        rate *= 2
      if i == last and self.multi_grid:
        out.append(tuple(rate * int(g) for g in self.multi_grid))
      else:  # torchvision: the first block of a dilated stage keeps the previous dilation
        out.append((previous,) + (rate,) * (num_blocks - 1))
    return tuple(out)

  def feature_strides(self) -> dict[str, int]:
    """Input size / feature size of 'stem' and each 'stageN' (stage4: 8 in DeepLab's OS 8)."""
    self._check_fields()
    stride = 4 if self.stem == 'imagenet' else 1
    strides = {'stem': stride}
    for i in range(len(self.stage_sizes)):
      if i > 0 and not self._dilates(i):
        stride *= 2
      strides[f'stage{i + 1}'] = stride
    return strides

  def _dilates(self, stage_index: int) -> bool:
    """Whether stage `stage_index` (from 0) trades its stride for dilation."""
    flags = self.replace_stride_with_dilation
    return stage_index > 0 and stage_index - 1 < len(flags) and bool(flags[stage_index - 1])

  def _check_fields(self) -> None:
    for field, value, allowed in (
      ('block', self.block, _BLOCKS),
      ('stem', self.stem, _STEMS),
      ('shortcut', self.shortcut, _SHORTCUTS),
    ):
      if value not in allowed:
        raise UserError(f'ResNet.{field}={value!r}; expected one of {allowed}')
    if len(self.stage_sizes) != len(self.widths):
      raise UserError(
        f'ResNet has {len(self.stage_sizes)} stage sizes but {len(self.widths)} widths'
      )
    if self.num_classes < 0:
      raise UserError(f'ResNet.num_classes={self.num_classes}; expected 0 (head-less) or more')
    if self.se_reduction < 0:
      raise UserError(f'ResNet.se_reduction={self.se_reduction}; expected 0 (no SE) or more')
    for field in ('stochastic_depth_prob', 'dropout_rate'):
      if not 0 <= getattr(self, field) < 1:
        raise UserError(f'ResNet.{field}={getattr(self, field)!r}; expected in [0, 1)')
    if self.stochastic_depth_prob > 0 and not self.residual:
      raise UserError(
        f'ResNet.stochastic_depth_prob={self.stochastic_depth_prob!r} needs shortcuts; the plain '
        'net (residual=False) has none to fall back on: set it to 0'
      )
    if self.dropout_rate > 0 and not self.num_classes:
      raise UserError(
        f'ResNet.dropout_rate={self.dropout_rate!r} acts before the classifier, which '
        'num_classes=0 drops: set it to 0'
      )
    num_stages = len(self.stage_sizes)
    extra = tuple(self.replace_stride_with_dilation)[num_stages - 1 :]
    if any(extra):
      raise UserError(
        f'ResNet.replace_stride_with_dilation={tuple(self.replace_stride_with_dilation)} dilates '
        f'a stage the net lacks (it has {num_stages} stages; flag k is stage k + 2)'
      )
    grid = tuple(self.multi_grid)
    if grid and (len(grid) != self.stage_sizes[-1] or not all(int(g) >= 1 for g in grid)):
      raise UserError(
        f'ResNet.multi_grid={grid}: expected one unit rate >= 1 per block of the last stage, '
        f'which has {self.stage_sizes[-1]}, or () for none'
      )
    bad = [s for s in self.deformable_stages if not 1 <= s <= num_stages]
    if bad:
      raise UserError(
        f'ResNet.deformable_stages={tuple(self.deformable_stages)}; stages are numbered '
        f'1..{num_stages}'
      )


def resnet(depth: int, **kwargs: Any) -> ResNet:
  """The published ResNet of `depth` (18..152: ImageNet, 20..110: CIFAR); kwargs override fields."""
  if depth in IMAGENET_DEPTHS:
    defaults = dict(block='basic' if depth < 50 else 'bottleneck', stem='imagenet', shortcut='B')
  elif depth in CIFAR_DEPTHS:
    defaults = dict(widths=(16, 32, 64), stem='cifar', shortcut='A', num_classes=10)
  else:
    raise UserError(f'no ResNet of depth {depth}; known depths: {sorted(STAGE_SIZES)}')
  return ResNet(stage_sizes=STAGE_SIZES[depth], **(defaults | kwargs))


def seresnet(depth: int, **kwargs: Any) -> ResNet:
  """SE-ResNet (Hu et al. 2018): `resnet(depth)` with SE of reduction 16 in every block."""
  return resnet(depth, **({'se_reduction': 16} | kwargs))


def plain(depth: int, **kwargs: Any) -> ResNet:
  """The plain counterpart of `resnet(depth)`: same layers, no shortcuts."""
  return resnet(depth, residual=False, **kwargs)


def resnet_tiny(**kwargs: Any) -> ResNet:
  """CIFAR layout with 1 block per stage and widths 4/8/16, for tests; kwargs override fields
  (DeepLab's tiny backbone: 4 stages, ImageNet stem)."""
  defaults = dict(
    stage_sizes=(1, 1, 1), widths=(4, 8, 16), stem='cifar', shortcut='A', num_classes=10
  )
  return ResNet(**(defaults | kwargs))
