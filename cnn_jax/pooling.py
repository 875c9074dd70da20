"""Max pooling with a backward pass that XLA:CPU runs several times faster.

jax differentiates `reduce_window(max)` into XLA's select-and-scatter, which XLA:CPU runs as a
slow generic loop: forward + backward of a 3x3 / 2 pool on 32 x 112 x 112 x 64 took 600 ms
against PyTorch's 153 ms, a 2x2 / 2 pool on 32 x 56 x 56 x 64 112 ms against 14 ms (2-core CPU,
2026-11-26). Here the forward pass is the same `reduce_window`; the backward pass visits the
window's taps in order and sends each output's gradient to the first input equal to the maximum
(what select-and-scatter does, ties included), with strided slices, compares and pads that XLA
fuses into a few loops. On GPU/TPU, `max_pool` is flax's as is.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.conv import explicit_padding


def _forward(x, window, strides, pads):
  init = jnp.array(-jnp.inf, x.dtype)
  return lax.reduce_window(
    x, init, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _forward(x, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  y = _forward(x, window, strides, pads)
  return y, (x, y)


def _max_pool_bwd(window, strides, pads, residuals, g):
  x, y = residuals
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  b, hp, wp, c = xp.shape
  ho, wo = y.shape[1:3]
  (sh, sw) = strides
  dx = jnp.zeros(xp.shape, g.dtype)
  taken = jnp.zeros(y.shape, bool)
  zero = jnp.array(0, g.dtype)
  for i in range(window[0]):
    for j in range(window[1]):
      stop = (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c)
      tap = lax.slice(xp, (0, i, j, 0), stop, (1, sh, sw, 1))
      hit = (tap == y) & ~taken  # the first tap equal to the maximum gets the gradient
      taken = taken | hit
      spread = (
        (0, 0, 0),
        (i, hp - stop[1], sh - 1),
        (j, wp - stop[2], sw - 1),
        (0, 0, 0),
      )
      dx = dx + lax.pad(jnp.where(hit, g, zero), zero, spread)
  (top, _), (left, _) = pads
  return (dx[:, top : top + x.shape[1], left : left + x.shape[2]],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(
  x: jax.Array,
  window: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = 'VALID',
) -> jax.Array:
  """`flax.linen.max_pool` of an NHWC batch (padding counts as -inf), faster to train on CPU."""
  window = tuple(int(w) for w in window)
  strides = tuple(int(s) for s in (strides or window))
  if jax.default_backend() != 'cpu' or x.ndim != 4:
    return nn.max_pool(x, window, strides, padding)
  return _max_pool(x, window, strides, explicit_padding(padding, x.shape[1:3], window, strides))
