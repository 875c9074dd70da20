"""Deformable conv v2: regular-grid equality, a NumPy reference, gradients, layout, errors."""

import math

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cnn_jax.core.errors import UserError
from cnn_jax.nn.deformable import DeformableConv, deform_conv2d


def _conv(x, kernel, strides, padding, dilation):
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (strides, strides),
    [(padding, padding)] * 2,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )


@pytest.mark.parametrize('strides,dilation', [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_fresh_layer_is_a_regular_conv(strides, dilation):
  # The zero-initialised offset conv samples the regular grid; its modulation logits are 0, so
  # DCNv2 starts at sigmoid(0) = 0.5 times the regular conv, DCNv1 (modulation=False) at 1 times.
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 8, 4)), jnp.float32)
  for modulation, scale in ((True, 0.5), (False, 1.0)):
    layer = DeformableConv(
      5, strides=strides, padding=dilation, dilation=dilation, modulation=modulation
    )
    variables = jax.jit(layer.init)(helpers.key(), x)
    assert not any(jnp.any(p) for p in jax.tree.leaves(variables['params']['offset']))
    y = jax.jit(layer.apply)(variables, x)
    expected = scale * _conv(x, variables['params']['kernel'], strides, dilation, dilation)
    assert y.shape == expected.shape == ((2, 9, 8, 5) if strides == 1 else (2, 5, 4, 5))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _bilinear(image: np.ndarray, y: float, x: float) -> float:
  """image (H, W) at (y, x), neighbours outside the image counting as zero."""
  h, w = image.shape
  y0, x0 = math.floor(y), math.floor(x)
  total = 0.0
  for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
    for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
      if 0 <= yy < h and 0 <= xx < w:
        total += wy * wx * image[yy, xx]
  return total


def _numpy_deform_conv(x, offset, kernel, mask, strides, padding, dilation):
  """Direct loops over the paper's y(p0) = sum_k w_k * m_k * x(p0 + p_k + dp_k)."""
  b, h, w, c = x.shape
  kh, kw, _, c_out = kernel.shape
  groups = offset.shape[-1] // (2 * kh * kw)
  ho = (h + 2 * padding - dilation * (kh - 1) - 1) // strides + 1
  wo = (w + 2 * padding - dilation * (kw - 1) - 1) // strides + 1
  out = np.zeros((b, ho, wo, c_out))
  for n in range(b):
    for i in range(ho):
      for j in range(wo):
        for a in range(kh):
          for bb in range(kw):
            tap = a * kw + bb
            for ch in range(c):
              g = ch // (c // groups)
              dy, dx = offset[n, i, j, 2 * (g * kh * kw + tap) : 2 * (g * kh * kw + tap) + 2]
              y = i * strides - padding + a * dilation + dy
              xx = j * strides - padding + bb * dilation + dx
              m = 1.0 if mask is None else mask[n, i, j, g * kh * kw + tap]
              out[n, i, j] += kernel[a, bb, ch] * m * _bilinear(x[n, :, :, ch], y, xx)
  return out


@pytest.mark.parametrize(
  'strides,padding,dilation,groups,modulated', [(1, 1, 1, 2, True), (2, 2, 2, 1, False)]
)
def test_random_offsets_match_numpy_reference(strides, padding, dilation, groups, modulated):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 6, 4))
  kernel = rng.normal(size=(3, 3, 4, 3))
  ho = (5 + 2 * padding - 2 * dilation - 1) // strides + 1
  wo = (6 + 2 * padding - 2 * dilation - 1) // strides + 1
  # Offsets of up to ~3 pixels: many samples fall partly or wholly outside the image.
  offset = rng.normal(scale=1.5, size=(2, ho, wo, 2 * groups * 9))
  mask = rng.uniform(size=(2, ho, wo, groups * 9)) if modulated else None
  expected = _numpy_deform_conv(x, offset, kernel, mask, strides, padding, dilation)
  args = [jnp.asarray(a, jnp.float32) for a in (x, offset, kernel)]
  mask_arg = None if mask is None else jnp.asarray(mask, jnp.float32)
  got = jax.jit(
    lambda x, o, k, m: deform_conv2d(
      x, o, k, m, strides=strides, padding=padding, dilation=dilation
    )
  )(*args, mask_arg)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_module_splits_offset_conv_output_as_documented():
  # Random offset-conv weights: the module must equal deform_conv2d fed with the offset conv's
  # first 2*G*9 channels as offsets and the sigmoid of the last G*9 as modulation.
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 6, 4)), jnp.float32)
  layer = DeformableConv(3, offset_groups=2, use_bias=True)
  params = jax.jit(layer.init)(helpers.key(), x)['params']
  assert params['kernel'].shape == (3, 3, 4, 3) and params['bias'].shape == (3,)
  assert params['offset']['kernel'].shape == (3, 3, 4, 3 * 2 * 9)
  rng = np.random.default_rng(3)
  params['offset'] = {
    'kernel': jnp.asarray(rng.normal(scale=0.3, size=(3, 3, 4, 54)), jnp.float32),
    'bias': jnp.asarray(rng.normal(size=(54,)), jnp.float32),
  }
  params['bias'] = jnp.asarray([1.0, 2.0, 3.0])

  @jax.jit
  def expected(x, params):
    pred = _conv(x, params['offset']['kernel'], 1, 1, 1) + params['offset']['bias']
    y = deform_conv2d(x, pred[..., :36], params['kernel'], jax.nn.sigmoid(pred[..., 36:]))
    return y + params['bias']

  got = jax.jit(layer.apply)({'params': params}, x)
  np.testing.assert_allclose(got, expected(x, params), rtol=1e-5, atol=1e-5)


def test_gradients_match_finite_differences():
  rng = np.random.default_rng(4)
  # Fractional parts kept in [0.2, 0.8]: bilinear sampling is not differentiable at integers.
  whole = rng.integers(-2, 2, size=(1, 2, 2, 2 * 9))
  offset = whole + rng.uniform(0.2, 0.8, size=whole.shape)
  with jax.enable_x64(True):
    x, kernel = rng.normal(size=(1, 4, 4, 2)), rng.normal(size=(3, 3, 2, 2))
    mask = rng.uniform(size=(1, 2, 2, 9))

    @jax.jit
    def f(x, offset, kernel, mask):
      return deform_conv2d(x, offset, kernel, mask, strides=1, padding=1, dilation=2)

    args = tuple(jnp.asarray(a, jnp.float64) for a in (x, offset, kernel, mask))
    assert f(*args).dtype == jnp.float64
    check_grads(f, args, order=1, modes=['rev'], eps=1e-4, atol=1e-6, rtol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 8, 8, 4))
  layer = DeformableConv(6, dtype=jnp.bfloat16)
  variables = jax.eval_shape(layer.init, helpers.key(), x)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(layer.apply, variables, x).dtype == jnp.bfloat16


def test_bad_shapes_raise_user_error():
  x = jnp.ones((1, 6, 6, 4))
  with pytest.raises(UserError, match='offset_groups=3 must divide the 4 input channels'):
    jax.eval_shape(DeformableConv(2, offset_groups=3).init, helpers.key(), x)
  with pytest.raises(UserError, match=r'offset shape \(1, 5, 5, 18\); expected \(1, 6, 6, ...\)'):
    deform_conv2d(x, jnp.zeros((1, 5, 5, 18)), jnp.zeros((3, 3, 4, 2)))
  with pytest.raises(UserError, match='kernel expects 3 input channels, input has 4'):
    deform_conv2d(x, jnp.zeros((1, 6, 6, 18)), jnp.zeros((3, 3, 3, 2)))
