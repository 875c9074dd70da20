"""DeepLab v3 / v3+: torchvision parameter counts, shapes, the input-size rule, the aux head,
and the head-less ResNet backbone it is built on."""

from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models.deeplab import (
  TINY_BACKBONE,
  aspp_rates_for,
  deeplab_tiny,
  deeplabv3,
  deeplabv3plus,
  deeplabv3plus_tiny,
)
from cnn_jax.models.resnet import resnet


def _apply_shapes(model: nn.Module, input_shape: tuple[int, ...], train: bool = False):
  """(logits, mutated collections) of one apply, as shapes (no compute)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  return jax.eval_shape(
    lambda v, x: model.apply(
      v,
      x,
      train=train,
      mutable=['batch_stats', 'aux_logits'],
      rngs={'dropout': jax.random.key(0)},
    ),
    helpers.shapes(model, (1, *input_shape[1:])),
    x,
  )


# The head-less ResNet (num_classes=0): the backbone of DeepLab and FCN-ResNet.


def test_headless_resnet_has_no_head_and_returns_the_last_feature_map():
  model = resnet(50, num_classes=0)
  params = helpers.shapes(model, (1, 64, 64, 3))['params']
  assert 'head' not in params and 'stage4_block3' in params
  # torchvision's resnet50 less its fc layer (2048 * 1000 + 1000).
  assert helpers.count(params) == 25_557_032 - 2_049_000
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out = jax.eval_shape(model.apply, helpers.shapes(model, (1, 64, 64, 3)), x)
  assert out.shape == (2, 2, 2, 2048)
  feats = jax.eval_shape(
    partial(model.apply, features=True), helpers.shapes(model, (1, 64, 64, 3)), x
  )
  assert {k: v.shape for k, v in feats.items()} == {
    'stem': (2, 16, 16, 64),
    'stage1': (2, 16, 16, 256),
    'stage2': (2, 8, 8, 512),
    'stage3': (2, 4, 4, 1024),
    'stage4': (2, 2, 2, 2048),
  }
  # Parameter names are the classifier's, so ImageNet weights load into the backbone.
  full = helpers.shapes(resnet(50), (1, 64, 64, 3))['params']
  assert set(full) - set(params) == {'head'}
  with pytest.raises(UserError, match='num_classes=-1'):
    helpers.shapes(resnet(18, num_classes=-1), (1, 64, 64, 3))


@pytest.mark.parametrize('output_stride, stage3, stage4', [(16, 16, 16), (8, 8, 8), (32, 16, 32)])
def test_dilated_backbone_feature_strides(output_stride, stage3, stage4):
  model = deeplabv3('resnet18', output_stride=output_stride)
  backbone = model.make_backbone()
  info = models.feature_info(backbone, (64, 64, 3))
  assert info == {
    'stem': (4, 64),
    'stage1': (4, 64),
    'stage2': (8, 128),
    'stage3': (stage3, 256),
    'stage4': (stage4, 512),
  }
  assert backbone.feature_strides() == {k: s for k, (s, _) in info.items()}


# Parameter counts: torchvision.models.segmentation.deeplabv3_resnetN(num_classes=21,
# aux_loss=True / False), sum(p.numel() for p in m.parameters()).
def test_deeplabv3_params_equal_torchvision():
  r50 = helpers.shapes(deeplabv3('resnet50'), (1, 64, 64, 3))['params']
  assert helpers.count(r50) == 42_004_074
  assert set(r50) == {'backbone', 'aspp', 'head', 'classifier', 'aux_head'}
  assert helpers.count(r50['aux_head']) == 1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21
  assert helpers.param_count(deeplabv3('resnet50', aux_loss=False), (1, 64, 64, 3)) == 39_638_869
  assert helpers.param_count(deeplabv3('resnet101'), (1, 64, 64, 3)) == 60_996_202


def test_deeplabv3plus_params():
  params = helpers.shapes(deeplabv3plus('resnet50'), (1, 64, 64, 3))['params']
  assert set(params) == {'backbone', 'aspp', 'decoder', 'classifier'}
  # The decoder: 1x1 256 -> 48 + BN; two separable convs (304 and 256 in, 256 out) + BNs.
  low = 256 * 48 + 2 * 48
  fuse1 = 9 * 304 + 2 * 304 + 304 * 256 + 2 * 256
  fuse2 = 9 * 256 + 2 * 256 + 256 * 256 + 2 * 256
  assert helpers.count(params['decoder']) == low + fuse1 + fuse2
  # v3 without aux, less its 3x3 head conv + BN, plus the decoder.
  assert (
    helpers.count(params) == 39_638_869 - (9 * 256 * 256 + 512) + low + fuse1 + fuse2 == 39_211_461
  )


@pytest.mark.parametrize(
  'model, shape',
  [
    (deeplab_tiny(), (2, 32, 32, 3)),
    (deeplab_tiny(output_stride=8), (1, 40, 64, 3)),
    (deeplab_tiny(output_stride=32, dtype=jnp.bfloat16), (1, 64, 32, 3)),
    (deeplabv3plus_tiny(), (2, 48, 32, 3)),
    (deeplabv3plus_tiny(output_stride=8, separable_aspp=True), (1, 32, 32, 3)),
    (deeplabv3plus('mobilenet_v2_tiny', num_classes=10, aspp_features=16), (1, 64, 64, 3)),
  ],
)
def test_logits_have_the_input_size(model, shape):
  logits, _ = _apply_shapes(model, shape)
  assert logits.shape == (*shape[:3], 10) and logits.dtype == jnp.float32
  assert model.output_size(shape[1]) == shape[1]


def test_aspp_rates_follow_the_output_stride():
  assert aspp_rates_for(16) == (6, 12, 18) and aspp_rates_for(8) == (12, 24, 36)
  assert deeplabv3('resnet50').resolved_aspp_rates() == (12, 24, 36)  # torchvision's
  kernels = helpers.shapes(deeplab_tiny(aspp_rates=(1, 2)), (1, 64, 64, 3))['params']['aspp']
  assert {k for k in kernels} == {'conv1x1', 'atrous1', 'atrous2', 'image_pool', 'project'}
  # 4 branches of 16 channels concatenated into the 1x1 projection.
  assert kernels['project']['conv']['kernel'].shape == (1, 1, 4 * 16, 16)


def test_bad_input_size_raises_one_line_before_compiling():
  msg = (
    'DeepLab v3 (output stride 16) cannot take 250x250 inputs: sizes must be multiples of 16; '
    'nearest valid sizes: 240, 256'
  )
  model = deeplabv3('resnet50', output_stride=16)
  with pytest.raises(UserError) as e:
    helpers.shapes(model, (1, 250, 250, 3))
  assert str(e.value) == msg
  with pytest.raises(UserError, match=r'v3\+ \(output stride 8\) cannot take 36x44 .* 32, 40'):
    helpers.shapes(deeplabv3plus_tiny(output_stride=8), (1, 36, 44, 3))
  with pytest.raises(UserError, match=r'nearest valid sizes: 240, 256 \(height\)$'):
    deeplab_tiny().check_input_size(250, 96)
  with pytest.raises(UserError, match='nearest valid sizes: 16$'):
    deeplab_tiny().output_size(10)


def test_bad_fields_raise_user_error():
  with pytest.raises(UserError, match='output stride 32 only'):
    deeplabv3('mobilenet_v1_tiny', output_stride=16).make_backbone()
  with pytest.raises(UserError, match='output_stride=4'):
    deeplab_tiny(output_stride=4).make_backbone()
  with pytest.raises(UserError, match="version='v4'"):
    deeplab_tiny(version='v4').check_input_size(32, 32)
  with pytest.raises(UserError, match="no feature 'stage9'"):
    helpers.shapes(deeplab_tiny(aux_feature='stage9'), (1, 32, 32, 3))


def test_aux_logits_only_in_training():
  model = deeplab_tiny(dtype=jnp.bfloat16)
  logits, updates = _apply_shapes(model, (2, 32, 32, 3), train=False)
  assert logits.shape == (2, 32, 32, 10) and 'aux_logits' not in updates
  assert 'aux_head' in helpers.shapes(model, (1, 32, 32, 3))['params']  # an eval-mode init has them
  logits, updates = _apply_shapes(model, (2, 32, 32, 3), train=True)
  aux = updates['aux_logits']
  assert [(a.shape, a.dtype) for a in jax.tree.leaves(aux)] == [((2, 32, 32, 10), jnp.float32)]
  assert model.aux_weight == 0.5
  _, updates = _apply_shapes(deeplabv3plus_tiny(), (2, 32, 32, 3), train=True)
  assert 'aux_logits' not in updates


def test_backbone_is_the_registry_model():
  model = deeplab_tiny(backbone_kwargs=dict(TINY_BACKBONE))  # a plain dict is frozen (hashable)
  hash(model)
  params = helpers.shapes(model, (1, 32, 32, 3))['params']['backbone']
  classifier = models.create('resnet_tiny', **TINY_BACKBONE)
  want = jax.tree.map(lambda a: a.shape, helpers.shapes(classifier, (1, 32, 32, 3))['params'])
  del want['head']
  assert jax.tree.map(lambda a: a.shape, params) == want


def _numpy_variables(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
  """Variables shaped like `model.init`'s, filled from numpy: He-normal kernels, BN at identity.

  A jitted random init compiles one random-number program per kernel on XLA:CPU (~0.3 s each).
  """
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, np.float32)
    std = np.sqrt(2 / np.prod(leaf.shape[:-1]))
    return rng.normal(scale=std, size=leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, helpers.shapes(model, input_shape))


def _pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def test_tiny_train_step_with_aux_loss():
  # v3+ with separable ASPP and the aux head: every DeepLab code path in one compile. One atrous
  # rate and XLA's grouped depthwise conv (the shift path, dilation included, has its own tests
  # in test_depthwise.py): 6 s of CPU to compile instead of 10.
  model = deeplabv3plus_tiny(
    aux_loss=True, separable_aspp=True, aspp_rates=(2,), depthwise_impl='grouped'
  )
  x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
  labels = np.random.default_rng(2).integers(0, 10, size=(2, 32, 32))
  variables = _numpy_variables(model, (1, 32, 32, 3))
  params, stats = variables['params'], variables['batch_stats']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats},
      x,
      train=True,
      mutable=['batch_stats', 'aux_logits'],
      rngs={'dropout': helpers.key(1)},
    )
    loss = _pixel_cross_entropy(logits, labels)
    for a in jax.tree.leaves(updates['aux_logits']):  # what the trainer does
      loss = loss + model.aux_weight * _pixel_cross_entropy(a, labels)
    return loss, updates['batch_stats']

  step = jax.jit(
    jax.value_and_grad(loss_fn, has_aux=True),
    compiler_options={
      'xla_backend_optimization_level': 0,
      'xla_llvm_disable_expensive_passes': True,
    },
  )
  (loss, new_stats), grads = jax.device_get(step(params))  # numpy checks: no eager programs
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  # Every branch gets a gradient: aux head, separable ASPP, image pooling, decoder, backbone.
  assert np.abs(grads['aux_head']['out']['kernel']).max() > 0
  assert np.abs(grads['aspp']['atrous1']['dw_conv']['kernel']).max() > 0
  assert np.abs(grads['aspp']['image_pool']['conv']['kernel']).max() > 0
  assert np.abs(grads['decoder']['low_level']['conv']['kernel']).max() > 0
  assert np.abs(grads['backbone']['stem_conv']['kernel']).max() > 0
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), stats, new_stats)
  assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'
