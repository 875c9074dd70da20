"""Depthwise convolution: the shift-and-add form equals the grouped conv, forward and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.nn import depthwise
from cnn_jax.nn.depthwise import depthwise_conv
from cnn_jax.nn.layers import DepthwiseConv

# (kernel, stride, dilation, padding, (H, W)): every value of each factor, odd and even sizes,
# chosen so that each pair of (kernel, stride, dilation, padding kind) appears at least once
# (the full product of kernels 1/3/5, strides 1/2/3, dilations 1/2, paddings 0/1/2/SAME/VALID and
# three input sizes, 246 cases with output pixels, passes too; it costs ~2 minutes).
CASES = [
  (3, 1, 1, 1, (11, 9)),
  (3, 2, 1, 1, (10, 12)),
  (3, 2, 1, 'SAME', (11, 9)),
  (3, 2, 1, 'SAME', (10, 12)),
  (3, 1, 2, 2, (10, 12)),
  (3, 2, 2, 'VALID', (11, 9)),
  (3, 1, 1, 'VALID', (10, 12)),
  (3, 1, 2, 'SAME', (11, 9)),
  (5, 1, 1, 2, (11, 9)),
  (5, 2, 1, 'SAME', (10, 12)),
  (5, 2, 2, 'SAME', (11, 9)),
  (5, 1, 2, 'VALID', (10, 12)),
  (5, 2, 1, 'VALID', (11, 9)),
  (5, 2, 2, 4, (10, 12)),
  # Stride 3 (three input phases per axis, some without taps) and a 1x1 kernel.
  (3, 3, 1, 1, (10, 12)),
  (5, 3, 2, 'SAME', (11, 9)),
  (1, 2, 1, 0, (11, 9)),
]


def _forward_and_grads(impl, x, w, g, **kw):
  """(y, dL/dx, dL/dw) with L = sum(y * g), jitted."""

  def f(x, w):
    y, vjp = jax.vjp(lambda x, w: depthwise_conv(x, w, impl=impl, **kw), x, w)
    return (y, *vjp(g))

  return jax.jit(f)(x, w)


def _check_equal(k, s, d, p, hw, batch=2, channels=3):
  rng = np.random.default_rng(k * 100 + s * 10 + d)
  x = rng.normal(size=(batch, *hw, channels)).astype(np.float32)
  w = rng.normal(size=(k, k, 1, channels)).astype(np.float32)
  kw = dict(strides=s, padding=p, dilation=d)
  out_shape = jax.eval_shape(lambda x, w: depthwise_conv(x, w, impl='grouped', **kw), x, w).shape
  g = rng.normal(size=out_shape).astype(np.float32)
  shift = _forward_and_grads('shift', x, w, g, **kw)
  grouped = _forward_and_grads('grouped', x, w, g, **kw)
  for name, a, b in zip(('output', 'input grad', 'kernel grad'), shift, grouped, strict=True):
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize('k, s, d, p, hw', CASES)
def test_shift_equals_grouped(k, s, d, p, hw):
  _check_equal(k, s, d, p, hw)


@pytest.mark.parametrize('k, s, d, p, hw', [(3, 2, 1, 1, (11, 9)), (5, 1, 2, 'SAME', (10, 12))])
def test_shift_equals_grouped_in_chunks(monkeypatch, k, s, d, p, hw):
  # Real inputs are chunked by size (a few MiB); a 1-byte budget forces 2 images per chunk, so
  # batch 6 runs 3 chunks through the lax.scan of the kernel gradient.
  monkeypatch.setattr(depthwise, '_CHUNK_BYTES', 1)
  assert depthwise._images_per_chunk(jnp.zeros((6, 4, 4, 1))) == 2
  _check_equal(k, s, d, p, hw, batch=6)


def test_layer_matches_flax_grouped_conv_and_shares_its_params():
  x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype(np.float32)
  conv = nn.Conv(4, (3, 3), strides=2, padding=1, feature_group_count=4, use_bias=True)
  variables = conv.init(jax.random.key(0, impl='rbg'), x)
  variables = jax.tree.map(lambda p: p + 0.1, variables)  # non-zero bias
  expected = conv.apply(variables, x)
  for impl in ('shift', 'grouped', 'auto'):
    layer = DepthwiseConv((3, 3), strides=2, padding=1, use_bias=True, impl=impl)
    own = jax.eval_shape(layer.init, jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, own) == jax.tree.map(jnp.shape, variables)
    np.testing.assert_allclose(layer.apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_auto_is_shift_on_cpu_and_bf16_works():
  assert jax.default_backend() == 'cpu' and depthwise.resolve_impl('auto') == 'shift'
  assert depthwise.resolve_impl('grouped') == 'grouped'
  x = np.random.default_rng(0).normal(size=(1, 8, 8, 4)).astype(np.float32)
  w = np.random.default_rng(1).normal(size=(3, 3, 1, 4)).astype(np.float32)
  ref = depthwise_conv(x, w, padding=1, impl='grouped')
  y = depthwise_conv(jnp.asarray(x, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16), padding=1)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=0.05, atol=0.05)


def test_bad_arguments_raise_user_error():
  x, w = jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 1, 4))
  with pytest.raises(
    UserError, match=r"impl='fast'; expected one of \('auto', 'shift', 'grouped'\)"
  ):
    depthwise_conv(x, w, impl='fast')
  with pytest.raises(UserError, match="padding='FULL'; expected an int, 'SAME' or 'VALID'"):
    depthwise_conv(x, w, padding='FULL')
  with pytest.raises(
    UserError, match=r'kernel has shape \(3, 3, 1, 5\); expected \(kh, kw, 1, 4\)'
  ):
    depthwise_conv(x, jnp.zeros((3, 3, 1, 5)))
  with pytest.raises(UserError, match='strides=0; expected a positive int'):
    depthwise_conv(x, w, strides=0)
  with pytest.raises(UserError, match='8x8 input with a 3x3 kernel .* has no output pixels'):
    depthwise_conv(x, w, padding='VALID', dilation=4)
