"""Segmentation data: digit_scenes built offline, joint image/label augmentation, batches."""

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cnn_jax import data
from cnn_jax.core.errors import UserError
from cnn_jax.data import codecs, digit_scenes, digits, images

IGNORE = 255


@functools.cache
def _examples(data_dir: str, split: str, decode: bool = True, count: int = 0) -> tuple[dict, ...]:
  """The first `count` (0: all) examples of `split`, in order; PNG bytes unless `decode`."""
  builder = digit_scenes.DigitScenes(data_dir=data_dir, file_format='array_record')
  skip = {k: tfds.decode.SkipDecoding() for k in ('image', 'segmentation_mask')}
  source = builder.as_data_source(split, decoders=None if decode else skip)
  return tuple(source.__getitems__(list(range(count or len(source)))))


def test_builds_are_identical(scenes_dir, tmp_path):
  again = data.load('digit_scenes', str(tmp_path))
  first = data.load('digit_scenes', scenes_dir)
  # 300 of the 3,000 train scenes (a plain draw: scenes have no class label) are held out.
  sizes = (len(first.train), len(first.validation), len(first.test))
  assert sizes + (first.num_classes, first.channels) == (2700, 300, 500, 11, 1)
  for split in ('train', 'test'):
    # Encoded bytes equal (PNG encoding is deterministic): decoded arrays equal too.
    a, b = _examples(scenes_dir, split, False), _examples(str(tmp_path), split, False)
    assert len(a) == len(b) == digit_scenes.NUM_SCENES[split]
    for x, y in zip(a, b, strict=True):
      assert x.keys() == y.keys()
      for key in x:
        np.testing.assert_array_equal(x[key], y[key])
  assert again.spec.task == 'segmentation'


def test_train_and_test_scenes_use_disjoint_digits(scenes_dir):
  from sklearn.datasets import load_digits

  targets = load_digits().target
  split = digits.split_indices()
  used = {}
  for name in ('train', 'test'):
    examples = _examples(scenes_dir, name, False)
    ids = np.stack([ex['digit_ids'] for ex in examples])
    labels = np.stack([ex['digit_labels'] for ex in examples])
    np.testing.assert_array_equal(ids < 0, labels < 0)
    assert (ids[:, 0] >= 0).all()  # at least one digit per scene
    np.testing.assert_array_equal(labels[ids >= 0], targets[ids[ids >= 0]])
    used[name] = set(ids[ids >= 0].tolist())
    assert used[name] <= set(split[name].tolist())
  assert not used['train'] & used['test']
  assert len(used['test']) > 300  # most of the 360 test digits appear somewhere


def test_masks_match_images(scenes_dir):
  counts = np.zeros(11, np.int64)
  for ex in _examples(scenes_dir, 'train', count=500) + _examples(scenes_dir, 'test'):
    image, mask = ex['image'][..., 0].astype(np.int32), ex['segmentation_mask'][..., 0]
    assert mask.max() <= 10
    counts += np.bincount(mask.ravel(), minlength=11)
    covered = np.zeros_like(mask, bool)
    for (top, left, side), label in zip(ex['digit_boxes'], ex['digit_labels'], strict=True):
      if side < 0:
        continue
      assert digit_scenes.DIGIT_SIZES[0] <= side <= digit_scenes.DIGIT_SIZES[1]
      box = np.s_[top : top + side, left : left + side]
      assert not covered[box].any()  # boxes never overlap
      covered[box] = True
      # Labelled exactly where the digit passes half its maximum, with the digit's class + 1.
      on = image[box] * 2 > image[box].max()
      np.testing.assert_array_equal(mask[box], np.where(on, label + 1, 0))
      assert on.sum() > 10
    assert (mask[~covered] == 0).all() and (image[~covered] <= digit_scenes.NOISE).all()
  assert counts.min() > 0 and counts[0] > 0.8 * counts.sum()


def _png(pixels: np.ndarray) -> tf.Tensor:
  return tf.io.encode_png(pixels.astype(np.uint8))


def _blocks(rng: np.random.Generator, size: int, block: int, classes: int) -> np.ndarray:
  cells = rng.integers(0, classes, (size // block, size // block))
  return np.kron(cells, np.ones((block, block), np.int64))


def _augmented(spec, image, labels, seed, size=48, train=True):
  out_image, out_labels = images.preprocess(
    _png(image),
    _png(labels[..., None]),
    tf.constant(1.0),
    tf.constant([0, seed], tf.int64),
    codec=codecs.SEGMENTATION,
    spec=spec,
    stored_channels=image.shape[-1],
    image_size=size,
    channels=image.shape[-1],
    train=train,
  )
  return out_image.numpy(), out_labels.numpy()


def test_joint_augmentation_keeps_image_and_labels_aligned():
  # Each pixel's grey value encodes its class (20 * class), so the label map can be read back
  # from the augmented image wherever the image was not blended across a class border.
  spec = dataclasses.replace(
    data.DATASETS['digit_scenes'], mean=(0.0,), std=(1 / 255,), flip=True, scale_range=(0.5, 2.0)
  )
  rng = np.random.default_rng(0)
  labels = _blocks(rng, 64, 8, 11)
  image = (20 * labels)[..., None]
  agree, shifted_agree, checked, padded, flipped = 0, 0, 0, 0, 0
  for seed in range(12):
    out_image, out_labels = _augmented(spec, image, labels, seed)
    assert out_image.shape == (48, 48, 1) and out_labels.shape == (48, 48)
    assert set(np.unique(out_labels)) <= set(range(11)) | {IGNORE}
    decoded = np.round(out_image[..., 0] / 20)
    padded += (out_labels == IGNORE).any()
    # Pixels whose 3x3 neighbourhood holds one class (bilinear blends only across borders).
    core = out_labels[1:-1, 1:-1]
    uniform = (core != IGNORE) & np.all(
      [
        core == out_labels[1 + dy : 47 + dy, 1 + dx : 47 + dx]
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
      ],
      axis=0,
    )
    agree += (decoded[1:-1, 1:-1] == core)[uniform].sum()
    shifted_agree += (np.roll(decoded, 2, axis=1)[1:-1, 1:-1] == core)[uniform].sum()
    checked += uniform.sum()
    # Padding shows the mean colour (0 here) under the ignore label.
    assert (out_image[out_labels == IGNORE] == 0).all()
    # With scale 1 and no padding the output is the input, mirrored or not.
    _, plain = _augmented(
      dataclasses.replace(spec, scale_range=(1.0, 1.0)), image, labels, seed, 64
    )
    assert np.array_equal(plain, labels) or np.array_equal(plain, labels[:, ::-1])
    flipped += np.array_equal(plain, labels[:, ::-1])
  assert checked > 12 * 48 * 48 * 0.3
  assert agree == checked
  assert shifted_agree < 0.8 * checked  # the check above does see a 2-pixel misalignment
  assert 0 < padded < 12 and 0 < flipped < 12
  # Digits are never mirrored: at scale 1 the output is the input, for every seed.
  digits_spec = dataclasses.replace(data.DATASETS['digit_scenes'], scale_range=(1.0, 1.0))
  for seed in range(12):
    np.testing.assert_array_equal(_augmented(digits_spec, image, labels, seed, 64)[1], labels)


def test_pet_trimaps_map_to_background_pet_and_ignore():
  spec = data.DATASETS['oxford_iiit_pet']
  rng = np.random.default_rng(0)
  trimap = rng.integers(1, 4, (30, 40))
  image = rng.integers(0, 256, (30, 40, 3))
  for train in (False, True):
    out_image, out_labels = _augmented(spec, image, trimap, 0, size=24, train=train)
    assert out_image.shape == (24, 24, 3) and out_image.dtype == np.float32
    assert set(np.unique(out_labels)) <= {0, 1, IGNORE}
  _, same = _augmented(spec, image, trimap, 0, size=30, train=False)  # no resize along y
  np.testing.assert_array_equal(same[:, 0], np.array([IGNORE, 1, 0, IGNORE])[trimap[:, 0]])


def _train(ds, **kw):
  args = dict(seed=0, global_batch=16, start_step=0, num_steps=4, image_size=32, channels=1)
  return list(data.train_iterator(ds, **{**args, **kw}))


def test_segmentation_batches_are_a_function_of_seed_and_step(scenes_dir):
  ds = data.load('digit_scenes', scenes_dir)
  full = _train(ds)
  batch = full[0]
  assert batch.keys() == {'image', 'segmentation', 'mask'}
  assert batch['image'].shape == (16, 32, 32, 1) and batch['image'].dtype == np.float32
  assert batch['segmentation'].shape == (16, 32, 32) and batch['segmentation'].dtype == np.int32
  assert batch['mask'].min() == 1
  for a, b in zip(full[2:], _train(ds, start_step=2), strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  host1 = _train(ds, process_index=1, process_count=2)
  for a, b in zip(full, host1, strict=True):
    np.testing.assert_array_equal(a['segmentation'][8:], b['segmentation'])
    np.testing.assert_array_equal(a['image'][8:], b['image'])
  other = _train(ds, seed=1, num_steps=1)[0]
  assert not np.array_equal(other['segmentation'], batch['segmentation'])


def test_eval_covers_each_test_example_once(scenes_dir):
  ds = data.load('digit_scenes', scenes_dir)
  batches = list(data.eval_iterator(ds, global_batch=96, image_size=64, channels=1, split='test'))
  assert len(batches) == data.eval_steps(ds, 96, split='test') == 6
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 500 and masks[:500].all() and not masks[500:].any()
  labels = np.concatenate([b['segmentation'] for b in batches])
  assert (labels[500:] == IGNORE).all()  # padding: every pixel ignored
  # At the stored size eval is no resize: example i of the split, in order, unchanged.
  stored = np.stack([ex['segmentation_mask'][..., 0] for ex in _examples(scenes_dir, 'test')])
  np.testing.assert_array_equal(labels[:500], stored)


def test_unprepared_or_unavailable_datasets_say_why(tmp_path):
  with pytest.raises(UserError) as e:
    data.load('oxford_iiit_pet', str(tmp_path))
  assert 'not prepared' in str(e.value) and '\n' not in str(e.value)
  assert f'python -m cnn_jax.data.prepare oxford_iiit_pet --data_dir={tmp_path}' in str(e.value)
  with pytest.raises(UserError, match="dataset 'voc_segmentation': tfds's 'voc' .* boxes only"):
    data.load('voc_segmentation', str(tmp_path))
  assert 'voc' in tfds.list_builders()  # the detection builder that exists
  with pytest.raises(UserError) as e:  # VOC detection: through tfds, when it is prepared
    data.load('voc', str(tmp_path))
  assert 'not prepared' in str(e.value) and 'python -m cnn_jax.data.prepare voc/2007' in str(
    e.value
  )
