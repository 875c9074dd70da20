"""GoogLeNet's naive Inception option (Szegedy et al. 2015, fig. 2a): no 1x1 reductions."""

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models import summary
from cnn_jax.models.googlenet import INCEPTION_CONFIGS, STEM_WIDTHS, googlenet_tiny

TINY_MODULES = ('inception3a', 'inception4a', 'inception4d', 'inception5a')


def _params(model, size: int = 32) -> dict:
  return helpers.shapes(model, (1, size, size, 3), train=False)['params']


def _width(c: int, width: float = 1 / 8) -> int:
  return max(1, round(c * width))


def test_default_is_the_bottleneck_net():
  # The published count (torchvision, aux heads included) is untouched by the new field.
  assert helpers.count(_params(models.create('googlenet'))) == 13_004_888
  default = _params(googlenet_tiny())
  explicit = _params(googlenet_tiny(naive=False))
  assert jax.tree.map(lambda p: p.shape, default) == jax.tree.map(lambda p: p.shape, explicit)
  assert {'branch2_0', 'branch3_0', 'branch4_1'} <= set(default['inception3a'])


def test_naive_modules_drop_the_reductions_and_the_pool_projection():
  params = _params(googlenet_tiny(naive=True))
  for name in TINY_MODULES:
    assert set(params[name]) == {'branch1', 'branch2_1', 'branch3_1'}, name


def test_naive_widths_grow_by_the_input_channels():
  """Each naive module outputs C_in + c1 + c2 + c3 channels, and has exactly the weights of its
  three convs on C_in channels (1x1, 3x3, 3x3) plus their BatchNorm scale and bias."""
  model = googlenet_tiny(naive=True)
  params = _params(model)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  variables = helpers.shapes(model, x.shape, train=False)
  features = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables, x)
  c_in = _width(STEM_WIDTHS[2])
  for name in TINY_MODULES:
    c1, _, c2, _, c3, _ = (_width(c) for c in INCEPTION_CONFIGS[name])
    weights = c_in * c1 + 9 * c_in * c2 + 9 * c_in * c3 + 2 * (c1 + c2 + c3)
    assert helpers.count(params[name]) == weights, name
    c_in += c1 + c2 + c3
  assert features['pre_logits'].shape == (1, c_in)  # 254 for the tiny net


@pytest.mark.parametrize('name', ['googlenet_tiny', 'googlenet'])
def test_naive_costs_more(name):
  bottleneck = summary.summarize(models.create(name, num_classes=10), (32, 32, 3))
  naive = summary.summarize(models.create(name, num_classes=10, naive=True), (32, 32, 3))
  assert naive.total_params > bottleneck.total_params
  assert naive.total_macs > bottleneck.total_macs


def test_naive_module_macs_follow_the_formula():
  """summary's multiply-adds of one naive module: H * W * C_in * (c1 + 9 c2 + 9 c3)."""
  s = summary.summarize(googlenet_tiny(naive=True), (32, 32, 3))
  macs = sum(r.macs for r in s.rows if r.path.startswith('inception3a/'))
  c_in = _width(STEM_WIDTHS[2])
  c1, _, c2, _, c3, _ = (_width(c) for c in INCEPTION_CONFIGS['inception3a'])
  hw = 4 * 4  # 32 px / stride 8
  assert macs == hw * c_in * (c1 + 9 * c2 + 9 * c3)


def test_naive_forward_and_aux_heads():
  model = googlenet_tiny(naive=True)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl='rbg'), x))(x)
  logits = jax.jit(lambda v, x: model.apply(v, x))(variables, x)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  _, state = jax.eval_shape(
    lambda v, x: model.apply(
      v,
      x,
      train=True,
      mutable=['batch_stats', 'aux_logits'],
      rngs={'dropout': jax.random.key(1)},
    ),
    variables,
    x,
  )
  assert sorted(state['aux_logits']) == ['aux1', 'aux2']


def test_naive_must_be_a_bool():
  with pytest.raises(UserError, match=r'GoogLeNet.naive=.yes.; expected True or False'):
    _params(googlenet_tiny(naive='yes'))
