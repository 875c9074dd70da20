"""Learned upsampling for the segmentation decoders (FCN, U-Net, DeepLab), and input-size checks.

Two ways to grow a feature map by an integer factor, selected by `Upsample.mode`:
- 'transpose': a transposed ("backwards strided", "deconvolution") conv with stride = factor, as
  FCN (Long et al. 2015: kernel 2 * factor, initialised to bilinear interpolation) and U-Net
  (Ronneberger et al. 2015: 2x2, stride 2) use it. When the kernel is not a multiple of the stride,
  output pixels receive unequal numbers of kernel taps and the map shows checkerboard artifacts
  (Odena et al. 2016, "Deconvolution and Checkerboard Artifacts"); kernel 2f / stride f and 2 / 2
  divide evenly, but a learned kernel can still produce them.
- 'bilinear' / 'nearest': resize with `jax.image.resize` (half-pixel centres, as torch's
  `align_corners=False`), then a stride-1 conv: Odena et al.'s "resize-convolution", whose
  every output pixel sees the same number of taps, so no checkerboard by construction.

`learned=False` makes either mode a fixed interpolation without parameters: 'transpose' becomes a
per-channel transposed conv with the constant bilinear kernel (Caffe FCN's Deconvolution layers
with lr_mult 0), the resize modes a plain resize (no conv after it).

Both end exactly at the requested size: the transposed conv's output ((n - 1) * f + k pixels) is
cropped to `target_hw` starting at (k - f) // 2, as the Caffe 'crop' layer does for FCN (with
k = 2f the crop is f / 2 on each side, which puts input pixel i's centre where bilinear resizing
puts it); the resize modes resize to `target_hw` directly.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import Conv, ConvTranspose, conv_kernel_init

UPSAMPLE_MODES = ('transpose', 'bilinear', 'nearest')
Initializer = Callable[..., jax.Array]


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
  """(size, size, C, C) kernel of Caffe FCN's `upsample_filt`, on the channel diagonal.

  The tent 1 - |i - centre| / f with f = ceil(size / 2) and centre (size - 1) / 2; for size = 2f
  a transposed conv of stride f with it interpolates bilinearly (weights per output sum to 1).
  Off-diagonal entries are zero: channel c is upsampled from channel c only.
  """
  factor = (size + 1) // 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  tent = 1 - np.abs(np.arange(size) - center) / factor  # (size,)
  kernel = np.zeros((size, size, channels, channels), np.float32)
  kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(tent, tent)[:, :, None]
  return kernel


def _identity_kernel(size: int, channels: int) -> np.ndarray:
  """(size, size, C, C) Dirac kernel: a 'SAME' conv with it returns its input."""
  kernel = np.zeros((size, size, channels, channels), np.float32)
  tap = (size - 1) // 2  # 'SAME' pads (size - 1) // 2 before: that tap reads the pixel itself
  kernel[tap, tap, np.arange(channels), np.arange(channels)] = 1
  return kernel


def bilinear_transpose(x: jax.Array, factor: int, size: int) -> jax.Array:
  """A stride-`factor` transposed conv of NHWC `x` with `bilinear_kernel(size, C)`, no parameters.

  Each channel separately (C times fewer multiply-adds than the dense (size, size, C, C) kernel,
  whose off-diagonal entries are zero): the input dilated by `factor` and padded by size - 1 on
  each side, convolved with the tent, gives (B, (h - 1) * factor + size, ..., C) as ConvTranspose
  with 'VALID' padding does. The tent is symmetric, so correlation and convolution agree.
  """
  channels = x.shape[-1]
  tent = bilinear_kernel(size, 1)  # (size, size, 1, 1)
  kernel = jnp.asarray(np.tile(tent, (1, 1, 1, channels)), x.dtype)  # (size, size, 1, C)
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=(1, 1),
    padding=((size - 1, size - 1), (size - 1, size - 1)),
    lhs_dilation=(factor, factor),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    feature_group_count=channels,
  )


def resize(x: jax.Array, hw: Sequence[int], method: str = 'bilinear') -> jax.Array:
  """NHWC `x` resized to `hw` (torch's `interpolate(..., align_corners=False)` for upsampling)."""
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), method=method)


class Upsample(nn.Module):
  """Grows an NHWC map by `factor` to `features` channels: transposed conv or resize + conv.

  `kernel_size`: None picks 2 * factor for 'transpose' (FCN's) and 3 for the conv after a resize.
  `bilinear_init=True` needs as many input as output channels (else UserError: a bilinear
  kernel maps channel c to channel c only); it initialises the transposed conv to bilinear
  interpolation (`bilinear_kernel`, Caffe FCN's init; an interpolation only for kernel 2 * factor)
  and the conv after a resize to the identity, so either way the layer starts as a plain
  interpolation. Otherwise kernels start from `kernel_init`. `learned=False`: no parameters, the
  layer is the fixed interpolation itself (bilinear kernel or plain resize), channels unchanged.
  """

  features: int
  factor: int = 2
  mode: str = 'transpose'  # 'transpose' | 'bilinear' | 'nearest'
  kernel_size: int | None = None
  bilinear_init: bool = True
  use_bias: bool = False  # FCN's deconvolutions have none; U-Net's up-convs do
  kernel_init: Initializer = conv_kernel_init
  dtype: Any = jnp.float32
  learned: bool = True  # False: fixed interpolation, no parameters (FCN's frozen deconvolutions)

  @nn.compact
  def __call__(self, x: jax.Array, target_hw: Sequence[int] | None = None) -> jax.Array:
    """`x` (B, h, w, C) -> (B, *target_hw, features); target_hw defaults to (h, w) * factor."""
    self._check(x)
    h, w = x.shape[1:3]
    th, tw = target_hw if target_hw is not None else (h * self.factor, w * self.factor)
    k = self.kernel_size or (2 * self.factor if self.mode == 'transpose' else 3)
    init = self.kernel_init
    if self.bilinear_init and self.learned:
      fixed = bilinear_kernel(k, self.features) if self.mode == 'transpose' else None
      fixed = _identity_kernel(k, self.features) if fixed is None else fixed

      def init(key, shape, dtype=jnp.float32):  # the fixed kernel, whatever the key
        return jnp.asarray(fixed, dtype)

    if self.mode != 'transpose':
      x = resize(jnp.asarray(x, self.dtype), (th, tw), self.mode)  # (B, th, tw, C)
      if not self.learned:
        return x
      conv = Conv(
        self.features,
        (k, k),
        padding='SAME',
        use_bias=self.use_bias,
        kernel_init=init,
        dtype=self.dtype,
        name='conv',
      )
      return conv(x)

    if self.learned:
      y = ConvTranspose(
        self.features,
        (k, k),
        strides=(self.factor, self.factor),
        padding='VALID',
        use_bias=self.use_bias,
        kernel_init=init,
        dtype=self.dtype,
        name='deconv',
      )(x)  # (B, (h - 1) * f + k, (w - 1) * f + k, features)
    else:
      y = bilinear_transpose(jnp.asarray(x, self.dtype), self.factor, k)  # same shape
    offset = max(k - self.factor, 0) // 2
    if y.shape[1] - offset < th or y.shape[2] - offset < tw:
      raise UserError(
        f'Upsample: a {k}x{k} / {self.factor} transposed conv turns {h}x{w} into '
        f'{y.shape[1]}x{y.shape[2]} (crop offset {offset}), too small for {th}x{tw}'
      )
    return y[:, offset : offset + th, offset : offset + tw]

  def _check(self, x: jax.Array) -> None:
    if self.mode not in UPSAMPLE_MODES:
      raise UserError(f'Upsample.mode={self.mode!r}; expected one of {UPSAMPLE_MODES}')
    if self.factor < 1 or (self.kernel_size is not None and self.kernel_size < 1):
      raise UserError(
        f'Upsample needs factor >= 1 and kernel_size >= 1, got {self.factor}, {self.kernel_size}'
      )
    if not self.learned and x.shape[-1] != self.features:
      raise UserError(
        f'Upsample(learned=False) interpolates each channel, so it needs as many input as '
        f'output channels (got {x.shape[-1]} -> {self.features})'
      )
    if self.bilinear_init and x.shape[-1] != self.features:
      raise UserError(
        f'Upsample(bilinear_init=True) maps each channel to itself, so it needs as many input as '
        f'output channels (got {x.shape[-1]} -> {self.features}); set bilinear_init=False'
      )


def nearest_valid_sizes(size: int, is_valid: Callable[[int], bool], limit: int = 4096) -> list[int]:
  """The closest valid size below `size` (if any) and the closest above (up to `limit`)."""
  below = next((s for s in range(size - 1, 0, -1) if is_valid(s)), None)
  above = next((s for s in range(size + 1, max(limit, 2 * size)) if is_valid(s)), None)
  return [s for s in (below, above) if s is not None]


def check_input_size(
  what: str, shape: Sequence[int], is_valid: Callable[[int], bool], rule: str
) -> None:
  """Raises UserError (one line) unless both H and W of the NHWC `shape` pass `is_valid`.

  The message reads "{what} cannot take HxW inputs: {rule}; nearest valid sizes: a, b", with
  the sizes of each offending dimension (height first) when the two differ.
  """
  if len(shape) != 4:
    raise UserError(f'{what} needs NHWC inputs, got shape {tuple(shape)}')
  h, w = shape[1:3]
  bad = [s for s in dict.fromkeys((h, w)) if not is_valid(s)]
  if not bad:
    return
  hints = []
  for s in bad:
    sizes = ', '.join(map(str, nearest_valid_sizes(s, is_valid))) or 'none'
    hints.append(sizes if len(bad) == 1 else f'{sizes} (for {s})')
  raise UserError(
    f'{what} cannot take {h}x{w} inputs: {rule}; nearest valid sizes: ' + '; '.join(hints)
  )
