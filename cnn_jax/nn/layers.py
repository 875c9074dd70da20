"""Shared layers and initializers.

Pooling and flattening live in tiny modules (not bare `nn.max_pool` calls) so that they show up as
rows in `cnn_jax.models.summary` tables and have stable names like any other layer.
"""

import contextlib
import contextvars
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core.errors import UserError
from cnn_jax.nn import conv as conv_lib
from cnn_jax.nn import pooling

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
    return pooling.max_pool(x, self.window, self.strides or self.window, self.padding)


class AvgPool(nn.Module):
  """Average pooling over H and W of an NHWC input."""

  window: tuple[int, int] = (2, 2)
  strides: tuple[int, int] | None = None  # None: equal to the window (non-overlapping)
  padding: Padding = 'VALID'
  count_include_pad: bool = True  # torch's default

  def __call__(self, x: jax.Array) -> jax.Array:
    return pooling.avg_pool(
      x, self.window, self.strides or self.window, self.padding, self.count_include_pad
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
    s = Conv(self.reduced_features, (1, 1), dtype=self.dtype, name='reduce')(s)
    s = self.activation(s)
    s = Conv(x.shape[-1], (1, 1), dtype=self.dtype, name='expand')(s)
    return x * self.gate(s)


POINTWISE_IMPLS = ('auto', 'dot', 'conv')


def resolve_pointwise_impl(impl: str) -> str:
  """'dot' or 'conv': 'auto' is the matmul on CPU, XLA's convolution elsewhere."""
  if impl not in POINTWISE_IMPLS:
    raise UserError(f'pointwise conv impl={impl!r}; expected one of {POINTWISE_IMPLS}')
  if impl == 'auto':
    return 'dot' if jax.default_backend() == 'cpu' else 'conv'
  return impl


class Conv(nn.Conv):
  """`nn.Conv` whose weight gradient runs several times faster on XLA:CPU (`cnn_jax.nn.conv`).

  The same module in every other respect: same fields, parameters, auto-names ('Conv_0') and
  results up to float32 rounding; on GPU/TPU exactly `nn.Conv`. The models build their
  convolutions with it.
  """

  conv_general_dilated: Any = conv_lib.conv_general_dilated


class ConvTranspose(nn.ConvTranspose):
  """`nn.ConvTranspose` whose non-overlapping case (kernel = stride, 'VALID') runs as one matmul.

  Each input pixel then paints its own k x k block of the output: y = (x @ kernel) laid out
  block by block, forward and backward plain matmuls and reshapes. XLA:CPU runs the transposed
  convolution as a convolution of the zero-dilated input, on a slow path: forward + backward of
  U-Net's 2x2 / 2 up-convolution (32 x 28 x 28 x 128 -> 64) took 1,108 ms against PyTorch's 82 ms
  (2-core CPU, 2026-11-26). Same parameters ('kernel' (k, k, C_in, C_out), 'bias') and outputs
  as `nn.ConvTranspose` (whose transposed convolution flips the kernel: so does this); any other
  case, and GPU/TPU, is `nn.ConvTranspose` as is.
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = tuple(self.kernel_size)
    strides = tuple(self.strides or (1,) * len(kernel_size))
    if (
      jax.default_backend() != 'cpu'
      or inputs.ndim != 4
      or kernel_size != strides
      or self.padding != 'VALID'
      or self.kernel_dilation not in (None, 1, (1, 1))
      or self.transpose_kernel
    ):
      return super().__call__(inputs)
    c_in, (kh, kw) = inputs.shape[-1], kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, c_in, self.features), self.param_dtype)
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    b, h, w, _ = x.shape
    flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(c_in, -1)  # (C_in, kh*kw*C_out)
    y = lax.dot_general(x.reshape(-1, c_in), flipped, (((1,), (0,)), ((), ())))
    y = y.reshape(b, h, w, kh, kw, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(b, h * kh, w * kw, self.features)
    return y if bias is None else y + bias


class PointwiseConv(Conv):
  """`nn.Conv` whose 1x1, stride-1 case runs as one matmul of the (B*H*W, C_in) pixel matrix.

  Same parameters as `nn.Conv` ('kernel' (1, 1, C_in, C_out), optional 'bias'), so checkpoints
  and weight import do not see the difference. XLA:CPU runs a 1x1 `conv_general_dilated` and its
  gradients 2-3.5x slower than the same contraction written as a dot (MobileNet-v2 shapes, batch
  32, 2 cores); on GPU/TPU the convolution is lowered to the same matmul, so `impl='auto'` keeps
  it there. Any other kernel size, stride, dilation, padding or grouping runs `nn.Conv` as is.
  """

  impl: str = 'auto'  # 'auto' | 'dot' | 'conv'

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if resolve_pointwise_impl(self.impl) == 'conv' or not self._is_pointwise(inputs):
      return super().__call__(inputs)
    c_in = inputs.shape[-1]
    kernel = self.param('kernel', self.kernel_init, (1, 1, c_in, self.features), self.param_dtype)
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    y = lax.dot_general(
      x.reshape(-1, c_in),  # (B*H*W, C_in): a free reshape of NHWC
      kernel.reshape(c_in, self.features),
      (((1,), (0,)), ((), ())),
      precision=self.precision,
    )
    if bias is not None:
      y = y + bias
    return y.reshape(*inputs.shape[:-1], self.features)

  def _is_pointwise(self, inputs: jax.Array) -> bool:
    spatial = inputs.ndim - 2
    ks = (self.kernel_size,) * spatial if isinstance(self.kernel_size, int) else self.kernel_size
    ones = (None, 1, (1,) * spatial, [1] * spatial)
    pad = self.padding
    zero_pad = pad in ('SAME', 'VALID', 0) or (
      not isinstance(pad, str | int) and all(tuple(p) in ((0, 0), (0,)) for p in pad)
    )
    return (
      inputs.ndim >= 3
      and tuple(ks) == (1,) * spatial
      and self.strides in ones
      and self.input_dilation in ones
      and self.kernel_dilation in ones
      and self.feature_group_count == 1
      and self.shared_weights
      and self.mask is None
      and zero_pad
    )


# BatchNorm layers whose names match this pattern normalise with their running statistics even
# in training, and leave them unchanged (frozen_norms; config.freeze).
_FROZEN_NORMS: contextvars.ContextVar[re.Pattern | None] = contextvars.ContextVar(
  'frozen_norms', default=None
)


@contextlib.contextmanager
def frozen_norms(pattern: re.Pattern | None) -> Iterator[None]:
  """Within this block, `BatchNorm` layers (this module's) whose statistics' names ('path/mean',
  e.g. 'stage1_block1/bn1/mean') match `pattern` run as in evaluation, training or not: a frozen
  layer of a fine-tuned net (config.freeze) computes what it computed in the source model."""
  token = _FROZEN_NORMS.set(pattern)
  try:
    yield
  finally:
    _FROZEN_NORMS.reset(token)


class BatchNorm(nn.BatchNorm):
  """`nn.BatchNorm` with a training-mode forward that XLA:CPU runs with fewer passes.

  Same parameters, statistics, defaults and results (to float rounding) as flax's. In training
  flax computes `(x - mean) * (rsqrt(var + eps) * scale) + bias`; autodiff then keeps `x - mean`
  for the backward, a full-size array written in the forward and read in the backward (XLA's
  reductions cannot take the broadcast subtraction as an input). Here the batch statistics are
  the same one-pass moments (flax's `use_fast_variance`), and the output is the affine map
  `x * a + (bias - mean * a)` with `a = scale * rsqrt(var + eps)`: its gradient needs only sums
  of `dy` and `dy * x`, which fuse into the reductions. One BN + ReLU6 layer at
  (32, 64, 64, 96), forward + backward: 154 ms with flax's form, 117 ms with this one (2 cores).
  Evaluation, masks, axis groups, other axes and the two-pass variance run flax's code.
  Inside `frozen_norms(pattern)`, a layer whose name matches runs as in evaluation.
  """

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    use_running_average: bool | None = None,
    *,
    mask: jax.Array | None = None,
  ) -> jax.Array:
    running = nn.merge_param('use_running_average', self.use_running_average, use_running_average)
    frozen = _FROZEN_NORMS.get()
    if (
      not running
      and frozen is not None
      and not self.is_initializing()
      and frozen.search('/'.join(self.path) + '/mean')
    ):
      return self._with_running_statistics(x)
    fast = (
      not running
      and mask is None
      and self.axis in (-1, x.ndim - 1)
      and self.axis_index_groups is None
      and self.use_fast_variance
      and self.force_float32_reductions
    )
    if not fast:
      return super().__call__(x, use_running_average, mask=mask)
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), (c,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (c,))
    scale = self.param('scale', self.scale_init, (c,), self.param_dtype) if self.use_scale else None
    bias = self.param('bias', self.bias_init, (c,), self.param_dtype) if self.use_bias else None

    stat_dtype = jnp.promote_types(self.dtype or x.dtype, jnp.float32)
    xs = x.astype(stat_dtype)
    axes = tuple(range(x.ndim - 1))
    mean, mean_sq = jnp.mean(xs, axes), jnp.mean(jnp.square(xs), axes)
    if self.axis_name is not None and not self.is_initializing():
      # One collective for both moments, as flax does.
      mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), self.axis_name)
    var = jnp.maximum(0.0, mean_sq - jnp.square(mean))  # rounding can make it negative
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    a = lax.rsqrt(var + self.epsilon)
    if scale is not None:
      a = a * scale
    b = -mean * a if bias is None else bias - mean * a
    y = xs * a + b
    out_dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
    return y.astype(out_dtype)

  def _with_running_statistics(self, x: jax.Array) -> jax.Array:
    """Evaluation's normalisation (running mean and variance, neither updated), channels last."""
    if self.axis not in (-1, x.ndim - 1):
      raise UserError(
        f'BatchNorm {"/".join(self.path)} normalises axis {self.axis}: config.freeze can hold '
        'only channels-last BatchNorm layers; leave it out of config.freeze'
      )
    c = x.shape[-1]
    mean = self.get_variable('batch_stats', 'mean')
    var = self.get_variable('batch_stats', 'var')
    scale = self.param('scale', self.scale_init, (c,), self.param_dtype) if self.use_scale else None
    bias = self.param('bias', self.bias_init, (c,), self.param_dtype) if self.use_bias else None
    a = lax.rsqrt(var + self.epsilon)
    if scale is not None:
      a = a * scale
    b = -mean * a if bias is None else bias - mean * a
    out_dtype = self.dtype or jnp.result_type(x, *(p for p in (scale, bias) if p is not None))
    return (x.astype(jnp.promote_types(out_dtype, jnp.float32)) * a + b).astype(out_dtype)


class DepthwiseConv(nn.Module):
  """A depthwise convolution: one kh x kw filter per channel (`feature_group_count` = C).

  Parameters as flax's grouped `nn.Conv`: 'kernel' of shape (kh, kw, 1, C), optional 'bias' (C,),
  so weights move freely between this layer and `nn.Conv(C, ..., feature_group_count=C)`.
  `impl`: 'auto' (shift-and-add on CPU, where XLA's grouped conv is 15-90x slower than PyTorch;
  the grouped conv on GPU/TPU), 'shift' or 'grouped'; see `cnn_jax.nn.depthwise`.
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
    from cnn_jax.nn.depthwise import depthwise_conv

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


def stochastic_depth(y: jax.Array, prob: float, *, train: bool) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) of a residual branch, torchvision's 'row' mode: one
  keep/drop draw per example (mask (B, 1, 1, 1)), survivors scaled by 1/(1-p); the identity in
  eval. Called inside a compact module, it is that module's submodule 'stochastic_depth' and
  draws from the 'dropout' rng. ResNet's blocks and EfficientNet's MBConv both use it."""
  return nn.Dropout(
    prob, broadcast_dims=(1, 2, 3), deterministic=not train, name='stochastic_depth'
  )(y)
