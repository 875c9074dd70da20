"""config.augment: crop, flip and colour shift switched one by one (cnn_jax/data/augment.py)."""

import dataclasses
import sys

import helpers
import numpy as np
import pytest

from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError
from cnn_jax.data import codecs, pipeline
from cnn_jax.data.augment import AugmentOptions
from cnn_jax.data.datasets import DATASETS, Subset

BATCH, SIZE, SEED = 32, 32, 0
OFF = {'crop': False, 'flip': False, 'color_shift': 0.0}


@pytest.fixture(scope='module')
def digits(data_dir):
  return data_lib.load('digits', data_dir)


def _batch(data, augment, *, seed=SEED, step=0, channels=1, start_step=None) -> dict:
  batches = data_lib.train_iterator(
    data,
    seed=seed,
    global_batch=BATCH,
    start_step=step if start_step is None else start_step,
    num_steps=step + 1,
    image_size=SIZE,
    channels=channels,
    augment=augment,
  )
  return list(batches)[-1]


def _clean(data, *, seed=SEED, step=0, channels=1) -> np.ndarray:
  """The eval preprocessing of the examples of train step `step` (same order)."""
  order = pipeline._permutation(seed, 0, len(data.train))[step * BATCH : (step + 1) * BATCH]
  source = Subset(data.train, order)
  batch = next(
    data_lib.eval_iterator(
      data, global_batch=BATCH, image_size=SIZE, channels=channels, source=source
    )
  )
  return batch['image']


def _unnormalise(data, images: np.ndarray) -> np.ndarray:
  return images * data.spec.std[0] + data.spec.mean[0]  # back to [0, 1]


def _same(a: dict, b: dict) -> bool:
  return all(np.array_equal(a[k], b[k]) for k in a)


def test_unset_options_are_the_datasets_default(digits):
  from configs import default

  config = default.get_config()
  assert config.augment.to_dict() == {'crop': None, 'flip': None, 'color_shift': None}
  reference = _batch(digits, None)
  for augment in ({}, config.augment, {'crop': True, 'flip': False, 'color_shift': 0.0}):
    assert _same(_batch(digits, augment), reference)
  assert _same(_batch(digits, {'crop': True}), reference)
  # The defaults: digits shift without mirroring; cifar10 crops and mirrors.
  assert codecs.augment_options(DATASETS['digits']) == AugmentOptions(True, False)
  assert codecs.augment_options(DATASETS['cifar10']) == AugmentOptions(True, True)
  assert codecs.augment_options(DATASETS['cifar10'], {'flip': False}).flip is False


def test_all_off_is_the_eval_image(digits):
  batch = _batch(digits, OFF)
  np.testing.assert_array_equal(batch['image'], _clean(digits))


def test_flip_only_mirrors_about_half(digits):
  images, clean = _batch(digits, {**OFF, 'flip': True})['image'], _clean(digits)
  mirrored = 0
  for x, c in zip(images, clean, strict=True):
    if np.array_equal(x, c):
      continue
    np.testing.assert_array_equal(x, c[:, ::-1])
    mirrored += 1
  assert 0 < mirrored < BATCH


def _shift(image: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
  """out[i, j] = image[i + dy, j + dx], `fill` outside."""
  out = np.full_like(image, fill)
  h, w = image.shape[:2]
  out[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = image[
    max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
  ]
  return out


def test_crop_only_shifts_by_at_most_two_pixels(digits):
  images, clean = _batch(digits, {**OFF, 'crop': True})['image'], _clean(digits)
  background = -digits.spec.mean[0] / digits.spec.std[0]  # 0 in [0, 1], normalised
  moved = 0
  for x, c in zip(images, clean, strict=True):
    shifts = [
      (dy, dx)
      for dy in range(-2, 3)
      for dx in range(-2, 3)
      if np.allclose(x, _shift(c, dy, dx, background), atol=1e-6)
    ]
    assert shifts, 'not a shift of the clean image by at most 2 pixels'
    moved += (0, 0) not in shifts
  assert moved > BATCH // 2  # 24 of the 25 offsets move the image


def test_color_shift_offsets_the_brightness(digits):
  s = 0.1
  batch = _batch(digits, {**OFF, 'color_shift': s}, channels=3)
  images = _unnormalise(digits, batch['image'])
  clean = _unnormalise(digits, _clean(digits, channels=3))
  # A grey dataset: one offset for the image, the same in the three tiled channels.
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  np.testing.assert_array_equal(images[..., 0], images[..., 2])
  offsets = []
  for x, c in zip(images[..., 0], clean[..., 0], strict=True):
    mid = (c > 0.2) & (c < 0.8)  # never clipped by an offset of at most 0.1
    offset = float(np.median(x[mid] - c[mid]))
    np.testing.assert_allclose(x, np.clip(c + offset, 0, 1), atol=1e-5)
    offsets.append(offset)
  assert max(abs(o) for o in offsets) <= s + 1e-5
  assert np.std(offsets) > s / 4  # drawn per example (uniform on [-s, s]: std s / sqrt(3))


def test_deterministic_per_seed_and_step(digits):
  every = {'crop': True, 'flip': True, 'color_shift': 0.1}
  step2 = _batch(digits, every, step=2)
  assert _same(step2, _batch(digits, every, step=2))
  assert _same(step2, _batch(digits, every, step=2, start_step=0))  # resumed = uninterrupted
  other_seed = _batch(digits, every, seed=1, step=2)
  assert not np.array_equal(step2['image'], other_seed['image'])


@pytest.mark.parametrize(
  'augment',
  [OFF, {'crop': True}, {'flip': True}, {'color_shift': 0.2}, {'crop': True, 'flip': True}],
)
def test_shapes(digits, augment):
  batch = _batch(digits, augment, channels=3)
  assert batch['image'].shape == (BATCH, SIZE, SIZE, 3) and batch['image'].dtype == np.float32
  assert batch['label'].shape == (BATCH,) and batch['label'].dtype == np.int32


@pytest.mark.parametrize(
  'augment, message',
  [
    ({'flp': True}, r"config.augment has no option 'flp'; its options: crop, flip, color_shift"),
    ({'flip': 'yes'}, r"config.augment.flip='yes'; give True, False or None"),
    ({'crop': 1}, r'config.augment.crop=1; give True, False or None'),
    ({'color_shift': -0.1}, r'config.augment.color_shift=-0.1; give the largest offset'),
    ({'color_shift': 2.0}, r'config.augment.color_shift=2.0; .* in \[0, 1\]'),
    ({'color_shift': float('nan')}, r'config.augment.color_shift=nan'),
    ({'color_shift': True}, r'config.augment.color_shift=True'),
    ((True, False), r'augment options \(True, False\): give a section of crop, flip'),
  ],
)
def test_bad_options_raise_user_error(augment, message):
  with pytest.raises(UserError, match=message):
    codecs.augment_options(DATASETS['digits'], augment)


def test_segmentation_datasets_refuse_the_options():
  with pytest.raises(UserError, match=r"config.augment.flip is set, but .*'digit_scenes'"):
    codecs.augment_options(DATASETS['digit_scenes'], {'flip': True, 'crop': None})
  # Unset, the segmentation pipeline is untouched.
  codecs.augment_options(DATASETS['digit_scenes'], {'flip': None, 'crop': None})


def test_the_fields_override_from_the_command_line(monkeypatch):
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True)
  argv = [
    'main.py',
    '--config=configs/lenet5.py',
    '--config.augment.flip=True',
    '--config.augment.crop=False',
    '--config.augment.color_shift=0.1',
  ]
  monkeypatch.setattr(sys, 'argv', argv)  # config_flags reads it
  fv(argv)
  assert fv.config.augment.to_dict() == {'crop': False, 'flip': True, 'color_shift': 0.1}
  options = codecs.augment_options(DATASETS['digits'], fv.config.augment)
  assert options == AugmentOptions(crop=False, flip=True, color_shift=0.1)


def test_trainer_passes_config_augment(data_dir, tmp_path):
  """The trainer's batches follow config.augment (cnn_jax/train/: train_batches)."""
  from cnn_jax import train

  config = helpers.tiny_config(data_dir, **{'augment.crop': False, 'augment.color_shift': 0.1})
  exp = train.build(config, str(tmp_path / 'run'))
  trainer = next(train.train_batches(exp, 0))
  wanted = next(
    data_lib.train_iterator(
      exp.data,
      seed=config.seed,
      global_batch=config.batch_size,
      start_step=0,
      num_steps=1,
      image_size=config.image_size,
      channels=config.image_channels,
      augment=config.augment,
    )
  )
  assert _same(trainer, wanted)
  default = dataclasses.replace(exp, config=helpers.tiny_config(data_dir))
  assert not np.array_equal(next(train.train_batches(default, 0))['image'], trainer['image'])
