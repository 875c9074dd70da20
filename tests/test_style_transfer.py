"""Neural style transfer: the Gram matrix and the costs (cnn_jax/ops/style.py) against NumPy
loops and hand-computed cases (note 004's normalisations), feature extraction by name in eval
mode, a few optimisation steps on a tiny random network, PNG output, and the errors bad arguments
raise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.ops import style as costs
from cnn_jax.recipes import style_transfer as st


def _random(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _gram_loop(a: np.ndarray) -> np.ndarray:
  """G_kk' = sum_i sum_j a_ijk a_ijk', one example at a time, as the note writes it."""
  b, h, w, c = a.shape
  g = np.zeros((b, c, c), np.float64)
  for n in range(b):
    for k in range(c):
      for k2 in range(c):
        for i in range(h):
          for j in range(w):
            g[n, k, k2] += float(a[n, i, j, k]) * float(a[n, i, j, k2])
  return g


def test_gram_matrix_matches_a_numpy_loop():
  a = _random((2, 3, 4, 5), 0)
  g = np.asarray(costs.gram_matrix(jnp.asarray(a)))
  assert g.shape == (2, 5, 5)
  np.testing.assert_allclose(g, _gram_loop(a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(g, np.transpose(g, (0, 2, 1)), atol=1e-6)  # symmetric


def test_content_cost_formula_and_properties():
  a_c, a_g = _random((2, 3, 4, 5), 1), _random((2, 3, 4, 5), 2)
  got = np.asarray(costs.content_cost(jnp.asarray(a_c), jnp.asarray(a_g)))
  expect = [np.sum((a_c[n] - a_g[n]) ** 2) / (4 * 3 * 4 * 5) for n in range(2)]
  np.testing.assert_allclose(got, expect, rtol=1e-5)
  # The note's 1/lambda with another lambda (Gatys et al.: 2).
  got2 = np.asarray(costs.content_cost(jnp.asarray(a_c), jnp.asarray(a_g), lam=2.0))
  np.testing.assert_allclose(got2, np.array(expect) * (4 * 3 * 4 * 5) / 2, rtol=1e-5)
  # G = C costs nothing; scaling both activations by k scales the cost by k^2.
  np.testing.assert_array_equal(
    np.asarray(costs.content_cost(jnp.asarray(a_c), jnp.asarray(a_c))), 0
  )
  scaled = np.asarray(costs.content_cost(jnp.asarray(3 * a_c), jnp.asarray(3 * a_g)))
  np.testing.assert_allclose(scaled, 9 * got, rtol=1e-5)


def test_layer_style_cost_hand_computed():
  # One position (n_H = n_W = 1), two channels: a_S = (1, 2), a_G = 0.
  # G^(S) = [[1, 2], [2, 4]], sum of squares 25. Note 004: 25 / (2 * 1 * 1)^2 = 6.25;
  # Gatys et al.: 25 / (2 * 1 * 1 * 2)^2 = 1.5625.
  a_s = jnp.array([[[[1.0, 2.0]]]])
  a_g = jnp.zeros((1, 1, 1, 2))
  assert float(costs.layer_style_cost(a_s, a_g)[0]) == pytest.approx(6.25)
  assert float(costs.layer_style_cost(a_s, a_g, normalisation='gatys')[0]) == pytest.approx(1.5625)


def test_layer_style_cost_matches_numpy_and_scales_as_k4():
  a_s, a_g = _random((2, 3, 4, 5), 3), _random((2, 3, 4, 5), 4)
  diff = _gram_loop(a_s) - _gram_loop(a_g)
  sums = np.sum(diff**2, axis=(1, 2))
  notes = np.asarray(costs.layer_style_cost(jnp.asarray(a_s), jnp.asarray(a_g)))
  np.testing.assert_allclose(notes, sums / (2 * 3 * 4) ** 2, rtol=1e-4)
  gatys = np.asarray(
    costs.layer_style_cost(jnp.asarray(a_s), jnp.asarray(a_g), normalisation='gatys')
  )
  np.testing.assert_allclose(gatys, sums / (2 * 3 * 4 * 5) ** 2, rtol=1e-4)
  scaled = np.asarray(costs.layer_style_cost(jnp.asarray(2 * a_s), jnp.asarray(2 * a_g)))
  np.testing.assert_allclose(scaled, 16 * notes, rtol=1e-4)
  # A style of batch 1 serves every generated image.
  one = np.asarray(costs.layer_style_cost(jnp.asarray(a_s[:1]), jnp.asarray(a_g)))
  np.testing.assert_allclose(
    one, (_gram_loop(a_s[:1]) - _gram_loop(a_g)) ** 2 @ np.ones(5) @ np.ones(5) / 24**2, rtol=1e-4
  )
  # The same style, whatever its spatial arrangement: a Gram matrix ignores where things are.
  flipped = a_s[:, ::-1, ::-1]
  np.testing.assert_allclose(
    np.asarray(costs.layer_style_cost(jnp.asarray(a_s), jnp.asarray(flipped))), 0, atol=1e-4
  )


def test_style_and_total_cost_are_weighted_sums():
  s = {'a': _random((1, 4, 4, 3), 5), 'b': _random((1, 2, 2, 6), 6)}
  g = {'a': _random((1, 4, 4, 3), 7), 'b': _random((1, 2, 2, 6), 8), 'c': _random((1, 2, 2, 2), 9)}
  c = {'c': _random((1, 2, 2, 2), 10)}
  weights = {'a': 0.25, 'b': 2.0}
  per_layer = {k: float(costs.layer_style_cost(s[k], g[k])[0]) for k in weights}
  j_style = float(costs.style_cost(s, g, weights)[0])
  assert j_style == pytest.approx(0.25 * per_layer['a'] + 2.0 * per_layer['b'], rel=1e-5)
  j_content = float(costs.content_cost(c['c'], g['c'])[0])
  total = costs.total_cost(c, s, g, content_layer='c', style_weights=weights, alpha=3.0, beta=0.5)
  assert float(total['content'][0]) == pytest.approx(j_content, rel=1e-6)
  assert float(total['style'][0]) == pytest.approx(j_style, rel=1e-6)
  assert float(total['total'][0]) == pytest.approx(3.0 * j_content + 0.5 * j_style, rel=1e-5)


def test_cost_argument_errors():
  a = jnp.zeros((1, 2, 2, 3))
  with pytest.raises(UserError, match='normalisation'):
    costs.layer_style_cost(a, a, normalisation='course')
  with pytest.raises(UserError, match=r'\(B, H, W, C\)'):
    costs.layer_style_cost(a, jnp.zeros((1, 3, 2, 3)))
  with pytest.raises(UserError, match='lam'):
    costs.content_cost(a, a, lam=0.0)
  with pytest.raises(UserError, match='lack'):
    costs.style_cost({'a': a}, {'a': a}, {'b': 1.0})
  with pytest.raises(UserError, match='>= 0'):
    costs.style_cost({'a': a}, {'a': a}, {'a': -1.0})
  with pytest.raises(UserError, match='all 0'):
    costs.style_cost({'a': a}, {'a': a}, {'a': 0.0})


@pytest.fixture(scope='module')
def tiny():
  """vgg_tiny with BatchNorm (eval mode matters) and made-up running statistics, 32x32 RGB."""
  model = models.create('vgg_tiny', batch_norm=True)
  # XLA:CPU's expensive passes take ~2 s of CPU per jax.random draw of the init (13 of them).
  fast = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}
  variables = jax.jit(model.init, compiler_options=fast)(
    jax.random.key(0), jnp.zeros((1, 32, 32, 3))
  )
  stats = jax.tree.map(lambda v: v + 0.3, variables['batch_stats'])  # not the init's 0 / 1
  return model, {'params': variables['params'], 'batch_stats': stats}


def test_layer_names_and_extraction_in_eval_mode(tiny):
  model, variables = tiny
  names = st.layer_names(model, (32, 32, 3))
  assert {'stage1', 'pool2', 'conv1_1', 'bn1_1', 'conv5_1'} <= set(names)
  assert 'pre_logits' not in names and 'fc6' not in names  # not (B, H, W, C) maps
  x = jnp.asarray(_random((2, 32, 32, 3), 11))
  layers = ['stage1', 'bn1_1:relu', 'conv2_1', 'pool3']
  feats = st.extract_features(model, variables, x, layers)
  assert {k: v.shape for k, v in feats.items()} == {
    'stage1': (2, 32, 32, 4),
    'bn1_1:relu': (2, 32, 32, 4),
    'conv2_1': (2, 16, 16, 8),
    'pool3': (2, 4, 4, 8),
  }
  # stage1 of a one-conv stage is relu(bn1_1(conv1_1)).
  np.testing.assert_allclose(feats['stage1'], feats['bn1_1:relu'], atol=1e-6)
  assert float(jnp.min(feats['conv2_1'])) < 0  # the conv's own output: before its ReLU
  # Eval mode: running statistics, so an image's features do not depend on its batch.
  alone = st.extract_features(model, variables, x[:1], layers)
  for k in layers:
    np.testing.assert_allclose(alone[k], feats[k][:1], rtol=1e-5, atol=1e-5)
  # And they are the model's own eval-mode features.
  own = model.apply(variables, x, train=False, features=True)
  np.testing.assert_allclose(feats['pool3'], own['pool3'], atol=1e-6)


def test_gatys_layers_exist_in_vgg16_and_vgg19():
  for name in ('vgg16', 'vgg19'):
    layers = [st.GATYS_VGG['content_layer'], *st.GATYS_VGG['style_layers']]
    st.check_layers(models.create(name), (64, 64, 3), layers)  # traced only: no weights made


def test_unknown_and_flat_layers_raise(tiny):
  model, variables = tiny
  with pytest.raises(UserError, match="no 4-D layer 'conv9_1'.*closest: conv"):
    st.check_layers(model, (32, 32, 3), ['stage1', 'conv9_1'])
  with pytest.raises(UserError, match="no 4-D layer 'pre_logits'"):
    st.check_layers(model, (32, 32, 3), ['pre_logits'])
  with pytest.raises(UserError, match='needs a \\(B, H, W, C\\) feature map'):
    st.extract_features(model, variables, jnp.zeros((1, 32, 32, 3)), ['fc6'])


def _images():
  """A smooth content image and a striped style image, 32x32 RGB in [0, 1]."""
  yy, xx = np.mgrid[:32, :32] / 31.0
  content = np.stack([yy, xx, 0.5 * (yy + xx)], -1).astype(np.float32)
  stripes = (np.sin(xx * 20 + yy * 8) > 0).astype(np.float32)
  style = np.stack([stripes, 1 - stripes, 0.5 * stripes], -1).astype(np.float32)
  return content, style


STYLE_LAYERS = ('stage1', 'stage2', 'stage3')


def _stylise(tiny, content, **kwargs):
  """`st.stylise` of `content` in the style of `_images()`'s style image, on the tiny net."""
  model, variables = tiny
  return st.stylise(
    content,
    _images()[1],
    model=model,
    variables=variables,
    content_layer='stage3',
    style_layers=STYLE_LAYERS,
    alpha=1.0,
    beta=1.0,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    **kwargs,
  )


@pytest.mark.slow
@pytest.mark.parametrize('init', ['content', 'noise'])
def test_stylise_lowers_the_cost(tiny, init):
  content = _images()[0]
  image, losses = _stylise(tiny, content, steps=8, lr=0.1, init=init)
  assert image.shape == content.shape and image.dtype == np.float32
  assert 0.0 <= image.min() and image.max() <= 1.0
  assert set(losses) == {'total', 'content', 'style'}
  assert all(v.shape == (9,) and np.all(np.isfinite(v)) for v in losses.values())
  np.testing.assert_allclose(losses['total'], losses['content'] + losses['style'], rtol=1e-5)
  assert losses['total'][-1] < 0.8 * losses['total'][0]
  if init == 'content':
    # G = C at the start (up to float32 rounding: two compiled programs compute the features).
    assert losses['content'][0] < 1e-6 * losses['style'][0]
    assert not np.allclose(image, content, atol=1e-3)


@pytest.mark.slow
def test_stylise_lbfgs_lowers_the_cost(tiny):
  _, losses = _stylise(tiny, _images()[0], steps=3, optimizer='lbfgs')
  assert losses['total'][-1] < 0.8 * losses['total'][0]


@pytest.mark.parametrize(
  'change, message',
  [
    (dict(init='gray'), "init='gray'"),
    (dict(steps=0), 'steps=0'),
    (dict(lr=-1.0), 'lr=-1.0'),
    (dict(alpha=0.0, beta=0.0), 'both 0'),
    (dict(optimizer='sgd'), "optimizer='sgd'"),
    (dict(style_layers=('stage1', 'stag2')), "no 4-D layer 'stag2'.*closest: stage2"),
    (dict(content_layer='fc7'), "no 4-D layer 'fc7'"),
    (dict(style_weights={'stage1': 1.0}), 'one weight per style layer'),
    (dict(style_weights={'stage1': 1.0, 'stage2': -0.5, 'stage3': 1.0}), 'finite and >= 0'),
    (dict(style_normalisation='sum'), 'normalisation'),
    (dict(std=(0.5, 0.0, 0.5)), 'std'),
    (dict(mean=(0.5, 0.5)), 'one per channel'),
    (dict(content=np.full((32, 32, 3), 255.0, np.float32)), r'\[0, 1\]'),
    (dict(style=np.zeros((16, 16, 3), np.float32)), 'resize the style image'),
  ],
)
def test_stylise_bad_arguments(tiny, change, message):
  model, variables = tiny
  content, style = _images()
  kwargs = dict(
    content=content,
    style=style,
    model=model,
    variables=variables,
    content_layer='stage3',
    style_layers=('stage1', 'stage2', 'stage3'),
    steps=2,
  )
  with pytest.raises(UserError, match=message):
    st.stylise(**(kwargs | change))


def test_save_png_round_trip_and_loss_curve(tmp_path):
  rgb = np.random.default_rng(12).uniform(size=(5, 7, 3)).astype(np.float32)
  st.save_png(rgb, str(tmp_path / 'out' / 'rgb.png'))
  back = np.asarray(Image.open(tmp_path / 'out' / 'rgb.png'))
  np.testing.assert_array_equal(back, np.round(rgb * 255).astype(np.uint8))
  grey = rgb[..., :1]
  st.save_png(grey, str(tmp_path / 'grey.png'))
  np.testing.assert_array_equal(
    np.asarray(Image.open(tmp_path / 'grey.png')), np.round(grey[..., 0] * 255).astype(np.uint8)
  )
  with pytest.raises(UserError, match='save_png'):
    st.save_png(rgb[..., :2], str(tmp_path / 'bad.png'))
  losses = {
    'total': np.array([3.0, 2.0, 1.5]),
    'content': np.array([0, 0.5, 0.6]),
    'style': [3, 1, 0.5],
  }
  st.save_loss_curve(losses, str(tmp_path / 'curve.png'), alpha=1.0, beta=1.0)
  assert Image.open(tmp_path / 'curve.png').format == 'PNG'
