"""Noisy Student's noise in the ResNets: stochastic depth (Huang et al. 2016) and head dropout."""

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models.resnet import (
  BasicBlock,
  BottleneckBlock,
  block_drop_probs,
  resnet,
  resnet_tiny,
)

# 128 examples at 4x4 (resnet_tiny's blocks see 4x4, 2x2, 1x1), one shape for all tests so that
# the eagerly run ops compile once.
SHAPE = (128, 4, 4, 3)


def _variables(model: nn.Module, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> dict:
  """numpy-filled variables in the model's tree (no init compute): N(0, 0.5) parameters,
  running variances in [0.5, 1.5]."""
  rng = np.random.default_rng(seed)
  tree = helpers.shapes(model, shape)

  def fill(path, leaf):
    if path[-1].key == 'var':
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
    return jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, tree)


def _images(shape: tuple[int, ...] = SHAPE, seed: int = 1) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _train(model: nn.Module, variables: dict, x: jax.Array, seed: int | None = 0) -> jax.Array:
  rngs = {} if seed is None else {'dropout': jax.random.key(seed, impl='rbg')}
  out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs=rngs)
  return out


def test_block_drop_probs_follow_the_linear_rule():
  assert block_drop_probs(4, 0.2) == pytest.approx((0.05, 0.1, 0.15, 0.2))
  # Huang et al.'s ResNet-110: 54 blocks, the last drops with 0.5, the first with 0.5 / 54.
  probs = block_drop_probs(54, 0.5)
  assert len(probs) == 54 and probs[-1] == pytest.approx(0.5)
  assert probs[0] == pytest.approx(0.5 / 54)
  assert np.allclose(np.diff(probs), 0.5 / 54)  # linear in depth
  assert block_drop_probs(3, 0.0) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
  'model, num_blocks',
  [
    (resnet(20, stochastic_depth_prob=0.5), 9),
    (resnet_tiny(block='bottleneck', stage_sizes=(2, 1, 2), stochastic_depth_prob=0.3), 5),
  ],
)
def test_blocks_get_the_linear_probabilities_in_order(model, num_blocks):
  seen = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, BasicBlock | BottleneckBlock) and context.method_name == '__call__':
      seen.append((module.name, module.stochastic_depth_prob))
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init(jax.random.key(0, impl='rbg'), x), x)
  names = [f'stage{i + 1}_block{j + 1}' for i, n in enumerate(model.stage_sizes) for j in range(n)]
  assert [name for name, _ in seen] == names
  assert [p for _, p in seen] == pytest.approx(
    block_drop_probs(num_blocks, model.stochastic_depth_prob)
  )


def test_noise_keeps_parameters_and_eval_output():
  plain_model = resnet_tiny()
  noisy = resnet_tiny(stochastic_depth_prob=0.5, dropout_rate=0.5)
  variables = _variables(plain_model)
  noisy_tree = _variables(noisy)
  assert jax.tree.structure(noisy_tree) == jax.tree.structure(variables)
  assert helpers.count(noisy_tree['params']) == helpers.count(variables['params'])
  x = _images()
  # Eval is the same function: no rng needed, outputs bit for bit equal.
  np.testing.assert_array_equal(noisy.apply(variables, x), plain_model.apply(variables, x))
  # ResNet-18 keeps torchvision's count with both fields set.
  big = resnet(18, stochastic_depth_prob=0.2, dropout_rate=0.5)
  xs = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: big.init(jax.random.key(0, impl='rbg'), x), xs)
  assert sum(p.size for p in jax.tree.leaves(shapes['params'])) == 11_689_512


@pytest.mark.parametrize('field', ['stochastic_depth_prob', 'dropout_rate'])
def test_train_output_changes_with_the_dropout_rng(field):
  base = resnet_tiny()
  noisy = resnet_tiny(**{field: 0.5})
  variables = _variables(base)
  x = _images()
  clean = _train(base, variables, x, seed=None)  # rate 0 needs no 'dropout' rng
  a, b = _train(noisy, variables, x, seed=0), _train(noisy, variables, x, seed=1)
  assert not np.allclose(a, clean)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, _train(noisy, variables, x, seed=0))  # same key, same mask
  np.testing.assert_array_equal(noisy.apply(variables, x), base.apply(variables, x))


def _shortcut_of(shortcut: str, x: jax.Array, y: jax.Array, proj: jax.Array | None) -> jax.Array:
  if x.shape == y.shape:
    return x
  if shortcut == 'B':
    return proj
  x = x[:, ::2, ::2, :]  # option A: subsample, zero-pad the new channels
  return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, y.shape[-1] - x.shape[-1])))


@pytest.mark.parametrize('shortcut', ['A', 'B'])
def test_each_example_keeps_or_drops_the_whole_branch(shortcut):
  # Every block, identity and transition ones: each example's output is either
  # relu(shortcut + branch / (1 - p)) or relu(shortcut), and the dropped share follows p * l / L.
  n, p = SHAPE[0], 0.9
  model = resnet_tiny(shortcut=shortcut, stochastic_depth_prob=p)
  variables = _variables(model)
  (_, state) = model.apply(
    variables,
    _images(),
    train=True,
    mutable=['batch_stats', 'intermediates'],
    rngs={'dropout': jax.random.key(0, impl='rbg')},
    capture_intermediates=True,
  )
  inter = state['intermediates']
  x = nn.relu(inter['stem_bn']['__call__'][0])
  for name, prob in zip(
    ('stage1_block1', 'stage2_block1', 'stage3_block1'), block_drop_probs(3, p), strict=True
  ):
    block = inter[name]
    y, out = block['bn2']['__call__'][0], block['__call__'][0]
    proj = block['proj_bn']['__call__'][0] if 'proj_bn' in block else None
    sc = _shortcut_of(shortcut, x, y, proj)
    kept = np.all(np.isclose(out, nn.relu(sc + y / (1 - prob)), atol=1e-5), axis=(1, 2, 3))
    dropped = np.all(np.isclose(out, nn.relu(sc), atol=1e-5), axis=(1, 2, 3))
    assert np.all(kept ^ dropped), name  # exactly one of the two, for every example
    # Binomial(128, prob): within 4 standard deviations (3.4 to 5.7) of the mean (38 apart).
    assert abs(dropped.sum() - n * prob) < 4 * np.sqrt(n * prob * (1 - prob)), name
    x = out


@pytest.mark.parametrize(
  'kwargs, message',
  [
    (dict(stochastic_depth_prob=1.0), r'stochastic_depth_prob=1.0; expected in \[0, 1\)'),
    (dict(stochastic_depth_prob=-0.1), r'stochastic_depth_prob=-0.1; expected in \[0, 1\)'),
    (dict(stochastic_depth_prob=float('nan')), r'stochastic_depth_prob=nan; expected'),
    (dict(dropout_rate=1.5), r'dropout_rate=1.5; expected in \[0, 1\)'),
    (dict(stochastic_depth_prob=0.2, residual=False), 'plain net .* has none to fall back on'),
    (dict(dropout_rate=0.5, num_classes=0), 'num_classes=0 drops: set it to 0'),
  ],
)
def test_bad_noise_values_raise_user_error(kwargs, message):
  model = resnet_tiny(**kwargs)
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  with pytest.raises(UserError, match=message):
    jax.eval_shape(lambda x: model.init(jax.random.key(0, impl='rbg'), x), x)
