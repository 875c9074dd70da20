"""2-D convolution with a weight gradient that XLA:CPU computes several times faster.

XLA:CPU runs a forward NHWC convolution, and the data gradient (itself a forward convolution of
the flipped kernel), through its fast Eigen path. The weight gradient it builds as a convolution
whose window is the whole output feature map, contracted over the batch, and that runs slowly:
for a 3x3, 64 -> 64 conv on 32 x 32 x 32 inputs, 598-760 ms against 45-52 ms for the forward pass
(2-core CPU, idle, 2026-11-26; the same contraction laid out as a canonical NHWC convolution took
710 ms too). It was most of a ResNet-18 (CIFAR) train step on CPU.

`conv_general_dilated` here has lax's signature (flax's `nn.Conv` takes it as its
`conv_general_dilated` field: `cnn_jax.nn.layers.Conv`). For the case the models use on CPU (NHWC
input, HWIO kernel, one group, no input dilation) on feature maps of at least MIN_POSITIONS
output positions, its backward pass keeps XLA's data gradient and computes the weight gradient as
matmuls of the input's shifted, strided slices with the output gradient (`weight_gradient`).
Same result as lax up to float32 rounding (the sums run in another order), same parameters. Any
other case, and any other backend (GPU, TPU: their own convolution libraries are fast), runs
lax.conv_general_dilated as is.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

# Output positions (H_out * W_out) from which the matmul weight gradient is used. Measured, 3x3
# convs at batch 32, against XLA's (2-core CPU, idle): 32 x 32 x 64 -> 64: 101 vs 598-760 ms;
# 28 x 28 x 128 -> 128: 203 vs 868 ms; 16 x 16 x 128 -> 128: 61 vs 59 ms; 8 x 8 x 256 -> 256: 47
# vs 36 ms.
MIN_POSITIONS = 256

_NHWC = lax.ConvDimensionNumbers(
  lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def _forward(x, kernel, strides, padding, dilation, precision, preferred):
  return lax.conv_general_dilated(
    x,
    kernel,
    strides,
    padding,
    rhs_dilation=dilation,
    dimension_numbers=_NHWC,
    precision=precision,
    preferred_element_type=preferred,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(x, kernel, strides, padding, dilation, precision, preferred):
  return _forward(x, kernel, strides, padding, dilation, precision, preferred)


def _conv_fwd(x, kernel, strides, padding, dilation, precision, preferred):
  y = _forward(x, kernel, strides, padding, dilation, precision, preferred)
  return y, (x, kernel)


def weight_gradient(x, g, kernel_shape, strides, padding, dilation):
  """d(loss)/d(kernel) of an NHWC / HWIO convolution as matmuls, one per kernel row.

  x: (B, H, W, C_in) the conv's input; g: (B, H_out, W_out, C_out) the output's cotangent. For
  kernel row i, the strided slices of the padded input that its kw taps see are laid side by side
  as a (B * H_out * W_out, kw * C_in) matrix and contracted with g's (B * H_out * W_out, C_out).
  (One matmul per tap was 10-25% slower, one for the whole kernel about as fast but with a
  kh-times larger copy: 3x3 convs at 32 x 28 x 28 x 128 and 32 x 32 x 32 x 64, 2-core CPU.)
  """
  kh, kw = kernel_shape[:2]
  (sh, sw), (dh, dw) = strides, dilation
  ho, wo = g.shape[1:3]
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  b, c = xp.shape[0], xp.shape[3]
  g2 = g.reshape(-1, g.shape[-1])
  rows = []
  for i in range(kh):
    taps = [
      lax.slice(
        xp,
        (0, i * dh, j * dw, 0),
        (b, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, c),
        (1, sh, sw, 1),
      )
      for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1).reshape(-1, kw * c)
    row = lax.dot_general(patches, g2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    rows.append(row.reshape(kw, c, -1))
  return jnp.stack(rows)


def _conv_bwd(strides, padding, dilation, precision, preferred, residuals, g):
  x, kernel = residuals
  _, data_vjp = jax.vjp(
    lambda x: _forward(x, kernel, strides, padding, dilation, precision, preferred), x
  )
  (dx,) = data_vjp(g)
  dk = weight_gradient(x, g, kernel.shape, strides, padding, dilation)
  return dx, dk.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def explicit_padding(
  padding: str | Sequence[tuple[int, int]],
  spatial: Sequence[int],
  window: Sequence[int],
  strides: Sequence[int],
) -> tuple[tuple[int, int], ...]:
  """(low, high) pairs per spatial dim, for lax's 'SAME' / 'VALID' strings or pairs as given."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(spatial, window, strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
) -> jax.Array:
  """lax.conv_general_dilated, with the faster weight gradient for 2-D NHWC convs on CPU."""
  call = functools.partial(
    lax.conv_general_dilated,
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  if (
    jax.default_backend() != 'cpu'
    or lhs.ndim != 4
    or feature_group_count != 1
    or batch_group_count != 1
    or any(d != 1 for d in (lhs_dilation or (1, 1)))
    or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC
  ):
    return call()
  strides = tuple(int(s) for s in window_strides)
  dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
  window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
  pairs = explicit_padding(padding, lhs.shape[1:3], window, strides)
  if any(lo < 0 or hi < 0 for lo, hi in pairs):
    return call()
  out_hw = [
    (n + lo + hi - (k - 1) * d - 1) // s + 1
    for n, (lo, hi), k, d, s in zip(
      lhs.shape[1:3], pairs, rhs.shape[:2], dilation, strides, strict=True
    )
  ]
  if out_hw[0] * out_hw[1] < MIN_POSITIONS:
    return call()  # XLA's own weight gradient is as fast or faster on small feature maps
  return _conv(lhs, rhs, strides, pairs, dilation, precision, preferred_element_type)
