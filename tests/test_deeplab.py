"""DeepLab v3 / v3+: torchvision parameter counts, shapes, the input-size rule, the aux head,
the head-less ResNet backbone it is built on, the paper's multi-grid and evaluation output
stride, and ImageNet weights into the backbone (init_from)."""

from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

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
from cnn_jax.models.resnet import DILATION_FOR_OUTPUT_STRIDE, resnet
from cnn_jax.weights import npz, transfer
from cnn_jax.weights import torchvision as tvw
from configs import deeplab as deeplab_config


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


# The paper's multi-grid and evaluation output stride (Chen et al. 2017, Sections 3.2 and 4).


def _dilations(model: nn.Module, input_shape: tuple[int, ...], train: bool) -> dict[str, int]:
  """The dilation of every 3x3 conv of the backbone's last stage and of the ASPP, by module path,
  as one apply (train or eval) calls them; and the ASPP's input shape under 'aspp_input'."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    path = '/'.join(module.scope.path)
    if isinstance(module, nn.Conv) and tuple(module.kernel_size) == (3, 3):
      if path.startswith(('backbone/stage4', 'aspp/')):
        seen[path] = module.kernel_dilation
    if path == 'aspp' and context.method_name == '__call__':
      seen['aspp_input'] = args[0].shape
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    _apply_shapes(model, input_shape, train=train)
  return seen


def test_multi_grid_rates_follow_the_paper_and_none_is_torchvisions():
  # Stage 4's three blocks: the stage's rate times (1, 2, 4), the first block included.
  os16, os8 = DILATION_FOR_OUTPUT_STRIDE[16], DILATION_FOR_OUTPUT_STRIDE[8]
  grid = resnet(50, replace_stride_with_dilation=os16, multi_grid=(1, 2, 4))
  assert grid.block_dilations() == ((1, 1, 1), (1, 1, 1, 1), (1,) * 6, (2, 4, 8))
  grid = grid.clone(replace_stride_with_dilation=os8)
  assert grid.block_dilations() == ((1, 1, 1), (1, 1, 1, 1), (1, 2, 2, 2, 2, 2), (4, 8, 16))
  # torchvision's rule (no multi-grid): a dilated stage's first block keeps the previous rate.
  assert resnet(50, replace_stride_with_dilation=os16).block_dilations()[3] == (1, 2, 2)
  assert resnet(50, replace_stride_with_dilation=os8).block_dilations()[3] == (2, 4, 4)
  assert resnet(50).block_dilations() == ((1, 1, 1), (1, 1, 1, 1), (1,) * 6, (1, 1, 1))
  # At output stride 32 the grid still multiplies (the TensorFlow reference's unit rates).
  assert resnet(101, multi_grid=(1, 2, 4)).block_dilations()[3] == (1, 2, 4)
  # The factories: the paper's grid on ResNet-50/101/152, none elsewhere.
  assert deeplabv3('resnet50').make_backbone().block_dilations()[3] == (4, 8, 16)  # OS 8
  assert deeplabv3plus('resnet101').make_backbone().block_dilations()[3] == (2, 4, 8)  # OS 16
  assert deeplabv3plus('resnet101').make_backbone(8).block_dilations()[3] == (4, 8, 16)
  assert deeplabv3('resnet50', multi_grid=()).make_backbone().block_dilations()[3] == (2, 4, 4)
  assert deeplabv3('resnet18').multi_grid == () and deeplabv3plus('mobilenet_v2').multi_grid == ()
  assert deeplab_tiny().multi_grid == ()


def test_multi_grid_and_eval_stride_are_what_the_convs_run():
  # A tiny backbone with the paper's three blocks in stage 4 (basic blocks: both 3x3 convs dilate),
  # trained at output stride 16 and evaluated at 8.
  model = deeplab_tiny(
    backbone_kwargs=dict(TINY_BACKBONE, stage_sizes=(1, 1, 1, 3)),
    multi_grid=(1, 2, 4),
    eval_output_stride=8,
    aux_loss=False,
  )
  for train, stride, rates in ((True, 16, (2, 4, 8)), (False, 8, (4, 8, 16))):
    seen = _dilations(model, (1, 32, 32, 3), train)
    for j, rate in enumerate(rates, start=1):
      assert seen[f'backbone/stage4_block{j}/conv1'] == seen[f'backbone/stage4_block{j}/conv2']
      assert seen[f'backbone/stage4_block{j}/conv1'] == rate, (train, j)
    assert seen['aspp_input'][1:3] == (32 // stride, 32 // stride)
    aspp = tuple(seen[f'aspp/atrous{i}/conv'] for i in (1, 2, 3))
    assert aspp == aspp_rates_for(stride) == ((6, 12, 18) if train else (12, 24, 36))


def test_eval_output_stride_keeps_the_parameters_and_scales_given_rates():
  base = deeplabv3plus_tiny(aspp_rates=(1, 2, 3))
  trees = [
    jax.tree.map(lambda a: (a.shape, a.dtype), helpers.shapes(m, (1, 32, 32, 3)))
    for m in (base, base.clone(eval_output_stride=8), base.clone(output_stride=8))
  ]
  assert trees[0] == trees[1] == trees[2]
  model = base.clone(eval_output_stride=8)
  assert model.output_stride_for(True) == 16 and model.output_stride_for(False) == 8
  # The rates given are the training stride's: halving the stride doubles them.
  assert model.resolved_aspp_rates() == (1, 2, 3) and model.resolved_aspp_rates(8) == (2, 4, 6)
  for train, stride, rates in ((True, 16, (1, 2, 3)), (False, 8, (2, 4, 6))):
    logits, _ = _apply_shapes(model, (2, 32, 32, 3), train=train)
    assert logits.shape == (2, 32, 32, 10)
    seen = _dilations(model, (1, 32, 32, 3), train)
    assert seen['aspp_input'][1:3] == (32 // stride,) * 2
    assert tuple(seen[f'aspp/atrous{i}/conv'] for i in (1, 2, 3)) == rates
  # No eval stride: evaluation runs at the training one, as before.
  assert base.output_stride_for(False) == 16 and base.resolved_aspp_rates(16) == (1, 2, 3)


def test_multi_grid_and_eval_stride_change_no_parameter_count():
  three = dict(TINY_BACKBONE, stage_sizes=(1, 1, 1, 3))
  trees = [
    jax.tree.map(lambda a: a.shape, helpers.shapes(m, (1, 32, 32, 3)))
    for m in (
      deeplab_tiny(backbone_kwargs=three),
      deeplab_tiny(backbone_kwargs=three, multi_grid=(1, 2, 4), eval_output_stride=8),
    )
  ]
  assert trees[0] == trees[1]
  assert helpers.param_count(deeplabv3('resnet50', multi_grid=()), (1, 64, 64, 3)) == 42_004_074
  assert helpers.param_count(deeplabv3plus('resnet50', eval_output_stride=8), (1, 64, 64, 3)) == (
    39_211_461
  )
  assert deeplabv3plus('resnet50').multi_grid == (1, 2, 4)


def test_eval_stride_input_sizes_and_bad_fields():
  # Sizes must suit both strides: 40 is a multiple of 8, not of 16.
  with pytest.raises(
    UserError,
    match=r'v3 \(output stride 8, 16 in evaluation\) cannot take 40x40 .* multiples of 16; '
    'nearest valid sizes: 32, 48$',
  ):
    deeplab_tiny(output_stride=8, eval_output_stride=16).check_input_size(40, 40)
  deeplab_tiny(eval_output_stride=8).check_input_size(48, 48)
  with pytest.raises(UserError, match=r'eval_output_stride=4; expected one of \[8, 16, 32\] or'):
    deeplab_tiny(eval_output_stride=4).make_backbone()
  with pytest.raises(UserError, match=r'aspp_rates=\(3,\) at output stride 8 give rates'):
    deeplab_tiny(output_stride=8, eval_output_stride=16, aspp_rates=(3,)).resolved_aspp_rates(16)
  with pytest.raises(UserError, match=r'multi_grid=\(1, 2, 4\): .* which has 1, or \(\)'):
    helpers.shapes(deeplab_tiny(multi_grid=(1, 2, 4)), (1, 32, 32, 3))
  with pytest.raises(UserError, match="backbone 'mobilenet_v2_tiny' has no multi-grid"):
    deeplabv3plus('mobilenet_v2_tiny', multi_grid=(1, 2, 4)).make_backbone()
  with pytest.raises(UserError, match=r'multi_grid=\(0,\); expected unit rates >= 1'):
    deeplab_tiny(multi_grid=(0,)).make_backbone()


def test_pets_config_is_the_papers_recipe():
  model = deeplab_config.get_config('pets').model
  assert (model.output_stride, model.eval_output_stride) == (16, 8)
  assert model.multi_grid == (1, 2, 4) and model.aspp_rates == (6, 12, 18)
  offline = deeplab_config.get_config().model
  assert offline.eval_output_stride is None and offline.multi_grid == ()


# ImageNet weights into the backbone: a torchvision-named ResNet state dict (a fake: `export` of
# random variables) of ResNet-50's layout (bottleneck blocks: conv1-3, bn1-3, downsample in each
# stage's first block) at the tiny widths.
_BOTTLENECK = dict(TINY_BACKBONE, block='bottleneck')


def _torchvision_resnet(path) -> dict:
  classifier = models.create('resnet_tiny', **_BOTTLENECK)
  shapes = tvw._target(classifier, (32, 32, 3))
  rng = np.random.default_rng(3)
  flat = {k: rng.standard_normal(s.shape, dtype=np.float32) for k, s in shapes.items()}
  state = tvw.export(classifier, traverse_util.unflatten_dict(flat))
  assert 'layer4.0.downsample.0.weight' in state and 'fc.weight' in state
  np.savez(path, **state)
  return traverse_util.unflatten_dict(flat)  # ours, with the classifier's 'head'


def _init_from(model, path: str, load: str) -> tuple[dict, dict]:
  config = deeplab_config.get_config('pets')
  config.init_from.path, config.init_from.load = path, load
  fresh = _numpy_variables(model, (1, 32, 32, 3))
  return fresh, transfer.initialise(config, model, fresh, (32, 32, 3))


def test_init_from_torchvision_resnet_weights_loads_the_backbone(tmp_path):
  model = deeplabv3plus_tiny(backbone_kwargs=_BOTTLENECK, eval_output_stride=8)
  want = _torchvision_resnet(tmp_path / 'resnet.npz')
  # The steps configs/deeplab.py documents: the backbone's weights under 'backbone/', then
  # init_from with load='^backbone/'.
  v = tvw.load(model.make_backbone(), tmp_path / 'resnet.npz', skip='^fc[.]')
  npz.save_npz(str(tmp_path / 'backbone.npz'), {c: {'backbone': t} for c, t in v.items()})
  fresh, got = _init_from(model, str(tmp_path / 'backbone.npz'), '^backbone/')
  for collection in ('params', 'batch_stats'):
    loaded = traverse_util.flatten_dict(got[collection]['backbone'])
    source = traverse_util.flatten_dict(want[collection])
    assert set(source) - set(loaded) == (
      {('head', 'kernel'), ('head', 'bias')} if collection == 'params' else set()
    )
    for key, value in loaded.items():
      np.testing.assert_array_equal(value, source[key], err_msg='/'.join(key))
    for name in set(got[collection]) - {'backbone'}:  # ASPP, decoder, classifier: fresh
      jax.tree.map(np.testing.assert_array_equal, got[collection][name], fresh[collection][name])


def test_init_from_a_torchvision_npz_directly(tmp_path):
  # init_from.path names the classifier's converted torchvision weights: its backbone part goes
  # under 'backbone/', the classifier head is left out, the rest of DeepLab stays fresh.
  model = deeplabv3plus_tiny(backbone_kwargs=_BOTTLENECK)
  want = _torchvision_resnet(tmp_path / 'resnet.npz')
  fresh, got = _init_from(model, str(tmp_path / 'resnet.npz'), '^backbone/')
  loaded = traverse_util.flatten_dict(got['params']['backbone'])
  source = traverse_util.flatten_dict(want['params'])
  assert set(source) - set(loaded) == {('head', 'kernel'), ('head', 'bias')}
  for key, value in loaded.items():
    np.testing.assert_array_equal(value, source[key], err_msg='/'.join(key))
  for name in set(got['params']) - {'backbone'}:
    jax.tree.map(np.testing.assert_array_equal, got['params'][name], fresh['params'][name])
