"""ResNet variants: SE-ResNet, dilated (DeepLab) backbones, deformable stages."""

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models import summary
from cnn_jax.models.resnet import DILATION_FOR_OUTPUT_STRIDE, resnet, resnet_tiny, seresnet
from cnn_jax.nn.deformable import DeformableConv


def _feature_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, ...]]:
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True), helpers.shapes(model, x.shape), x
  )
  return {k: v.shape[1:] for k, v in out.items()}


def test_seresnet50_params_equal_reference():
  # timm's seresnet50 / Hu et al. 2018 (reduction 16): ResNet-50's 25,557,032 plus 2,530,992 in
  # the SE layers' 1x1 convs with biases.
  model = seresnet(50)
  assert model.se_reduction == 16
  assert helpers.param_count(model) == 28_088_024
  se = helpers.shapes(model, (1, 32, 32, 3))['params']['stage1_block1']['se']
  assert se['reduce']['kernel'].shape == (1, 1, 256, 16) and se['reduce']['bias'].shape == (16,)
  assert se['expand']['kernel'].shape == (1, 1, 16, 256) and se['expand']['bias'].shape == (256,)
  assert summary.summarize(model, (224, 224, 3)).total_params == 28_088_024


@pytest.mark.parametrize('output_stride', [32, 16, 8])
def test_dilation_gives_deeplab_output_strides(output_stride):
  model = resnet(50, replace_stride_with_dilation=DILATION_FOR_OUTPUT_STRIDE[output_stride])
  shapes = _feature_shapes(model, 64)
  assert shapes['stage4'] == (64 // output_stride, 64 // output_stride, 2048)
  strides = model.feature_strides()
  assert strides['stage4'] == output_stride
  for name, stride in strides.items():
    assert shapes[name][:2] == (64 // stride, 64 // stride), name
  # Dilation changes no parameter shapes: ImageNet weights load into the atrous backbone.
  assert helpers.param_count(model) == 25_557_032


def test_dilated_stages_follow_torchvision():
  # Output stride 8: stage3 dilates by 2 and stage4 by 4, but the first block of each dilated
  # stage keeps the previous stage's dilation (torchvision's `previous_dilation`).
  dilations = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and module.name == 'conv2':
      dilations[module.scope.path[0]] = (module.kernel_dilation, module.padding, module.strides)
    if isinstance(module, DeformableConv):
      dilations[module.scope.path[0]] = (module.dilation, module.padding, module.strides)
    return next_fun(*args, **kwargs)

  # Stage 4 deformable: its 3x3 convs get the same dilation, padding and stride.
  model = resnet(50, replace_stride_with_dilation=(False, True, True), deformable_stages=(4,))
  with nn.intercept_methods(record):
    helpers.trace_init(model, (1, 64, 64, 3))
  assert dilations['stage2_block1'] == (1, 1, 2)
  assert dilations['stage3_block1'] == (1, 1, 1) and dilations['stage3_block2'] == (2, 2, 1)
  assert dilations['stage4_block1'] == (2, 2, 1) and dilations['stage4_block3'] == (4, 4, 1)
  # Basic blocks dilate both 3x3 convs; CIFAR nets have flags for stages 2 and 3 only.
  tiny = resnet_tiny(replace_stride_with_dilation=(False, True))
  assert _feature_shapes(tiny, 16)['stage3'] == (8, 8, 16)
  assert tiny.feature_strides() == {'stem': 1, 'stage1': 1, 'stage2': 2, 'stage3': 2}


def _train_step(model: nn.Module) -> tuple[dict, dict]:
  """One loss/gradient evaluation in train mode on a fixed batch; returns (params, grads)."""
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)), jnp.float32)
  labels = jnp.array([3, 7])
  variables = jax.jit(model.init)(helpers.key(), x)
  params, stats = variables['params'], variables['batch_stats']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
    )
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return loss, updates['batch_stats']

  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert bool(jnp.isfinite(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  return params, grads


def test_se_deformable_dilated_tiny_train_step_is_finite():
  # One compile for all three options (compiling dominates on 2 CPU cores): SE with C / 2 hidden
  # channels everywhere; stages 2 and 3 dilated, so stage 3's deformable convs sample a grid of
  # dilation 2 (its single block keeps stage 2's dilation).
  model = resnet_tiny(
    se_reduction=2, deformable_stages=(3,), replace_stride_with_dilation=(True, True)
  )
  params, grads = _train_step(model)
  se = params['stage3_block1']['se']
  assert se['reduce']['kernel'].shape == (1, 1, 16, 8)
  assert float(jnp.abs(grads['stage3_block1']['se']['reduce']['kernel']).max()) > 0
  assert 'offset' not in params['stage2_block1']['conv1']
  conv = params['stage3_block1']['conv1']
  assert conv['kernel'].shape == (3, 3, 8, 16)  # the regular conv's layout: weights load as-is
  assert conv['offset']['kernel'].shape == (3, 3, 8, 27)  # 2*9 offsets + 9 modulation logits
  # The zero-initialised offset conv still receives gradient: the offsets can learn.
  offset_grad = grads['stage3_block1']['conv2']['offset']['kernel']
  assert float(jnp.abs(offset_grad).max()) > 0


def test_deformable_resnet50_params():
  # DCNv2's conv3_x-conv5_x: 13 bottleneck 3x3 convs gain an offset conv of 27 * (9 C + 1).
  model = resnet(50, deformable_stages=(2, 3, 4))
  offsets = 4 * 27 * (9 * 128 + 1) + 6 * 27 * (9 * 256 + 1) + 3 * 27 * (9 * 512 + 1)
  assert helpers.param_count(model) == 25_557_032 + offsets == 26_428_295


def test_bad_variant_fields_raise_user_error():
  with pytest.raises(UserError, match=r'deformable_stages=\(4,\); stages are numbered 1\.\.3'):
    helpers.shapes(resnet_tiny(deformable_stages=(4,)), (1, 16, 16, 3))
  with pytest.raises(UserError, match='dilates a stage the net lacks'):
    helpers.shapes(resnet_tiny(replace_stride_with_dilation=(False, False, True)), (1, 16, 16, 3))
  with pytest.raises(UserError, match='se_reduction=8 leaves no channels of 4'):
    helpers.shapes(resnet_tiny(se_reduction=8), (1, 16, 16, 3))
  with pytest.raises(UserError, match='se_reduction=-1'):
    resnet_tiny(se_reduction=-1).feature_strides()
