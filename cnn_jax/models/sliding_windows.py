"""The convolutional implementation of sliding windows: FC layers run as convolutions.

Course notes 004 (object detection, "Sliding windows detection" and "Convolutional Implementation
of Sliding Windows : FC layer -> Conv layer"; Sermanet et al. 2014, OverFeat). Sliding-window
detection crops a window at every position (at a stride) and runs a ConvNet classifier on each
crop: slow, because the crops overlap and their computations are repeated. The notes' fix: an FC
layer that sees a 5 x 5 x 16 activation is a 5 x 5 conv with 400 filters ("1 x 1 x 400 volume
instead of a set of 400 nodes; each of the 400 nodes has a 5 x 5 x 16 filter"), the FC layers
after it are 1 x 1 convs, and the whole network then runs once over a larger image. On a
16 x 16 x 3 test image the output is a 2 x 2 x 4 volume whose top-right 1 x 1 x 4 cell is the
score of the top-right window, "running the network at stride 2 = max pooling 2".

The classifier is the lecture's (the notes' text keeps its numbers, the figure with the rest is
not in the notes): a 14 x 14 x 3 window -> 5 x 5 conv, 16 filters (10 x 10 x 16) -> 2 x 2 max pool
(the notes' 5 x 5 x 16) -> FC 400 -> FC 400 -> softmax over 4 classes (the notes' 2 x 2 x 4 output
at 16 x 16); the activations are not named: ReLU after the conv and each hidden FC
(`WindowClassifier`). The same parameters run it in either form: `sliding=False` is the FC form
(input exactly the window), `sliding=True` the convolutional twin (each dense kernel, in
`nn.Dense`'s (h * w * C, F) layout, reshaped to an (h, w, C, F) conv kernel: no second set of
weights). Over an H x W image the twin gives a ((H - 14) / 2 + 1) x ((W - 14) / 2 + 1) grid of
scores: 2 x 2 at 16 x 16, 8 x 8 at 28 x 28, each equal to the FC form on its window up to float32
rounding (at most 1.2e-6 apart with random weights, on the 2-core CPU); `sliding_window_scores`
is that explicit loop, the reference.

Multiply-adds (exact arithmetic, not a timing): one window costs 120,000 (conv) + 160,000 + 160,000
+ 1,600 (FCs) = 441,600, so the loop over the 64 windows of a 28 x 28 image costs 28.3 M; the
convolutional form 21.3 M, its 5 x 5 conv computed once over the 24 x 24 map (0.69 M instead of
64 x 0.12 M = 7.7 M). The FC layers, not shared, dominate this small network.

`dense_as_conv` does the conversion for any dense layer that follows a flatten (e.g. LeNet-5's
fc3 over its 5 x 5 x 16 pool2 output; tests/test_sliding_windows.py slides it at stride 4).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.nn import conv as conv_lib
from cnn_jax.nn.layers import Conv, MaxPool

Pair = tuple[int, int]


def _pair(value: int | Pair) -> Pair:
  return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def output_grid(input_hw: int | Pair, window: int | Pair, stride: int | Pair) -> Pair:
  """(n_h, n_w) windows of size `window` at `stride` in an `input_hw` image: (H - h) / s + 1.

  Raises UserError when the image is smaller than the window or (H - h), (W - w) are not
  multiples of the stride (the convolutional form would then silently drop the last rows or
  columns: its pooling floors).
  """
  (height, width), (wh, ww), (sh, sw) = _pair(input_hw), _pair(window), _pair(stride)
  if sh < 1 or sw < 1:
    raise UserError(f'sliding-window stride {sh}x{sw} must be at least 1x1: give a positive stride')
  if height < wh or width < ww:
    raise UserError(
      f'input {height}x{width} is smaller than the {wh}x{ww} window: '
      f'give an image of at least {wh}x{ww} pixels'
    )
  if (height - wh) % sh or (width - ww) % sw:
    fit_h = wh + (height - wh) // sh * sh
    fit_w = ww + (width - ww) // sw * sw
    raise UserError(
      f'input {height}x{width} does not tile the {wh}x{ww} window at stride {sh}x{sw}: '
      f'(H - {wh}) must be a multiple of {sh} and (W - {ww}) of {sw}; crop it to {fit_h}x{fit_w}'
    )
  return (height - wh) // sh + 1, (width - ww) // sw + 1


def window_origins(input_hw: int | Pair, window: int | Pair, stride: int | Pair) -> np.ndarray:
  """(n_h, n_w, 2) int32 top-left (row, column) in pixels of the window behind each score cell.

  Score cell (i, j) covers rows [i * s_h, i * s_h + h) and columns [j * s_w, j * s_w + w).
  """
  n_h, n_w = output_grid(input_hw, window, stride)
  sh, sw = _pair(stride)
  rows, cols = np.meshgrid(np.arange(n_h) * sh, np.arange(n_w) * sw, indexing='ij')
  return np.stack([rows, cols], -1).astype(np.int32)


def dense_kernel_as_conv(kernel: jax.Array, window: int | Pair) -> jax.Array:
  """A dense kernel (h * w * C, F) over a flattened (h, w, C) input -> the (h, w, C, F) conv kernel.

  Row-major flattening of NHWC (`x.reshape(B, -1)`, `layers.Flatten`): row (i * w + j) * C + c
  of the dense kernel multiplies x[i, j, c], which is tap (i, j), input channel c of the conv.
  A reshape, not a copy of trained weights.
  """
  wh, ww = _pair(window)
  rows, features = kernel.shape
  if rows % (wh * ww):
    raise UserError(
      f'a dense kernel with {rows} input rows cannot read a {wh}x{ww} window: its rows must be '
      f'{wh} * {ww} * channels; give the spatial size of the activation it was flattened from'
    )
  return kernel.reshape(wh, ww, rows // (wh * ww), features)


def dense_as_conv(
  x: jax.Array, kernel: jax.Array, bias: jax.Array | None, window: int | Pair
) -> jax.Array:
  """A dense layer trained on flattened (h, w, C) inputs, run as a VALID h x w conv over x.

  Args:
    x: (B, H, W, C) activation, H >= h, W >= w.
    kernel: (h * w * C, F) dense kernel (`nn.Dense`'s 'kernel').
    bias: (F,) or None.
    window: (h, w), the spatial size of the activation the dense layer was trained to flatten.

  Returns:
    (B, H - h + 1, W - w + 1, F): cell (i, j) is the dense layer applied to
    x[:, i:i + h, j:j + w, :].reshape(B, -1).
  """
  wh, ww = _pair(window)
  if x.ndim != 4 or x.shape[1] < wh or x.shape[2] < ww:
    raise UserError(
      f'dense_as_conv needs a (B, H, W, C) input of at least {wh}x{ww}, got shape {x.shape}: '
      'give the NHWC activation before the flatten'
    )
  conv_kernel = dense_kernel_as_conv(kernel, (wh, ww))
  if conv_kernel.shape[2] != x.shape[3]:
    raise UserError(
      f'the dense kernel reads {conv_kernel.shape[2]} channels per position, the input has '
      f'{x.shape[3]}: give the activation the dense layer was trained on'
    )
  y = conv_lib.conv_general_dilated(
    x,
    conv_kernel.astype(x.dtype),
    (1, 1),
    'VALID',
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  return y if bias is None else y + bias.astype(y.dtype)


class WindowDense(nn.Module):
  """A dense layer over a flattened h x w x C window, runnable as an h x w conv.

  Parameters as `nn.Dense` after a flatten: 'kernel' (h * w * C, features), 'bias' (features,).
  FC form (`sliding=False`): x is (B, h, w, C) or, for a 1 x 1 window, (B, C); returns (B, F).
  Convolutional form: x is (B, H, W, C); returns (B, H - h + 1, W - w + 1, F).
  """

  features: int
  window: Pair = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, sliding: bool = False) -> jax.Array:
    wh, ww = self.window
    kernel = self.param(
      'kernel', nn.initializers.lecun_normal(), (wh * ww * x.shape[-1], self.features)
    )
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    x = jnp.asarray(x, self.dtype)
    if sliding:
      return dense_as_conv(x, kernel, bias, self.window)
    if x.ndim == 4 and x.shape[1:3] != (wh, ww):
      raise UserError(
        f'the FC form of {self.name} takes a {wh}x{ww} activation, got {x.shape[1]}x{x.shape[2]}: '
        'call it with sliding=True on a larger one'
      )
    x = x.reshape(x.shape[0], -1)  # (B, h * w * C)
    return jnp.dot(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)


class WindowClassifier(nn.Module):
  """The notes' window classifier (004): conv5x5(16) - pool 2 - FC 400 - FC 400 - FC 4 (softmax).

  For a 14 x 14 x 3 window: 1,216 / 160,400 / 160,400 / 1,604 parameters in conv1 / fc1 / fc2 /
  logits (323,620), the same in both forms (the notes' twin: 5 x 5 conv 400, 1 x 1 conv 400, 1 x 1
  conv 4). `__call__(x, sliding=False)` takes exactly the window, (B, 14, 14, 3), and returns
  (B, 4) logits; `sliding=True` takes any image that tiles the window at stride `window_stride`
  (`output_grid`) and returns (B, n_h, n_w, 4) logits, cell (i, j) those of the window at rows
  2i..2i+13, columns 2j..2j+13. Softmax is left to the loss / caller (model contract: logits).
  """

  num_classes: int = 4
  window_size: int = 14
  conv_features: int = 16
  conv_kernel: int = 5
  pool: int = 2
  hidden: tuple[int, ...] = (400, 400)
  dtype: Any = jnp.float32

  @property
  def window_stride(self) -> int:
    """Pixels between neighbouring windows: the product of the strides, here the pool's."""
    return self.pool

  @property
  def fc_window(self) -> int:
    """Side of the activation the first FC layer flattens: (14 - 5 + 1) / 2 = 5."""
    conv_out = self.window_size - self.conv_kernel + 1
    if conv_out < self.pool or conv_out % self.pool:
      raise UserError(
        f'WindowClassifier window_size={self.window_size} gives a {conv_out}x{conv_out} conv '
        f'output, which {self.pool}x{self.pool} pooling does not tile: make window_size - '
        f'conv_kernel + 1 a positive multiple of pool (e.g. window_size=14, conv_kernel=5, pool=2)'
      )
    return conv_out // self.pool

  def grid(self, input_hw: int | Pair) -> Pair:
    """(n_h, n_w) score cells of the convolutional form over an `input_hw` image."""
    return output_grid(input_hw, self.window_size, self.window_stride)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, sliding: bool = False) -> jax.Array:
    del train  # no BatchNorm or dropout
    fc_window = self.fc_window
    if x.ndim != 4:
      raise UserError(f'WindowClassifier takes (B, H, W, C) images, got shape {x.shape}')
    if sliding:
      self.grid(x.shape[1:3])
    elif x.shape[1:3] != (self.window_size, self.window_size):
      raise UserError(
        f'the FC form of WindowClassifier takes exactly {self.window_size}x{self.window_size} '
        f'windows, got {x.shape[1]}x{x.shape[2]}: call it with sliding=True to score every '
        'window of a larger image'
      )
    k = self.conv_kernel
    x = jnp.asarray(x, self.dtype)
    x = Conv(self.conv_features, (k, k), padding='VALID', dtype=self.dtype, name='conv1')(x)
    x = nn.relu(x)  # (B, 10, 10, 16) for a 14 x 14 window
    x = MaxPool((self.pool, self.pool), name='pool1')(x)  # (B, 5, 5, 16)
    window = (fc_window, fc_window)
    for i, features in enumerate(self.hidden):
      # FC form: (B, 400); sliding: (B, n_h, n_w, 400), the first FC a 5 x 5 conv, the rest 1 x 1.
      x = WindowDense(features, window, dtype=self.dtype, name=f'fc{i + 1}')(x, sliding=sliding)
      x = nn.relu(x)
      window = (1, 1)
    x = WindowDense(self.num_classes, window, dtype=self.dtype, name='logits')(x, sliding=sliding)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    return jnp.asarray(x, jnp.float32)


def sliding_window_scores(
  classify: Callable[[jax.Array], jax.Array],
  images: jax.Array | np.ndarray,
  window: int | Pair,
  stride: int | Pair,
) -> jax.Array:
  """The explicit loop: crop every window at `stride` and run `classify` on each (the reference).

  Args:
    classify: (B, h, w, C) crops -> (B, K) scores, e.g. a jitted
      `partial(WindowClassifier().apply, variables)`.
    images: (B, H, W, C), tiling the window at the stride (`output_grid`).
    window: (h, w) or h.
    stride: (s_h, s_w) or s.

  Returns:
    (B, n_h, n_w, K): cell (i, j) is classify(images[:, i s_h : i s_h + h, j s_w : j s_w + w]).
  """
  n_h, n_w = output_grid(images.shape[1:3], window, stride)
  (wh, ww), (sh, sw) = _pair(window), _pair(stride)
  rows = []
  for i in range(n_h):
    row = []
    for j in range(n_w):
      crop = images[:, i * sh : i * sh + wh, j * sw : j * sw + ww, :]
      row.append(classify(crop))  # (B, K)
    rows.append(jnp.stack(row, axis=1))  # (B, n_w, K)
  return jnp.stack(rows, axis=1)  # (B, n_h, n_w, K)
