"""FCN (VGG and ResNet), U-Net and the shared upsampling: counts, shapes, size errors, a step."""

from functools import partial

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models.fcn import FCN, VARIANTS, fcn, fcn_resnet, fcn_resnet_tiny, fcn_tiny
from cnn_jax.models.unet import unet, unet_tiny, unet_valid
from cnn_jax.models.vgg import vgg, vgg_tiny
from cnn_jax.nn.upsample import UPSAMPLE_MODES, Upsample, bilinear_kernel

# A train step's compile time is what these tests spend on XLA:CPU; cheaper LLVM passes cut it
# and change no result checked here.
_jit = partial(
  jax.jit,
  compiler_options={'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True},
)


def _apply_shapes(model: nn.Module, input_shape: tuple[int, ...], train: bool = False) -> tuple:
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
    helpers.shapes(model, input_shape),
    x,
  )


def _numpy_variables(model: nn.Module, x: jax.Array) -> dict:
  """Variables shaped like `model.init`'s from numpy: He-normal kernels, BN at identity.

  XLA:CPU compiles each random-number call of a jitted init separately (~0.3 s per kernel).
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

  return jax.tree_util.tree_map_with_path(fill, helpers.shapes(model, x.shape))


# ---------------------------------------------------------------------------------------------
# Upsampling


@pytest.mark.parametrize('factor', [2, 8, 32])
def test_bilinear_transposed_conv_equals_bilinear_resize_inside(factor):
  # A smooth ramp (plus a random map, to show it is the same operator, not just exact on lines).
  # Inside a border of factor / 2 output pixels the two agree; at the border the transposed conv
  # sees zeros beyond the edge where jax.image.resize repeats the edge pixel.
  i, j = np.meshgrid(np.arange(6), np.arange(5), indexing='ij')
  ramp = (0.5 * i - 0.25 * j + 1.0)[None, :, :, None]
  noise = np.random.default_rng(0).normal(size=(1, 6, 5, 1))
  x = np.concatenate([ramp, noise], axis=-1).astype(np.float32)  # (1, 6, 5, 2)
  up = Upsample(2, factor)
  variables = up.init(jax.random.key(0), x)
  np.testing.assert_array_equal(
    variables['params']['deconv']['kernel'], bilinear_kernel(2 * factor, 2)
  )
  y = np.asarray(up.apply(variables, x))
  assert y.shape == (1, 6 * factor, 5 * factor, 2)
  expected = np.asarray(jax.image.resize(x, y.shape, 'bilinear'))
  b = factor // 2
  np.testing.assert_allclose(y[:, b:-b, b:-b], expected[:, b:-b, b:-b], atol=1e-5)
  # On the ramp the interior is linear: steps of 0.5 / factor down, -0.25 / factor across.
  np.testing.assert_allclose(np.diff(y[0, b:-b, b:-b, 0], axis=0), 0.5 / factor, atol=1e-5)
  np.testing.assert_allclose(np.diff(y[0, b:-b, b:-b, 0], axis=1), -0.25 / factor, atol=1e-5)


def test_bilinear_kernel_is_caffe_upsample_filt():
  k = bilinear_kernel(4, 2)  # factor 2: tent (0.25, 0.75, 0.75, 0.25)
  np.testing.assert_allclose(
    k[:, :, 0, 0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
  )
  assert not k[:, :, 0, 1].any() and not k[:, :, 1, 0].any()  # channel c from channel c only


def _tent(size: int) -> np.ndarray:
  """The standard bilinear kernel, written out: 1 - |i - c| / f, f = ceil(size / 2)."""
  f = -(-size // 2)
  c = f - 1 if size % 2 == 1 else f - 0.5
  return 1 - np.abs(np.arange(size) - c) / f


@pytest.mark.parametrize('factor,size', [(2, 4), (8, 16), (2, 3)])
def test_fixed_bilinear_upsampling_is_the_tent_and_has_no_parameters(factor, size):
  # An impulse at input pixel (i0, j0) of channel 1: the output is the tent outer product centred
  # on (i0 * factor, j0 * factor) less the crop (size - factor) // 2, in channel 1 only.
  x = np.zeros((1, 4, 5, 3), np.float32)
  i0, j0 = 2, 1
  x[0, i0, j0, 1] = 1.0
  up = Upsample(3, factor, kernel_size=size, learned=False)
  variables = jax.eval_shape(lambda x: up.init(jax.random.key(0), x), x)
  assert variables == {}  # nothing to learn (the learned layer has size * size * 3 * 3 weights)
  y = np.asarray(up.apply({}, x))  # (1, 4 * factor, 5 * factor, 3)
  assert y.shape == (1, 4 * factor, 5 * factor, 3)
  crop = (size - factor) // 2
  expected = np.zeros(y.shape[1:3], np.float32)
  for r in range(y.shape[1]):
    for c in range(y.shape[2]):
      a, b = r + crop - i0 * factor, c + crop - j0 * factor
      if 0 <= a < size and 0 <= b < size:
        expected[r, c] = _tent(size)[a] * _tent(size)[b]
  np.testing.assert_allclose(y[0, :, :, 1], expected, atol=1e-7)
  assert not y[..., 0].any() and not y[..., 2].any()  # channel c from channel c only
  if size == 2 * factor:  # the same operator as the learned layer at its bilinear init
    learned = Upsample(3, factor, kernel_size=size)
    np.testing.assert_allclose(y, learned.apply(learned.init(jax.random.key(0), x), x), atol=1e-7)


def test_fixed_bilinear_upsampling_of_a_ramp_is_linear():
  # 4x4 / 2 on a ramp: away from the border (where the transposed conv sees zeros beyond the
  # edge) the output is the ramp sampled at half-pixel centres, as jax.image.resize gives it.
  i, j = np.meshgrid(np.arange(6), np.arange(5), indexing='ij')
  x = (0.5 * i - 0.25 * j + 1.0)[None, :, :, None].astype(np.float32)  # (1, 6, 5, 1)
  y = np.asarray(Upsample(1, 2, learned=False).apply({}, x))
  expected = np.asarray(jax.image.resize(x, (1, 12, 10, 1), 'bilinear'))
  np.testing.assert_allclose(y[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-6)
  np.testing.assert_allclose(np.diff(y[0, 1:-1, 1:-1, 0], axis=0), 0.25, atol=1e-6)
  np.testing.assert_allclose(np.diff(y[0, 1:-1, 1:-1, 0], axis=1), -0.125, atol=1e-6)
  # The resize modes without learning are the plain resize.
  y = Upsample(1, 2, mode='bilinear', learned=False).apply({}, x)
  np.testing.assert_array_equal(y, expected)
  with pytest.raises(UserError, match=r'Upsample\(learned=False\) interpolates each channel, so'):
    Upsample(2, 2, learned=False).apply({}, x)


@pytest.mark.parametrize('mode', UPSAMPLE_MODES)
def test_upsample_shapes_every_mode(mode):
  x = jax.ShapeDtypeStruct((2, 5, 7, 6), jnp.float32)

  def out(module, target=None):
    variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, target), x)
    return jax.eval_shape(lambda v, x: module.apply(v, x, target), variables, x).shape

  assert out(Upsample(6, 4, mode=mode)) == (2, 20, 28, 6)
  assert out(Upsample(6, 4, mode=mode), (18, 27)) == (2, 18, 27, 6)  # cropped / resized exactly
  # Channels change (U-Net's up-conv): 2x2 / 2 transposed conv or resize + 3x3 conv.
  unet_like = Upsample(3, 2, mode=mode, kernel_size=2 if mode == 'transpose' else 3)
  assert out(unet_like.clone(bilinear_init=False)) == (2, 10, 14, 3)
  with pytest.raises(UserError, match=r'needs as many input as output channels \(got 6 -> 3\)'):
    out(unet_like)


def test_resize_conv_starts_as_plain_interpolation():
  x = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype(np.float32)
  for mode, k in (('bilinear', 3), ('nearest', 3), ('nearest', 2)):
    up = Upsample(3, 2, mode=mode, kernel_size=k)
    y = up.apply(up.init(jax.random.key(0), x), x)
    np.testing.assert_allclose(y, jax.image.resize(x, (1, 8, 8, 3), mode), atol=1e-6)


def test_upsample_target_larger_than_output_is_refused():
  x = jax.ShapeDtypeStruct((1, 3, 3, 2), jnp.float32)
  # 4x4 / 2 on 3x3: (3 - 1) * 2 + 4 = 8 pixels, cropped from 1 on: 6x6 by default, 7x7 at most.
  jax.eval_shape(lambda x: Upsample(2, 2).init(jax.random.key(0), x, (7, 7)), x)
  with pytest.raises(UserError, match=r'turns 3x3 into 8x8 \(crop offset 1\), too small for 8x8'):
    jax.eval_shape(lambda x: Upsample(2, 2).init(jax.random.key(0), x, (8, 8)), x)


# ---------------------------------------------------------------------------------------------
# VGG's head-less mode


def test_vgg_without_classifier():
  model = vgg(16, num_classes=0)
  params = helpers.shapes(model, (1, 64, 64, 3))['params']
  assert not {'fc6', 'fc7', 'fc8'} & set(params)
  # torchvision's vgg16 less its classifier: 138,357,544 - (25088 * 4096 + 4096)
  # - (4096 * 4096 + 4096) - (4096 * 1000 + 1000) = 14,714,688.
  assert helpers.count(params) == 14_714_688
  out, _ = _apply_shapes(model, (1, 64, 64, 3))
  assert out.shape == (1, 2, 2, 512)  # pool5
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  tiny = vgg_tiny(num_classes=0)
  feats = jax.eval_shape(
    lambda v, x: tiny.apply(v, x, features=True), helpers.shapes(tiny, (1, 32, 32, 3)), x
  )
  assert set(feats) == {f'{k}{s}' for k in ('stage', 'pool') for s in range(1, 6)}
  with pytest.raises(UserError, match=r'VGG.num_classes=-1; expected 0 \(head-less\) or more'):
    helpers.shapes(vgg_tiny(num_classes=-1), (1, 32, 32, 3))


# ---------------------------------------------------------------------------------------------
# Parameter counts

# Caffe's voc-fcn{32,16,8}s (21 classes), layer by layer; this is what the paper's Table 1 rounds
# to 134M (the learned layers of FCN-32s: VGG-16 convs + fc6 + fc7 + score_fr = 134,346,581).
VGG16_CONVS = 14_714_688
FC6 = 7 * 7 * 512 * 4096 + 4096  # 102,764,544: VGG's fc6 as a 7x7 conv
FC7 = 4096 * 4096 + 4096  # 16,781,312
SCORE_FR = 4096 * 21 + 21  # 86,037


def _deconv(factor: int) -> int:
  return (2 * factor) ** 2 * 21 * 21  # kernel 2f, 21 -> 21 channels, no bias (Caffe's)


# learned_upsampling=True (this model's behaviour before it followed the reference).
FCN_PARAMS = {
  # 134,346,581 + upscore 1,806,336
  '32s': VGG16_CONVS + FC6 + FC7 + SCORE_FR + _deconv(32),
  # + score_pool4 (512 * 21 + 21 = 10,773) + upscore2 (7,056) + upscore16 (451,584)
  '16s': VGG16_CONVS + FC6 + FC7 + SCORE_FR + (512 * 21 + 21) + _deconv(2) + _deconv(16),
  # + score_pool4 + upscore2 + score_pool3 (256 * 21 + 21 = 5,397) + upscore_pool4 + upscore8
  '8s': VGG16_CONVS
  + FC6
  + FC7
  + SCORE_FR
  + (512 * 21 + 21)
  + _deconv(2)
  + (256 * 21 + 21)
  + _deconv(2)
  + _deconv(8),
}


# The default, the reference's: up-sampling fixed (lr_mult 0), so no deconv kernels; the skip
# scales are constants. FCN-32s is then exactly the paper's Table 1 net.
FCN_FIXED_PARAMS = {
  '32s': VGG16_CONVS + FC6 + FC7 + SCORE_FR,
  '16s': VGG16_CONVS + FC6 + FC7 + SCORE_FR + (512 * 21 + 21),
  '8s': VGG16_CONVS + FC6 + FC7 + SCORE_FR + (512 * 21 + 21) + (256 * 21 + 21),
}
# What learning the up-sampling adds: the deconv kernels, (2f)^2 * 21 * 21 each.
DECONVS = {'32s': _deconv(32), '16s': _deconv(2) + _deconv(16), '8s': 2 * _deconv(2) + _deconv(8)}


def test_fcn_vgg_params_match_caffe_layout():
  assert FCN_PARAMS == {'32s': 136_152_917, '16s': 134_815_994, '8s': 134_489_759}
  assert FCN_FIXED_PARAMS == {'32s': 134_346_581, '16s': 134_357_354, '8s': 134_362_751}
  assert DECONVS == {'32s': 1_806_336, '16s': 458_640, '8s': 127_008}
  assert round(FCN_FIXED_PARAMS['32s'] / 1e6) == 134  # the paper's Table 1
  for variant in VARIANTS:
    fixed = helpers.shapes(fcn(variant), (1, 32, 32, 3))['params']
    assert helpers.count(fixed) == FCN_FIXED_PARAMS[variant]
    assert not [k for k in fixed if k.startswith('upscore')]
    learned = helpers.shapes(fcn(variant, learned_upsampling=True), (1, 32, 32, 3))['params']
    assert helpers.count(learned) == FCN_PARAMS[variant]
    assert FCN_PARAMS[variant] - FCN_FIXED_PARAMS[variant] == DECONVS[variant]
    assert helpers.count(learned['backbone']) == VGG16_CONVS
  params = helpers.shapes(fcn('8s', learned_upsampling=True), (1, 32, 32, 3))['params']
  assert params['fc6']['kernel'].shape == (7, 7, 512, 4096)
  assert params['upscore8']['deconv']['kernel'].shape == (16, 16, 21, 21)
  # Resize + conv: each upscore is a 3x3 conv, 21 -> 21, no bias; fixed: a plain resize.
  resized = fcn('8s', upsample='bilinear', learned_upsampling=True)
  assert helpers.param_count(resized, (1, 32, 32, 3)) == FCN_FIXED_PARAMS['8s'] + 3 * 9 * 21 * 21
  resized = fcn('8s', upsample='bilinear')
  assert helpers.param_count(resized, (1, 32, 32, 3)) == FCN_FIXED_PARAMS['8s']


def test_fcn_tiny_fixed_upsampling_drops_exactly_the_deconv_kernels():
  # fcn_tiny (11 classes): upscore2 and upscore_pool4 4x4, upscore8 16x16, each 11 -> 11.
  learned = helpers.param_count(fcn_tiny(learned_upsampling=True), (1, 32, 32, 3))
  fixed = helpers.param_count(fcn_tiny(), (1, 32, 32, 3))
  assert learned - fixed == 2 * 4 * 4 * 11 * 11 + 16 * 16 * 11 * 11 == 34_848


def _fcn_calls(model: nn.Module, variables: dict, x: np.ndarray) -> dict:
  """{submodule name: (call args, output)} of the FCN's own submodules in one apply."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and len(context.module.path) == 1:
      calls[context.module.name] = (args, out)
    return out

  with nn.intercept_methods(record):
    model.apply(variables, x)
  return calls


def test_fcn_skips_are_scaled_before_their_scorers():
  # The at-once net's Scale layers: score_pool4 reads 0.01 * pool4, score_pool3 1e-4 * pool3.
  x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype(np.float32)
  model = fcn_tiny()
  variables = _numpy_variables(model, x)
  for scale, (s4, s3) in (((0.01, 1e-4), (0.01, 1e-4)), ((1.0, 1.0), (1.0, 1.0))):
    calls = _fcn_calls(model.clone(skip_scale=scale), variables, x)
    feats = calls['backbone'][1]
    pool4, pool3 = np.asarray(feats['pool4']), np.asarray(feats['pool3'])
    assert np.abs(pool4).max() > 0.1 and np.abs(pool3).max() > 0.1  # not trivially zero
    np.testing.assert_array_equal(calls['score_pool4'][0][0], pool4 * np.float32(s4))
    np.testing.assert_array_equal(calls['score_pool3'][0][0], pool3 * np.float32(s3))
  assert _error(lambda: helpers.shapes(fcn_tiny(skip_scale=(0.1,)), (1, 32, 32, 3))) == (
    'FCN.skip_scale=(0.1,); expected two multipliers (pool4, pool3)'
  )


def test_fcn_resnet_params_equal_torchvision():
  # torchvision fcn_resnet50(num_classes=21, aux_loss=True): resnet50 without fc (23,508,032)
  # + FCNHead(2048): 3x3 2048->512 (9,437,184) + BN (1,024) + 1x1 512->21 (10,773)
  # + aux FCNHead(1024): 3x3 1024->256 (2,359,296) + BN (512) + 1x1 256->21 (5,397).
  params = helpers.shapes(fcn_resnet(50), (1, 32, 32, 3))['params']
  assert set(params) == {'backbone', 'classifier', 'aux_classifier'}
  assert helpers.count(params) == 35_322_218
  assert helpers.count(params['aux_classifier']) == 2_359_296 + 512 + 5_397
  assert helpers.param_count(fcn_resnet(50, aux_loss=False), (1, 32, 32, 3)) == 32_957_013
  assert helpers.param_count(fcn_resnet(101), (1, 32, 32, 3)) == 54_314_346


def _unet_hand_count(in_ch: int, classes: int, base: int, depth: int, bn: bool) -> int:
  """The paper's Figure 1 layout summed by hand: 3x3 convs (bias without BN, scale + shift with),
  2x2 up-convs halving the channels (with bias), the final 1x1 conv."""

  def conv3(c_in, c_out):
    return 9 * c_in * c_out + (2 * c_out if bn else c_out)

  widths = [base * 2**level for level in range(depth + 1)]
  total, c = 0, in_ch
  for width in widths:  # contracting path and bottom
    total += conv3(c, width) + conv3(width, width)
    c = width
  for width in reversed(widths[:-1]):  # expansive path: up-conv, concat, two convs
    total += 4 * c * width + width + conv3(2 * width, width) + conv3(width, width)
    c = width
  return total + c * classes + classes


def test_unet_params_match_hand_count():
  # The paper's net: 1-channel 572x572 tiles, 2 classes, valid padding, no BN.
  assert _unet_hand_count(1, 2, 64, 4, bn=False) == 31_030_658
  assert helpers.param_count(unet_valid(), (1, 572, 572, 1)) == 31_030_658
  # Same padding + BN, RGB: same convs less their biases, plus BN's scale and shift.
  assert helpers.param_count(unet(), (1, 32, 32, 3)) == _unet_hand_count(3, 2, 64, 4, True)
  assert _unet_hand_count(3, 2, 64, 4, True) == 31_037_698
  assert helpers.param_count(unet_tiny(), (1, 32, 32, 3)) == _unet_hand_count(3, 11, 4, 2, True)


# ---------------------------------------------------------------------------------------------
# Shapes, output sizes, size errors


@pytest.mark.parametrize('variant', ['32s', '16s', '8s'])
@pytest.mark.parametrize('mode', UPSAMPLE_MODES)
@pytest.mark.parametrize('learned', [False, True])
def test_fcn_tiny_output_shapes(variant, mode, learned):
  model = fcn_tiny(variant=variant, upsample=mode, learned_upsampling=learned)
  logits, _ = _apply_shapes(model, (2, 64, 96, 3))
  assert logits.shape == (2, 64, 96, 11) and logits.dtype == jnp.float32
  assert model.output_size(64) == 64


def test_full_size_nets_output_shapes():
  assert _apply_shapes(fcn('8s'), (1, 64, 64, 3))[0].shape == (1, 64, 64, 21)
  assert _apply_shapes(fcn_resnet(50), (1, 50, 70, 3))[0].shape == (1, 50, 70, 21)  # any size
  assert _apply_shapes(unet(num_classes=11), (1, 64, 64, 3))[0].shape == (1, 64, 64, 11)
  paper = unet_valid()
  assert paper.output_size(572) == 388  # the paper's Figure 1
  assert _apply_shapes(paper, (1, 572, 572, 1))[0].shape == (1, 388, 388, 2)


@pytest.mark.parametrize('mode', UPSAMPLE_MODES)
def test_unet_tiny_output_shapes(mode):
  same = unet_tiny(upsample=mode)
  assert _apply_shapes(same, (2, 32, 48, 3))[0].shape == (2, 32, 48, 11)
  # Valid padding at depth 2: 100 -> 96 / 2 = 48 -> 44 / 2 = 22 -> 18 -> 36 - 4 = 32 -> 64 - 4 = 60.
  valid = unet_tiny(padding='valid', upsample=mode)
  assert valid.output_size(100) == 60
  assert _apply_shapes(valid, (2, 100, 100, 3))[0].shape == (2, 60, 60, 11)


def _error(fn) -> str:
  """The UserError message `fn()` raises (JAX appends a traceback note on a second line)."""
  with pytest.raises(UserError) as e:
    fn()
  return str(e.value).splitlines()[0]


def test_bad_input_sizes_name_the_nearest_valid_ones():
  # Valid padding, depth 4: sizes 16k + 60 keep every pooled map even; the bottom's convs and the
  # up path stay positive from k = 8 on (188 -> 4), so 100 has no valid size below it.
  assert _error(lambda: helpers.shapes(unet_valid(), (1, 100, 100, 1))) == (
    'U-Net (valid padding, depth 4) cannot take 100x100 inputs: every feature map must have an '
    'even size before each pool and stay positive; nearest valid sizes: 188'
  )
  assert unet_valid().output_size(188) == 4
  # Depth 2: sizes 4k + 12 (k >= 5); 98 -> 94 / 2 = 47 -> 43 is odd before the second pool.
  assert _error(lambda: helpers.shapes(unet_tiny(padding='valid'), (1, 98, 98, 3))).endswith(
    'depth 2) cannot take 98x98 inputs: every feature map must have an even size before each '
    'pool and stay positive; nearest valid sizes: 96, 100'
  )
  assert _error(lambda: helpers.shapes(unet(), (1, 100, 100, 3))) == (
    'U-Net (same padding, depth 4) cannot take 100x100 inputs: height and width must be '
    'multiples of 2^depth = 16; nearest valid sizes: 96, 112'
  )
  # Only the offending dimension is named; two different offenders each get their sizes.
  assert _error(lambda: helpers.shapes(unet_tiny(), (1, 32, 30, 3))).endswith(
    'cannot take 32x30 inputs: height and width must be multiples of 2^depth = 4; '
    'nearest valid sizes: 28, 32'
  )
  assert _error(lambda: helpers.shapes(unet_tiny(), (1, 10, 14, 3))).endswith(
    'nearest valid sizes: 8, 12 (for 10); 12, 16 (for 14)'
  )
  assert _error(lambda: helpers.shapes(fcn('8s'), (1, 100, 100, 3))) == (
    'FCN-8s (vgg16) cannot take 100x100 inputs: height and width must be multiples of 32 '
    '(the stride of pool5); nearest valid sizes: 96, 128'
  )
  assert _error(lambda: fcn_tiny().output_size(20)).endswith('nearest valid sizes: 32')
  assert _error(lambda: helpers.shapes(FCN(variant='4s'), (1, 32, 32, 3))) == (
    "FCN.variant='4s'; expected one of ('32s', '16s', '8s')"
  )
  assert _error(lambda: unet(upsample='cubic').output_size(32)) == (
    "UNet.upsample='cubic'; expected one of ('transpose', 'bilinear', 'nearest')"
  )


# ---------------------------------------------------------------------------------------------
# Auxiliary head, a train step


def test_fcn_resnet_aux_head_only_in_training():
  model = fcn_resnet_tiny()
  params = helpers.shapes(model, (2, 32, 32, 3))['params']  # eval-mode init creates the aux head
  assert 'aux_classifier' in params
  logits, updates = _apply_shapes(model, (2, 30, 34, 3), train=False)
  assert logits.shape == (2, 30, 34, 11) and 'aux_logits' not in updates
  logits, updates = _apply_shapes(model, (2, 30, 34, 3), train=True)
  (aux,) = updates['aux_logits']['aux']  # one sow, at input resolution, float32
  assert aux.shape == logits.shape == (2, 30, 34, 11) and aux.dtype == jnp.float32
  assert 'aux_logits' not in _apply_shapes(fcn_resnet_tiny(aux_loss=False), (2, 32, 32, 3), True)[1]
  assert (
    'aux_classifier'
    not in helpers.shapes(fcn_resnet_tiny(aux_loss=False), (2, 32, 32, 3))['params']
  )
  _, updates = _apply_shapes(fcn_resnet_tiny(dtype=jnp.bfloat16), (2, 32, 32, 3), train=True)
  assert jax.tree.leaves(updates['aux_logits'])[0].dtype == jnp.float32


def _pixel_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(log_p, labels[..., None], axis=-1))


def test_unet_tiny_train_step():
  # Depth 1 at 16x16: the same code paths as unet_tiny (pool, up-conv, crop + concat, BN) in
  # fewer XLA kernels; compiling them is most of this test's time.
  model, size = unet_tiny(depth=1), 16
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 11, size=(2, size, size)))
  variables = _numpy_variables(model, x)
  params, stats = variables['params'], variables['batch_stats']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': stats},
      x,
      train=True,
      mutable=['batch_stats', 'aux_logits'],
      rngs={'dropout': jax.random.key(1, impl='rbg')},
    )
    assert 'aux_logits' not in updates
    return _pixel_cross_entropy(logits, labels), updates['batch_stats']

  (loss, new_stats), grads = jax.device_get(_jit(jax.value_and_grad(loss_fn, has_aux=True))(params))
  assert np.isfinite(loss)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads)), 'a parameter got no gradient'
  changed = jax.tree.map(lambda a, b: bool((a != b).any()), stats, new_stats)
  assert all(jax.tree.leaves(changed)), 'some running statistics were not updated'


def test_bfloat16_compute_keeps_float32_params_and_logits():
  for model in (fcn_tiny(dtype=jnp.bfloat16), unet_tiny(dtype=jnp.bfloat16, upsample='bilinear')):
    variables = helpers.shapes(model, (1, 32, 32, 3))
    assert {p.dtype for p in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert _apply_shapes(model, (1, 32, 32, 3))[0].dtype == jnp.float32
