"""Max and average pooling with backward passes that XLA:CPU runs several times faster.

jax differentiates `reduce_window(max)` into XLA's select-and-scatter, and `reduce_window(add)`
into a padded reduce-window, which XLA:CPU runs as slow generic loops: forward + backward of a
3x3 / 2 max pool on 32 x 112 x 112 x 64 took 600 ms against PyTorch's 153 ms, a 2x2 / 2 max pool
on 32 x 56 x 56 x 64 112 ms against 14 ms (2-core CPU, 2026-11-26). Here the forward passes are
the same `reduce_window`s; the backward passes build the input gradient one stride phase at a
time: input rows (and columns) that are i mod stride apart receive the gradient only from the
window taps at offset i mod stride, each a shifted copy of an output-sized array, so a phase is
a sum of a few pads that XLA fuses into one loop, and the phases are interleaved by one reshape.
Max pooling sends each output's gradient to the first input in the window equal to the maximum
(what select-and-scatter does, ties included); average pooling spreads it evenly over the
window. On GPU/TPU, `max_pool` and `avg_pool` are flax's as they are, except that `max_pool`
keeps the phase-wise backward where XLA_FLAGS asks for deterministic GPU kernels
(cnn_jax/core/determinism.py): XLA has no deterministic select-and-scatter and refuses to compile
one under those flags.
"""

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core import determinism
from cnn_jax.nn.conv import explicit_padding

Pads = tuple[tuple[int, int], tuple[int, int]]


def _reduce(x, init, op, window, strides, pads):
  return lax.reduce_window(
    x, jnp.array(init, x.dtype), op, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))
  )


def _taps(window: Sequence[int]) -> list[tuple[int, int]]:
  return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _scatter_taps(
  part: Callable[[int, int], jax.Array],
  x_shape: tuple[int, ...],
  out_shape: tuple[int, ...],
  window: tuple[int, int],
  strides: tuple[int, int],
  pads: Pads,
) -> jax.Array:
  """The transpose of taking window taps: sum over taps (i, j) of `part(i, j)` (output-shaped)
  placed at the input positions that tap reads, cropped to the unpadded input."""
  b, h, w, c = x_shape
  ho, wo = out_shape[1:3]
  (top, bottom), (left, right) = pads
  sh, sw = strides
  hq, wq = -(-(h + top + bottom) // sh), -(-(w + left + right) // sw)  # rows, columns a phase
  dtype = jnp.result_type(part(0, 0))
  zero = jnp.array(0, dtype)
  rows = []
  for pi in range(sh):
    phases = []
    for pj in range(sw):
      acc = jnp.zeros((b, hq, wq, c), dtype)
      for i in range(pi, window[0], sh):
        for j in range(pj, window[1], sw):
          di, dj = i // sh, j // sw
          spread = ((0, 0, 0), (di, hq - ho - di, 0), (dj, wq - wo - dj, 0), (0, 0, 0))
          acc = acc + lax.pad(part(i, j), zero, spread)
      phases.append(acc)
    rows.append(jnp.stack(phases, axis=3))  # (b, hq, wq, sw, c)
  dx = jnp.stack(rows, axis=2).reshape(b, hq * sh, wq * sw, c)  # phases interleaved
  return dx[:, top : top + h, left : left + w]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
  return _reduce(x, -jnp.inf, lax.max, window, strides, pads)


def _max_pool_fwd(x, window, strides, pads):
  y = _max_pool(x, window, strides, pads)
  return y, (x, y)


def _max_pool_bwd(window, strides, pads, residuals, g):
  x, y = residuals
  xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
  b, c = x.shape[0], x.shape[3]
  ho, wo = y.shape[1:3]
  sh, sw = strides
  zero = jnp.array(0, g.dtype)
  sent = {}
  taken = jnp.zeros(y.shape, bool)
  for i, j in _taps(window):  # in window order: the first tap equal to the maximum wins
    stop = (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c)
    hit = (lax.slice(xp, (0, i, j, 0), stop, (1, sh, sw, 1)) == y) & ~taken
    taken = taken | hit
    sent[i, j] = jnp.where(hit, g, zero)
  return (_scatter_taps(lambda i, j: sent[i, j], x.shape, y.shape, window, strides, pads),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _avg_pool(x, window, strides, pads, count_include_pad):
  total = _reduce(x, 0, lax.add, window, strides, pads)
  return total / _counts(x.shape, window, strides, pads, count_include_pad, x.dtype)


def _counts(shape, window, strides, pads, count_include_pad, dtype):
  """Divisor of each output: the window's size, or the inputs it covers (pads left out)."""
  if count_include_pad or not any(p for pair in pads for p in pair):
    return jnp.array(math.prod(window), dtype)
  ones = jnp.ones((1, *shape[1:3], 1), dtype)
  return _reduce(ones, 0, lax.add, window, strides, pads)


def _avg_pool_fwd(x, window, strides, pads, count_include_pad):
  return _avg_pool(x, window, strides, pads, count_include_pad), x.shape


def _avg_pool_bwd(window, strides, pads, count_include_pad, x_shape, g):
  share = g / _counts(x_shape, window, strides, pads, count_include_pad, g.dtype)
  return (_scatter_taps(lambda i, j: share, x_shape, g.shape, window, strides, pads),)


_avg_pool.defvjp(_avg_pool_fwd, _avg_pool_bwd)


def _fast_path(x: jax.Array) -> bool:
  return jax.default_backend() == 'cpu' and x.ndim == 4


def _phase_wise_max(x: jax.Array) -> bool:
  """The phase-wise max-pool backward: fast on CPU, and deterministic where XLA:GPU is asked
  for deterministic kernels (no select-and-scatter)."""
  return x.ndim == 4 and (jax.default_backend() == 'cpu' or determinism.requested())


def max_pool(
  x: jax.Array,
  window: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = 'VALID',
) -> jax.Array:
  """`flax.linen.max_pool` of an NHWC batch (padding counts as -inf), faster to train on CPU."""
  window = tuple(int(w) for w in window)
  strides = tuple(int(s) for s in (strides or window))
  if not _phase_wise_max(x):
    return nn.max_pool(x, window, strides, padding)
  return _max_pool(x, window, strides, explicit_padding(padding, x.shape[1:3], window, strides))


def avg_pool(
  x: jax.Array,
  window: Sequence[int],
  strides: Sequence[int] | None = None,
  padding: str | Sequence[tuple[int, int]] = 'VALID',
  count_include_pad: bool = True,
) -> jax.Array:
  """`flax.linen.avg_pool` of an NHWC batch, faster to train on CPU."""
  window = tuple(int(w) for w in window)
  strides = tuple(int(s) for s in (strides or window))
  if not _fast_path(x):
    return nn.avg_pool(x, window, strides, padding, count_include_pad=count_include_pad)
  pads = explicit_padding(padding, x.shape[1:3], window, strides)
  return _avg_pool(x, window, strides, pads, bool(count_include_pad))
