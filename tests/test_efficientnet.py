"""EfficientNet: counts against torchvision, scaling rules, stochastic depth, features."""

from functools import cache, partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models.efficientnet import (
  EFFICIENTNET_PARAMS,
  MBConv,
  efficientnet,
  efficientnet_tiny,
  efficientnet_variant,
  native_resolution,
  round_filters,
  round_repeats,
)


def _compile(fn, *args):
  """`fn` compiled for `args` at LLVM -O0: these tests check values, not speed, and -O0 compiles
  the tiny net's train step ~35% faster on XLA:CPU (5.5 s instead of 8.7 s of CPU)."""
  return jax.jit(fn).lower(*args).compile({'xla_backend_optimization_level': 0})


def _numpy_variables(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
  """Variables as numpy arrays: He-normal kernels, BatchNorm at its initial state.

  Compiling `model.init` costs ~10 s of CPU even for the tiny net (XLA:CPU spends ~0.3 s per
  random initializer, ~40 of them); `test_block_*` runs the real init on one block instead.
  """
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))  # (kh, kw, 1, C) for depthwise: kh * kw
      return (rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, helpers.shapes(model, input_shape))


@cache
def _variant_shapes(variant: str) -> dict:
  # Global pooling makes the count independent of the input size; tracing B7 takes ~1.5 s.
  return helpers.shapes(efficientnet_variant(variant))


def _variant_params(variant: str) -> dict:
  return _variant_shapes(variant)['params']


# torchvision.models.efficientnet_bN(): sum(p.numel() for p in m.parameters()).
TORCHVISION_PARAMS = {
  'b0': 5_288_548,
  'b1': 7_794_184,
  'b2': 9_109_994,
  'b3': 12_233_232,
  'b4': 19_341_616,
  'b5': 30_389_784,
  'b6': 43_040_704,
  'b7': 66_347_960,
}
# Blocks per variant: sum of round_repeats over B0's (1, 2, 2, 3, 3, 4, 1); stem and last conv
# widths: round_filters(32, w) and round_filters(1280, w).
LAYOUT = {
  'b0': (16, 32, 1280),
  'b1': (23, 32, 1280),
  'b2': (23, 32, 1408),
  'b3': (26, 40, 1536),
  'b4': (32, 48, 1792),
  'b5': (39, 48, 2048),
  'b6': (45, 56, 2304),
  'b7': (55, 64, 2560),
}


@pytest.mark.parametrize('variant', list(TORCHVISION_PARAMS))
def test_params_equal_torchvision(variant):
  params = _variant_params(variant)
  assert sum(p.size for p in jax.tree.leaves(params)) == TORCHVISION_PARAMS[variant]
  blocks, stem, last = LAYOUT[variant]
  assert sum(name.startswith('mbconv') for name in params) == blocks
  assert params['stem_conv']['kernel'].shape == (3, 3, 3, stem)
  assert params['last_conv']['kernel'].shape[-1] == last
  assert params['head']['kernel'].shape == (last, 1000)


def test_round_filters_and_repeats_by_hand():
  assert round_filters(32, 2.0) == 64  # B7 stem
  assert round_filters(32, 1.1) == 32  # 35.2 + 4 -> 39 -> 32; 32 >= 0.9 * 35.2
  assert round_filters(32, 1.4) == 48  # 44.8 + 4 -> 48.8 -> 48
  assert round_filters(112, 1.2) == 136  # 134.4 + 4 -> 138.4 -> 136
  assert round_filters(1280, 1.1) == 1408
  assert round_filters(16, 0.25) == 8  # never below the divisor
  assert round_filters(40, 0.25) == 16  # 10 -> 8 loses 20% > 10%: one more divisor
  assert round_filters(24, 1.0, divisor=16) == 32  # 24 + 8 -> 32 (half rounds up)
  assert round_repeats(4, 3.1) == 13  # B7's stage 6: ceil(12.4)
  assert round_repeats(1, 1.1) == 2
  assert round_repeats(3, 1.4) == 5  # 4.2 -> 5
  assert round_repeats(2, 1.0) == 2 and round_repeats(3, 2.6) == 8


def test_variant_table_and_constructors():
  assert EFFICIENTNET_PARAMS['b0'] == (1.0, 1.0, 224, 0.2)
  assert EFFICIENTNET_PARAMS['b7'] == (2.0, 3.1, 600, 0.5)
  resolutions = [native_resolution(f'b{i}') for i in range(8)]
  assert resolutions == [224, 240, 260, 300, 380, 456, 528, 600]
  assert native_resolution('efficientnet_b3') == 300
  b3 = efficientnet_variant('b3')
  assert (b3.width_mult, b3.depth_mult, b3.dropout) == (1.2, 1.4, 0.3)
  assert efficientnet_variant('b3', dropout=0.1, num_classes=10).dropout == 0.1
  # The general path builds nets outside the table, e.g. phi = 1 of alpha=1.2, beta=1.1.
  scaled = efficientnet(width_mult=1.1, depth_mult=1.2, dropout=0.25)
  assert (scaled.width_mult, scaled.depth_mult, scaled.dropout) == (1.1, 1.2, 0.25)
  with pytest.raises(UserError, match=r"unknown EfficientNet variant 'b8'; expected one of b0, "):
    efficientnet_variant('b8')
  with pytest.raises(UserError, match=r'EfficientNet.width_mult=0; expected > 0'):
    helpers.shapes(efficientnet(width_mult=0))
  with pytest.raises(UserError, match=r'EfficientNet.dropout=1.0; expected in \[0, 1\)'):
    helpers.shapes(efficientnet_tiny(dropout=1.0))


def test_block_layout_and_names():
  params = _variant_params('b0')
  # Stage 1 has expand ratio 1: no expand conv; its SE squeezes 32 -> 8.
  assert set(params['mbconv1_block1']) == {'dw_conv', 'dw_bn', 'se', 'project_conv', 'project_bn'}
  assert params['mbconv1_block1']['se']['reduce']['kernel'].shape == (1, 1, 32, 8)
  block = params['mbconv2_block1']  # 16 -> 24, expand 6, 3x3/2
  assert set(block) == {
    'expand_conv',
    'expand_bn',
    'dw_conv',
    'dw_bn',
    'se',
    'project_conv',
    'project_bn',
  }
  assert block['expand_conv']['kernel'].shape == (1, 1, 16, 96)
  assert block['dw_conv']['kernel'].shape == (3, 3, 1, 96)
  # SE reduction relative to the block's input channels: 16 // 4 = 4, not 96 // 4.
  assert block['se']['reduce']['kernel'].shape == (1, 1, 96, 4)
  assert params['mbconv6_block4']['dw_conv']['kernel'].shape == (5, 5, 1, 1152)


def test_stochastic_depth_schedule_and_batchnorm_settings():
  probs, norms = [], set()

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, MBConv) and context.method_name == '__call__':
      probs.append(context.module.stochastic_depth_prob)
    if isinstance(context.module, nn.BatchNorm):
      norms.add((context.module.momentum, context.module.epsilon))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    helpers.trace_init(efficientnet_tiny())
  # 6 blocks: 0.2 * i / 6, rising linearly from 0 (torchvision's rule).
  np.testing.assert_allclose(probs, [0.2 * i / 6 for i in range(6)])
  assert norms == {(0.99, 1e-3)}  # the paper's TF decay and epsilon


def test_block_stochastic_depth_drops_whole_examples_and_rescales():
  block = MBConv(
    in_features=8,
    out_features=8,
    expand_ratio=2,
    kernel_size=3,
    conv=nn.Conv,
    # Running statistics keep examples independent, so only the mask differs between calls.
    norm=partial(nn.BatchNorm, use_running_average=True),
    stochastic_depth_prob=0.5,
  )
  x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 4, 4, 8)), jnp.float32)
  variables = jax.jit(block.init)(helpers.key(), x)

  @jax.jit
  def branches(key):
    train = block.apply(variables, x, train=True, rngs={'dropout': key})
    # Eval mode: the identity, whatever the rng.
    evals = [block.apply(variables, x, rngs={'dropout': k}) for k in (key, helpers.key(9))]
    return train - x, [e - x for e in evals]

  dropped, (full, full_other_key) = branches(helpers.key(1))
  np.testing.assert_array_equal(full, full_other_key)
  # Per example: the whole branch is dropped (output = x) or kept and scaled by 1 / (1 - 0.5).
  dropped, full = np.asarray(dropped), np.asarray(full)
  kept = np.any(dropped != 0, axis=(1, 2, 3))
  assert 0 < kept.sum() < len(kept)
  np.testing.assert_allclose(dropped[kept], 2 * full[kept], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(dropped[~kept], 0)
  np.testing.assert_array_equal(branches(helpers.key(1))[0], dropped)  # same rng, same mask
  assert not np.array_equal(branches(helpers.key(2))[0], dropped)


def test_train_step_is_finite_and_stochastic():
  # Only stochastic depth draws from 'dropout'; at 0.9 the one droppable block has p = 0.6.
  model = efficientnet_tiny(dropout=0.0, stochastic_depth_prob=0.9)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jnp.array([3, 7, 0, 9])
  variables = _numpy_variables(model, x.shape)
  params, stats = variables['params'], variables['batch_stats']

  def step(params, key):
    def loss_fn(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': stats},
        x,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': key},
      )
      loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
      return loss, (logits, updates['batch_stats'])

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  step = _compile(step, params, helpers.key())

  # Checks in numpy: eager jnp ops would compile a kernel per leaf shape (~15 s in all).
  (loss, (logits1, new_stats)), grads = jax.device_get(step(params, helpers.key(1)))
  assert np.isfinite(loss)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Every parameter gets a signal, except in the block that stochastic depth may drop entirely.
  zero = [
    jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads) if not g.any()
  ]
  assert all('mbconv4_block2' in path for path in zero), zero
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), new_stats, stats)
  assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'
  np.testing.assert_array_equal(step(params, helpers.key(1))[0][1][0], logits1)
  assert not np.allclose(step(params, helpers.key(2))[0][1][0], logits1)
  # Eval mode is deterministic: the 'dropout' rng (head dropout 0.2 here) is ignored.
  variables = {'params': params, 'batch_stats': new_stats}
  evaluate = lambda v, key: efficientnet_tiny().apply(v, x, rngs={'dropout': key})
  evaluate = _compile(evaluate, variables, helpers.key())
  logits = evaluate(variables, helpers.key(1))
  np.testing.assert_array_equal(logits, evaluate(variables, helpers.key(2)))
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32


def test_feature_strides():
  def shapes(model, size, variables=None):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = variables or helpers.shapes(model, x.shape)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, features=True), variables, x)
    return {k: v.shape[1:] for k, v in out.items()}

  # Strides 2 (stem), 2, 4, 8, 16, 32: the ends of MBConv stages 1, 2, 3, 5, 7.
  assert shapes(efficientnet_variant('b0'), 64, _variant_shapes('b0')) == {
    'stem': (32, 32, 32),
    'stage1': (32, 32, 16),
    'stage2': (16, 16, 24),
    'stage3': (8, 8, 40),
    'stage4': (4, 4, 112),
    'stage5': (2, 2, 320),
    'pre_logits': (1280,),
    'logits': (1000,),
  }
  assert shapes(efficientnet_tiny(), 64) == {
    'stem': (32, 32, 8),
    'stage1': (32, 32, 8),
    'stage2': (16, 16, 8),
    'stage3': (8, 8, 16),
    'stage4': (4, 4, 24),
    'stage5': (2, 2, 48),
    'pre_logits': (320,),
    'logits': (10,),
  }


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = efficientnet_tiny(dtype=jnp.bfloat16)
  variables = helpers.shapes(model)
  assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True),
    variables,
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )
  assert out['stage5'].dtype == jnp.bfloat16 and out['logits'].dtype == jnp.float32
