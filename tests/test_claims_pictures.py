"""experiments.claims_pictures: the notes' edge-filter numbers, checkerboards, feature maps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from experiments import claims_pictures as cp


def _init(model, size):
  # jit + 'rbg': an eager threefry init of these nets takes 20-40 s on 2 busy cores, this 3-5 s.
  return jax.jit(model.init)(jax.random.key(0, impl='rbg'), jnp.zeros((1, size, size, 3)))


def test_notes_filters_are_the_notes_numbers():
  vertical = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]])
  np.testing.assert_array_equal(cp.EDGE_FILTERS['vertical'], vertical)
  np.testing.assert_array_equal(cp.EDGE_FILTERS['horizontal'], [[1, 1, 1], [0, 0, 0], [-1, -1, -1]])
  np.testing.assert_array_equal(cp.EDGE_FILTERS['sobel_vertical'][:, 0], [1, 2, 1])
  np.testing.assert_array_equal(cp.EDGE_FILTERS['scharr_vertical'][:, 0], [3, 10, 3])
  for prefix in ('', 'sobel_', 'scharr_'):
    v = cp.EDGE_FILTERS[prefix + 'vertical']
    np.testing.assert_array_equal(cp.EDGE_FILTERS[prefix + 'horizontal'], v.T)


def test_notes_6x6_example_gives_30s_in_the_middle_columns():
  image = cp.notes_image()
  np.testing.assert_array_equal(image[:, :3], 10)
  np.testing.assert_array_equal(image[:, 3:], 0)
  out = cp.apply_filters(image)
  assert set(out) == set(cp.EDGE_FILTERS)
  np.testing.assert_array_equal(out['vertical'], np.tile([0, 30, 30, 0], (4, 1)))
  np.testing.assert_array_equal(out['sobel_vertical'], np.tile([0, 40, 40, 0], (4, 1)))
  np.testing.assert_array_equal(out['scharr_vertical'], np.tile([0, 160, 160, 0], (4, 1)))
  for name in ('horizontal', 'sobel_horizontal', 'scharr_horizontal'):
    np.testing.assert_array_equal(out[name], np.zeros((4, 4)))
  # Cross-correlation, no flip: dark-to-bright (the mirror image) gives the negative.
  np.testing.assert_array_equal(cp.apply_filters(image[:, ::-1])['vertical'], -out['vertical'])


def test_transposed_filters_find_horizontal_edges():
  out = cp.apply_filters(cp.notes_image().T)  # 10 on the top half, 0 below
  for name, peak in (('horizontal', 30), ('sobel_horizontal', 40), ('scharr_horizontal', 160)):
    np.testing.assert_array_equal(out[name], np.tile([[0], [peak], [peak], [0]], (1, 4)))
    np.testing.assert_array_equal(out[name.replace('horizontal', 'vertical')], np.zeros((4, 4)))


def test_apply_filters_rejects_what_it_cannot_filter():
  with pytest.raises(UserError, match=r'one \(H, W\) grey image, got shape \(6, 6, 3\)'):
    cp.apply_filters(np.zeros((6, 6, 3)))
  with pytest.raises(UserError, match=r'smaller than the 3x3 filters'):
    cp.apply_filters(np.zeros((2, 8)))
  with pytest.raises(UserError, match=r"--photo='lena.png'.*china.jpg"):
    cp.grey_photo('lena.png')


def test_uneven_overlap_of_a_3x3_stride_2_transposed_conv_is_a_checkerboard():
  const = np.ones((8, 8), np.float32)
  taps = cp.upsample_2x(const, 'transpose', 3, None)
  assert taps.shape == (16, 16)
  # 2 taps on even positions, 1 on odd, per axis: 4 / 2 / 2 / 1 in the four phases.
  np.testing.assert_allclose(np.sort(cp.phase_means(taps).ravel()), [1, 2, 2, 4])
  assert cp.relative_spread(taps) == pytest.approx(np.sqrt(1.1875) / 2.25, rel=1e-5)
  assert cp.period2_energy(cp.upsample_2x(cp.smooth_image(), 'transpose', 3, None)) > 0.1
  # Kernel 4 (and 2) divide by the stride: every interior pixel gets 4 (1) taps.
  for k, count in ((4, 4), (2, 1)):
    taps = cp.upsample_2x(const, 'transpose', k, None)
    np.testing.assert_allclose(cp.interior(taps), count)
    assert cp.relative_spread(taps) < 1e-6


def test_random_weights_make_a_checkerboard_even_when_the_kernel_divides():
  const = np.ones((8, 8), np.float32)
  for seed in range(3):
    y = cp.upsample_2x(const, 'transpose', 4, seed)  # each phase sums other kernel taps
    assert cp.relative_spread(y) > 0.05, seed


@pytest.mark.parametrize('mode', ['nearest', 'bilinear'])
def test_resize_then_conv_has_no_checkerboard(mode):
  const = np.ones((8, 8), np.float32)
  for seed in (None, 0, 1, 2):
    y = cp.upsample_2x(const, mode, 3, seed)
    assert y.shape == (16, 16)
    assert cp.relative_spread(y) < 1e-5, seed
  assert cp.period2_energy(cp.upsample_2x(cp.smooth_image(), mode, 3, None)) < 1e-3


def test_conv_feature_maps_of_an_untrained_lenet5():
  model = models.create('lenet5', num_classes=10)
  image = np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32)
  variables = _init(model, 32)
  maps = cp.conv_feature_maps(model, variables, image)
  assert [(name, m.shape) for name, m in maps] == [('conv1', (28, 28, 6)), ('conv2', (10, 10, 16))]
  # conv1's map is the conv output itself (before the ReLU: it has negative values).
  assert maps[0][1].min() < 0
  assert [name for name, _ in cp.conv_feature_maps(model, variables, image, count=1)] == ['conv1']
  assert cp.conv_kernel(variables['params'], 'conv1').shape == (5, 5, 3, 6)
  with pytest.raises(UserError, match="no convolution kernel at 'fc3'"):
    cp.conv_kernel(variables['params'], 'fc3')
  with pytest.raises(UserError, match='count=0'):
    cp.conv_feature_maps(model, variables, image, count=0)


def test_conv_feature_maps_follow_call_order_in_a_resnet():
  model = models.create('resnet_tiny', num_classes=10)
  variables = _init(model, 16)
  maps = cp.conv_feature_maps(model, variables, np.ones((16, 16, 3), np.float32), count=3)
  names = ['stem_conv', 'stage1_block1/conv1', 'stage1_block1/conv2']  # not the params' order
  assert [(name, m.shape) for name, m in maps] == [(n, (16, 16, 4)) for n in names]
  assert cp.conv_kernel(variables['params'], 'stem_conv').shape == (3, 3, 3, 4)


def test_main_writes_the_edge_and_checkerboard_results(tmp_path):
  results = cp.main(['--only', 'edges', 'checkerboard', '--out_dir', str(tmp_path)])
  for name in (
    'claims_edge_filters.png',
    'claims_edge_filters.md',
    'claims_checkerboard.png',
    'claims_checkerboard.md',
    'claims_checkerboard.json',
  ):
    assert (tmp_path / name).stat().st_size > 0, name
  assert '[0, 30, 30, 0]' in (tmp_path / 'claims_edge_filters.md').read_text()
  rows = {r['label']: r for r in results['checkerboard']}
  assert rows['transposed conv 3x3 / 2']['ones_spread'] > 0.4
  assert rows['transposed conv 4x4 / 2']['ones_spread'] < 1e-6
  assert rows['bilinear resize + 3x3 conv']['random_spread_mean'] < 1e-5


def test_main_rejects_bad_input_before_anything_slow(tmp_path):
  with pytest.raises(UserError, match="--photo='nope.jpg'"):
    cp.main(['--only', 'edges', '--photo', 'nope.jpg', '--out_dir', str(tmp_path)])
  with pytest.raises(UserError, match='--config=configs/nope.py: no such file'):
    cp.main(['--only', 'feature_maps', '--config', 'configs/nope.py', '--out_dir', str(tmp_path)])
  with pytest.raises(UserError, match='--config=configs/unet.py: .* needs a classification config'):
    cp.main(['--only', 'feature_maps', '--config', 'configs/unet.py', '--out_dir', str(tmp_path)])
  assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow  # trains LeNet-5 for 2 steps through main (about 20 s)
def test_main_trains_and_draws_feature_maps(tmp_path, data_dir, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', data_dir)
  workdir = tmp_path / 'run'
  args = ['--only', 'feature_maps', '--steps', '2', '--workdir', str(workdir)]
  result = cp.main([*args, '--out_dir', str(tmp_path)])['feature_maps']
  assert (tmp_path / 'claims_feature_maps.png').stat().st_size > 0
  assert result['steps'] == 2
  assert result['maps'] == {'conv1': [28, 28, 6], 'conv2': [10, 10, 16]}
  assert (workdir / 'summary.json').exists()  # --workdir is kept (and reused by a rerun)
