"""Shared layers and initializers.

Pooling and flattening live in tiny modules (not bare `nn.max_pool` calls) so that they show up as
rows in `cnn_jax.summary` tables and have stable names like any other layer.
"""

from collections.abc import Sequence

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
