"""config.data_classes and config.train_examples_per_class (datasets.class_subset): some classes
of a dataset, relabelled, and a stratified draw of training examples per class."""

import dataclasses

import helpers
import numpy as np
import pytest

from cnn_jax import data, train
from cnn_jax.core.errors import UserError
from cnn_jax.data.datasets import class_subset, source_labels


@pytest.fixture(scope='module')
def digits(data_dir):
  return data.load('digits', data_dir)


def _images(source, indices):
  return [r['image'] for r in source.__getitems__(list(indices))]


def test_classes_are_kept_and_relabelled_in_the_given_order(digits):
  train_labels, eval_labels = source_labels(digits.train), source_labels(digits.test)
  sub = class_subset(digits, (7, 2, 9))
  assert sub.num_classes == 3 and digits.num_classes == 10
  for split, labels in ((sub.train, train_labels), (sub.test, eval_labels)):
    members = np.flatnonzero(np.isin(labels, (7, 2, 9)))  # every example of the classes
    assert len(split) == members.size
    # 7 -> 0, 2 -> 1, 9 -> 2, the images unchanged and in split order.
    want = np.select([labels[members] == 7, labels[members] == 2], [0, 1], 2)
    assert np.array_equal(source_labels(split), want)
  source = digits.test
  assert _images(sub.test, range(5)) == _images(
    source, np.flatnonzero(np.isin(eval_labels, (7, 2, 9)))[:5]
  )
  # The batches the trainer reads carry the new labels.
  batch = next(data.eval_iterator(sub, global_batch=64, image_size=8, channels=1))
  assert set(batch['label'][batch['mask'] > 0].tolist()) == {0, 1, 2}


def test_examples_per_class_are_a_stratified_deterministic_draw(digits):
  train_labels = source_labels(digits.train)
  sub = class_subset(digits, (5, 6, 7, 8, 9), per_class=4, seed=0)
  assert np.array_equal(np.bincount(source_labels(sub.train)), [4] * 5)
  assert len(sub.test) == np.isin(source_labels(digits.test), range(5, 10)).sum()  # all of them
  assert np.all(np.diff(sub.train.indices) > 0)  # split order
  assert set(train_labels[sub.train.indices]) == {5, 6, 7, 8, 9}
  again = class_subset(digits, (5, 6, 7, 8, 9), per_class=4, seed=0)
  other = class_subset(digits, (5, 6, 7, 8, 9), per_class=4, seed=1)
  assert np.array_equal(again.train.indices, sub.train.indices)
  assert not np.array_equal(other.train.indices, sub.train.indices)
  # A class's draw depends on its id and the seed, not on the other classes listed.
  alone = class_subset(digits, (9, 5), per_class=4, seed=0)
  assert set(alone.train.indices) == set(
    sub.train.indices[np.isin(train_labels[sub.train.indices], (5, 9))]
  )
  # Every class, fewer examples: labels unchanged, eval untouched.
  few = class_subset(digits, (), per_class=3, seed=2)
  assert few.num_classes == 10 and few.test is digits.test
  assert np.array_equal(np.bincount(source_labels(few.train)), [3] * 10)
  assert np.array_equal(source_labels(few.train), train_labels[few.train.indices])
  # The largest count a class holds (digits: 139..146 a class) takes all of that class.
  smallest = int(np.bincount(train_labels).min())
  full = class_subset(digits, (), per_class=smallest, seed=0)
  assert len(full.train) == 10 * smallest


def test_nothing_asked_is_the_dataset_itself(digits):
  assert class_subset(digits) is digits
  assert class_subset(digits, (), -1, seed=3) is digits


@pytest.mark.parametrize(
  'classes, per_class, message',
  [
    (
      (5, 10),
      -1,
      r"config.data_classes=\(5, 10\): 10 is not a class id of dataset 'digits' \(0..9\)",
    ),
    ((-1, 2), -1, r'-1 is not a class id'),
    ((1, True), -1, r'True is not a class id'),
    ((3, 4, 3), -1, r'class 3 is listed twice; list each once'),
    ((3,), -1, r'a classifier needs at least 2 classes'),
    ('5,6', -1, r"config.data_classes='5,6': give a tuple of class ids"),
    ((5, 6), 0, r'config.train_examples_per_class=0: give a whole number >= 1'),
    ((5, 6), -2, r'config.train_examples_per_class=-2'),
    ((5, 6), 2.0, r'config.train_examples_per_class=2.0'),
    (
      (5, 6),
      500,
      r"config.train_examples_per_class=500: class 5 of dataset 'digits' has only "
      r'\d+ training examples; ask for at most \d+',
    ),
  ],
)
def test_bad_subsets_are_one_clear_line(digits, classes, per_class, message):
  with pytest.raises(UserError, match=message):
    class_subset(digits, classes, per_class, seed=0)


def test_segmentation_datasets_are_refused(digits):
  scenes = dataclasses.replace(digits, name='digit_scenes', spec=data.DATASETS['digit_scenes'])
  assert class_subset(scenes) is scenes  # nothing asked: nothing to refuse
  with pytest.raises(
    UserError, match="'digit_scenes' is a segmentation dataset: config.data_classes"
  ):
    class_subset(scenes, (1, 2))
  with pytest.raises(UserError, match='is a segmentation dataset'):
    class_subset(scenes, (), per_class=3)


def test_the_trainer_builds_on_the_subset(tmp_path, data_dir):
  """train.build applies both fields: a 3-class head, and a bad value refused before the
  workdir exists."""
  config = helpers.tiny_config(
    data_dir, data_classes=(1, 4, 7), train_examples_per_class=6, num_train_steps=1
  )
  exp = train.build(config, str(tmp_path / 'run'))
  assert exp.num_classes == 3 and len(exp.data.train) == 18
  assert exp.data.num_classes == 3 and set(source_labels(exp.data.test)) == {0, 1, 2}
  config = helpers.tiny_config(data_dir, data_classes=(1, 12))
  with pytest.raises(UserError, match='12 is not a class id'):
    train.build(config, str(tmp_path / 'bad'))
  assert not (tmp_path / 'bad').exists()
