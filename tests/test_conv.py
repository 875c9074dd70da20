"""cnn_jax.nn.conv / layers.Conv: the faster CPU weight gradient is lax's, nothing else changes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnn_jax.nn import conv, layers

# (kernel, stride, padding, dilation, C_in, C_out, H = W): the cases the models use, and odd ones.
CASES = [
  (3, 1, 1, 1, 8, 16, 9),  # ResNet / VGG 3x3
  (3, 2, 1, 1, 8, 16, 9),  # a strided 3x3 whose last row is not read
  (7, 2, 3, 1, 3, 16, 16),  # the ImageNet stem
  (3, 1, 'SAME', 2, 8, 8, 10),  # DeepLab's atrous conv
  (1, 2, 0, 1, 8, 16, 8),  # a strided 1x1 shortcut
  (5, 1, 'VALID', 1, 4, 6, 12),  # LeNet-5
  (2, 2, 'VALID', 1, 4, 4, 8),
]


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
  """The matmul weight gradient for the small test images too (the models: >= 256 positions)."""
  monkeypatch.setattr(conv, 'MIN_POSITIONS', 0)


@pytest.mark.parametrize('case', CASES, ids=[f'k{c[0]}s{c[1]}p{c[2]}d{c[3]}' for c in CASES])
def test_gradients_and_parameters_match_nn_conv(case):
  k, s, p, d, c_in, c_out, hw = case
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, hw, hw, c_in)), jnp.float32)
  ours = layers.Conv(c_out, (k, k), s, p, kernel_dilation=d)
  theirs = nn.Conv(c_out, (k, k), s, p, kernel_dilation=d)
  variables = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, variables
  )

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  np.testing.assert_array_equal(ours.apply(variables, x), theirs.apply(variables, x))
  got = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  want = jax.grad(loss(theirs), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_weight_gradient_is_the_tap_sum():
  """Against a direct NumPy sum over batch and positions, for one strided, padded case."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
  g = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)  # 3x3, stride 2, padding 1: 4 x 3 out
  got = conv.weight_gradient(
    jnp.asarray(x), jnp.asarray(g), (3, 3, 3, 5), (2, 2), ((1, 1),) * 2, (1, 1)
  )
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros((3, 3, 3, 5), np.float32)
  for i in range(3):
    for j in range(3):
      for h in range(4):
        for w in range(3):
          want[i, j] += xp[:, i + 2 * h, j + 2 * w, :].T @ g[:, h, w, :]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_other_convolutions_are_lax_as_is(monkeypatch):
  """Grouped or input-dilated convs, and NCHW, do not take the custom gradient."""
  monkeypatch.setattr(conv, '_conv', None)  # would fail if called
  x = jnp.ones((1, 6, 6, 4))
  k = jnp.ones((3, 3, 2, 4))
  y = conv.conv_general_dilated(
    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2
  )
  want = lax.conv_general_dilated(
    x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=2
  )
  np.testing.assert_array_equal(y, want)
  k = jnp.ones((3, 3, 4, 4))
  y = conv.conv_general_dilated(
    x, k, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  assert y.shape == (1, 11, 11, 4)


def test_small_feature_maps_keep_xla_s_gradient(monkeypatch):
  calls = []
  monkeypatch.setattr(conv, 'MIN_POSITIONS', 256)
  monkeypatch.setattr(
    conv,
    '_conv',
    lambda *a: (
      calls.append(a)
      or lax.conv_general_dilated(
        a[0], a[1], a[2], a[3], rhs_dilation=a[4], dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
    ),
  )
  k = jnp.ones((3, 3, 2, 2))
  for hw in (15, 16):  # 225 and 256 output positions
    conv.conv_general_dilated(
      jnp.ones((1, hw, hw, 2)), k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
    )
  assert len(calls) == 1 and calls[0][0].shape == (1, 16, 16, 2)


@pytest.mark.parametrize(
  'window, strides, padding',
  [
    ((2, 2), (2, 2), 'VALID'),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 3), (1, 1), 'SAME'),
    ((3, 3), (2, 2), ((0, 1), (0, 2))),  # SqueezeNet's ceil mode: padded at the end only
    ((2, 3), (1, 2), 'VALID'),
    ((1, 1), (2, 2), 'VALID'),  # a window smaller than the stride: some inputs get nothing
    ((5, 5), (3, 3), 'SAME'),
  ],
)
def test_max_pool_matches_flax_and_its_gradient_goes_to_the_first_maximum(window, strides, padding):
  from cnn_jax.nn import pooling

  rng = np.random.default_rng(2)
  # Rounded values: many ties (as after a ReLU), where the gradient must go to one input only.
  x = jnp.asarray(np.round(rng.normal(size=(2, 9, 8, 3))), jnp.float32)
  g = jnp.asarray(
    rng.normal(size=jax.eval_shape(lambda x: nn.max_pool(x, window, strides, padding), x).shape),
    jnp.float32,
  )
  ours = lambda x: pooling.max_pool(x, window, strides, padding)  # noqa: E731
  theirs = lambda x: nn.max_pool(x, window, strides, padding)  # noqa: E731
  np.testing.assert_array_equal(ours(x), theirs(x))
  got, want = jax.vjp(ours, x)[1](g)[0], jax.vjp(theirs, x)[1](g)[0]
  np.testing.assert_array_equal(got != 0, want != 0)  # the same inputs get gradient
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # overlapping windows: sum order


@pytest.mark.parametrize(
  'window, strides, padding',
  [
    ((2, 2), (2, 2), 'VALID'),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 3), (1, 1), 'SAME'),
    ((2, 3), (1, 2), 'VALID'),
    ((5, 5), (3, 3), 'SAME'),
  ],
)
@pytest.mark.parametrize('count_include_pad', [True, False])
def test_avg_pool_and_its_gradient_match_flax(window, strides, padding, count_include_pad):
  from cnn_jax.nn import pooling

  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 11, 13, 3)), jnp.float32)
  ours = lambda x: pooling.avg_pool(x, window, strides, padding, count_include_pad)  # noqa: E731
  theirs = lambda x: nn.avg_pool(  # noqa: E731
    x, window, strides, padding, count_include_pad=count_include_pad
  )
  y, back = jax.vjp(ours, x)
  want_y, want_back = jax.vjp(theirs, x)
  np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-6)
  g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
  np.testing.assert_allclose(back(g)[0], want_back(g)[0], rtol=1e-5, atol=1e-6)


def test_non_overlapping_transposed_conv_matches_flax():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 4, 6)), jnp.float32)
  ours = layers.ConvTranspose(3, (2, 2), strides=(2, 2), padding='VALID')
  theirs = nn.ConvTranspose(3, (2, 2), strides=(2, 2), padding='VALID')
  variables = theirs.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, variables
  )

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=1e-5)
  got = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  want = jax.grad(loss(theirs), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
