"""DenseNets (Huang et al. 2017, "Densely connected convolutional networks"), DenseNet-BC.

torchvision's layout and names, so its weights line up and the counts agree (densenet121
7,978,856; densenet161 28,681,000; densenet169 14,149,480; densenet201 20,013,928):

- stem: 7x7/2 conv (64) - BN - ReLU - 3x3/2 max pool;
- dense blocks: layer j sees the concatenation of the block input and the outputs of layers
  1..j-1 and adds k (growth rate) channels: BN-ReLU-1x1 conv (bn_size * k) - BN-ReLU-3x3 conv (k);
  a block of n layers turns C channels into C + n * k;
- transitions between blocks: BN-ReLU-1x1 conv to floor(C * compression) channels (0.5: the
  "C" of DenseNet-BC) - 2x2/2 average pool;
- head: BN - ReLU - global average pool - FC.
"""

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import AvgPool, BatchNorm, Conv, GlobalAvgPool, MaxPool, dense_kernel_init

ModuleDef = Any

# depth -> (growth rate k, layers per dense block, stem channels); the paper's Table 1.
# depth = 2 * sum(layers) + 5 (the stem conv, 3 transition convs and the FC).
CONFIGS: dict[int, tuple[int, tuple[int, ...], int]] = {
  121: (32, (6, 12, 24, 16), 64),
  161: (48, (6, 12, 36, 24), 96),
  169: (32, (6, 12, 32, 32), 64),
  201: (32, (6, 12, 48, 32), 64),
}

# torchvision's DenseNet init: kaiming_normal_ with its defaults (fan_in, gain sqrt(2)),
# i.e. std = sqrt(2 / fan_in) (unlike ResNet's fan_out); classifier bias 0.
kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def block_channels(
  num_init_features: int, growth_rate: int, block_config: Sequence[int], compression: float = 0.5
) -> list[int]:
  """Channels at the output of each dense block (before its transition)."""
  channels, c = [], num_init_features
  for i, n in enumerate(block_config):
    c += n * growth_rate
    channels.append(c)
    if i < len(block_config) - 1:
      c = math.floor(c * compression)
  return channels


class DenseLayer(nn.Module):
  """BN-ReLU-1x1 conv (bn_size * k) - BN-ReLU-3x3 conv (k); returns only the k new channels."""

  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = nn.relu(self.norm(name='norm1')(x))
    y = self.conv(self.bn_size * self.growth_rate, (1, 1), padding=0, name='conv1')(y)
    y = nn.relu(self.norm(name='norm2')(y))
    y = self.conv(self.growth_rate, (3, 3), padding=1, name='conv2')(y)  # (B, H, W, k)
    if self.drop_rate > 0:
      y = nn.Dropout(self.drop_rate, deterministic=not train, name='dropout')(y)
    return y


class DenseBlock(nn.Module):
  """`num_layers` dense layers ('denselayer1', ...), each fed every preceding feature map."""

  num_layers: int
  growth_rate: int
  bn_size: int
  conv: ModuleDef
  norm: ModuleDef
  drop_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for j in range(self.num_layers):
      y = DenseLayer(
        self.growth_rate,
        self.bn_size,
        conv=self.conv,
        norm=self.norm,
        drop_rate=self.drop_rate,
        name=f'denselayer{j + 1}',
      )(x, train=train)
      x = jnp.concatenate([x, y], axis=-1)  # (B, H, W, C + (j + 1) * k)
    return x


class Transition(nn.Module):
  """BN-ReLU-1x1 conv (compressed channels) - 2x2/2 average pool."""

  features: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(self.norm(name='norm')(x))
    x = self.conv(self.features, (1, 1), padding=0, name='conv')(x)
    return AvgPool((2, 2), name='pool')(x)  # (B, H/2, W/2, features)


class DenseNet(nn.Module):
  """DenseNet-BC; `densenet(depth)` fills in the published variants.

  `__call__` returns float32 logits, or with `features=True` a dict with 'stem' (stride 4),
  'block1'..'block4' (each dense block's output before its transition: strides 4, 8, 16, 32),
  'pre_logits' (after the final BN-ReLU and global pooling) and 'logits'.
  """

  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4  # bottleneck width = bn_size * growth_rate
  compression: float = 0.5  # transition output = floor(compression * input channels)
  drop_rate: float = 0.0  # dropout after each dense layer (torchvision's default: none)
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check_fields()
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=kernel_init)
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    feats = {}

    x = jnp.asarray(x, self.dtype)
    x = conv(self.num_init_features, (7, 7), 2, padding=3, name='conv0')(x)  # (B, H/2, W/2, 64)
    x = nn.relu(norm(name='norm0')(x))
    # (B, H/4, W/4, 64); padding 1 like torch's, which pads with -inf.
    x = MaxPool((3, 3), (2, 2), padding=((1, 1), (1, 1)), name='pool0')(x)
    feats['stem'] = x

    for i, num_layers in enumerate(self.block_config):
      x = DenseBlock(
        num_layers,
        self.growth_rate,
        self.bn_size,
        conv=conv,
        norm=norm,
        drop_rate=self.drop_rate,
        name=f'denseblock{i + 1}',
      )(x, train=train)
      feats[f'block{i + 1}'] = x
      if i < len(self.block_config) - 1:
        out = math.floor(x.shape[-1] * self.compression)
        x = Transition(out, conv=conv, norm=norm, name=f'transition{i + 1}')(x)

    x = nn.relu(norm(name='norm5')(x))
    x = GlobalAvgPool(name='pool')(x)  # (B, C)
    feats['pre_logits'] = x
    x = nn.Dense(
      self.num_classes, dtype=self.dtype, kernel_init=dense_kernel_init, name='classifier'
    )(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(x, jnp.float32)
    feats['logits'] = x
    return feats if features else x

  def _check_fields(self) -> None:
    for field in ('growth_rate', 'num_init_features', 'bn_size'):
      value = getattr(self, field)
      if not (isinstance(value, int) and value > 0):
        raise UserError(f'DenseNet.{field}={value!r}; expected a positive integer')
    config = tuple(self.block_config)
    if not config or not all(isinstance(n, int) and n > 0 for n in config):
      raise UserError(f'DenseNet.block_config={config!r}; expected positive layer counts')
    if not 0 < self.compression <= 1:
      raise UserError(f'DenseNet.compression={self.compression!r}; expected a value in (0, 1]')
    if not 0 <= self.drop_rate < 1:
      raise UserError(f'DenseNet.drop_rate={self.drop_rate!r}; expected a rate in [0, 1)')


def densenet(depth: int, **kwargs: Any) -> DenseNet:
  """The published DenseNet-BC of `depth` (121, 161, 169, 201); kwargs override fields."""
  if depth not in CONFIGS:
    raise UserError(f'no DenseNet of depth {depth}; known depths: {sorted(CONFIGS)}')
  growth_rate, block_config, num_init_features = CONFIGS[depth]
  defaults = dict(
    growth_rate=growth_rate, block_config=block_config, num_init_features=num_init_features
  )
  return DenseNet(**(defaults | kwargs))


def densenet_tiny(**kwargs: Any) -> DenseNet:
  """Growth rate 4, one layer per block, 8 stem channels, 10 classes, for tests."""
  defaults = dict(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8, num_classes=10)
  return DenseNet(**(defaults | kwargs))
