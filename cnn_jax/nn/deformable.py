"""Deformable convolution v2 (Zhu et al. 2019, "Deformable ConvNets v2"); v1 (Dai et al. 2017).

Each output position p0 samples the input at p0 + pk + dpk for every kernel tap pk, where the
offsets dpk (and, in v2, modulation scalars mk in [0, 1]) are predicted per position by a regular
conv on the same input:

    y(p0) = sum_k w_k * mk * x(p0 + pk + dpk)

x at a fractional location is bilinear in its four neighbours; neighbours outside the image count
as zero (torchvision's `deform_conv2d`). Written in pure JAX as an im2col gather (the sampled
(B, Ho, Wo, kh*kw*C) columns are kh*kw times the input) followed by one matmul with the kernel;
jit-able and differentiable w.r.t. the input, the offsets, the modulation and the kernel.

Channel layout (the NHWC twin of torchvision's NCHW `deform_conv2d` and of mmcv's
`ModulatedDeformConv2dPack`): offsets (B, Ho, Wo, 2*G*kh*kw) ordered (group, tap, (dy, dx)), taps
row-major over (kh, kw); modulation (B, Ho, Wo, G*kh*kw) ordered (group, tap). The offset conv of
`DeformableConv` predicts the offsets in its first 2*G*kh*kw channels and the modulation logits in
the last G*kh*kw.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import Conv, conv_kernel_init


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
  return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def deform_conv2d(
  x: jax.Array,
  offset: jax.Array,
  kernel: jax.Array,
  mask: jax.Array | None = None,
  *,
  strides: int = 1,
  padding: int = 1,
  dilation: int = 1,
) -> jax.Array:
  """Deformable convolution of NHWC `x` with an HWIO `kernel` (no bias).

  Args:
    x: (B, H, W, C) input.
    offset: (B, Ho, Wo, 2*G*kh*kw) sampling offsets in pixels, (dy, dx) per group and tap; G (the
      offset groups) must divide C: channel c uses the offsets of group c // (C / G).
    kernel: (kh, kw, C, C_out), the layout of `nn.Conv`'s 'kernel'.
    mask: (B, Ho, Wo, G*kh*kw) modulation scalars (DCNv2), or None for none (DCNv1).
    strides, padding, dilation: as in a regular conv (torch-style padding: `padding` pixels of
      zeros on every side).

  Returns:
    (B, Ho, Wo, C_out) in the dtype of `x`; Ho = (H + 2p - d(kh - 1) - 1) // s + 1, Wo likewise.
  """
  b, h, w, c = x.shape
  kh, kw, c_in, _ = kernel.shape
  taps = kh * kw
  if c_in != c:
    raise UserError(f'deform_conv2d: kernel expects {c_in} input channels, input has {c}')
  if offset.shape[-1] % (2 * taps):
    raise UserError(
      f'deform_conv2d: offset has {offset.shape[-1]} channels, not a multiple of 2*kh*kw={2 * taps}'
    )
  groups = offset.shape[-1] // (2 * taps)
  if c % groups:
    raise UserError(f'deform_conv2d: {groups} offset groups do not divide {c} input channels')
  ho = _out_size(h, kh, strides, padding, dilation)
  wo = _out_size(w, kw, strides, padding, dilation)
  if offset.shape[:3] != (b, ho, wo):
    raise UserError(f'deform_conv2d: offset shape {offset.shape}; expected ({b}, {ho}, {wo}, ...)')
  if mask is not None and mask.shape != (b, ho, wo, groups * taps):
    raise UserError(
      f'deform_conv2d: mask shape {mask.shape}; expected ({b}, {ho}, {wo}, {groups * taps})'
    )

  # Sampling locations in float32 at least, whatever the compute dtype: bf16 has 8 significant
  # bits, so a coordinate near 200 would be off by up to half a pixel. float64 stays float64.
  coord = jnp.result_type(jnp.float32, x.dtype, offset.dtype)
  offset = jnp.asarray(offset, coord).reshape(b, ho, wo, groups, taps, 2)
  tap_y = jnp.repeat(jnp.arange(kh) * dilation, kw)  # (taps,) row-major over (kh, kw)
  tap_x = jnp.tile(jnp.arange(kw) * dilation, kh)
  base_y = (jnp.arange(ho) * strides - padding)[:, None, None] + tap_y  # (Ho, 1, taps)
  base_x = (jnp.arange(wo) * strides - padding)[None, :, None] + tap_x  # (1, Wo, taps)
  sy = base_y[:, :, None, :] + offset[..., 0]  # (B, Ho, Wo, G, taps)
  sx = base_x[:, :, None, :] + offset[..., 1]
  y0, x0 = jnp.floor(sy), jnp.floor(sx)
  ly, lx = sy - y0, sx - x0  # fractional parts: the bilinear weights' arguments
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

  if mask is not None:
    mask = jnp.asarray(mask, coord).reshape(b, ho, wo, groups, taps)

  # x as rows of C/G channels: row ((n*H + y)*W + x)*G + g holds group g of pixel (y, x) of image n.
  rows = x.reshape(b * h * w * groups, c // groups)
  image = jnp.arange(b).reshape(b, 1, 1, 1, 1)
  group = jnp.arange(groups).reshape(1, 1, 1, groups, 1)
  indices, weights = [], []
  for cy, cx, weight in (  # the four neighbours and their bilinear weights
    (y0, x0, (1 - ly) * (1 - lx)),
    (y0, x0 + 1, (1 - ly) * lx),
    (y0 + 1, x0, ly * (1 - lx)),
    (y0 + 1, x0 + 1, ly * lx),
  ):
    inside = (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
    weight = jnp.where(inside, weight, 0.0)  # neighbours outside the image count as zero
    if mask is not None:
      weight = weight * mask
    weights.append(weight[..., None].astype(x.dtype))
    pixel = jnp.clip(cy, 0, h - 1) * w + jnp.clip(cx, 0, w - 1)
    indices.append((image * (h * w) + pixel) * groups + group)  # (B, Ho, Wo, G, taps)
  # One gather for all four neighbours (a quarter of the gathers to compile and, in the backward
  # pass, scatter), then an explicit sum: reducing the stacked axis with jnp.sum instead made
  # XLA:CPU crash at process exit on jax 0.10.2.
  vals = rows[jnp.stack(indices)]  # (4, B, Ho, Wo, G, taps, C/G)
  cols = vals[0] * weights[0] + vals[1] * weights[1] + vals[2] * weights[2] + vals[3] * weights[3]
  # Columns ordered (tap, channel) to match kernel.reshape(kh*kw*C, C_out).
  cols = cols.transpose(0, 1, 2, 4, 3, 5).reshape(b, ho, wo, taps * c)
  return cols @ kernel.reshape(taps * c, -1).astype(x.dtype)


class DeformableConv(nn.Module):
  """Modulated deformable conv (DCNv2); `modulation=False` gives DCNv1 (offsets only).

  Parameters: 'kernel' (kh, kw, C, features) exactly as `nn.Conv`'s (so a pretrained regular conv
  loads into it), optional 'bias', and the submodule 'offset': a regular conv with the same
  kernel size, stride, padding and dilation, with bias, predicting 2*G*kh*kw offsets and (with
  modulation) G*kh*kw modulation logits, squashed by a sigmoid. The offset conv starts at zero as
  in the paper, so a fresh layer samples the regular grid: it equals a regular conv with the same
  kernel, times sigmoid(0) = 0.5 with modulation (DCNv2's own starting point), times 1 without.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: int = 1
  padding: int = 1  # pixels of zeros on every side (torch style)
  dilation: int = 1
  use_bias: bool = False
  offset_groups: int = 1  # G: channels split into G groups, each with its own offsets
  modulation: bool = True  # DCNv2's per-tap modulation scalars; False: DCNv1
  dtype: Any = jnp.float32
  kernel_init: Callable = conv_kernel_init

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if self.offset_groups < 1 or c % self.offset_groups:
      raise UserError(
        f'DeformableConv.offset_groups={self.offset_groups} must divide the {c} input channels'
      )
    kh, kw = self.kernel_size
    taps = kh * kw * self.offset_groups
    kernel = self.param('kernel', self.kernel_init, (kh, kw, c, self.features), jnp.float32)
    x = jnp.asarray(x, self.dtype)
    pred = Conv(
      (3 if self.modulation else 2) * taps,
      self.kernel_size,
      self.strides,
      padding=self.padding,
      kernel_dilation=self.dilation,
      use_bias=True,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.zeros,
      dtype=self.dtype,
      name='offset',
    )(x)  # (B, Ho, Wo, 2*taps [+ taps])
    offset = pred[..., : 2 * taps]
    mask = nn.sigmoid(pred[..., 2 * taps :]) if self.modulation else None
    y = deform_conv2d(
      x,
      offset,
      jnp.asarray(kernel, self.dtype),
      mask,
      strides=self.strides,
      padding=self.padding,
      dilation=self.dilation,
    )
    if self.use_bias:
      bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
      y = y + jnp.asarray(bias, self.dtype)
    return y
