"""Shared layers and initializers.

Pooling and flattening live in tiny modules (not bare `nn.max_pool` calls) so that they show up as
rows in `cnn_jax.summary` tables and have stable names like any other layer.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Padding = str | Sequence[tuple[int, int]]

# torchvision's conv init, `kaiming_normal_(mode='fan_out', nonlinearity='relu')`:
# std = sqrt(2 / fan_out), untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# torch.nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
# the uniform limit is sqrt(3 * scale / fan_in).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


class MaxPool(nn.Module):
  """Max pooling over H and W of an NHWC input; padding counts as -inf (as in torch)."""

  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] | None = None  # None: equal to the window (non-overlapping)
  padding: Padding = 'VALID'

  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.max_pool(x, self.window, self.strides or self.window, self.padding)


class AvgPool(nn.Module):
  """Average pooling over H and W of an NHWC input."""

  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] | None = None  # None: equal to the window (non-overlapping)
  padding: Padding = 'VALID'
  count_include_pad: bool = True  # torch's default

  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.avg_pool(
      x,
      self.window,
      self.strides or self.window,
      self.padding,
      count_include_pad=self.count_include_pad,
    )


class GlobalAvgPool(nn.Module):
  """Mean over H and W: (B, H, W, C) -> (B, C)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))


class Flatten(nn.Module):
  """(B, ...) -> (B, prod(...))."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[0], -1)


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018): rescale channels by a gate computed from their means.

  squeeze = global average pool; excitation = FC(reduced) - activation - FC(C) - gate; output
  = x * gate. SENet uses reduced = C / 16 with ReLU and sigmoid; EfficientNet uses a quarter of
  the block's input channels with SiLU. The FCs are 1x1 convs with bias (the papers' and
  torchvision's parameter layout: (1, 1, C, reduced) kernels plus biases).
  """

  reduced_features: int
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  gate: Callable[[jax.Array], jax.Array] = nn.sigmoid
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = jnp.mean(x, axis=(1, 2), keepdims=True)  # (B, 1, 1, C)
    s = nn.Conv(self.reduced_features, (1, 1), dtype=self.dtype, name='reduce')(s)
    s = self.activation(s)
    s = nn.Conv(x.shape[-1], (1, 1), dtype=self.dtype, name='expand')(s)
    return x * self.gate(s)


class DepthwiseConv(nn.Module):
  """A depthwise convolution: one kh x kw filter per channel (`feature_group_count` = C).

  Parameters as flax's grouped `nn.Conv`: 'kernel' of shape (kh, kw, 1, C), optional 'bias' (C,),
  so weights move freely between this layer and `nn.Conv(C, ..., feature_group_count=C)`.
  `impl`: 'auto' (shift-and-add on CPU, where XLA's grouped conv is 15-90x slower than PyTorch;
  the grouped conv on GPU/TPU), 'shift' or 'grouped'; see `cnn_jax.depthwise`.
  """

  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int | str = 'SAME'  # int p: p pixels on every side (torch style)
  dilation: int = 1
  use_bias: bool = False
  dtype: Any = jnp.float32
  kernel_init: Callable = conv_kernel_init
  impl: str = 'auto'  # 'auto' | 'shift' | 'grouped'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    from cnn_jax.depthwise import depthwise_conv

    c = x.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (*self.kernel_size, 1, c), jnp.float32)
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    y = depthwise_conv(
      x,
      kernel,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
      impl=self.impl,
    )
    if self.use_bias:
      y = y + jnp.asarray(self.param('bias', nn.initializers.zeros, (c,), jnp.float32), self.dtype)
    return y
