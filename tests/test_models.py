"""Models: parameter counts against the papers / torchvision, the model contract, the registry."""

from functools import partial

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models.resnet import CIFAR_DEPTHS, ResNet

# torchvision.models.resnetN(): sum(p.numel() for p in m.parameters()).
TORCHVISION_PARAMS = {
  'resnet18': 11_689_512,
  'resnet34': 21_797_672,
  'resnet50': 25_557_032,
  'resnet101': 44_549_160,
  'resnet152': 60_192_808,
}


@pytest.mark.parametrize('name', list(TORCHVISION_PARAMS))
def test_imagenet_resnet_params_equal_torchvision(name):
  # Global pooling makes the count independent of the input size: 32x32 traces fastest.
  assert helpers.param_count(models.create(name)) == TORCHVISION_PARAMS[name]


# He et al. 2016, Table 6 (option A shortcuts, 10 classes): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
CIFAR_PARAMS = {
  'resnet20': (269_722, 0.27),
  'resnet32': (464_154, 0.46),
  'resnet44': (658_586, 0.66),
  'resnet56': (853_018, 0.85),
  'resnet110': (1_727_962, 1.7),
}


@pytest.mark.parametrize('name', list(CIFAR_PARAMS))
def test_cifar_resnet_params_match_paper(name):
  exact, paper_millions = CIFAR_PARAMS[name]
  count = helpers.param_count(models.create(name))
  assert count == exact
  digits = len(str(paper_millions).split('.')[1])
  assert round(count / 1e6, digits) == paper_millions


def test_cifar_shortcut_b_adds_projections():
  model = models.create('resnet20', shortcut='B')
  # 1x1 projections + BN at the two stage transitions: 16*32 + 2*32 and 32*64 + 2*64.
  assert helpers.param_count(model) == 269_722 + (16 * 32 + 64) + (32 * 64 + 128)
  params = helpers.shapes(model, (1, 32, 32, 3))['params']
  assert 'proj_conv' in params['stage2_block1'] and 'proj_conv' not in params['stage1_block1']


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152, 20, 32, 44, 56, 110])
def test_plain_nets_have_no_shortcut_params(depth):
  params = helpers.shapes(models.create(f'plain{depth}'), (1, 32, 32, 3))['params']
  assert 'proj' not in jax.tree_util.keystr(params), 'plain net has a shortcut'
  count = sum(p.size for p in jax.tree.leaves(params))
  if depth in CIFAR_DEPTHS:
    assert count == CIFAR_PARAMS[f'resnet{depth}'][0]  # option A shortcuts have no parameters
  else:
    assert count < TORCHVISION_PARAMS[f'resnet{depth}']  # the projections are gone


def test_plain_net_runs():
  model = models.create('resnet_tiny', residual=False, zero_init_residual=True)
  x = jnp.ones((1, 16, 16, 3))
  variables = jax.jit(model.init)(helpers.key(), x)
  # zero_init_residual is ignored without shortcuts: a zero branch would pass no signal.
  assert jnp.all(variables['params']['stage2_block1']['bn2']['scale'] == 1)
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  logits, _ = train_apply(variables, x)
  assert logits.shape == (1, 10) and bool(jnp.all(jnp.isfinite(logits)))
  plain110 = models.create('plain110')
  out = jax.eval_shape(plain110.apply, helpers.shapes(plain110, x.shape), x)
  assert out.shape == (1, 10)


def test_resnet18_features_and_strides():
  feats = jax.eval_shape(
    lambda v, x: models.create('resnet18').apply(v, x, features=True),
    helpers.shapes(models.create('resnet18'), (2, 64, 64, 3)),
    jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32),
  )
  # Strides 4 (7x7/2 conv + 3x3/2 max pool), 4, 8, 16, 32.
  assert {k: v.shape for k, v in feats.items()} == {
    'stem': (2, 16, 16, 64),
    'stage1': (2, 16, 16, 64),
    'stage2': (2, 8, 8, 128),
    'stage3': (2, 4, 4, 256),
    'stage4': (2, 2, 2, 512),
    'pre_logits': (2, 512),
    'logits': (2, 1000),
  }


def test_resnet50_and_cifar_features():
  def shapes(name, size):
    model = models.create(name)
    out = jax.eval_shape(
      lambda v, x: model.apply(v, x, features=True),
      helpers.shapes(model, (1, size, size, 3)),
      jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
    )
    return {k: v.shape[1:] for k, v in out.items()}

  r50 = shapes('resnet50', 64)
  assert r50['stage1'] == (16, 16, 256) and r50['stage4'] == (2, 2, 2048)
  assert r50['pre_logits'] == (2048,)
  # CIFAR layout: stride 1 stem, strides 1, 2, 4.
  assert shapes('resnet20', 32) == {
    'stem': (32, 32, 16),
    'stage1': (32, 32, 16),
    'stage2': (16, 16, 32),
    'stage3': (8, 8, 64),
    'pre_logits': (64,),
    'logits': (10,),
  }
  assert shapes('lenet5', 32) == {
    'stage1': (14, 14, 6),
    'stage2': (5, 5, 16),
    'pre_logits': (84,),
    'logits': (10,),
  }


def test_submodule_names_are_stable():
  params = helpers.shapes(models.create('resnet50'), (1, 32, 32, 3))['params']
  assert {'stem_conv', 'stem_bn', 'stage1_block1', 'stage4_block3', 'head'} <= set(params)
  assert set(params['stage1_block1']) == {
    'conv1',
    'bn1',
    'conv2',
    'bn2',
    'conv3',
    'bn3',
    'proj_conv',
    'proj_bn',
  }
  assert params['stage2_block1']['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert set(helpers.shapes(models.create('lenet5'), (1, 32, 32, 3))['params']) == {
    'conv1',
    'conv2',
    'fc3',
    'fc4',
    'logits',
  }


@pytest.mark.parametrize('name', ['resnet_tiny', 'lenet5'])
def test_train_step_is_finite_and_updates_batch_stats(name):
  model = models.create(name)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 32, 32, 3)), jnp.float32)
  labels = jnp.array([3, 7])
  variables = jax.jit(model.init)(helpers.key(), x)
  params, stats = variables['params'], variables.get('batch_stats', {})

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats}, x, train=True, mutable=['batch_stats']
    )
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return loss, updates.get('batch_stats', {})

  (loss, new_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  assert bool(jnp.isfinite(loss))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
  if name == 'lenet5':
    assert not stats and not new_stats  # no BatchNorm
  else:
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, new_stats)
    assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'
  # Eval mode uses the running statistics and leaves them alone.
  logits = jax.jit(model.apply)({'params': params, 'batch_stats': new_stats}, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


def test_norm_axis_name_averages_batch_stats_across_devices():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 3)), jnp.float32)
  variables = jax.jit(models.create('resnet_tiny').init)(helpers.key(), x)

  @partial(jax.jit, static_argnums=0)
  def stats(model, x):
    _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    return updates['batch_stats']

  whole = stats(models.create('resnet_tiny'), x)
  synced = models.create('resnet_tiny', norm_axis_name='batch')
  per_device = jax.vmap(lambda xs: stats(synced, xs), axis_name='batch')(x.reshape(2, 2, 8, 8, 3))
  local = jax.vmap(lambda xs: stats(models.create('resnet_tiny'), xs))(x.reshape(2, 2, 8, 8, 3))
  for w, p in zip(jax.tree.leaves(whole), jax.tree.leaves(per_device), strict=True):
    np.testing.assert_allclose(p[0], w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p[1], w, rtol=1e-4, atol=1e-5)
  # Without the axis name each half keeps its own statistics (so the check above can fail).
  leaf = jax.tree.leaves(local)[0]
  assert not np.allclose(leaf[0], leaf[1])


def test_zero_init_residual_zeroes_last_bn_scale():
  x = jnp.ones((1, 8, 8, 3))
  model = models.create('resnet_tiny', zero_init_residual=True)
  params = jax.jit(model.init)(helpers.key(), x)['params']
  block = params['stage2_block1']
  assert not jnp.any(block['bn2']['scale']) and jnp.all(block['bn1']['scale'] == 1)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.create('resnet_tiny', dtype=jnp.bfloat16)
  variables = helpers.shapes(model, (1, 8, 8, 3))
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True),
    variables,
    jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32),
  )
  assert out['stage3'].dtype == jnp.bfloat16 and out['logits'].dtype == jnp.float32


def test_create_overrides_fields():
  model = models.create('resnet50', num_classes=37)
  assert isinstance(model, ResNet) and model.num_classes == 37 and model.block == 'bottleneck'
  assert models.create('resnet20').num_classes == 10
  assert models.create('resnet18').num_classes == 1000


def test_list_models():
  assert models.list_models('resnet1*') == ['resnet101', 'resnet110', 'resnet152', 'resnet18']
  names = models.list_models()
  for depth in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110):
    assert f'resnet{depth}' in names and f'plain{depth}' in names
  assert {'lenet5', 'resnet_tiny'} <= set(names)
  assert models.list_models('nothing*') == []


def test_unknown_model_names_close_matches():
  with pytest.raises(UserError) as e:
    models.create('resnet5')
  message = str(e.value)
  assert message.startswith("unknown model 'resnet5'; closest registered names: ")
  assert 'resnet50' in message and 'resnet56' in message
  assert message.endswith('see cnn_jax.models.list_models()')


def test_bad_field_values_raise_user_error():
  expected = r"ResNet.block='wide'; expected one of \('basic', 'bottleneck'\)"
  with pytest.raises(UserError, match=expected):
    helpers.shapes(models.create('resnet18', block='wide'), (1, 32, 32, 3))
  with pytest.raises(UserError, match='no ResNet of depth 19'):
    models.resnet(19)
