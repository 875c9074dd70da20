"""AlexNet, VGG and SqueezeNet: counts and MACs against torchvision, shapes, pools, a train step."""

import math
from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models.alexnet import AdaptiveAvgPool, adaptive_bins, alexnet, alexnet_tiny
from cnn_jax.models.squeezenet import CeilMaxPool, ceil_pool_padding, squeezenet, squeezenet_tiny
from cnn_jax.models.summary import summarize
from cnn_jax.models.vgg import vgg, vgg_tiny

# LLVM's optimizations are most of XLA:CPU's compile time and pointless for a few tiny steps:
# level 0 cuts vgg_tiny_bn's train step compile from about 5.0 to 2.9 CPU seconds.
_jit = partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _feature_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, ...]]:
  shape = (1, size, size, 3)
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True),
    helpers.shapes(model, shape),
    jax.ShapeDtypeStruct(shape, jnp.float32),
  )
  return {k: v.shape[1:] for k, v in out.items()}


MODELS = {
  'alexnet': alexnet,
  **{f'vgg{d}': lambda d=d: vgg(d) for d in (11, 13, 16, 19)},
  **{f'vgg{d}_bn': lambda d=d: vgg(d, batch_norm=True) for d in (11, 13, 16, 19)},
  'squeezenet1_0': lambda: squeezenet('1_0'),
  'squeezenet1_1': lambda: squeezenet('1_1'),
}

# torchvision, 1000 classes: sum(p.numel() for p in m.parameters()) and the GFLOPS (multiply-adds,
# conv + linear) in its weights' metadata. vgg13 / vgg13_bn: vgg11 plus 64->64 and 128->128 convs.
TORCHVISION = {
  'alexnet': (61_100_840, 0.71),
  'vgg11': (132_863_336, 7.61),
  'vgg11_bn': (132_868_840, 7.61),
  'vgg13': (133_047_848, 11.31),
  'vgg13_bn': (133_053_736, 11.31),
  'vgg16': (138_357_544, 15.47),
  'vgg16_bn': (138_365_992, 15.47),
  'vgg19': (143_667_240, 19.63),
  'vgg19_bn': (143_678_248, 19.63),
  'squeezenet1_0': (1_248_424, 0.82),
  'squeezenet1_1': (1_235_496, 0.35),
}


@pytest.mark.parametrize('name', list(TORCHVISION))
def test_params_equal_torchvision(name):
  # The adaptive pools make the count independent of the input: the smallest legal size traces
  # fastest (AlexNet needs 63x63).
  size = 64 if name == 'alexnet' else 32
  params = helpers.shapes(MODELS[name](), (1, size, size, 3))['params']
  assert sum(p.size for p in jax.tree.leaves(params)) == TORCHVISION[name][0]


@pytest.mark.parametrize('name', ['alexnet', 'vgg16_bn', 'squeezenet1_0', 'squeezenet1_1'])
def test_macs_at_224_match_torchvision(name):
  summary = summarize(MODELS[name](), (224, 224, 3))
  assert summary.total_params == TORCHVISION[name][0]
  assert round(summary.total_macs / 1e9, 2) == TORCHVISION[name][1]


def test_vgg16_macs_exact():
  # 3x3 convs at 224/112/56/28/14 (sum of C_in * C_out per stage * 9 * HW) + the three fcs.
  stages = [(3 * 64 + 64 * 64, 224), (64 * 128 + 128 * 128, 112), (128 * 256 + 2 * 256**2, 56)]
  stages += [(256 * 512 + 2 * 512**2, 28), (3 * 512**2, 14)]
  convs = sum(c * 9 * hw * hw for c, hw in stages)
  fcs = 25088 * 4096 + 4096 * 4096 + 4096 * 1000
  assert summarize(vgg(16), (224, 224, 3)).total_macs == convs + fcs == 15_470_264_320


def test_alexnet_feature_shapes():
  assert _feature_shapes(alexnet(), 224) == {
    'stage1': (55, 55, 64),
    'pool1': (27, 27, 64),
    'stage2': (27, 27, 192),
    'pool2': (13, 13, 192),
    'stage3': (13, 13, 256),
    'pool3': (6, 6, 256),
    'pre_logits': (4096,),
    'logits': (1000,),
  }
  # 64x64: conv1 15, pool1 7, pool2 3, pool3 1; the adaptive pool repeats the one pixel to 6x6.
  small = _feature_shapes(alexnet(num_classes=10), 64)
  assert small['pool2'] == (3, 3, 192) and small['pool3'] == (1, 1, 256)
  assert small['logits'] == (10,)


def test_vgg_feature_shapes_and_strides():
  shapes = _feature_shapes(vgg(16), 224)
  widths = (64, 128, 256, 512, 512)
  for s, width in enumerate(widths, start=1):
    assert shapes[f'stage{s}'] == (224 // 2 ** (s - 1), 224 // 2 ** (s - 1), width)
    assert shapes[f'pool{s}'] == (224 // 2**s, 224 // 2**s, width)
  # FCN's taps at strides 8 / 16 / 32.
  assert (shapes['pool3'][0], shapes['pool4'][0], shapes['pool5'][0]) == (28, 14, 7)
  assert shapes['pre_logits'] == (4096,) and shapes['logits'] == (1000,)
  small = _feature_shapes(vgg(11, batch_norm=True, num_classes=10), 32)
  assert small['pool5'] == (1, 1, 512) and small['logits'] == (10,)


def test_squeezenet_feature_shapes():
  # 1.0 at 224: conv1 109, ceil pools 54, 27, 13 (floor mode would give 26 and 12).
  assert _feature_shapes(squeezenet('1_0'), 224) == {
    'stem': (109, 109, 96),
    'stage1': (54, 54, 256),
    'stage2': (27, 27, 512),
    'stage3': (13, 13, 512),
    'pre_logits': (512,),
    'logits': (1000,),
  }
  s11 = _feature_shapes(squeezenet('1_1'), 224)
  assert s11['stem'] == (111, 111, 64) and s11['stage1'] == (55, 55, 128)
  assert s11['stage2'] == (27, 27, 256) and s11['stage3'] == (13, 13, 512)
  # 32x32 works only with ceil mode: 13 -> 6 -> 3 -> 1 (floor: 6 -> 2 -> 0).
  assert _feature_shapes(squeezenet('1_0'), 32)['stage3'] == (1, 1, 512)


def test_submodule_names_are_stable():
  a = helpers.shapes(alexnet(), (1, 64, 64, 3))['params']
  assert set(a) == {'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8'}
  assert a['conv1']['kernel'].shape == (11, 11, 3, 64) and a['fc6']['kernel'].shape == (9216, 4096)
  v = helpers.shapes(vgg(16, batch_norm=True), (1, 32, 32, 3))
  assert {'conv1_1', 'conv1_2', 'bn1_2', 'conv5_3', 'bn5_3', 'fc6', 'fc7', 'fc8'} <= set(
    v['params']
  )
  assert 'conv5_4' not in v['params'] and set(v['batch_stats']['bn3_3']) == {'mean', 'var'}
  assert v['params']['fc6']['kernel'].shape == (25088, 4096)
  s = helpers.shapes(squeezenet('1_1'), (1, 32, 32, 3))['params']
  assert set(s) == {'conv1', 'conv10'} | {f'fire{i}' for i in range(2, 10)}
  assert set(s['fire9']) == {'squeeze', 'expand1x1', 'expand3x3'}
  assert s['fire9']['expand3x3']['kernel'].shape == (3, 3, 64, 256)


def _torch_adaptive_avg(x: np.ndarray, out: int) -> np.ndarray:
  """torch's AdaptiveAvgPool2d by its definition, one bin at a time (NHWC)."""
  h, w = x.shape[1:3]
  y = np.zeros((x.shape[0], out, out, x.shape[3]), np.float64)
  for i in range(out):
    h0, h1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
    for j in range(out):
      w0, w1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize('hw', [(13, 13), (6, 6), (12, 18), (1, 1), (5, 9), (7, 3)])
def test_adaptive_avg_pool_matches_torch_bins(hw):
  x = np.random.default_rng(0).normal(size=(2, *hw, 3)).astype(np.float32)
  y = AdaptiveAvgPool((6, 6)).apply({}, x)
  np.testing.assert_allclose(y, _torch_adaptive_avg(x, 6), rtol=1e-5, atol=1e-6)
  assert adaptive_bins(13, 6) == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]


def test_ceil_max_pool_matches_torch_output_size():
  for size in range(3, 60):
    torch_out = math.ceil((size - 3) / 2) + 1  # padding 0, so the last window starts inside
    assert (size + ceil_pool_padding(size, 3, 2) - 3) // 2 + 1 == torch_out
  # The padded cells are -inf: an all-negative input keeps its values (zeros would win).
  x = -1.0 - np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
  y = CeilMaxPool().apply({}, x)
  assert y.shape == (2, 2, 2, 1)
  np.testing.assert_array_equal(y[0, :, :, 0], [[-1.0, -3.0], [-9.0, -11.0]])


# vgg_tiny trains with BatchNorm: its plain twin runs the same code less the norms.
TINY = {
  'alexnet_tiny': (alexnet_tiny, 64),
  'vgg_tiny_bn': (lambda: vgg_tiny(batch_norm=True), 32),
  'squeezenet_tiny': (squeezenet_tiny, 32),
}


@pytest.mark.parametrize('name', list(TINY))
def test_train_step_is_finite_and_dropout_only_in_training(name):
  build, size = TINY[name]
  model = build()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
  labels = jnp.array([3, 7])
  variables = _jit(model.init)(helpers.key(), x)
  params, stats = variables['params'], variables.get('batch_stats', {})
  assert bool(stats) == (name == 'vgg_tiny_bn')

  def loss_fn(params, rng):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': rng},
    )
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return loss, (logits, updates.get('batch_stats', {}))

  @_jit
  def step(params, rng):
    # One compiled function for both modes: compiling is most of this test's time on XLA:CPU.
    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng)
    eval_logits = model.apply({'params': params, 'batch_stats': stats}, x, rngs={'dropout': rng})
    return loss, grads, logits, new_stats, eval_logits

  loss, grads, train1, new_stats, eval1 = step(params, helpers.key(1))
  assert bool(jnp.isfinite(loss)) and train1.shape == (2, 10)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  if stats:
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, new_stats)
    assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'

  _, _, train2, _, eval2 = step(params, helpers.key(2))
  _, _, train1_again, _, _ = step(params, helpers.key(1))
  # Training: the dropout mask follows the rng.
  assert not np.allclose(train1, train2)
  np.testing.assert_array_equal(train1, train1_again)
  # Eval: no dropout, whatever rng is passed.
  np.testing.assert_array_equal(eval1, eval2)
  assert eval1.dtype == jnp.float32


def test_bfloat16_compute_keeps_float32_params_and_logits():
  for model in (vgg_tiny(batch_norm=True, dtype=jnp.bfloat16), squeezenet_tiny(dtype=jnp.bfloat16)):
    variables = helpers.shapes(model, (1, 32, 32, 3))
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    out = jax.eval_shape(
      lambda v, x, model=model: model.apply(v, x, features=True),
      variables,
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    assert out['stage3'].dtype == jnp.bfloat16 and out['logits'].dtype == jnp.float32


def test_bad_values_raise_user_error():
  with pytest.raises(UserError, match=r'AlexNet needs NHWC inputs of at least 63x63'):
    helpers.shapes(alexnet(), (1, 32, 32, 3))
  with pytest.raises(UserError, match=r'VGG needs NHWC inputs of at least 32x32'):
    helpers.shapes(vgg(11), (1, 16, 16, 3))
  with pytest.raises(UserError, match=r'no VGG of depth 15; known depths: \[11, 13, 16, 19\]'):
    vgg(15)
  with pytest.raises(UserError, match=r"no SqueezeNet version '1_2'"):
    squeezenet('1_2')
  with pytest.raises(UserError, match=r'AlexNet.widths needs 5 conv widths, got 3'):
    helpers.shapes(alexnet(widths=(8, 8, 8)), (1, 64, 64, 3))
  with pytest.raises(UserError, match=r'VGG.dropout_rate=1.0; expected a value in \[0, 1\)'):
    helpers.shapes(vgg_tiny(dropout_rate=1.0), (1, 32, 32, 3))
