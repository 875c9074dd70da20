"""Semi-supervised input (Noisy Student, Xie et al. 2020): the labelled split and its pool,
RandAugment in training, the clean pool pass and the labelled + pseudo-labelled batches."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from cnn_jax import data
from cnn_jax.core.errors import UserError
from cnn_jax.data.datasets import source_labels

SIZE = 16


@pytest.fixture(scope='module')
def digits(data_dir):
  return data.load('digits', data_dir)


@pytest.fixture(scope='module')
def split(digits):
  return data.labeled_split(digits, 0.1, seed=0)


def _train(ds, **kw):
  args = dict(seed=0, global_batch=16, start_step=0, num_steps=2, image_size=SIZE, channels=1)
  return list(data.train_iterator(ds, **{**args, **kw}))


def test_labeled_split_is_stratified_disjoint_and_fixed(digits, split):
  labelled, pool = split
  labels = source_labels(digits.train)
  counts = np.bincount(labels)  # 1292 train digits (validation held out), 128..132 per class
  expected = np.floor(0.1 * counts + 0.5).astype(int)  # 13 per class
  assert np.array_equal(np.bincount(labels[labelled.train.indices], minlength=10), expected)
  assert len(labelled.train) == expected.sum() and len(pool) == len(digits.train) - expected.sum()
  both = np.concatenate([labelled.train.indices, pool.indices])
  assert np.array_equal(np.sort(both), np.arange(len(digits.train)))  # a partition
  assert np.all(np.diff(labelled.train.indices) > 0) and np.all(np.diff(pool.indices) > 0)
  # Everything but the train split is the dataset's own.
  assert labelled.test is digits.test and labelled.spec == digits.spec and digits.train is not None
  # The pool keeps its labels (for measuring pseudo-labels, never for training).
  assert [r['label'] for r in pool.__getitems__([0, 7])] == list(labels[pool.indices[[0, 7]]])
  again, _ = data.labeled_split(digits, 0.1, seed=0)
  other, _ = data.labeled_split(digits, 0.1, seed=1)
  assert np.array_equal(again.train.indices, labelled.train.indices)
  assert not np.array_equal(other.train.indices, labelled.train.indices)
  tiny, tiny_pool = data.labeled_split(digits, 1e-4, seed=0)
  assert np.array_equal(np.bincount(labels[tiny.train.indices]), np.ones(10))  # 1 per class
  everything, empty = data.labeled_split(digits, 1.0, seed=0)
  assert len(everything.train) == len(digits.train) and len(empty) == 0


@pytest.mark.parametrize('fraction', [0.0, -0.1, 1.5, float('nan'), True])
def test_labeled_split_rejects_fractions(digits, fraction):
  with pytest.raises(UserError, match=r'labelled fraction .*: give a number in \(0, 1\]'):
    data.labeled_split(digits, fraction, seed=0)


def test_labeled_split_needs_classes(digits):
  scenes = dataclasses.replace(digits, name='digit_scenes', spec=data.DATASETS['digit_scenes'])
  with pytest.raises(UserError, match='segmentation dataset: a labelled/unlabelled split'):
    data.labeled_split(scenes, 0.1, seed=0)


def test_subset(digits):
  sub = data.Subset(digits.train, [5, 3, 5])
  assert len(sub) == 3
  got = sub.__getitems__([2, 1])
  want = digits.train.__getitems__([5, 3])
  assert [r['image'] for r in got] == [r['image'] for r in want]
  assert [r['label'] for r in got] == [r['label'] for r in want]
  nested = data.Subset(sub, [1])
  assert nested.__getitems__([0])[0]['image'] == want[1]['image']
  with pytest.raises(ValueError, match=r'Subset index 1292 outside the source \[0, 1292\)'):
    data.Subset(digits.train, [0, 1292])


def test_randaugment_in_training(digits):
  plain = _train(digits)
  # Off (None, or zero ops) leaves the batches bit-identical: RandAugment's seed is its own.
  for off in (None, (0, 20.0)):
    for a, b in zip(plain, _train(digits, randaugment=off), strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
  noisy = _train(digits, randaugment=(2, 15.0))
  again = _train(digits, randaugment=(2, 15.0))
  spec = digits.spec
  for a, b, c in zip(plain, noisy, again, strict=True):
    np.testing.assert_array_equal(b['image'], c['image'])  # deterministic per (seed, step)
    np.testing.assert_array_equal(a['label'], b['label'])  # the same examples
    changed = np.abs(a['image'] - b['image']).max(axis=(1, 2, 3)) > 1e-3
    assert changed.mean() > 0.5  # 2 ops of 14, some of them near-identities on a given image
    pixels = b['image'] * spec.std[0] + spec.mean[0]  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert (spec.fill, spec.max_translate) == (0.0, 10 / 32)  # black background, small images
  assert data.DATASETS['imagenet2012'].fill == 0.5


@pytest.mark.parametrize(
  'bad, message',
  [
    ((2,), r'give \(N, M\)'),
    (2, r'randaugment 2: give \(N, M\)'),
    ((2, 31.0), "outside the paper's scale"),
    ((-1, 5.0), 'N=-1: give a whole number'),
    ((2.5, 5.0), 'N=2.5: give a whole number'),
    ((2, 'x'), "M='x'"),
  ],
)
def test_randaugment_rejects_settings(digits, bad, message):
  with pytest.raises(UserError, match=message):
    _train(digits, randaugment=bad)


def test_randaugment_not_for_segmentation(digits):
  scenes = dataclasses.replace(digits, name='digit_scenes', spec=data.DATASETS['digit_scenes'])
  with pytest.raises(UserError, match="not supported for segmentation dataset 'digit_scenes'"):
    _train(scenes, randaugment=(2, 9.0))


def test_pool_iterator_is_clean_in_order_and_padded(split):
  labelled, pool = split
  kw = dict(image_size=SIZE, channels=1)
  batches = list(data.pool_iterator(labelled, pool, global_batch=512, **kw))
  assert len(batches) == data.eval_steps(labelled, 512, pool) == 3  # 1292 = 2 * 512 + 268
  mask = np.concatenate([b['mask'] for b in batches])
  assert np.array_equal(mask, np.arange(3 * 512) < len(pool))
  labels = np.concatenate([b['label'] for b in batches])[: len(pool)]
  assert np.array_equal(labels, source_labels(pool))  # the pool's order
  # No augmentation: an image does not depend on where it sits in a batch.
  images = np.concatenate([b['image'] for b in batches])[: len(pool)]
  other = data.pool_iterator(labelled, pool, global_batch=400, **kw)
  np.testing.assert_array_equal(np.concatenate([b['image'] for b in other])[: len(pool)], images)
  host1 = list(
    data.pool_iterator(labelled, pool, global_batch=512, process_index=1, process_count=2, **kw)
  )
  np.testing.assert_array_equal(host1[0]['image'], batches[0]['image'][256:])


class _GreyPool:
  """Pool example i: a flat 8x8 grey image of level i (identifies it after augmentation)."""

  def __init__(self, n):
    self.images = [
      tf.io.encode_png(tf.fill([8, 8, 1], tf.constant(i, tf.uint8))).numpy() for i in range(n)
    ]

  def __len__(self):
    return len(self.images)

  def __getitems__(self, indices):
    return [{'image': self.images[i], 'label': 0} for i in indices]


def _pseudo(m=48, pool_size=100, k=10, seed=0):
  rng = np.random.default_rng(seed)
  indices = rng.integers(0, pool_size, m)  # repeats: duplicated examples
  targets = rng.dirichlet(np.ones(k), m).astype(np.float32)  # distinct rows: identify j
  return indices, targets


def _self_training(labelled, pool, indices, targets, **kw):
  args = dict(
    seed=0,
    global_batch=8,
    unlabeled_batch=16,
    start_step=0,
    num_steps=3,
    image_size=SIZE,
    channels=1,
    num_local_devices=4,
  )
  return list(data.self_training_iterator(labelled, pool, indices, targets, **{**args, **kw}))


@pytest.mark.parametrize('devices', [2, 4])
def test_self_training_batch_layout(split, devices):
  labelled, _ = split
  pool = _GreyPool(100)
  indices, targets = _pseudo()
  ra = (2, 9.0) if devices == 4 else None  # RandAugment once: tracing it costs seconds
  batches = _self_training(
    labelled, pool, indices, targets, num_local_devices=devices, randaugment=ra
  )
  plain = _train(labelled, global_batch=8, num_steps=3, randaugment=ra)
  # Each device's chunk: 8/n labelled rows, then 16/n pseudo rows.
  pattern = np.tile(np.repeat([0.0, 1.0], [8 // devices, 16 // devices]), devices)
  seen = []
  for batch, train_batch in zip(batches, plain, strict=True):
    assert batch['image'].shape == (24, SIZE, SIZE, 1) and batch['image'].dtype == np.float32
    assert batch['target'].shape == (24, 10) and batch['target'].dtype == np.float32
    assert batch['label'].dtype == np.int32 and batch['mask'].tolist() == [1.0] * 24
    np.testing.assert_array_equal(batch['pseudo'], pattern)
    rows = pattern == 0
    assert np.array_equal(batch['label'] == -1, ~rows)
    # Labelled rows: train_iterator's step, same examples and the same noise.
    np.testing.assert_array_equal(batch['image'][rows], train_batch['image'])
    np.testing.assert_array_equal(batch['label'][rows], train_batch['label'])
    np.testing.assert_array_equal(batch['target'][rows], np.eye(10)[train_batch['label']])
    # Pseudo rows: each a pseudo target row (which image goes with it: the next test).
    for target in batch['target'][~rows]:
      seen.extend(np.flatnonzero((targets == target).all(axis=1)))  # its row j
  # 3 steps of 16 = one epoch of the 48 pseudo rows: each once.
  assert sorted(seen) == list(range(48))


def test_self_training_pairs_images_with_targets(split):
  labelled, _ = split
  pool = _GreyPool(100)
  indices, targets = _pseudo()
  spec = labelled.spec
  for batch in _self_training(labelled, pool, indices, targets, num_steps=2):
    for image, target in zip(
      batch['image'][batch['pseudo'] > 0], batch['target'][batch['pseudo'] > 0], strict=True
    ):
      (j,) = np.flatnonzero((targets == target).all(axis=1))
      # A shift moves a flat image by at most 1 px: its centre keeps the grey level.
      level = (image[SIZE // 2, SIZE // 2, 0] * spec.std[0] + spec.mean[0]) * 255
      assert round(float(level)) == indices[j]


def test_self_training_is_deterministic_and_resumes(split):
  labelled, _ = split
  pool = _GreyPool(100)
  indices, targets = _pseudo()
  kw = dict(randaugment=(2, 9.0))
  full = _self_training(labelled, pool, indices, targets, **kw)
  # A run resumed at step 2 (a second, separate pipeline) sees exactly step 2 of the first run.
  resumed = _self_training(labelled, pool, indices, targets, start_step=2, **kw)
  assert len(resumed) == 1
  for key in ('image', 'label', 'target', 'pseudo', 'mask'):
    np.testing.assert_array_equal(full[2][key], resumed[0][key])
  other = _self_training(labelled, pool, indices, targets, seed=1, num_steps=1)
  assert not np.array_equal(other[0]['target'], full[0]['target'])


def test_self_training_hosts_read_their_share(split):
  labelled, _ = split
  pool = _GreyPool(100)
  indices, targets = _pseudo()
  whole = _self_training(labelled, pool, indices, targets, num_steps=1, num_local_devices=1)[0]
  for host in range(2):
    mine = _self_training(
      labelled,
      pool,
      indices,
      targets,
      num_steps=1,
      num_local_devices=1,
      process_index=host,
      process_count=2,
    )[0]
    np.testing.assert_array_equal(mine['image'][:4], whole['image'][4 * host : 4 * host + 4])
    np.testing.assert_array_equal(mine['target'][4:], whole['target'][8 + 8 * host : 16 + 8 * host])


@pytest.mark.parametrize(
  'kw, message',
  [
    (dict(global_batch=6), r'batch size \(labelled\)=6 does not split evenly over 1 host\(s\) x 4'),
    (dict(unlabeled_batch=10), 'unlabeled batch size=10 .* a positive multiple of 4'),
    (dict(unlabeled_batch=0), 'unlabeled batch size=0'),
    (dict(unlabeled_batch=12, process_count=2), r'over 2 host\(s\) x 4 .* multiple of 8'),
  ],
)
def test_self_training_rejects_uneven_batches(split, kw, message):
  labelled, _ = split
  indices, targets = _pseudo()
  with pytest.raises(UserError, match=message):
    _self_training(labelled, _GreyPool(100), indices, targets, **kw)


def test_self_training_rejects_bad_pseudo_labels(split):
  labelled, _ = split
  indices, targets = _pseudo()
  pool = _GreyPool(100)
  with pytest.raises(UserError, match='no pseudo-labelled examples'):
    _self_training(labelled, pool, indices[:0], targets[:0])
  with pytest.raises(UserError, match=r'expected integer indices and targets \(48, 10\)'):
    _self_training(labelled, pool, indices, targets[:, :5])
  with pytest.raises(UserError, match='outside the pool of 50 examples'):
    _self_training(labelled, _GreyPool(50), indices, targets)
