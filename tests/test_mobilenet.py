"""MobileNet v1 / v2: parameter counts and MACs against the papers and torchvision, features."""

from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models import mobilenet, summary
from cnn_jax.models.mobilenet import InvertedResidual, make_divisible
from cnn_jax.nn.layers import BatchNorm, DepthwiseConv, PointwiseConv


def _init(model, input_shape, seed: int = 0) -> dict:
  """He-normal kernels, unit BN scales and variances, zero biases and means, from numpy.

  Skips compiling `model.init` (2-3 s for a tiny MobileNet on XLA:CPU).
  """
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, np.sqrt(2 / np.prod(s.shape[:-1])), s.shape).astype(np.float32)
    return (np.ones if name in ('scale', 'var') else np.zeros)(s.shape, np.float32)

  return jax.tree_util.tree_map_with_path(leaf, helpers.shapes(model, input_shape))


def test_params_equal_references():
  # v1: Keras' MobileNet(alpha=1.0) with BN and a biased classifier; v2: torchvision.
  assert helpers.param_count(mobilenet.mobilenet_v1()) == 4_231_976
  assert helpers.param_count(mobilenet.mobilenet_v2()) == 3_504_872
  # Howard et al. Table 6: 0.50 MobileNet-224 has 1.3 M parameters, 0.25 MobileNet 0.5 M.
  assert round(helpers.param_count(mobilenet.mobilenet_v1(width_multiplier=0.5)) / 1e6, 1) == 1.3
  assert round(helpers.param_count(mobilenet.mobilenet_v1(width_multiplier=0.25)) / 1e6, 1) == 0.5


def test_macs_match_papers():
  # Howard et al. Table 8: 569 M mult-adds; Sandler et al. Table 4 / torchvision: 300 M (0.30 G).
  v1 = summary.summarize(mobilenet.mobilenet_v1(), (224, 224, 3))
  v2 = summary.summarize(mobilenet.mobilenet_v2(), (224, 224, 3))
  assert v1.total_macs == 568_740_352 and v2.total_macs == 300_774_272
  assert v2.total_params == 3_504_872
  dw = [r for r in v2.rows if r.type == 'DepthwiseConv']
  assert len(dw) == 17 and dw[0].macs == 112 * 112 * 32 * 9


def test_make_divisible_is_torchvision_rounding():
  assert [make_divisible(c * 0.5) for c in (32, 16, 24, 64, 96, 160, 320)] == [
    16,
    8,
    16,
    32,
    48,
    80,
    160,
  ]
  assert make_divisible(1280 * 1.4) == 1792 and make_divisible(3) == 8
  assert make_divisible(12.0, 8) == 16  # 12 rounds half up
  assert make_divisible(10.0, 8) == 16  # 8 would be more than 10% below 10


def test_block_names_mirror_torchvision_features():
  v2 = helpers.shapes(mobilenet.mobilenet_v2(), (1, 32, 32, 3))['params']
  assert set(v2) == {'stem_conv', 'stem_bn', 'last_conv', 'last_bn', 'head'} | {
    f'block{i}' for i in range(1, 18)
  }
  assert set(v2['block1']) == {'dw_conv', 'dw_bn', 'project_conv', 'project_bn'}  # t = 1
  assert v2['block2']['expand_conv']['kernel'].shape == (1, 1, 16, 96)
  assert v2['block2']['dw_conv']['kernel'].shape == (3, 3, 1, 96)  # nn.Conv's grouped layout
  v1 = helpers.shapes(mobilenet.mobilenet_v1(), (1, 32, 32, 3))['params']
  assert len([k for k in v1 if k.startswith('block')]) == 13
  assert set(v1['block13']) == {'dw_conv', 'dw_bn', 'pw_conv', 'pw_bn'}


@pytest.mark.parametrize('name', ['mobilenet_v1', 'mobilenet_v2'])
def test_feature_strides(name):
  model = getattr(mobilenet, name)()
  x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  feats = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True), helpers.shapes(model, x.shape), x
  )
  spatial = {k: v.shape[1] for k, v in feats.items() if v.ndim == 4}
  assert spatial == {
    'stem': 112,
    'stage1': 112,
    'stage2': 56,
    'stage3': 28,
    'stage4': 14,
    'stage5': 7,
  }
  channels = {'mobilenet_v1': (64, 128, 256, 512, 1024), 'mobilenet_v2': (16, 24, 32, 96, 320)}
  assert tuple(feats[f'stage{i}'].shape[-1] for i in range(1, 6)) == channels[name]
  assert feats['pre_logits'].shape == (1, 1024 if name == 'mobilenet_v1' else 1280)


def test_inverted_residual_adds_shortcut_only_when_shapes_match():
  x = np.random.default_rng(0).normal(size=(1, 4, 4, 8)).astype(np.float32)
  kw = dict(
    conv=partial(nn.Conv, use_bias=False),
    depthwise=partial(DepthwiseConv, padding=1),
    norm=partial(nn.BatchNorm, use_running_average=True),
  )
  for features, strides, residual in ((8, 1, True), (16, 1, False), (8, 2, False)):
    block = InvertedResidual(features, expansion=6, strides=strides, **kw)
    variables = _init(block, x.shape)
    # A zero scale on the projection's BN zeroes the branch: what is left is the shortcut.
    bn = variables['params']['project_bn']
    variables['params']['project_bn'] = {'scale': jnp.zeros_like(bn['scale']), 'bias': bn['bias']}
    y = jax.jit(block.apply)(variables, x)
    np.testing.assert_allclose(y, x if residual else jnp.zeros_like(y), atol=1e-6)


@pytest.mark.parametrize('name', ['mobilenet_v1_tiny', 'mobilenet_v2_tiny'])
def test_tiny_train_step_is_finite(name):
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  labels = jnp.array([3, 7])
  model = getattr(mobilenet, name)(dropout_rate=0.5)

  variables = _init(model, x.shape)

  @jax.jit
  def step(params, stats):
    def loss_fn(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': stats},
        x,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': helpers.key(5)},
      )
      loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
      return loss, updates['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats

  # Checks in numpy: eager jnp ops would compile once per leaf shape (seconds in all).
  stats = variables['batch_stats']
  loss, grads, new_stats = jax.device_get(step(variables['params'], stats))
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert np.abs(grads['block2']['dw_conv']['kernel']).max() > 0
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats, new_stats)
  assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'


def test_depthwise_impls_agree_in_the_model():
  # Gradients of both forms are compared layer by layer in test_depthwise.py; here the forward.
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  variables = _init(mobilenet.mobilenet_v2_tiny(), x.shape)

  @jax.jit
  def both(variables, x):
    return [
      mobilenet.mobilenet_v2_tiny(depthwise_impl=impl).apply(variables, x, features=True)
      for impl in ('shift', 'grouped')
    ]

  shift, grouped = both(variables, x)
  for k in shift:
    np.testing.assert_allclose(shift[k], grouped[k], rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize('name', ['mobilenet_v1_tiny', 'mobilenet_v2_tiny'])
def test_tiny_summary_and_features(name):
  model = getattr(mobilenet, name)()
  s = summary.summarize(model, (32, 32, 3))
  assert s.total_params == helpers.param_count(model) and s.total_macs > 0
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  feats = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True), helpers.shapes(model, x.shape), x
  )
  assert [feats[f'stage{i}'].shape[1] for i in range(1, 6)] == [16, 8, 4, 2, 1]
  assert feats['stem'].shape[1] == 16 and feats['logits'].shape == (2, 10)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = mobilenet.mobilenet_v2_tiny(dtype=jnp.bfloat16)
  variables = helpers.shapes(model, (1, 32, 32, 3))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True),
    variables,
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )
  assert out['stage5'].dtype == jnp.bfloat16 and out['logits'].dtype == jnp.float32


def test_bad_field_values_raise_user_error():
  with pytest.raises(UserError, match=r'MobileNetV2.width_multiplier=0; expected a positive'):
    helpers.param_count(mobilenet.mobilenet_v2_tiny(width_multiplier=0))
  with pytest.raises(
    UserError, match=r'MobileNetV1.dropout_rate=1.0; expected a value in \[0, 1\)'
  ):
    helpers.param_count(mobilenet.mobilenet_v1_tiny(dropout_rate=1.0))
  with pytest.raises(UserError, match=r"MobileNetV1.depthwise_impl='cuda'; expected 'auto'"):
    helpers.param_count(mobilenet.mobilenet_v1_tiny(depthwise_impl='cuda'))


def _max_rel_err(a, b) -> float:
  return max(
    float(np.max(np.abs(np.asarray(x, np.float64) - y)) / (np.max(np.abs(y)) + 1e-12))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


@pytest.mark.parametrize(
  'kw',
  [
    dict(),  # the MobileNet case: 1x1, stride 1, padding 0, no bias -> matmul on CPU
    dict(use_bias=True, padding='SAME'),
    dict(strides=2),  # not pointwise: nn.Conv's own code
  ],
)
def test_pointwise_conv_equals_nn_conv_with_the_same_params(kw):
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype(np.float32)
  ref, own = nn.Conv(16, (1, 1), **kw), PointwiseConv(16, (1, 1), **kw)
  variables = ref.init(helpers.key(), x)
  assert jax.tree.map(jnp.shape, own.init(helpers.key(), x)) == jax.tree.map(jnp.shape, variables)
  np.testing.assert_array_equal(  # same init too: same names, shapes, rng order
    jax.tree.leaves(own.init(helpers.key(), x))[0], jax.tree.leaves(variables)[0]
  )
  variables = jax.tree.map(lambda p: p + 0.1, variables)  # a non-zero bias
  if not kw:
    assert own._is_pointwise(jnp.asarray(x))

  def out_and_grads(module):
    def loss(v, x):
      return jnp.sum(jnp.sin(module.apply(v, x)))

    return jax.jit(lambda v, x: (module.apply(v, x), jax.grad(loss, (0, 1))(v, x)))(variables, x)

  assert _max_rel_err(out_and_grads(own), out_and_grads(ref)) < 1e-5


def test_pointwise_impl_is_checked():
  with pytest.raises(UserError, match=r"pointwise conv impl='fast'; expected one of \('auto'"):
    PointwiseConv(4, (1, 1), impl='fast').init(helpers.key(), jnp.zeros((1, 2, 2, 3)))


@pytest.mark.parametrize(
  'kw', [dict(), dict(use_bias=False), dict(use_scale=False), dict(use_running_average=True)]
)
def test_batch_norm_equals_flax(kw):
  # Mean 3 and std 2: the one-pass moments and the affine form see some cancellation.
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(4, 5, 5, 8)) * 2 + 3).astype(np.float32)
  kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5) | kw
  ref, own = nn.BatchNorm(**kw), BatchNorm(**kw)
  variables = ref.init(helpers.key(), x)
  assert jax.tree.map(jnp.shape, own.init(helpers.key(), x)) == jax.tree.map(jnp.shape, variables)
  variables = jax.tree.map(
    lambda p: p + rng.uniform(0.1, 0.5, p.shape).astype(np.float32), variables
  )

  def out_stats_grads(module):
    def loss(params, x):
      y, _ = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y))

    def f(variables, x):
      y, stats = module.apply(variables, x, mutable=['batch_stats'])
      return y, stats, jax.grad(loss, (0, 1))(variables['params'], x)

    return jax.jit(f)(variables, x)

  assert _max_rel_err(out_stats_grads(own), out_stats_grads(ref)) < 1e-5


def test_batch_norm_averages_statistics_over_axis_name():
  x = (np.random.default_rng(1).normal(size=(2, 3, 4, 4, 8)) + 1).astype(np.float32)  # 2 devices

  def run(cls):
    module = cls(use_running_average=False, axis_name='devices')
    variables = jax.vmap(module.init, (None, 0), axis_name='devices')(helpers.key(), x)

    def loss(params, x):
      y, _ = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(y) * jnp.arange(8.0))

    def f(params, x):
      y, stats = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'])
      return y, stats, jax.grad(loss, (0, 1))(params, x)

    params = jax.tree.map(lambda p: p[0], variables['params'])
    return jax.jit(jax.vmap(f, (None, 0), axis_name='devices'))(params, x)

  ours, flax = run(BatchNorm), run(nn.BatchNorm)
  assert _max_rel_err(ours, flax) < 1e-5
  # Statistics over both devices: the same running mean on each.
  np.testing.assert_allclose(ours[1]['batch_stats']['mean'][0], ours[1]['batch_stats']['mean'][1])


def test_v2_uses_pointwise_and_fast_batch_norm_with_nn_conv_params():
  s = summary.summarize(mobilenet.mobilenet_v2(), (224, 224, 3))
  types = {r.path: r.type for r in s.rows}
  assert types['block2/expand_conv'] == 'PointwiseConv' and types['stem_conv'] == 'Conv'
  assert types['block2/expand_bn'] == 'BatchNorm'
  assert s.total_macs == 300_774_272  # 1x1 convs still counted by summary


def test_num_classes_zero_is_a_headless_backbone():
  """DeepLab's backbone: no last 1x1 conv (v2), pool or FC; the stride-32 map and the features."""
  for make, last in (
    (mobilenet.mobilenet_v2_tiny, 'stage5'),
    (mobilenet.mobilenet_v1_tiny, 'stage5'),
  ):
    model = make(num_classes=0)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    variables = jax.eval_shape(lambda x, m=model: m.init(jax.random.key(0), x), x)
    assert not {'head', 'last_conv', 'last_bn'} & set(variables['params'])
    feats = jax.eval_shape(lambda v, x, m=model: m.apply(v, x, features=True), variables, x)
    assert 'logits' not in feats and feats[last].shape[1:3] == (2, 2)
    out = jax.eval_shape(lambda v, x, m=model: m.apply(v, x), variables, x)
    assert out.shape == feats[last].shape


@pytest.mark.parametrize('flags, step', [((False, False, True), 2), ((False, True, True), 4)])
def test_v2_dilation_is_the_strided_net_a_trous(flags, step):
  """Output stride 16 / 8 (DeepLab): the same parameters, and the dilated net's map at every
  `step`-th pixel is the strided net's map exactly (algorithme a trous; eval BN is per pixel)."""
  strided = mobilenet.mobilenet_v2_tiny(num_classes=0)
  dilated = mobilenet.mobilenet_v2_tiny(num_classes=0, replace_stride_with_dilation=flags)
  shape = (2, 64, 64, 3)
  variables = _init(strided, shape)
  assert jax.tree.map(jnp.shape, helpers.shapes(dilated, shape)) == jax.tree.map(
    jnp.shape, variables
  )
  x = jax.random.normal(helpers.key(1), shape)
  a = strided.apply(variables, x, features=True)
  b = dilated.apply(variables, x, features=True)
  assert a['stage5'].shape[1:3] == (2, 2) and b['stage5'].shape[1:3] == (2 * step, 2 * step)
  np.testing.assert_allclose(b['stage5'][:, ::step, ::step], a['stage5'], rtol=1e-4, atol=1e-4)
  assert b['stage2'].shape == a['stage2'].shape  # rows before the dilated ones are untouched
  with pytest.raises(UserError, match='expected 3 flags'):
    helpers.shapes(mobilenet.mobilenet_v2_tiny(replace_stride_with_dilation=(True,)), shape)
