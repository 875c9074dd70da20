"""GoogLeNet and DenseNet: torchvision parameter counts, aux classifiers, dense connectivity."""

from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models import summary
from cnn_jax.models.densenet import block_channels, densenet, densenet_tiny
from cnn_jax.models.googlenet import (
  AdaptiveAvgPool,
  ceil_mode_padding,
  googlenet,
  googlenet_tiny,
)

# Variables come from helpers.shapes(model, train=False): the trainer's eval-mode init, on 32x32
# inputs; global pooling (and the aux heads' adaptive pooling) make them independent of H and W.


def _feature_shapes(model: nn.Module, size: int) -> dict[str, tuple[int, ...]]:
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(
    lambda v, x: model.apply(v, x, features=True), helpers.shapes(model, train=False), x
  )
  return {k: v.shape[1:] for k, v in out.items()}


def _images(batch: int = 2, size: int = 32) -> jax.Array:
  return jnp.asarray(np.random.default_rng(1).normal(size=(batch, size, size, 3)), jnp.float32)


# A train step's compile time is what these tests spend (~500 XLA:CPU kernels for
# googlenet_tiny); cheaper LLVM passes cut it by about a third and change no result checked here.
_jit = partial(
  jax.jit,
  compiler_options={'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True},
)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def _numpy_variables(model: nn.Module, x: jax.Array) -> dict:
  """Variables shaped like `model.init`'s, filled from numpy: He-normal kernels, BN at identity.

  XLA:CPU spends ~0.3 s compiling each random-number call, one per kernel: a jitted init of
  googlenet_tiny (~40 kernels) would take longer than all the other tests here together.
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

  return jax.tree_util.tree_map_with_path(fill, helpers.shapes(model, train=False))


def test_googlenet_params_equal_torchvision():
  # torchvision.models.googlenet(aux_logits=True / False, init_weights=True), 1000 classes;
  # the trainer initialises in eval mode, so that is where the aux parameters must appear.
  params = helpers.shapes(googlenet(), train=False)['params']
  assert helpers.count(params) == 13_004_888
  assert {'aux1', 'aux2'} <= set(params)
  assert helpers.count({k: v for k, v in params.items() if k not in ('aux1', 'aux2')}) == 6_624_904
  plain = helpers.shapes(googlenet(aux_logits=False), train=False)['params']
  assert helpers.count(plain) == 6_624_904 and not {'aux1', 'aux2'} & set(plain)


# torchvision.models.densenetN(): sum(p.numel() for p in m.parameters()).
@pytest.mark.parametrize(
  'depth, expected',
  [(121, 7_978_856), (169, 14_149_480), (201, 20_013_928)],
)
def test_densenet_params_equal_torchvision(depth, expected):
  assert helpers.param_count(densenet(depth), train=False) == expected


def _apply_shapes(model: nn.Module, train: bool, batch: int = 2) -> tuple:
  """(logits, mutated collections) of one apply, as shapes (no compute)."""
  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  return jax.eval_shape(
    lambda v, x: model.apply(
      v,
      x,
      train=train,
      mutable=['batch_stats', 'aux_logits'],
      rngs={'dropout': jax.random.key(0)},
    ),
    helpers.shapes(model, train=False),
    x,
  )


def test_googlenet_aux_logits_only_in_training():
  logits, updates = _apply_shapes(googlenet_tiny(), train=False)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert 'aux_logits' not in updates
  for model in (googlenet(), googlenet_tiny()):
    logits, updates = _apply_shapes(model, train=True)
    assert logits.shape == (2, model.num_classes)
    aux = updates['aux_logits']
    assert set(aux) == {'aux1', 'aux2'}
    assert [(a.shape, a.dtype) for a in jax.tree.leaves(aux)] == [
      ((2, model.num_classes), jnp.float32)
    ] * 2
  # Without aux heads nothing is sown; under bf16 compute the aux logits stay float32.
  assert 'aux_logits' not in _apply_shapes(googlenet_tiny(aux_logits=False), train=True)[1]
  _, updates = _apply_shapes(googlenet_tiny(dtype=jnp.bfloat16), train=True)
  assert {a.dtype for a in jax.tree.leaves(updates['aux_logits'])} == {jnp.dtype(jnp.float32)}


def test_densenet_tiny_train_step():
  # Two blocks instead of four: the same code paths (dense layers, a transition, the head) at
  # half the compile time, which grows by ~0.6 s per BatchNorm layer on XLA:CPU.
  model = densenet_tiny(block_config=(1, 1), drop_rate=0.1)
  x, labels = _images(), jnp.array([3, 7])
  variables = _numpy_variables(model, x)
  params, stats = variables['params'], variables['batch_stats']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats},
      x,
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': helpers.key(1)},
    )
    return _cross_entropy(logits, labels), updates['batch_stats']

  out = _jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  (loss, new_stats), grads = jax.device_get(out)  # numpy checks: no eager XLA programs
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), stats, new_stats)
  assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'
  # Eval mode, on the updated running statistics.
  logits = _jit(model.apply)({'params': params, 'batch_stats': new_stats}, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


def test_densenet_channels_grow_by_k_per_layer():
  # After block b: C_b = floor(C_{b-1} / 2) + n_b * k, with C_0 = 64 stem channels.
  assert block_channels(64, 32, (6, 12, 24, 16)) == [256, 512, 1024, 1024]
  assert block_channels(64, 32, (6, 12, 48, 32)) == [256, 512, 1792, 1920]
  shapes = _feature_shapes(densenet(121), 64)
  assert shapes == {
    'stem': (16, 16, 64),  # stride 4
    'block1': (16, 16, 256),  # stride 4
    'block2': (8, 8, 512),
    'block3': (4, 4, 1024),
    'block4': (2, 2, 1024),  # stride 32
    'pre_logits': (1024,),
    'logits': (1000,),
  }
  tiny = _feature_shapes(densenet_tiny(), 32)
  # 8 + 4 = 12 -> 6 + 4 = 10 -> 5 + 4 = 9 -> 4 + 4 = 8.
  assert [tiny[f'block{b}'][-1] for b in (1, 2, 3, 4)] == block_channels(8, 4, (1, 1, 1, 1))
  assert block_channels(8, 4, (1, 1, 1, 1)) == [12, 10, 9, 8]
  # Every layer of a block sees all earlier maps: layer j's 1x1 conv takes C + (j - 1) * k.
  params = helpers.shapes(densenet(121), train=False)['params']
  for j in range(1, 17):
    kernel = params['denseblock4'][f'denselayer{j}']['conv1']['kernel']
    assert kernel.shape == (1, 1, 512 + (j - 1) * 32, 128)


def test_googlenet_features_and_strides():
  assert _feature_shapes(googlenet(), 224) == {
    'stem': (56, 56, 192),  # stride 4
    'inception3': (28, 28, 480),  # stride 8
    'inception4': (14, 14, 832),  # stride 16
    'inception5': (7, 7, 1024),  # stride 32
    'pre_logits': (1024,),
    'logits': (1000,),
  }
  # The tiny net's stages end wherever its subset of modules does (here 3a, 4d, 5a).
  tiny = _feature_shapes(googlenet_tiny(), 32)
  assert {k: tiny[k] for k in ('stem', 'inception3', 'inception4', 'inception5')} == {
    'stem': (8, 8, 24),
    'inception3': (4, 4, 32),  # (64 + 128 + 32 + 32) / 8
    'inception4': (2, 2, 66),  # 528 / 8
    'inception5': (1, 1, 104),  # 832 / 8
  }


def test_ceil_mode_padding_matches_torch_output_sizes():
  def torch_out(size, window, stride, pad):
    # torch.nn.MaxPool2d(ceil_mode=True): ceil, then drop a window that starts in the padding.
    out = -(-(size + 2 * pad - window) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out

  for size in range(3, 120):
    for window, stride, pad in ((3, 2, 0), (2, 2, 0), (3, 1, 1)):
      (top, bottom), _ = ceil_mode_padding((1, size, size, 1), window, stride, pad)
      assert top == pad and bottom >= 0
      assert (size + top + bottom - window) // stride + 1 == torch_out(size, window, stride, pad)
  # GoogLeNet at 224: 112 -> 56 -> 28 -> 14 -> 7 (the last one a 2x2 pool).
  assert ceil_mode_padding((1, 112, 112, 64), 3, 2) == ((0, 1), (0, 1))
  assert ceil_mode_padding((1, 14, 14, 832), 2, 2) == ((0, 0), (0, 0))
  x = jnp.arange(5.0).reshape(1, 5, 1, 1) - 10  # all negative: padding must count as -inf
  pooled = nn.max_pool(x, (2, 1), (2, 1), (ceil_mode_padding(x.shape, 2, 2)[0], (0, 0)))
  assert pooled.ravel().tolist() == [-9.0, -7.0, -6.0]


def test_adaptive_avg_pool_bins_like_torch():
  x = jnp.arange(14.0).reshape(1, 14, 1, 1)
  # 14 -> 4 bins: [0, 4), [3, 7), [7, 11), [10, 14).
  out = AdaptiveAvgPool((4, 1)).apply({}, x).ravel().tolist()
  assert out == [1.5, 4.5, 8.5, 11.5]
  # 2 -> 4 repeats each pixel twice (the aux heads of a 32x32 input).
  out = AdaptiveAvgPool((4, 1)).apply({}, jnp.array([1.0, 3.0]).reshape(1, 2, 1, 1))
  assert out.ravel().tolist() == [1.0, 1.0, 3.0, 3.0]


def test_submodule_names_follow_torchvision():
  g = helpers.shapes(googlenet(), train=False)['params']
  assert set(g) == {
    'conv1',
    'conv2',
    'conv3',
    *(f'inception{s}' for s in ('3a', '3b', '4a', '4b', '4c', '4d', '4e', '5a', '5b')),
    'aux1',
    'aux2',
    'fc',
  }
  assert set(g['inception3a']) == {
    'branch1',
    'branch2_0',
    'branch2_1',
    'branch3_0',
    'branch3_1',
    'branch4_1',
  }
  # torchvision's 3x3 in the "5x5" branch; conv/bn inside each BasicConv2d.
  assert g['inception3a']['branch3_1']['conv']['kernel'].shape == (3, 3, 16, 32)
  assert set(g['conv1']) == {'conv', 'bn'} and 'bias' not in g['conv1']['conv']
  assert g['aux1']['fc1']['kernel'].shape == (2048, 1024)
  assert g['aux2']['conv']['conv']['kernel'].shape == (1, 1, 528, 128)
  d = helpers.shapes(densenet(121), train=False)['params']
  assert set(d) == {
    'conv0',
    'norm0',
    *(f'denseblock{i}' for i in (1, 2, 3, 4)),
    *(f'transition{i}' for i in (1, 2, 3)),
    'norm5',
    'classifier',
  }
  assert set(d['denseblock1']['denselayer1']) == {'norm1', 'conv1', 'norm2', 'conv2'}
  assert d['denseblock1']['denselayer6']['conv2']['kernel'].shape == (3, 3, 128, 32)
  assert d['transition1']['conv']['kernel'].shape == (1, 1, 256, 128)


@pytest.mark.parametrize('name', ['googlenet_tiny', 'densenet_tiny'])
def test_summary_works(name):
  model = {'googlenet_tiny': googlenet_tiny, 'densenet_tiny': densenet_tiny}[name]()
  s = summary.summarize(model, (32, 32, 3))
  assert s.total_params == helpers.param_count(model, train=False)
  assert s.total_macs > 0 and s.rows[-1].output_shape == (10,)


def test_bad_field_values_raise_user_error():
  with pytest.raises(UserError, match=r'GoogLeNet.width=0; expected a positive multiplier'):
    helpers.shapes(googlenet(width=0), train=False)
  with pytest.raises(UserError, match=r'GoogLeNet.aux_dropout_rate=1.0; expected a rate'):
    helpers.shapes(googlenet(aux_dropout_rate=1.0), train=False)
  with pytest.raises(UserError, match=r"GoogLeNet.modules=\('inception4a', 'inception3a'"):
    helpers.shapes(googlenet(modules=('inception4a', 'inception3a', 'inception5a')), train=False)
  with pytest.raises(UserError, match=r"lacks \['inception4a', 'inception4d'\]"):
    helpers.shapes(googlenet(modules=('inception3a', 'inception4b', 'inception5a')), train=False)
  with pytest.raises(UserError, match=r'DenseNet.block_config=\(\); expected positive'):
    helpers.shapes(densenet_tiny(block_config=()), train=False)
  with pytest.raises(UserError, match=r'DenseNet.growth_rate=0; expected a positive integer'):
    helpers.shapes(densenet_tiny(growth_rate=0), train=False)
  with pytest.raises(UserError, match='no DenseNet of depth 100; known depths'):
    densenet(100)
