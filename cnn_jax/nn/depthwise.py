"""Depthwise convolution that is fast on XLA:CPU as well as on GPU/TPU.

XLA:CPU runs a grouped convolution (`feature_group_count=C`) 15-90x slower than PyTorch's
depthwise kernel, and its gradient is slower still. So on CPU the convolution is written as what
it is, kh*kw shifted copies of the input times a per-channel weight, summed ("shift-and-add");
XLA fuses the whole sum into one loop over the output. On 2 EPYC cores, batch 32, 56x56x144, 3x3
(experiments/depthwise_benchmark.py): forward 939 ms grouped, 48 ms shift, 39 ms PyTorch
(channels_last); forward + both gradients 3,680 ms, 124 ms and 89 ms.

How each part is written, and why (all under a custom VJP):
- forward: each tap is the in-bounds window of the input times its weight, zero-padded back to
  the output grid; the pads fuse into the sum, so no padded copy of the input is written.
  Writing fresh memory is what costs on these machines: a padded copy (or the zero-filled
  output of a chunked `lax.map`) cost more than the sum itself (32x64x64x96, stride 2: 20 ms
  chunked, 83 ms with a padded copy, 9 ms this way).
- input gradient: split by stride phase (input rows a::s, columns b::s), each phase a shifted
  sum of dy with only the taps that reach it. Autodiff's form, kh*kw interior-padded copies of dy
  summed, evaluates all 9 taps at every input pixel for stride 2 (2.25 of them non-zero) and
  recomputes dy's producer in each: 129 ms -> 22 ms for MobileNet-v2's block 2 at 128 px.
- kernel gradient: autodiff turns it into kh*kw reductions over (B, H, W), each fed by a
  materialized shifted copy of the whole input (8 copies of 58 MB at 56x56x144): 2-4x slower
  than the forward. Here it is one fused multi-output reduction (no copies) per chunk of a few
  images, run under `lax.scan` so that each chunk stays in cache; summing each tap with XLA's
  (faster, multi-threaded) plain reductions instead was 3-6x slower, as every tap then needs
  its shifted copy (32x32x32x144: 39 ms scan, 121-242 ms per-tap sums).

On GPU/TPU the grouped convolution is the fast one (cuDNN has depthwise kernels), so `impl='auto'`
picks by `jax.default_backend()` at trace time.
"""

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core.errors import UserError

IMPLS = ('auto', 'shift', 'grouped')

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))

# Images per chunk of the kernel gradient: as many as fit this many bytes of input, at least 2.
# Measured on 2 EPYC cores (MobileNet-v2 shapes, batch 32): 2-4 images per chunk were best;
# 1 image per chunk was 1.1-2.5x slower, 8 images at 112x112x96 1.5x slower.
_CHUNK_BYTES = 2 << 20


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
  pair = (v, v) if isinstance(v, int) else tuple(v)
  if len(pair) != 2 or not all(isinstance(i, int) and i >= 1 for i in pair):
    raise UserError(f'depthwise conv {name}={v!r}; expected a positive int or a pair of them')
  return pair


def resolve_padding(
  padding: int | str | Sequence[tuple[int, int]],
  in_hw: tuple[int, int],
  kernel_hw: tuple[int, int],
  strides: tuple[int, int],
  dilation: tuple[int, int],
) -> Pads:
  """Explicit ((top, bottom), (left, right)) padding for an int, 'SAME', 'VALID' or pairs."""
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise UserError(f"depthwise conv padding={padding!r}; expected an int, 'SAME' or 'VALID'")
    dilated = tuple((k - 1) * d + 1 for k, d in zip(kernel_hw, dilation, strict=True))
    pads = lax.padtype_to_pads(in_hw, dilated, strides, padding.upper())
    return tuple(tuple(int(p) for p in pair) for pair in pads)  # type: ignore[return-value]
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  if len(pads) != 2 or any(len(p) != 2 for p in pads):
    raise UserError(f'depthwise conv padding={padding!r}; expected ((top, bottom), (left, right))')
  return pads  # type: ignore[return-value]


def _out_size(size: int, pads: tuple[int, int], k: int, s: int, d: int) -> int:
  return (size + pads[0] + pads[1] - (k - 1) * d - 1) // s + 1


def grouped_depthwise_conv(
  x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads, dilation: tuple[int, int]
) -> jax.Array:
  """The reference formulation: `conv_general_dilated` with one group per channel."""
  return lax.conv_general_dilated(
    x,
    kernel,
    window_strides=strides,
    padding=pads,
    rhs_dilation=dilation,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=x.shape[-1],
  )


def _taps(x: jax.Array, kernel_hw: tuple[int, int], strides, pads: Pads, dilation):
  """Yields (i, j, window): x padded, at tap (i, j), strided to the output grid (B, Ho, Wo, C)."""
  b, h, w, c = x.shape
  (kh, kw), (sh, sw), (dh, dw) = kernel_hw, strides, dilation
  ho = _out_size(h, pads[0], kh, sh, dh)
  wo = _out_size(w, pads[1], kw, sw, dw)
  # Negative padding (crop) is allowed by lax.pad, as by conv_general_dilated.
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  for i in range(kh):
    for j in range(kw):
      start = (0, i * dh, j * dw, 0)
      limit = (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c)
      yield i, j, lax.slice(xp, start, limit, (1, sh, sw, 1))


def _valid_range(n_out: int, n_in: int, offset: int, stride: int) -> tuple[int, int]:
  """Output indices [lo, hi) whose source index o * stride + offset lies in [0, n_in)."""
  lo = max(0, -(offset // stride))  # ceil(-offset / stride)
  hi = min(n_out, (n_in - 1 - offset) // stride + 1)
  return lo, max(lo, hi)


def _shifted_sum(src: jax.Array, terms, strides, out_hw) -> jax.Array:
  """sum_t w_t * src[:, o*sh + oh_t, o'*sw + ow_t, :] over an (out_h, out_w) grid, zero outside.

  `terms`: (w_t (C,), (oh_t, ow_t)). Each term is the valid part of a strided window of `src`
  times w_t, zero-padded back to the output grid; XLA fuses the slices, products, pads and the
  sum into one loop over the output, so no padded copy of `src` is ever written (a padded copy
  cost 2-9x the whole sum at MobileNet-v2 shapes: fresh memory is slow on these machines).
  """
  # XLA fuses src's producer (in MobileNets BatchNorm + ReLU6, or the BatchNorm gradient) into
  # the sum, recomputing it per tap; `optimization_barrier` does not stop that on XLA:CPU, and
  # forcing src into memory (a chunked `lax.map`) was slower: 1.72 s vs 1.52 s per train step.
  b, h, w, c = src.shape
  (sh, sw), (out_h, out_w) = strides, out_hw
  acc = jnp.promote_types(src.dtype, jnp.float32)
  y = None
  for weight, (oh, ow) in terms:
    r0, r1 = _valid_range(out_h, h, oh, sh)
    c0, c1 = _valid_range(out_w, w, ow, sw)
    if r0 == r1 or c0 == c1:
      continue  # this tap only ever sees padding
    window = lax.slice(
      src,
      (0, r0 * sh + oh, c0 * sw + ow, 0),
      (b, (r1 - 1) * sh + oh + 1, (c1 - 1) * sw + ow + 1, c),
      (1, sh, sw, 1),
    )
    term = window.astype(acc) * weight
    term = lax.pad(
      term, jnp.zeros((), acc), ((0, 0, 0), (r0, out_h - r1, 0), (c0, out_w - c1, 0), (0, 0, 0))
    )
    y = term if y is None else y + term
  return jnp.zeros((b, out_h, out_w, c), acc) if y is None else y


def _shift_forward(x: jax.Array, kernel: jax.Array, strides, pads: Pads, dilation) -> jax.Array:
  # Products and sum in float32 (a no-op for float32 inputs): 9-25 terms in bf16 would lose bits.
  k = kernel.astype(jnp.promote_types(x.dtype, jnp.float32))
  (kh, kw), (dh, dw) = kernel.shape[:2], dilation
  out_hw = tuple(
    _out_size(*a) for a in zip(x.shape[1:3], pads, (kh, kw), strides, dilation, strict=True)
  )
  terms = [
    (k[i, j, 0], (i * dh - pads[0][0], j * dw - pads[1][0])) for i in range(kh) for j in range(kw)
  ]
  return _shifted_sum(x, terms, strides, out_hw).astype(x.dtype)


def _images_per_chunk(x: jax.Array) -> int:
  b = x.shape[0]
  target = max(2, _CHUNK_BYTES // (math.prod(x.shape[1:]) * x.dtype.itemsize))
  return max(k for k in range(1, b + 1) if b % k == 0 and k <= target)


def _chunked(a: jax.Array, n: int) -> jax.Array:
  """(B, ...) -> (B / n, n, ...)."""
  return a.reshape(a.shape[0] // n, n, *a.shape[1:])


def _kernel_grad(x: jax.Array, dy: jax.Array, kernel_hw, strides, pads: Pads, dilation):
  """d(loss)/d(kernel) as (kh, kw, 1, C) float32: sum over (B, Ho, Wo) of window(i, j) * dy."""
  c = x.shape[-1]
  taps = kernel_hw[0] * kernel_hw[1]

  def chunk_grad(xc: jax.Array, dyc: jax.Array) -> jax.Array:
    g = dyc.astype(jnp.float32)
    products = tuple(
      t.astype(jnp.float32) * g for _, _, t in _taps(xc, kernel_hw, strides, pads, dilation)
    )
    # One variadic reduce: XLA fuses the slices and products into it (no shifted copies).
    sums = lax.reduce(
      products,
      (jnp.float32(0),) * taps,
      lambda a, b: tuple(ai + bi for ai, bi in zip(a, b, strict=True)),
      (0, 1, 2),
    )
    return jnp.stack(sums)  # (taps, C)

  n = _images_per_chunk(x)
  if n == x.shape[0]:
    total = chunk_grad(x, dy)
  else:

    def step(acc, xd):
      return acc + chunk_grad(*xd), None

    xs, dys = _chunked(x, n), _chunked(dy, n)
    total, _ = lax.scan(step, jnp.zeros((taps, c), jnp.float32), (xs, dys))
  return total.reshape(*kernel_hw, 1, c)


def _phase_taps(size: int, pad: int, k: int, s: int, d: int) -> list:
  """Per stride phase a (input rows a, a+s, a+2s, ...): (a, rows, [(tap, dy offset)]).

  Input row h = m*s + a meets output row o at tap i when o*s + i*d - pad = h, i.e. when
  (a + pad - i*d) is a multiple of s; then o = m + (a + pad - i*d) // s.
  """
  phases = []
  for a in range(s):
    rows = -(-(size - a) // s)  # ceil((size - a) / s)
    taps = [(i, (a + pad - i * d) // s) for i in range(k) if (a + pad - i * d) % s == 0]
    phases.append((a, rows, taps))
  return phases


def _input_grad(dy: jax.Array, kernel: jax.Array, in_hw, strides, pads: Pads, dilation):
  """d(loss)/d(x) (B, H, W, C): per stride phase, a shifted sum of dy with the taps that hit it.

  Autodiff of the forward gives kh*kw (interior-) padded copies of dy summed over the input
  grid: with stride 2, 9 evaluations per input pixel of which 2.25 on average are not padding,
  and XLA fused dy's producer (the BatchNorm backward) into each of the 9. Split by phase, each
  input pixel costs only the taps that reach it: at 32x64x64x96, stride 2, in MobileNet-v2's
  train step, 129 ms -> 22 ms.
  """
  b, c = dy.shape[0], dy.shape[-1]
  k = kernel.astype(jnp.promote_types(dy.dtype, jnp.float32))
  rows = _phase_taps(in_hw[0], pads[0][0], kernel.shape[0], strides[0], dilation[0])
  cols = _phase_taps(in_hw[1], pads[1][0], kernel.shape[1], strides[1], dilation[1])
  fh, fw = rows[0][1], cols[0][1]  # phase 0 has the most rows and columns
  grid = []  # grid[a][b]: input rows a::sh, columns b::sw, padded to (fh, fw)
  for _, mh, row_taps in rows:
    line = []
    for _, mw, col_taps in cols:
      terms = [(k[i, j, 0], (oi, oj)) for i, oi in row_taps for j, oj in col_taps]
      phase = _shifted_sum(dy, terms, (1, 1), (mh, mw))
      line.append(jnp.pad(phase, ((0, 0), (0, fh - mh), (0, fw - mw), (0, 0))))
    grid.append(line)
  if len(grid) == 1 and len(grid[0]) == 1:
    dx = grid[0][0]
  else:
    # (B, fh, sh, fw, sw, C) -> (B, fh*sh, fw*sw, C): phase (a, b) holds rows a::sh, cols b::sw.
    dx = jnp.stack([jnp.stack(line, axis=3) for line in grid], axis=2)
    dx = dx.reshape(b, fh * len(rows), fw * len(cols), c)
  return dx[:, : in_hw[0], : in_hw[1]].astype(dy.dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def shift_depthwise_conv(
  x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads, dilation: tuple[int, int]
) -> jax.Array:
  """Depthwise conv as a sum of kh*kw shifted, strided windows times per-channel weights."""
  return _shift_forward(x, kernel, strides, pads, dilation)


def _shift_fwd(x, kernel, strides, pads, dilation):
  return _shift_forward(x, kernel, strides, pads, dilation), (x, kernel)


def _shift_bwd(strides, pads, dilation, res, dy):
  x, kernel = res
  dx = _input_grad(dy, kernel, x.shape[1:3], strides, pads, dilation)
  dk = _kernel_grad(x, dy, kernel.shape[:2], strides, pads, dilation)
  return dx, dk.astype(kernel.dtype)


shift_depthwise_conv.defvjp(_shift_fwd, _shift_bwd)


def resolve_impl(impl: str) -> str:
  """'shift' or 'grouped': 'auto' is shift-and-add on CPU, the grouped conv elsewhere."""
  if impl not in IMPLS:
    raise UserError(f'depthwise conv impl={impl!r}; expected one of {IMPLS}')
  if impl == 'auto':
    return 'shift' if jax.default_backend() == 'cpu' else 'grouped'
  return impl


def depthwise_conv(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: int | Sequence[int] = 1,
  padding: int | str | Sequence[tuple[int, int]] = 'SAME',
  dilation: int | Sequence[int] = 1,
  impl: str = 'auto',
) -> jax.Array:
  """Depthwise convolution of NHWC `x` with an HWIO kernel of shape (kh, kw, 1, C).

  Same result (to float rounding) as `lax.conv_general_dilated(..., feature_group_count=C)`.
  `padding`: int p (p pixels on every side, torch style), 'SAME', 'VALID' or explicit pairs.
  `impl`: 'auto' | 'shift' | 'grouped' (see the module docstring). The 'shift' form has a custom
  VJP: reverse-mode derivatives (any order) work, forward-mode (`jax.jvp`) does not.
  """
  c = x.shape[-1]
  if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != c:
    raise UserError(
      f'depthwise kernel has shape {kernel.shape}; expected (kh, kw, 1, {c}) for {c} channels'
    )
  strides, dilation = _pair(strides, 'strides'), _pair(dilation, 'dilation')
  pads = resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides, dilation)
  out_hw = tuple(
    _out_size(*a) for a in zip(x.shape[1:3], pads, kernel.shape[:2], strides, dilation, strict=True)
  )
  if min(out_hw) < 1:
    raise UserError(
      f'depthwise conv of a {x.shape[1]}x{x.shape[2]} input with a {kernel.shape[0]}x'
      f'{kernel.shape[1]} kernel (dilation {dilation}, padding {pads}) has no output pixels'
    )
  if resolve_impl(impl) == 'grouped':
    return grouped_depthwise_conv(x, kernel, strides, pads, dilation)
  return shift_depthwise_conv(x, kernel, strides, pads, dilation)
