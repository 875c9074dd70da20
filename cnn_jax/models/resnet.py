"""ResNets (He et al. 2016) and their plain twins, one module family; variants are data.

- ImageNet depths 18/34/50/101/152: torchvision's v1.5 layout (stride on the 3x3 of the bottleneck,
  projection shortcuts where the shape changes); parameter counts equal torchvision's.
- CIFAR depths 20/32/44/56/110 (6n + 2): 3x3 stem with 16 channels, three stages of n basic blocks
  with 16/32/64 channels, shortcut option 'A' (parameter-free) as in the paper's Section 4.2.
- `residual=False` drops every shortcut: the "plain" nets of the degradation experiment.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.errors import UserError
from cnn_jax.layers import GlobalAvgPool, MaxPool, conv_kernel_init, dense_kernel_init

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
  """Two 3x3 convs (ResNet-18/34 and the CIFAR nets)."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), padding=1, name='conv2')(y)
    if not self.residual:
      return nn.relu(self.norm(name='bn2')(y))
    # Zero scale makes each block start as the identity (Goyal et al. 2017).
    zero = self.zero_init_residual
    y = self.norm(scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name='bn2')(y)
    return nn.relu(_shortcut(self, x, y))


class BottleneckBlock(nn.Module):
  """1x1 reduce, 3x3 (carries the stride: torchvision's v1.5), 1x1 expand to 4x `features`."""

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  residual: bool = True
  shortcut: str = 'B'
  zero_init_residual: bool = False

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.features, (1, 1), padding=0, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.features * self.expansion, (1, 1), padding=0, name='conv3')(y)
    if not self.residual:
      return nn.relu(self.norm(name='bn3')(y))
    zero = self.zero_init_residual
    y = self.norm(scale_init=nn.initializers.zeros if zero else nn.initializers.ones, name='bn3')(y)
    return nn.relu(_shortcut(self, x, y))


class ResNet(nn.Module):
  """ResNet or plain net; `resnet(depth)` fills in the published variants.

  `__call__` returns float32 logits, or with `features=True` a dict with 'stem', 'stage1', ...,
  'pre_logits' and 'logits'.
  """

  stage_sizes: Sequence[int]
  block: str = 'basic'  # 'basic' | 'bottleneck'
  widths: Sequence[int] = (64, 128, 256, 512)  # per stage; bottleneck width for 'bottleneck'
  stem: str = 'imagenet'  # 'imagenet': 7x7/2 conv + 3x3/2 max pool; 'cifar': 3x3/1 conv
  residual: bool = True  # False: the plain net (no shortcuts at all)
  shortcut: str = 'B'  # where the shape changes: 'A' zero-pad identity, 'B' 1x1 projection
  zero_init_residual: bool = False  # ignored when residual=False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check_fields()
    conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    norm = partial(
      nn.BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    block_cls = BasicBlock if self.block == 'basic' else BottleneckBlock
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

    for i, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      for j in range(num_blocks):
        x = block_cls(
          width,
          conv=conv,
          norm=norm,
          strides=2 if i > 0 and j == 0 else 1,  # each stage after the first halves H and W
          residual=self.residual,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
          name=f'stage{i + 1}_block{j + 1}',
        )(x)
      feats[f'stage{i + 1}'] = x

    x = GlobalAvgPool(name='pool')(x)  # (B, C)
    feats['pre_logits'] = x
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_kernel_init, name='head')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(x, jnp.float32)
    feats['logits'] = x
    return feats if features else x

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


def resnet(depth: int, **kwargs: Any) -> ResNet:
  """The published ResNet of `depth` (18..152: ImageNet, 20..110: CIFAR); kwargs override fields."""
  if depth in IMAGENET_DEPTHS:
    defaults = dict(block='basic' if depth < 50 else 'bottleneck', stem='imagenet', shortcut='B')
  elif depth in CIFAR_DEPTHS:
    defaults = dict(widths=(16, 32, 64), stem='cifar', shortcut='A', num_classes=10)
  else:
    raise UserError(f'no ResNet of depth {depth}; known depths: {sorted(STAGE_SIZES)}')
  return ResNet(stage_sizes=STAGE_SIZES[depth], **(defaults | kwargs))


def plain(depth: int, **kwargs: Any) -> ResNet:
  """The plain counterpart of `resnet(depth)`: same layers, no shortcuts."""
  return resnet(depth, residual=False, **kwargs)


def resnet_tiny(**kwargs: Any) -> ResNet:
  """CIFAR layout with 1 block per stage and widths 4/8/16, for tests."""
  defaults = dict(widths=(4, 8, 16), stem='cifar', shortcut='A', num_classes=10)
  return ResNet(stage_sizes=(1, 1, 1), **(defaults | kwargs))
