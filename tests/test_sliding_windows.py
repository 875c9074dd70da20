"""Sliding windows as one convolutional pass (notes 004): equality with the explicit loop."""

import math
from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models import sliding_windows as sw
from cnn_jax.nn.layers import Conv, MaxPool


def _random_variables(model: nn.Module, input_shape: tuple[int, ...], seed: int):
  """Random weights everywhere, biases included (flax initialises biases to 0).

  NumPy draws on `jax.eval_shape`'s shapes: nothing is compiled (jax.random's init took 10-20 s
  here on the loaded 2-core CPU). Kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)

  def draw(leaf):
    scale = 1.0 / math.sqrt(math.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
    return jnp.asarray(rng.normal(0.0, scale, leaf.shape), jnp.float32)

  return jax.tree_util.tree_map(draw, shapes)


@pytest.fixture(scope='module')
def classifier():
  model = sw.WindowClassifier()
  return model, _random_variables(model, (1, 14, 14, 3), 1)


def test_output_grid_formula_and_window_origins():
  # The notes' numbers: 14 x 14 windows at stride 2 (= the 2 x 2 max pool).
  assert sw.output_grid(14, 14, 2) == (1, 1)
  assert sw.output_grid(16, 14, 2) == (2, 2)
  assert sw.output_grid(28, 14, 2) == (8, 8)
  assert sw.output_grid((16, 28), 14, 2) == (2, 8)
  assert sw.output_grid((36, 40), (32, 32), (4, 4)) == (2, 3)  # LeNet-5: window 32, stride 4
  assert sw.WindowClassifier().grid((28, 16)) == (8, 2)
  assert sw.WindowClassifier().window_stride == 2 and sw.WindowClassifier().fc_window == 5
  # Against a count of the window positions that fit, for every size that tiles.
  for size in range(14, 40, 2):
    starts = [o for o in range(0, size) if o % 2 == 0 and o + 14 <= size]
    assert sw.output_grid((size, 14), 14, 2) == (len(starts), 1)
  origins = sw.window_origins(16, 14, 2)
  assert origins.shape == (2, 2, 2)
  np.testing.assert_array_equal(origins[0, 1], [0, 2])  # top right: rows 0..13, columns 2..15
  np.testing.assert_array_equal(origins[1, 0], [2, 0])
  assert sw.window_origins(28, 14, 2)[7, 7].tolist() == [14, 14]


@pytest.mark.parametrize(
  'args, message',
  [
    ((12, 14, 2), 'input 12x12 is smaller than the 14x14 window'),
    (((16, 13), 14, 2), 'input 16x13 is smaller than the 14x14 window'),
    ((15, 14, 2), 'does not tile the 14x14 window at stride 2x2: (H - 14) must be'),
    (((17, 16), 14, 2), 'crop it to 16x16'),
    ((16, 14, 0), 'stride 0x0 must be at least 1x1'),
  ],
)
def test_output_grid_errors(args, message):
  with pytest.raises(UserError) as info:
    sw.output_grid(*args)
  assert message in str(info.value) and '\n' not in str(info.value)


def test_model_and_loop_errors(classifier):
  model, variables = classifier
  with pytest.raises(UserError, match=r'takes exactly 14x14 windows, got 16x16: .*sliding=True'):
    model.apply(variables, jnp.zeros((1, 16, 16, 3)))
  with pytest.raises(UserError, match='input 15x15 does not tile'):
    model.apply(variables, jnp.zeros((1, 15, 15, 3)), sliding=True)
  with pytest.raises(UserError, match='input 13x16 is smaller than the 14x14 window'):
    model.apply(variables, jnp.zeros((1, 13, 16, 3)), sliding=True)
  with pytest.raises(UserError, match=r'takes \(B, H, W, C\) images'):
    model.apply(variables, jnp.zeros((14, 14, 3)))
  with pytest.raises(UserError, match='input 15x16 does not tile'):
    sw.sliding_window_scores(lambda c: c[:, 0, 0], np.zeros((1, 15, 16, 3)), 14, 2)
  with pytest.raises(UserError, match=r'window_size=15 gives a 11x11 conv output'):
    sw.WindowClassifier(window_size=15).init(jax.random.key(0), jnp.zeros((1, 15, 15, 3)))
  with pytest.raises(UserError, match='cannot read a 5x5 window'):
    sw.dense_kernel_as_conv(jnp.zeros((24, 4)), 5)
  with pytest.raises(UserError, match='reads 16 channels per position, the input has 8'):
    sw.dense_as_conv(jnp.zeros((1, 6, 6, 8)), jnp.zeros((400, 4)), None, 5)


def test_dense_as_conv_matches_a_loop_over_taps():
  rng = np.random.default_rng(0)
  b, h, w, c, f, (kh, kw) = 2, 5, 6, 3, 4, (2, 3)
  x = rng.normal(size=(b, h, w, c)).astype(np.float32)
  kernel = rng.normal(size=(kh * kw * c, f)).astype(np.float32)
  bias = rng.normal(size=(f,)).astype(np.float32)
  got = np.asarray(jax.jit(partial(sw.dense_as_conv, window=(kh, kw)))(x, kernel, bias))
  want = np.zeros((b, h - kh + 1, w - kw + 1, f), np.float32)
  for i in range(h - kh + 1):
    for j in range(w - kw + 1):
      for di in range(kh):
        for dj in range(kw):
          for ch in range(c):  # dense row (di * kw + dj) * C + ch reads x[i + di, j + dj, ch]
            want[:, i, j] += x[:, i + di, j + dj, ch, None] * kernel[(di * kw + dj) * c + ch]
      want[:, i, j] += bias
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # A 1 x 1 window on a 1 x 1 map is the dense layer itself.
  flat = x[:, :1, :1, :].reshape(b, c)
  k1 = kernel[:c]
  np.testing.assert_allclose(
    np.asarray(sw.dense_as_conv(x[:, :1, :1], k1, bias, 1))[:, 0, 0], flat @ k1 + bias, rtol=1e-5
  )


def test_both_forms_have_the_same_parameters():
  model = sw.WindowClassifier()
  init = jax.jit(model.init, static_argnames='sliding')
  shapes = {
    size: jax.eval_shape(
      partial(init, sliding=size != 14), jax.random.key(0), jnp.zeros((1, size, size, 3))
    )['params']
    for size in (14, 16, 28)
  }
  as_shapes = lambda tree: jax.tree_util.tree_map(lambda a: a.shape, tree)
  assert as_shapes(shapes[14]) == as_shapes(shapes[16]) == as_shapes(shapes[28])
  per_layer = {name: helpers.count(tree) for name, tree in shapes[14].items()}
  # 5*5*3*16 + 16; 400*400 + 400 (twice); 400*4 + 4.
  assert per_layer == {'conv1': 1_216, 'fc1': 160_400, 'fc2': 160_400, 'logits': 1_604}
  assert shapes[14]['fc1']['kernel'].shape == (400, 400)  # nn.Dense layout, (5 * 5 * 16, 400)

  class NotesConvTwin(nn.Module):  # the notes' convolutional net, built from convs alone
    @nn.compact
    def __call__(self, x):
      x = nn.max_pool(nn.Conv(16, (5, 5), padding='VALID')(x), (2, 2), (2, 2))
      x = nn.Conv(400, (5, 5), padding='VALID')(x)
      x = nn.Conv(400, (1, 1))(x)
      return nn.Conv(4, (1, 1))(x)

  twin = jax.eval_shape(NotesConvTwin().init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
  assert helpers.count(twin) == helpers.count(shapes[16]) == 323_620
  assert jax.eval_shape(NotesConvTwin().apply, twin, jnp.zeros((1, 16, 16, 3))).shape == (
    1,
    2,
    2,
    4,
  )


@pytest.mark.parametrize('size, grid', [(16, 2), (28, 8)])
def test_one_pass_equals_the_loop_over_windows(classifier, size, grid):
  model, variables = classifier
  images = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
  one_pass = jax.jit(partial(model.apply, sliding=True))(variables, images)
  assert one_pass.shape == (2, grid, grid, 4) and one_pass.dtype == jnp.float32
  classify = jax.jit(partial(model.apply, variables))
  loop = sw.sliding_window_scores(classify, images, model.window_size, model.window_stride)
  assert loop.shape == (2, grid, grid, 4)
  np.testing.assert_allclose(np.asarray(one_pass), np.asarray(loop), rtol=1e-5, atol=1e-5)
  # The notes: the top-right 1 x 1 x 4 cell is the window at rows 0..13, columns 2..15.
  top_right = classify(images[:, 0:14, 2:16])
  np.testing.assert_allclose(np.asarray(one_pass[:, 0, 1]), np.asarray(top_right), atol=1e-5)
  # Not a coincidence of constant scores: the windows do score differently.
  assert np.ptp(np.asarray(loop), axis=(1, 2)).min() > 1e-2


def test_lenet5_head_slides_at_stride_4():
  model = models.create('lenet5', num_classes=10)
  variables = _random_variables(model, (1, 32, 32, 3), 2)
  params = variables['params']
  images = np.random.default_rng(3).normal(size=(2, 36, 40, 3)).astype(np.float32)

  @jax.jit
  def one_pass(params, x):  # LeNet-5's trained layers, its fc3/fc4/logits run as convs
    conv = lambda name: Conv(params[name]['kernel'].shape[-1], (5, 5), padding='VALID')
    x = MaxPool((2, 2)).apply({}, nn.relu(conv('conv1').apply({'params': params['conv1']}, x)))
    x = MaxPool((2, 2)).apply({}, nn.relu(conv('conv2').apply({'params': params['conv2']}, x)))
    x = nn.relu(sw.dense_as_conv(x, params['fc3']['kernel'], params['fc3']['bias'], 5))
    x = nn.relu(sw.dense_as_conv(x, params['fc4']['kernel'], params['fc4']['bias'], 1))
    return sw.dense_as_conv(x, params['logits']['kernel'], params['logits']['bias'], 1)

  got = one_pass(params, images)
  assert got.shape == (2, 2, 3, 10)
  loop = sw.sliding_window_scores(jax.jit(partial(model.apply, variables)), images, 32, 4)
  np.testing.assert_allclose(np.asarray(got), np.asarray(loop), rtol=1e-5, atol=1e-5)
