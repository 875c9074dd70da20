"""Noisy Student pseudo-labels: threshold counts, balancing counts, targets, determinism, errors."""

import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.recipes import pseudo_labels as pl


def _logits(classes, confidences, k: int) -> np.ndarray:
  """Logits whose softmax puts `confidence` on `class` and spreads the rest evenly (float64)."""
  classes = np.asarray(classes)
  conf = np.asarray(confidences, np.float64)
  assert (conf > 1.0 / k).all(), 'the class must stay the argmax'
  probs = np.repeat(((1.0 - conf) / (k - 1))[:, None], k, axis=1)
  probs[np.arange(len(classes)), classes] = conf
  return np.log(probs)


# Class sizes 5, 3, 1, 0 (class 3 never predicted) with distinct confidences in (0.4, 0.95).
_CLASSES = [0, 1, 0, 2, 0, 1, 0, 1, 0]
_CONF = [0.50, 0.90, 0.80, 0.70, 0.60, 0.45, 0.95, 0.65, 0.40]


def test_threshold_drops_exactly_the_examples_below_it():
  conf = [0.12, 0.29, 0.30, 0.31, 0.5, 0.99, 0.2999, 0.75]
  logits = _logits([0, 1, 2, 3, 4, 5, 6, 7], conf, k=10)
  out = pl.select(logits, threshold=0.3)
  below = [i for i, c in enumerate(conf) if c < 0.3]  # 0.12, 0.29, 0.2999
  assert out.stats['dropped_by_threshold'] == len(below) == 3
  assert sorted(out.indices.tolist()) == [i for i in range(8) if i not in below]
  np.testing.assert_allclose(out.confidence, np.asarray(conf)[out.indices], rtol=1e-6)
  assert out.stats['num_examples'] == 8 and len(out) == 5
  # Threshold 0 keeps everything; threshold 1 keeps nothing here (no confidence is exactly 1).
  assert pl.select(logits).stats['dropped_by_threshold'] == 0
  assert len(pl.select(logits, threshold=1.0)) == 0


@pytest.mark.parametrize(
  'balance, per_class, expected',
  [
    ('none', None, [5, 3, 1, 0]),
    ('duplicate', None, [5, 5, 5, 0]),  # the largest class
    ('subsample', None, [1, 1, 1, 0]),  # the smallest non-empty class
    ('both', None, [3, 3, 3, 0]),  # the lower median of 1, 3, 5
    ('both', 4, [4, 4, 4, 0]),
    ('duplicate', 4, [5, 4, 4, 0]),  # fills up, never cuts
    ('subsample', 2, [2, 2, 1, 0]),  # cuts, never fills
  ],
)
def test_balancing_counts(balance, per_class, expected):
  out = pl.select(_logits(_CLASSES, _CONF, k=4), balance=balance, per_class=per_class)
  assert out.stats['counts_before'] == [5, 3, 1, 0]
  assert out.stats['counts_after'] == expected
  assert np.bincount(out.targets.argmax(1), minlength=4).tolist() == expected
  assert len(out) == out.stats['num_selected'] == sum(expected)
  assert out.stats['empty_classes'] == [3]


def test_both_defaults_to_the_lower_median():
  # Non-empty class sizes 1, 2, 4, 6 (class 4 empty): the lower median is 2, not 3 or 4.
  classes = [0] + [1] * 2 + [2] * 4 + [3] * 6
  out = pl.select(_logits(classes, np.linspace(0.5, 0.9, 13), k=5), balance='both')
  assert out.stats['per_class'] == 2
  assert out.stats['counts_after'] == [2, 2, 2, 2, 0]


def test_subsampling_keeps_the_most_confident_in_order():
  out = pl.select(_logits(_CLASSES, _CONF, k=4), balance='subsample', per_class=2)
  # Class 0: 0.95 (row 6), 0.80 (row 2); class 1: 0.90 (row 1), 0.65 (row 7); class 2: row 3.
  assert out.indices.tolist() == [6, 2, 1, 7, 3]
  np.testing.assert_allclose(out.confidence, [0.95, 0.80, 0.90, 0.65, 0.70], rtol=1e-6)
  assert out.indices.dtype == np.int64 and out.confidence.dtype == np.float32


def test_duplication_repeats_indices_whole_copies_first():
  out = pl.select(_logits(_CLASSES, _CONF, k=4), balance='duplicate')  # every class to 5
  rows, copies = np.unique(out.indices, return_counts=True)
  copies = dict(zip(rows.tolist(), copies.tolist(), strict=True))
  assert copies[3] == 5  # class 2's only image, five times
  assert sorted(copies[i] for i in (1, 5, 7)) == [1, 2, 2]  # class 1: 5 = 3 x 1 + 2 extra
  assert all(copies[i] == 1 for i in (0, 2, 4, 6, 8))  # class 0 is the largest: untouched
  assert out.stats['num_unique'] == 9 and out.stats['num_selected'] == 15
  # Copies sit next to each other, and classes come in order.
  assert np.all(np.diff(out.targets.argmax(1)) >= 0)
  for i, n in copies.items():
    start = out.indices.tolist().index(i)
    assert out.indices[start : start + n].tolist() == [i] * n


def test_hard_targets_are_one_hot_of_the_argmax():
  logits = np.random.default_rng(0).normal(size=(40, 7)).astype(np.float32)
  out = pl.select(logits, mode='hard', temperature=3.0)
  assert out.targets.dtype == np.float32 and out.targets.shape == (40, 7)
  assert set(np.unique(out.targets).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(out.targets.sum(1), 1.0)
  np.testing.assert_array_equal(out.targets.argmax(1), logits[out.indices].argmax(1))
  # Confidence is the temperature-1 max probability whatever the temperature.
  z = logits[out.indices].astype(np.float64)
  p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
  np.testing.assert_allclose(out.confidence, p.max(1), rtol=1e-6)


def test_soft_targets_sum_to_one_and_flatten_with_temperature():
  logits = np.random.default_rng(1).normal(scale=3.0, size=(30, 5))
  by_t = {t: pl.select(logits, mode='soft', temperature=t) for t in (0.5, 1.0, 2.0, 8.0)}
  for t, out in by_t.items():
    assert out.targets.dtype == np.float32
    np.testing.assert_allclose(out.targets.sum(1), 1.0, atol=1e-6)
    z = logits[out.indices] / t
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(out.targets, ref / ref.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(by_t[1.0].targets.max(1), by_t[1.0].confidence, rtol=1e-6)

  def entropy(p):
    return -(p * np.log(np.maximum(p, 1e-30))).sum(1)

  temps = sorted(by_t)
  for lo, hi in zip(temps, temps[1:], strict=False):
    assert np.all(by_t[hi].targets.max(1) < by_t[lo].targets.max(1))
    assert np.all(entropy(by_t[hi].targets) > entropy(by_t[lo].targets))
  assert np.abs(by_t[8.0].targets - 0.2).max() < np.abs(by_t[0.5].targets - 0.2).max()


def test_soft_targets_of_duplicates_match():
  out = pl.select(_logits(_CLASSES, _CONF, k=4), mode='soft', balance='duplicate')
  rows = out.targets[out.indices == 3]
  assert len(rows) == 5 and np.all(rows == rows[0])


@pytest.mark.parametrize('balance', ['duplicate', 'subsample', 'both'])
def test_empty_classes_do_not_crash(balance):
  # Every image predicted as class 0 of 3: classes 1 and 2 are empty.
  out = pl.select(_logits([0, 0, 0], [0.9, 0.8, 0.7], k=3), balance=balance)
  assert out.stats['counts_after'] == [3, 0, 0] and out.stats['empty_classes'] == [1, 2]
  out = pl.select(_logits([0, 0, 0], [0.9, 0.8, 0.7], k=3), balance=balance, per_class=2)
  assert out.stats['counts_after'][1:] == [0, 0]
  # A threshold that drops everything leaves an empty, well-shaped result.
  out = pl.select(_logits([0, 1], [0.5, 0.6], k=3), balance=balance, threshold=0.9, mode='soft')
  assert out.indices.shape == (0,) and out.targets.shape == (0, 3) and out.confidence.shape == (0,)
  assert out.stats['per_class'] == 0 and out.stats['empty_classes'] == [0, 1, 2]


def test_deterministic_per_seed():
  # Class 0: 10 images balanced to 15 -> 5 extra copies chosen among C(10, 5) = 252 ways.
  logits = _logits([0] * 10 + [1] * 15, np.linspace(0.55, 0.95, 25), k=2)

  def run(seed):
    return pl.select(logits, mode='soft', temperature=2.0, balance='duplicate', seed=seed)

  a, b = run(0), run(0)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.targets, b.targets)
  np.testing.assert_array_equal(a.confidence, b.confidence)
  assert a.stats == b.stats
  assert len({tuple(run(seed).indices.tolist()) for seed in range(5)}) > 1
  for seed in range(5):  # any seed: two copies of each of 10 images, then 5 with a third
    assert sorted(np.bincount(run(seed).indices[:15]).tolist()) == [1] * 5 + [2] * 5


@pytest.mark.parametrize(
  'kwargs, message',
  [
    ({'mode': 'sharp'}, "unknown pseudo-label mode 'sharp'; use 'hard' or 'soft'"),
    ({'balance': 'dup'}, "unknown pseudo-label balance 'dup'; use 'none', 'duplicate'"),
    ({'temperature': 0.0}, r'temperature=0.0; expected a number > 0'),
    ({'temperature': -1}, r'temperature=-1; expected a number > 0'),
    ({'threshold': 1.5}, r'threshold=1.5; expected a number in \[0, 1\]'),
    ({'threshold': -0.1}, r'threshold=-0.1; expected a number in \[0, 1\]'),
    ({'balance': 'both', 'per_class': 0}, r'per_class=0; expected an int >= 1 or None'),
    ({'per_class': 3}, r"per_class=3 has no effect with balance='none'"),
    ({'seed': -1}, r'seed=-1; expected an int >= 0'),
  ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(UserError, match=message):
    pl.select(np.zeros((2, 3)), **kwargs)


def test_bad_logits_raise():
  with pytest.raises(UserError, match=r'logits have shape \(6,\); expected \(N, K\)'):
    pl.select(np.zeros(6))
  with pytest.raises(UserError, match=r'logits have shape \(2, 3, 1\)'):
    pl.select(np.zeros((2, 3, 1)))
  bad = np.zeros((4, 3))
  bad[2, 1] = np.nan
  with pytest.raises(UserError, match=r'logits contain NaN or inf \(first in row 2\)'):
    pl.select(bad)
