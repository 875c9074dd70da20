"""RandAugment ops: shape, dtype, range, determinism per seed, op facts, graph mode = eager."""

import numpy as np
import pytest
import tensorflow as tf

from cnn_jax.core.errors import UserError
from cnn_jax.data import randaugment as ra

_SEEDS = [tf.constant([s, 7], tf.int64) for s in range(4, 8)]  # signs +, -, -, +


def _image(channels: int, size: int = 16, seed: int = 0) -> tf.Tensor:
  rng = np.random.default_rng(seed)
  return tf.constant(rng.uniform(size=(size, size + 2, channels)).astype(np.float32))


def _digit(size: int = 16) -> np.ndarray:
  """A bright bar on black, away from the borders: content that geometric ops visibly move."""
  image = np.zeros((size, size, 1), np.float32)
  image[4:12, 6:9] = 1.0
  return image


def test_ops_are_the_papers_fourteen():
  assert ra.OPS == (
    'Identity', 'AutoContrast', 'Equalize', 'Rotate', 'Solarize', 'Color', 'Posterize',
    'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY',
  )  # fmt: skip
  assert ra.SIGNED_OPS < set(ra.OPS)


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('name', ra.OPS)
def test_op_keeps_shape_dtype_range_and_is_deterministic(name, channels):
  image = _image(channels)
  for magnitude in (0, 9, 30):
    outs = [ra.apply_op(name, image, magnitude, s).numpy() for s in _SEEDS]
    for out in outs:
      assert out.shape == tuple(image.shape) and out.dtype == np.float32
      assert 0.0 <= out.min() and out.max() <= 1.0
    again = ra.apply_op(name, image, magnitude, _SEEDS[0]).numpy()
    np.testing.assert_array_equal(outs[0], again)
    differ = any(not np.array_equal(outs[0], o) for o in outs[1:])
    # Only signed ops draw from the seed; Color on grey is the identity whatever the sign.
    random = name in ra.SIGNED_OPS and magnitude > 0 and not (name == 'Color' and channels == 1)
    assert differ == random, (name, magnitude)


@pytest.mark.parametrize('name', [n for n in ra.OPS if n not in ('AutoContrast', 'Equalize')])
def test_magnitude_zero_is_the_identity_for_ops_with_a_magnitude(name):
  image = _image(3)
  out = ra.apply_op(name, image, 0, _SEEDS[1]).numpy()
  np.testing.assert_allclose(out, image.numpy(), atol=1e-6)  # AutoContrast, Equalize: no M


def test_identity_rotate0_solarize0_posterize0_are_exact():
  image = _image(3)
  for name in ('Identity', 'Rotate', 'Solarize', 'Posterize', 'ShearX', 'TranslateY'):
    np.testing.assert_array_equal(ra.apply_op(name, image, 0, _SEEDS[0]), image, err_msg=name)
  np.testing.assert_array_equal(ra.apply_op('Identity', image, 30, _SEEDS[0]), image)


def test_solarize_inverts_pixels_above_the_threshold():
  image = tf.constant([[[0.1], [0.5], [0.9]]])
  out = ra.apply_op('Solarize', image, 15, _SEEDS[0]).numpy().ravel()  # threshold 0.5
  np.testing.assert_allclose(out, [0.1, 0.5, 0.1], atol=1e-6)


def test_posterize_reduces_the_number_of_levels():
  image = tf.constant(np.arange(256, dtype=np.float32).reshape(16, 16, 1) / 255)
  levels = [len(np.unique(ra.apply_op('Posterize', image, m, _SEEDS[0]))) for m in (0, 15, 30)]
  assert levels == [256, 64, 16]  # 8, 6 and 4 bits kept


def test_auto_contrast_and_equalize_spread_each_channel():
  rng = np.random.default_rng(1)
  # A dull image: channel c in [0.2, 0.4] + 0.1 c; 32x32 so that Equalize has enough pixels.
  image = 0.2 + 0.2 * rng.uniform(size=(32, 32, 3)) + 0.1 * np.arange(3)
  image = tf.constant(image.astype(np.float32))
  stretched = ra.apply_op('AutoContrast', image, 0, _SEEDS[0]).numpy()
  np.testing.assert_allclose(stretched.min(axis=(0, 1)), 0.0, atol=1e-6)
  np.testing.assert_allclose(stretched.max(axis=(0, 1)), 1.0, atol=1e-6)
  equalized = ra.apply_op('Equalize', image, 0, _SEEDS[0]).numpy()
  assert (equalized.min(axis=(0, 1)) < 0.02).all() and (equalized.max(axis=(0, 1)) > 0.98).all()
  # Equalize keeps the order of the levels.
  assert np.corrcoef(equalized[..., 0].ravel(), image[..., 0].numpy().ravel())[0, 1] > 0.95
  flat = tf.fill((8, 8, 1), 0.3)
  np.testing.assert_array_equal(ra.apply_op('AutoContrast', flat, 0, _SEEDS[0]), flat)


def test_color_is_the_identity_on_grey_and_moves_colour_on_rgb():
  grey = _image(1)
  np.testing.assert_array_equal(ra.apply_op('Color', grey, 30, _SEEDS[0]), grey)
  rgb_as_grey = tf.tile(grey, [1, 1, 3])
  out = ra.apply_op('Color', rgb_as_grey, 30, _SEEDS[0]).numpy()
  # Grey in RGB stays grey (to 1e-3: the luma weights 0.2989 + 0.587 + 0.114 sum to 0.9999).
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  np.testing.assert_allclose(out, rgb_as_grey.numpy(), atol=1e-3)
  assert not np.allclose(ra.apply_op('Color', _image(3), 30, _SEEDS[0]), _image(3), atol=1e-2)


def test_translate_moves_content_by_whole_pixels_and_fills():
  image = _digit()
  outs = {
    tuple(ra.apply_op('TranslateX', image, 30, s, fill=0.0, max_translate=0.25).numpy().ravel())
    for s in _SEEDS
  }
  # 0.25 of 16 px = 4 px, left or right; the bar keeps its values (whole pixels, no blur).
  right, left = np.zeros_like(image), np.zeros_like(image)
  right[4:12, 10:13], left[4:12, 2:5] = 1.0, 1.0
  assert outs == {tuple(right.ravel()), tuple(left.ravel())}
  down = ra.apply_op('TranslateY', image, 30, _SEEDS[0], fill=0.5, max_translate=0.25).numpy()
  shifted = [np.full_like(image, 0.5), np.full_like(image, 0.5)]  # 4 rows of fill come in
  shifted[0][4:], shifted[1][:-4] = image[:-4], image[4:]  # content down 4 rows, or up
  assert any(np.array_equal(down, s) for s in shifted)


def test_rotate_and_shear_keep_the_centre_and_use_fill():
  image = _digit()
  out = ra.apply_op('Rotate', image, 30, _SEEDS[0], fill=1.0).numpy()  # 30 degrees
  assert out[0, 0, 0] == 1.0 and out[15, 15, 0] == 1.0  # corners come from outside: fill
  np.testing.assert_allclose(out[7:9, 7, 0], 1.0, atol=1e-6)  # the centre stays on the bar
  for name in ('ShearX', 'ShearY'):
    sheared = ra.apply_op(name, image, 30, _SEEDS[0], fill=0.0).numpy()
    assert abs(sheared.sum() - image.sum()) < 0.1 * image.sum()  # moved, not lost
    assert not np.allclose(sheared, image)


def test_randaugment_zero_layers_is_the_identity_and_layers_change_the_image():
  image = _image(3)
  np.testing.assert_array_equal(ra.randaugment(image, _SEEDS[0], num_layers=0, magnitude=30), image)
  seeds = [tf.constant([s, 3], tf.int64) for s in range(8)]
  outs = [ra.randaugment(image, s, num_layers=2, magnitude=20).numpy() for s in seeds]
  assert sum(not np.array_equal(o, image.numpy()) for o in outs) >= 6  # identity twice: 1/196
  assert len({o.tobytes() for o in outs}) >= 6


@pytest.mark.parametrize('channels', [1, 3])
def test_randaugment_in_dataset_map_matches_eager(channels):
  images = [_image(channels, seed=i).numpy() for i in range(6)]
  kw = dict(num_layers=2, magnitude=15, fill=0.0)

  def one(image, position):
    return ra.randaugment(image, tf.stack([tf.constant(5, tf.int64), position]), **kw)

  # Height and width unknown to the graph, as after tf.io.decode_image.
  spec = (tf.TensorSpec([None, None, channels], tf.float32), tf.TensorSpec([], tf.int64))
  ds = tf.data.Dataset.from_generator(
    lambda: zip(images, range(6), strict=True), output_signature=spec
  )
  graph = np.stack(list(ds.map(one, num_parallel_calls=2, deterministic=True)))
  eager = np.stack([one(tf.constant(im), tf.constant(p, tf.int64)) for p, im in enumerate(images)])
  np.testing.assert_array_equal(graph, eager)
  assert graph.shape == (6, *images[0].shape) and graph.dtype == np.float32
  assert 0.0 <= graph.min() and graph.max() <= 1.0
  assert len({g.tobytes() for g in graph}) == 6


@pytest.mark.parametrize(
  'call, message',
  [
    (lambda im: ra.apply_op('Rotat', im, 9, _SEEDS[0]), "unknown RandAugment op 'Rotat'"),
    (lambda im: ra.randaugment(im, _SEEDS[0], num_layers=-1, magnitude=9), 'num_layers -1'),
    (lambda im: ra.randaugment(im, _SEEDS[0], num_layers=2, magnitude=31), 'magnitude 31'),
    (lambda im: ra.apply_op('Rotate', im, -1, _SEEDS[0]), 'magnitude -1'),
    (lambda im: ra.apply_op('Rotate', im, 9, _SEEDS[0], fill=2.0), 'fill 2.0'),
    (lambda im: ra.apply_op('Rotate', im[..., :2], 9, _SEEDS[0]), 'H, W, 1 or 3'),
  ],
)
def test_bad_arguments_raise_one_clear_line(call, message):
  with pytest.raises(UserError, match=message) as err:
    call(_image(3))
  assert '\n' not in str(err.value)


def test_unknown_op_suggests_the_close_name():
  with pytest.raises(UserError, match='did you mean Rotate'):
    ra.apply_op('Rotat', _image(1), 9, _SEEDS[0])
