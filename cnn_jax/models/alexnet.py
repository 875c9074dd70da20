"""AlexNet (Krizhevsky et al. 2012) in torchvision's single-tower layout, and an adaptive avg pool.

torchvision's AlexNet follows "One weird trick" (Krizhevsky 2014): one tower with 64/192/384/256/256
conv channels instead of the paper's two GPU towers of 48+48/128+128/192+192/192+192/128+128, and no
local response normalization. 61,100,840 parameters with 1000 classes, 58.6 M of them in the three
fully connected layers.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import Conv, Flatten, MaxPool, dense_kernel_init


def adaptive_bins(size: int, output_size: int) -> list[tuple[int, int]]:
  """torch's AdaptiveAvgPool bins: [floor(i * size / out), ceil((i + 1) * size / out)) per i."""
  return [(i * size // output_size, -(-(i + 1) * size // output_size)) for i in range(output_size)]


def _averaging_matrix(size: int, output_size: int) -> np.ndarray:
  """(output_size, size) matrix whose row i averages bin i of `adaptive_bins`."""
  m = np.zeros((output_size, size), np.float32)
  for i, (start, end) in enumerate(adaptive_bins(size, output_size)):
    m[i, start:end] = 1.0 / (end - start)
  return m


class AdaptiveAvgPool(nn.Module):
  """Average pooling to a fixed (H_out, W_out) grid, with torch's AdaptiveAvgPool2d bin boundaries.

  Bins may overlap (13 -> 6: widths 3 and 4) and repeat inputs when the input is smaller than the
  output (1 -> 6 copies the one pixel six times), so any input size works. Equal sizes are the
  identity; divisible sizes are a plain reshape + mean; the rest is one averaging matmul per axis.
  """

  output_size: tuple[int, int] = (1, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    oh, ow = self.output_size
    if (h, w) == (oh, ow):
      return x
    if h % oh == 0 and w % ow == 0:
      return x.reshape(b, oh, h // oh, ow, w // ow, c).mean(axis=(2, 4))  # (B, OH, OW, C)
    mh = jnp.asarray(_averaging_matrix(h, oh), x.dtype)
    mw = jnp.asarray(_averaging_matrix(w, ow), x.dtype)
    return jnp.einsum('ph,qw,bhwc->bpqc', mh, mw, x)  # (B, OH, OW, C)


def torch_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """torch's default bias init for Conv2d / Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# AlexNet's smallest input: pool3 needs a 3x3 map, so conv2 >= 7, conv1 >= 15, (H - 7) / 4 >= 14.
MIN_SIZE = 63


class AlexNet(nn.Module):
  """conv11x11/4(64) - pool - conv5x5(192) - pool - conv3x3(384, 256, 256) - pool - adaptive avg
  pool 6x6 - dropout - fc6(4096) - dropout - fc7(4096) - fc8(num_classes); ReLU after each but fc8.

  Pools are 3x3 / stride 2 ("overlapping pooling", paper Section 3.4). Submodules 'conv1'..'conv5',
  'fc6', 'fc7', 'fc8' are torchvision's features.0/3/6/8/10 and classifier.1/4/6. torch flattens
  the 6x6 map in (C, H, W) order and this model in (H, W, C) order, so importing fc6's weight needs
  a permutation of its rows. Init as torchvision (torch's defaults): weights and biases
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  `features=True` returns a dict: 'stage1' (relu(conv1), stride 4), 'pool1' (stride 8), 'stage2'
  (relu(conv2), stride 8), 'pool2' (stride 16), 'stage3' (relu(conv5), stride 16), 'pool3'
  (stride 32), 'pre_logits' (relu(fc7), (B, 4096)), 'logits'. Inputs must be at least 63x63.
  """

  widths: Sequence[int] = (64, 192, 384, 256, 256)  # conv1..conv5
  hidden: int = 4096  # width of fc6 and fc7
  pool_size: int = 6  # the adaptive average pool's output grid
  dropout_rate: float = 0.5
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # no BatchNorm; kept for the model contract

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check(x)
    feats = {}

    def conv(x: jax.Array, i: int, kernel: int, stride: int, pad: int) -> jax.Array:
      return Conv(
        self.widths[i - 1],
        (kernel, kernel),
        stride,
        padding=pad,
        dtype=self.dtype,
        kernel_init=dense_kernel_init,  # torch's default: same formula for conv and linear
        bias_init=torch_bias_init(x.shape[-1] * kernel * kernel),
        name=f'conv{i}',
      )(x)

    def fc(x: jax.Array, features: int, name: str) -> jax.Array:
      return nn.Dense(
        features,
        dtype=self.dtype,
        kernel_init=dense_kernel_init,
        bias_init=torch_bias_init(x.shape[-1]),
        name=name,
      )(x)

    pool = lambda name: MaxPool((3, 3), (2, 2), name=name)
    x = jnp.asarray(x, self.dtype)
    x = feats['stage1'] = nn.relu(conv(x, 1, 11, 4, 2))  # (B, 55, 55, 64) at 224
    x = feats['pool1'] = pool('pool1')(x)  # (B, 27, 27, 64)
    x = feats['stage2'] = nn.relu(conv(x, 2, 5, 1, 2))  # (B, 27, 27, 192)
    x = feats['pool2'] = pool('pool2')(x)  # (B, 13, 13, 192)
    x = nn.relu(conv(x, 3, 3, 1, 1))  # (B, 13, 13, 384)
    x = nn.relu(conv(x, 4, 3, 1, 1))  # (B, 13, 13, 256)
    x = feats['stage3'] = nn.relu(conv(x, 5, 3, 1, 1))  # (B, 13, 13, 256)
    x = feats['pool3'] = pool('pool3')(x)  # (B, 6, 6, 256)

    x = AdaptiveAvgPool((self.pool_size, self.pool_size), name='avgpool')(x)  # (B, 6, 6, 256)
    x = Flatten(name='flatten')(x)  # (B, 9216)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout6')(x)
    x = nn.relu(fc(x, self.hidden, 'fc6'))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout7')(x)
    x = feats['pre_logits'] = nn.relu(fc(x, self.hidden, 'fc7'))
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = feats['logits'] = jnp.asarray(fc(x, self.num_classes, 'fc8'), jnp.float32)
    return feats if features else x

  def _check(self, x: jax.Array) -> None:
    if len(self.widths) != 5:
      raise UserError(f'AlexNet.widths needs 5 conv widths, got {len(self.widths)}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'AlexNet.dropout_rate={self.dropout_rate}; expected a value in [0, 1)')
    if x.ndim != 4 or min(x.shape[1:3]) < MIN_SIZE:
      raise UserError(
        f'AlexNet needs NHWC inputs of at least {MIN_SIZE}x{MIN_SIZE}, got shape {x.shape}'
      )


def alexnet(**kwargs: Any) -> AlexNet:
  """torchvision's AlexNet; kwargs override fields."""
  return AlexNet(**kwargs)


def alexnet_tiny(**kwargs: Any) -> AlexNet:
  """AlexNet's layout with widths 8/16/16/16/16, 32-wide fcs and a 2x2 pool grid, for tests."""
  defaults = dict(widths=(8, 16, 16, 16, 16), hidden=32, pool_size=2, num_classes=10)
  return AlexNet(**(defaults | kwargs))
