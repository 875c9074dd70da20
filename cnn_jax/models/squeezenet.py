"""SqueezeNet 1.0 and 1.1 (Iandola et al. 2016), torchvision's layout.

A fire module squeezes to s channels with 1x1 convs, then expands with e 1x1 and e 3x3 convs whose
outputs are concatenated (2e channels): the 3x3s see s inputs instead of 2e, so fire9 (512 -> 64
-> 256 + 256) holds 197,184 weights where one 3x3 conv 512 -> 512 holds 2.4 M. No fully connected
layer: a 1x1 conv to the classes + global average pool classify. 1.0: 1,248,424 parameters,
1.1: 1,235,496 and about 2.4x fewer multiply-adds (3x3 stem with 64 channels, earlier pools).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn import pooling
from cnn_jax.nn.layers import Conv, GlobalAvgPool

# (stem channels, stem kernel, stages); a stage is a tuple of fire modules (squeeze, expand),
# each expand split equally into 1x1 and 3x3 convs. A ceil-mode 3x3 / 2 max pool follows the
# stem and every stage but the last.
CONFIGS: dict[str, tuple[int, int, tuple[tuple[tuple[int, int], ...], ...]]] = {
  # Paper Table 1: conv1 7x7/2 (96), pool1, fire2-4, pool4, fire5-8, pool8, fire9, conv10.
  '1_0': (
    96,
    7,
    (
      ((16, 64), (16, 64), (32, 128)),
      ((32, 128), (48, 192), (48, 192), (64, 256)),
      ((64, 256),),
    ),
  ),
  # SqueezeNet v1.1 (the authors' repo): conv1 3x3/2 (64), pool1, fire2-3, pool3, fire4-5, pool5,
  # fire6-9, conv10.
  '1_1': (
    64,
    3,
    (
      ((16, 64), (16, 64)),
      ((32, 128), (32, 128)),
      ((48, 192), (48, 192), (64, 256), (64, 256)),
    ),
  ),
}

# torchvision: kaiming_uniform_ (gain sqrt(2), fan_in) for every conv but the classifier, which
# gets N(0, 0.01); all biases zero.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform')
classifier_init = nn.initializers.normal(0.01)


def ceil_pool_padding(size: int, window: int, stride: int) -> int:
  """Extra trailing padding that makes a valid pool produce torch's ceil_mode output size.

  torch: out = ceil((size - window) / stride) + 1, minus 1 if the last window would start past
  the input (impossible here, with no leading padding and window >= stride).
  """
  out = -(-(size - window) // stride) + 1
  if (out - 1) * stride >= size:
    out -= 1
  return max(0, (out - 1) * stride + window - size)


class CeilMaxPool(nn.Module):
  """Max pool with torch's ceil_mode=True: partial windows at the bottom / right edges count.

  Implemented as a valid max pool over an input padded at the end with -inf (max_pool's
  padding value). It matters where (size - window) is odd: SqueezeNet 1.0 at 224 pools 54 -> 27
  (floor mode: 26), at 32 pools 13 -> 6 -> 3 -> 1 (floor mode: 6 -> 2 -> 0, an empty map).
  """

  window: int = 3
  strides: int = 2

  def __call__(self, x: jax.Array) -> jax.Array:
    k, s = self.window, self.strides
    pad_h = ceil_pool_padding(x.shape[1], k, s)
    pad_w = ceil_pool_padding(x.shape[2], k, s)
    return pooling.max_pool(x, (k, k), (s, s), padding=((0, pad_h), (0, pad_w)))


class Fire(nn.Module):
  """squeeze 1x1 (s) - ReLU - [expand 1x1 (e), expand 3x3 (e)] - ReLU - concat: 2e channels."""

  squeeze: int
  expand: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, p, name: Conv(
      f, (k, k), padding=p, dtype=self.dtype, kernel_init=conv_init, name=name
    )
    x = nn.relu(conv(self.squeeze, 1, 0, 'squeeze')(x))
    a = nn.relu(conv(self.expand, 1, 0, 'expand1x1')(x))
    b = nn.relu(conv(self.expand, 3, 1, 'expand3x3')(x))
    return jnp.concatenate([a, b], axis=-1)  # (B, H, W, 2e): torch's cat order, 1x1 first


class SqueezeNet(nn.Module):
  """conv1 - ReLU - pool - fire stages separated by pools - dropout - conv10 - ReLU - global pool.

  Pools are 3x3 / 2 with torch's ceil mode. Submodule names follow the paper: 'conv1', 'fire2' ...
  'fire9' (each with torchvision's 'squeeze', 'expand1x1', 'expand3x3'), 'conv10' (torchvision's
  classifier.1). Like torchvision, a ReLU follows conv10, so logits are >= 0.

  `features=True` returns a dict: 'stem' (relu(conv1), stride 2), 'stage1' (the first fire group,
  stride 4), 'stage2' (stride 8), 'stage3' (stride 16), 'pre_logits' (the global mean of stage3,
  (B, 512): an embedding; the classifier itself reads the map) and 'logits'.
  """

  stem_features: int = 96
  stem_kernel: int = 7
  stages: Sequence[Sequence[tuple[int, int]]] = CONFIGS['1_0'][2]  # fire (squeeze, expand)
  dropout_rate: float = 0.5
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # no BatchNorm; kept for the model contract

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check()
    feats = {}
    x = jnp.asarray(x, self.dtype)
    k = self.stem_kernel
    x = Conv(
      self.stem_features,
      (k, k),
      2,
      padding=0,
      dtype=self.dtype,
      kernel_init=conv_init,
      name='conv1',
    )(x)
    x = feats['stem'] = nn.relu(x)  # (B, 109, 109, 96) at 224 for 1.0; (B, 111, 111, 64) for 1.1
    x = CeilMaxPool(name='pool1')(x)  # (B, 54, 54, 96) / (B, 55, 55, 64)

    number = 2  # fire modules are numbered from 2 (conv1 is layer 1)
    for i, stage in enumerate(self.stages):
      if i > 0:
        x = CeilMaxPool(name=f'pool{number - 1}')(x)  # named after the layer it follows
      for squeeze, expand in stage:
        x = Fire(squeeze, expand, dtype=self.dtype, name=f'fire{number}')(x)
        number += 1
      feats[f'stage{i + 1}'] = x  # strides 4, 8, 16

    if features:
      feats['pre_logits'] = jnp.mean(x, axis=(1, 2))  # (B, 512)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    x = Conv(
      self.num_classes, (1, 1), dtype=self.dtype, kernel_init=classifier_init, name='conv10'
    )(x)
    x = GlobalAvgPool(name='avgpool')(nn.relu(x))  # (B, classes)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = feats['logits'] = jnp.asarray(x, jnp.float32)
    return feats if features else x

  def _check(self) -> None:
    if not self.stages or not all(len(s) for s in self.stages):
      raise UserError(
        f'SqueezeNet.stages needs non-empty stages of fire modules, got {self.stages}'
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'SqueezeNet.dropout_rate={self.dropout_rate}; expected a value in [0, 1)')


def squeezenet(version: str = '1_0', **kwargs: Any) -> SqueezeNet:
  """SqueezeNet `version` ('1_0' or '1_1'), torchvision's layout; kwargs override fields."""
  if version not in CONFIGS:
    raise UserError(f'no SqueezeNet version {version!r}; known versions: {sorted(CONFIGS)}')
  stem_features, stem_kernel, stages = CONFIGS[version]
  return SqueezeNet(
    **(dict(stem_features=stem_features, stem_kernel=stem_kernel, stages=stages) | kwargs)
  )


def squeezenet_tiny(**kwargs: Any) -> SqueezeNet:
  """SqueezeNet 1.1's layout with one small fire module per stage, for tests."""
  defaults = dict(
    stem_features=8,
    stem_kernel=3,
    stages=(((4, 8),), ((4, 8),), ((8, 16),)),
    num_classes=10,
  )
  return SqueezeNet(**(defaults | kwargs))
