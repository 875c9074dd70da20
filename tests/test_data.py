"""The input pipeline: digits built offline, batches a function of (seed, step), host shards."""

import dataclasses

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.core.errors import UserError
from cnn_jax.data import digits


def _train(ds, **kw):
  args = dict(seed=0, global_batch=32, start_step=0, num_steps=3, image_size=16, channels=3)
  return list(data.train_iterator(ds, **{**args, **kw}))


def test_digits_split_is_stratified_and_fixed(data_dir):
  ds = data.load('digits', data_dir)
  # The builder's 1,437 train digits: 1,292 train, 145 (14-15 a class) held out for validation.
  sizes = (len(ds.train), len(ds.validation), len(ds.test), ds.num_classes, ds.channels)
  assert sizes == (1292, 145, 360, 10, 1)
  idx = digits.split_indices()
  assert not set(idx['train']) & set(idx['test'])
  from sklearn.datasets import load_digits

  test_counts = np.bincount(load_digits().target[idx['test']])
  assert test_counts.min() >= 34 and test_counts.max() <= 37  # 20% of 174..183 per class
  np.testing.assert_array_equal(idx['test'], digits.split_indices()['test'])


def test_batches_are_a_function_of_seed_and_step(data_dir):
  ds = data.load('digits', data_dir)
  full = _train(ds, num_steps=50)  # 50 * 32 > 1292: crosses an epoch boundary
  resumed = _train(ds, start_step=45, num_steps=50)
  for a, b in zip(full[45:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other_seed = _train(ds, seed=1, num_steps=1)
  assert not np.array_equal(full[0]['label'], other_seed[0]['label'])
  # Each epoch visits every example once: labels of the first 1292 positions = the split's.
  labels = np.concatenate([b['label'] for b in full])[:1292]
  split_labels = [r['label'] for r in ds.train.__getitems__(list(range(1292)))]
  np.testing.assert_array_equal(np.bincount(labels), np.bincount(split_labels))


def test_batch_contents(data_dir):
  ds = data.load('digits', data_dir)
  batch = _train(ds, num_steps=1)[0]
  assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.float32
  assert batch['label'].dtype == np.int32 and batch['mask'].min() == 1
  # Normalised with the dataset's statistics: roughly zero mean, unit spread.
  assert abs(batch['image'].mean()) < 0.5 and 0.5 < batch['image'].std() < 1.5
  # Grey tiled to RGB.
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])


class _Recording:
  """A source that remembers which examples were read."""

  def __init__(self, source):
    self.source, self.read = source, []

  def __len__(self):
    return len(self.source)

  def __getitems__(self, indices):
    self.read.extend(indices)
    return self.source.__getitems__(indices)


def test_each_host_reads_only_its_share(data_dir):
  ds = data.load('digits', data_dir)
  whole = _train(ds, num_steps=4)
  read = []
  for host in range(2):
    recording = _Recording(ds.train)
    ds_host = dataclasses.replace(ds, train=recording)
    mine = _train(ds_host, num_steps=4, process_index=host, process_count=2)
    for a, b in zip(whole, mine, strict=True):
      np.testing.assert_array_equal(a['image'][16 * host : 16 * (host + 1)], b['image'])
    assert len(recording.read) == 4 * 16  # its 16 of every 32, nothing more
    read.append(set(recording.read))
  assert not read[0] & read[1]


@pytest.mark.parametrize('split,count', [('validation', 145), ('test', 360)])
def test_eval_covers_the_split_once(data_dir, split, count):
  ds = data.load('digits', data_dir)
  batches = list(data.eval_iterator(ds, global_batch=64, image_size=16, channels=3, split=split))
  steps = -(-count // 64)
  assert len(batches) == data.eval_steps(ds, 64, split=split) == steps
  assert sum(b['mask'].sum() for b in batches) == count
  last = count - (steps - 1) * 64
  assert batches[-1]['mask'][:last].all() and not batches[-1]['mask'][last:].any()


def test_validation_is_a_fixed_stratified_part_of_train(data_dir, tmp_path):
  from cnn_jax.data.datasets import source_labels

  ds = data.load('digits', data_dir)
  again = data.load('digits', str(tmp_path))  # another build, another process's view
  train, validation = ds.train.indices, ds.validation.indices
  assert not set(train) & set(validation) and len(train) + len(validation) == 1437
  np.testing.assert_array_equal(validation, again.validation.indices)
  held = np.bincount(source_labels(ds.validation), minlength=10)
  whole = held + np.bincount(source_labels(ds.train), minlength=10)
  # 10% of each class, halves rounded up: 14 or 15 of 142-146.
  np.testing.assert_array_equal(held, np.floor(0.1 * whole + 0.5))


def test_unknown_dataset_suggests_names(data_dir):
  with pytest.raises(UserError, match="unknown dataset 'cifar1'; closest: cifar10, cifar100"):
    data.load('cifar1', data_dir)


def test_missing_dataset_says_how_to_prepare(data_dir):
  with pytest.raises(UserError) as e:
    data.load('cifar10', data_dir)
  assert 'not prepared' in str(e.value)
  assert f'python -m cnn_jax.data.prepare cifar10 --data_dir={data_dir}' in str(e.value)


def test_image_folder(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('test', 2)):
    for label in ('cat', 'dog'):
      (tmp_path / split / label).mkdir(parents=True)
      for i in range(n):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / split / label / f'{i}.png')
  ds = data.load(f'folder:{tmp_path}')
  # No validation/ folder: 1 of each class's 3 training images is held out for validation.
  assert (len(ds.train), len(ds.validation), len(ds.test), ds.num_classes) == (4, 2, 4, 2)
  batch = next(
    data.train_iterator(
      ds, seed=0, global_batch=4, start_step=0, num_steps=1, image_size=16, channels=3
    )
  )
  assert batch['image'].shape == (4, 16, 16, 3)
  with pytest.raises(UserError, match='is not a folder'):
    data.load(f'folder:{tmp_path}/nothing')
