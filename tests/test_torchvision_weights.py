"""torchvision weight import without torch: names, layouts, round trips and error messages.

The state dicts here are fakes: `export` of random variables, checked against facts of
torchvision 0.29 (key counts, a few names and shapes). experiments/torchvision_parity.py runs
the real thing against torchvision's own outputs.
"""

import functools
import sys

import flax.linen as nn
import numpy as np
import pytest
from flax import traverse_util

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import DepthwiseConv
from cnn_jax.weights import torchvision as tvw

# name -> (model fields, torchvision state-dict size, a few (key, shape) of torchvision's).
# vgg11_bn and alexnet keep their names but get 64-wide fcs (their 4096-wide ones are 0.5 GB).
CASES = {
  'resnet18': (
    {},
    122,
    {
      'layer2.0.downsample.0.weight': (128, 64, 1, 1),
      'layer2.0.downsample.1.running_var': (128,),
      'fc.weight': (1000, 512),
    },
  ),
  'squeezenet1_1': (
    {},
    52,
    {'features.12.expand3x3.weight': (256, 64, 3, 3), 'classifier.1.weight': (1000, 512, 1, 1)},
  ),
  'mobilenet_v2': (
    {},
    314,
    {
      'features.1.conv.1.weight': (16, 32, 1, 1),
      'features.2.conv.1.0.weight': (96, 1, 3, 3),
      'features.18.0.weight': (1280, 320, 1, 1),
    },
  ),
  'densenet121': (
    {},
    727,
    {
      'features.denseblock4.denselayer16.conv2.weight': (32, 128, 3, 3),
      'features.transition3.conv.weight': (512, 1024, 1, 1),
      'classifier.weight': (1000, 1024),
    },
  ),
  'googlenet': (
    {},
    364,
    {
      'inception5b.branch3.1.conv.weight': (128, 48, 3, 3),
      'aux2.fc1.weight': (1024, 2048),
      'aux1.conv.conv.weight': (128, 512, 1, 1),
    },
  ),
  'efficientnet_b0': (
    {},
    360,
    {
      'features.1.0.block.1.fc1.weight': (8, 32, 1, 1),
      'features.6.3.block.3.0.weight': (192, 1152, 1, 1),
      'features.8.0.weight': (1280, 320, 1, 1),
    },
  ),
  'vgg11_bn': (
    {'hidden': 64},
    62,
    {
      'features.25.weight': (512, 512, 3, 3),
      'features.26.running_var': (512,),
      'classifier.0.weight': (64, 25088),
    },
  ),
  'alexnet': (
    {'hidden': 64},
    16,
    {'features.10.weight': (256, 256, 3, 3), 'classifier.1.weight': (64, 9216)},
  ),
}


@functools.cache
def random_variables(name: str, **fields) -> tuple[nn.Module, dict]:
  """The model and variables of its init's shapes with distinct random values (no compute)."""
  model = models.create(name, **fields)
  rng = np.random.default_rng(0)
  shapes = tvw._target(model, (224, 224, 3))  # the trace `load` reuses
  flat = {k: rng.standard_normal(s.shape, dtype=np.float32) for k, s in shapes.items()}
  return model, traverse_util.unflatten_dict(flat)


def assert_trees_equal(a, b) -> None:
  a, b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg='/'.join(key))


@pytest.mark.parametrize('name', list(CASES))
def test_export_has_torchvision_names_and_load_inverts_it(name):
  fields, size, known = CASES[name]
  model, variables = random_variables(name, **fields)
  state = tvw.export(model, variables)
  assert len(state) == size
  assert {k: state[k].shape for k in known} == known
  assert_trees_equal(tvw.load(model, state), variables)


def test_conv_layout_matches_torch_cross_correlation():
  w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)  # (O, I, kh, kw)
  x = np.arange(3 * 3 * 3, dtype=np.float32).reshape(3, 3, 3) / 10  # (C, H, W)
  expected = np.einsum('ocuv,cuv->o', w, x)  # torch's conv at the one valid position
  kernel = tvw.kernel_from_torch(w)
  assert kernel.shape == (3, 3, 3, 2) and kernel[1, 2, 0, 1] == w[1, 0, 1, 2]
  conv = nn.Conv(2, (3, 3), padding='VALID', use_bias=False)
  y = conv.apply({'params': {'kernel': kernel}}, x.transpose(1, 2, 0)[None])
  np.testing.assert_allclose(np.asarray(y).reshape(2), expected, rtol=1e-6)
  np.testing.assert_array_equal(tvw.kernel_to_torch(kernel), w)


@pytest.mark.parametrize('impl', ['shift', 'grouped'])
def test_depthwise_layout_matches_torch_groups(impl):
  w = np.arange(3 * 1 * 3 * 3, dtype=np.float32).reshape(3, 1, 3, 3)  # torch groups=3
  x = np.arange(3 * 3 * 3, dtype=np.float32).reshape(3, 3, 3) / 10
  expected = np.einsum('cuv,cuv->c', w[:, 0], x)
  layer = DepthwiseConv((3, 3), padding=0, impl=impl)
  y = layer.apply({'params': {'kernel': tvw.kernel_from_torch(w)}}, x.transpose(1, 2, 0)[None])
  np.testing.assert_allclose(np.asarray(y).reshape(3), expected, rtol=1e-6)


def test_linear_layout_and_flatten_order():
  w = np.arange(2 * 3, dtype=np.float32).reshape(2, 3)  # (out, in)
  x = np.array([1.0, 10.0, 100.0], np.float32)
  np.testing.assert_array_equal(x @ tvw.kernel_from_torch(w), w @ x)
  # After a (C, H, W) = (3, 2, 2) map: torch flattens it C-major, we flatten it H, W, C.
  w = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)
  x = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
  kernel = tvw.kernel_from_torch(w, (2, 2))
  np.testing.assert_array_equal(x.transpose(1, 2, 0).reshape(-1) @ kernel, w @ x.reshape(-1))
  np.testing.assert_array_equal(tvw.kernel_to_torch(kernel, (2, 2)), w)


def test_missing_extra_and_mismatched_keys_are_named():
  model, variables = random_variables('resnet18')
  state = tvw.export(model, variables)
  less = {k: v for k, v in state.items() if k != 'layer1.0.conv1.weight'}
  with pytest.raises(UserError, match=r'1 model weights the checkpoint lacks \(missing\): '):
    tvw.load(model, less)
  more = state | {'layer5.0.conv1.weight': np.zeros((1, 1, 1, 1), np.float32)}
  with pytest.raises(UserError, match=r'1 checkpoint keys the model lacks \(extra\): layer5.0'):
    tvw.load(model, more)
  # resnet18's keys are a subset of resnet34's: missing ones, and a hint to check the model.
  with pytest.raises(UserError, match=r'80 .* \(missing\): layer1\.2\..*same depth'):
    tvw.load('resnet34', state)


def test_other_num_classes_names_the_head_and_skip_keeps_a_fresh_one():
  model, variables = random_variables('resnet18')
  state = tvw.export(model, variables)
  small = models.create('resnet18', num_classes=10)
  with pytest.raises(
    UserError, match=r"fc.weight \(1000, 512\) \(model: \(10, 512\)\).*skip=r'\^fc"
  ):
    tvw.load(small, state)
  with pytest.raises(UserError, match='pass init_variables='):
    tvw.load(small, state, skip=r'^fc\.')
  fresh = traverse_util.unflatten_dict(
    {k: np.full(s.shape, 7.0, s.dtype) for k, s in tvw._target(small, (224, 224, 3)).items()}
  )
  loaded = tvw.load(small, state, skip=r'^fc\.', init_variables=fresh)
  np.testing.assert_array_equal(loaded['params']['head']['kernel'], np.full((512, 10), 7.0))
  np.testing.assert_array_equal(loaded['params']['head']['bias'], np.full((10,), 7.0))
  headless = lambda tree: {c: {k: v for k, v in d.items() if k != 'head'} for c, d in tree.items()}
  assert_trees_equal(headless(loaded), headless(variables))  # the rest comes from the state
  # Our names work too ('head/...'); the skipped torch keys are not extra.
  tvw.load(small, state, skip='^head/', init_variables=fresh)


def test_googlenet_aux_heads_with_and_without():
  model, variables = random_variables('googlenet')
  state = tvw.export(model, variables)
  no_aux = models.create('googlenet', aux_logits=False)
  with pytest.raises(
    UserError, match=r'checkpoint keys the model lacks \(extra\): aux.*aux_logits'
  ):
    tvw.load(no_aux, state)
  loaded = tvw.load(no_aux, state, skip=r'^aux')
  assert 'aux1' not in loaded['params'] and 'aux2' not in loaded['batch_stats']
  np.testing.assert_array_equal(
    loaded['params']['fc']['kernel'], variables['params']['fc']['kernel']
  )


def test_npz_file_and_cli_check(tmp_path, capsys):
  model, variables = random_variables('squeezenet1_1')
  path = tmp_path / 'squeezenet1_1.npz'
  np.savez(path, **tvw.export(model, variables))
  assert_trees_equal(tvw.load('squeezenet1_1', path), variables)
  assert tvw.main(['check', 'squeezenet1_1', str(path)]) == 0
  assert f'{path} fits squeezenet1_1: 1,235,496 parameters' in capsys.readouterr().out
  with pytest.raises(UserError, match='convert it first'):
    tvw.load(model, tmp_path / 'squeezenet1_1.pth')
  with pytest.raises(UserError, match='no weights file'):
    tvw.load(model, tmp_path / 'nothing.npz')


def test_convert_without_torch_says_what_to_do(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` raises ImportError
  with pytest.raises(UserError, match='convert needs PyTorch'):
    tvw.convert(tmp_path / 'a.pth', tmp_path / 'a.npz')
  assert tvw.main(['convert', str(tmp_path / 'a.pth'), str(tmp_path / 'a.npz')]) == 2
  assert 'error: convert needs PyTorch' in capsys.readouterr().err


def test_torchvision_kwargs_and_unsupported_models():
  assert tvw.torchvision_kwargs('efficientnet_b0') == {'bn_epsilon': 1e-5, 'bn_momentum': 0.9}
  assert tvw.torchvision_kwargs('efficientnet_b4') == {'bn_epsilon': 1e-5, 'bn_momentum': 0.9}
  assert tvw.torchvision_kwargs('efficientnet_b5') == {}
  assert tvw.torchvision_kwargs('resnet50') == {}
  with pytest.raises(UserError, match="'mobilenet_v1' has no torchvision counterpart"):
    tvw.torchvision_kwargs('mobilenet_v1')
  with pytest.raises(UserError, match='MobileNetV1 has no torchvision counterpart'):
    tvw.load('mobilenet_v1', {})
