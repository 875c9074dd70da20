"""U-Net (Ronneberger, Fischer & Brox 2015), with the paper's valid padding or same padding.

Contracting path: `depth` levels of two 3x3 convs + ReLU, each followed by a 2x2 / 2 max pool,
the width doubling per level from `base_width` (64, 128, 256, 512 and 1024 at the bottom in the
paper). Expansive path: per level a 2x2 / 2 up-convolution halving the channels, concatenation
with the contracting path's features of the same level (copied first, then the upsampled ones),
two 3x3 convs + ReLU; a final 1x1 conv scores the classes.

- padding='valid' is the paper: unpadded convs lose 2 pixels each, so the copied features are
  center-cropped to the upsampled map, and the output is smaller than the input (572 -> 388 at
  depth 4). The paper picks tile sizes so that every 2x2 pool sees an even size; other sizes
  raise UserError naming the nearest valid ones (at depth 4: 16k + 60 with k >= 8, i.e. 188, 204,
  ..., 572). `output_size(n)` gives the output size; the trainer center-crops the labels to it.
- padding='same' pads the convs by 1: output size = input size, which must be a multiple of
  2^depth (every pool halves exactly).
- batch_norm=True (the default; the paper has none) puts a BatchNorm between each conv and its
  ReLU, and drops the convs' biases: from-scratch training on the offline digit scenes converges
  in far fewer steps with it. The paper's net is `unet(padding='valid', batch_norm=False)`.
- upsample='transpose' is the paper's up-convolution (a learned 2x2 / 2 transposed conv with
  bias); 'bilinear' / 'nearest' resize x2 and apply a 3x3 conv (Odena et al. 2016's resize-conv,
  without checkerboard artifacts; `cnn_jax.nn.upsample`).
- Kernels start from N(0, 2 / N), N = k * k * C_in, the paper's Section 3 init.

Submodules: 'enc1' .. 'enc{depth + 1}' (enc{depth + 1} is the bottom), 'pool1' .., 'up{l}' and
'dec{l}' for l = depth .. 1, 'score'. The paper's net (depth 4, base 64, valid, no BN, 1 input
channel, 2 classes) has 31,030,658 parameters (the hand sum is in tests/test_fcn_unet.py).
"""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import BatchNorm, Conv, MaxPool
from cnn_jax.nn.upsample import UPSAMPLE_MODES, Upsample, check_input_size

PADDINGS = ('valid', 'same')
# The paper's init: Gaussian with std sqrt(2 / N), N = incoming nodes of a neuron (He et al.).
he_normal = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def _valid_output_size(size: int, depth: int) -> int | None:
  """The valid-padding U-Net's output size for `size`, or None where it cannot take it."""
  for _ in range(depth):  # two 3x3 convs (-4), then the pool needs an even size
    size -= 4
    if size <= 0 or size % 2:
      return None
    size //= 2
  size -= 4  # the bottom's two convs
  for _ in range(depth):  # up-conv x2, two 3x3 convs
    if size <= 0:
      return None
    size = 2 * size - 4
  return size if size > 0 else None


class ConvBlock(nn.Module):
  """Two 3x3 convs, each followed by BN (optional) and ReLU: 'conv1', 'bn1', 'conv2', 'bn2'."""

  features: int
  padding: str = 'same'
  batch_norm: bool = True
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    conv = partial(
      Conv,
      self.features,
      (3, 3),
      padding=1 if self.padding == 'same' else 0,
      use_bias=not self.batch_norm,  # BN's bias replaces it
      kernel_init=he_normal,
      dtype=self.dtype,
    )
    norm = partial(
      BatchNorm,  # flax's, with a training forward that XLA:CPU runs faster
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    for i in (1, 2):
      x = conv(name=f'conv{i}')(x)
      if self.batch_norm:
        x = norm(name=f'bn{i}')(x)
      x = nn.relu(x)
    return x


class UNet(nn.Module):
  """U-Net (Ronneberger et al. 2015); see the module docstring. `unet()` / `unet_valid()` build it.

  Returns float32 logits (B, n, n, num_classes) with n = `output_size(H)` (= H for 'same').
  """

  depth: int = 4  # number of 2x2 poolings
  base_width: int = 64  # channels of the first level; doubled per level
  padding: str = 'same'  # 'valid' (the paper) | 'same'
  upsample: str = 'transpose'  # 'transpose' (the paper's 2x2 up-conv) | 'bilinear' | 'nearest'
  batch_norm: bool = True
  # The paper's "drop-out layers at the end of the contracting path": here on the bottom's output.
  dropout_rate: float = 0.0
  num_classes: int = 2
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self._check_fields()
    self._check_shape(x.shape)
    block = partial(
      ConvBlock,
      padding=self.padding,
      batch_norm=self.batch_norm,
      dtype=self.dtype,
      norm_axis_name=self.norm_axis_name,
    )
    widths = [self.base_width * 2**level for level in range(self.depth + 1)]

    x = jnp.asarray(x, self.dtype)
    skips = []
    for level in range(1, self.depth + 1):
      x = block(widths[level - 1], name=f'enc{level}')(x, train=train)
      skips.append(x)  # (B, n_l, n_l, widths[l - 1])
      x = MaxPool((2, 2), name=f'pool{level}')(x)  # (B, n_l / 2, n_l / 2, widths[l - 1])
    x = block(widths[-1], name=f'enc{self.depth + 1}')(x, train=train)  # the bottom
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)

    for level in range(self.depth, 0, -1):
      x = Upsample(
        widths[level - 1],
        2,
        mode=self.upsample,
        # The paper's up-conv is 2x2; the resize-conv uses a 3x3 conv (symmetric around the pixel).
        kernel_size=2 if self.upsample == 'transpose' else 3,
        bilinear_init=False,  # channels halve: no per-channel interpolation to start from
        use_bias=True,
        kernel_init=he_normal,
        dtype=self.dtype,
        name=f'up{level}',
      )(x)  # (B, 2m, 2m, widths[l - 1])
      skip = _center_crop(skips[level - 1], x.shape[1:3])
      x = jnp.concatenate([skip, x], axis=-1)  # (B, 2m, 2m, 2 * widths[l - 1])
      x = block(widths[level - 1], name=f'dec{level}')(x, train=train)

    x = Conv(self.num_classes, (1, 1), kernel_init=he_normal, dtype=self.dtype, name='score')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    return jnp.asarray(x, jnp.float32)

  def output_size(self, input_size: int) -> int:
    """The logits' height (width) for an input of `input_size`: 572 -> 388 for the paper's net."""
    self._check_fields()
    self._check_shape((1, input_size, input_size, 1))
    if self.padding == 'same':
      return input_size
    return _valid_output_size(input_size, self.depth)

  def _is_valid(self, size: int) -> bool:
    if self.padding == 'same':
      return size > 0 and size % 2**self.depth == 0
    return _valid_output_size(size, self.depth) is not None

  def _check_shape(self, shape: tuple[int, ...]) -> None:
    if self.padding == 'same':
      rule = f'height and width must be multiples of 2^depth = {2**self.depth}'
    else:
      rule = 'every feature map must have an even size before each pool and stay positive'
    what = f'U-Net ({self.padding} padding, depth {self.depth})'
    check_input_size(what, shape, self._is_valid, rule)

  def _check_fields(self) -> None:
    for field, value, allowed in (
      ('padding', self.padding, PADDINGS),
      ('upsample', self.upsample, UPSAMPLE_MODES),
    ):
      if value not in allowed:
        raise UserError(f'UNet.{field}={value!r}; expected one of {allowed}')
    if self.depth < 1 or self.base_width < 1:
      raise UserError(
        f'UNet needs depth >= 1 and base_width >= 1, got {self.depth}, {self.base_width}'
      )
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'UNet.dropout_rate={self.dropout_rate}; expected a value in [0, 1)')


def _center_crop(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """The central hw window of NHWC `x` (the paper's cropping of the copied features)."""
  top, left = (x.shape[1] - hw[0]) // 2, (x.shape[2] - hw[1]) // 2
  return x[:, top : top + hw[0], left : left + hw[1]]


def unet(**kwargs: Any) -> UNet:
  """U-Net with same padding and BatchNorm, depth 4, base width 64; kwargs override fields."""
  return UNet(**kwargs)


def unet_valid(**kwargs: Any) -> UNet:
  """The paper's U-Net: valid padding, no BatchNorm, depth 4, base width 64, 2 classes."""
  return UNet(**({'padding': 'valid', 'batch_norm': False} | kwargs))


def unet_tiny(**kwargs: Any) -> UNet:
  """Same-padding U-Net of depth 2, widths 4/8/16, with BN and 11 classes, for tests."""
  return UNet(**({'depth': 2, 'base_width': 4, 'num_classes': 11} | kwargs))
