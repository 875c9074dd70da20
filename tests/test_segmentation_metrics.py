"""Segmentation losses and metrics: NumPy references, mIoU properties, sums that add up."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS, ShardMapRunner
from cnn_jax.ops import segmentation as seg

C = 5
# Jitted once per shape (most tests share (4, 6, 7)): eager dispatch compiles every primitive for
# every new shape, several times slower on 2 cores.
_static = ('num_classes', 'ignore_label')
ce_sums = jax.jit(seg.pixel_cross_entropy, static_argnames=(*_static, 'label_smoothing'))
dice_sums = jax.jit(seg.dice_sums, static_argnames=_static)
dice_loss = jax.jit(seg.dice_loss, static_argnames=(*_static, 'eps'))
confusion = jax.jit(seg.confusion_matrix, static_argnames=_static)


def _batch(seed: int = 0, shape=(4, 6, 7), ignore_fraction: float = 0.2):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, C, shape).astype(np.int32)
  labels[rng.random(shape) < ignore_fraction] = seg.IGNORE_LABEL
  logits = rng.normal(0, 2, (*shape, C)).astype(np.float32)
  return logits, labels


def _numpy_confusion(predictions, labels, num_classes):
  cm = np.zeros((num_classes, num_classes), np.int64)
  valid = labels != seg.IGNORE_LABEL
  np.add.at(cm, (labels[valid], predictions[valid]), 1)
  return cm


def _miou(predictions, labels, num_classes=C):
  cm = confusion(predictions, labels, num_classes=num_classes)
  return seg.metrics_from_confusion(np.asarray(cm))


def test_confusion_matrix_matches_numpy():
  logits, labels = _batch()
  predictions = np.argmax(logits, -1)
  cm = confusion(predictions, labels, num_classes=C)
  assert cm.dtype == jnp.int32 and cm.shape == (C, C)
  np.testing.assert_array_equal(cm, _numpy_confusion(predictions, labels, C))
  assert int(cm.sum()) == int(np.sum(labels != seg.IGNORE_LABEL))


def test_perfect_prediction_gives_one():
  _, labels = _batch(ignore_fraction=0.0)
  m = _miou(labels, labels)
  for key in ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'frequency_weighted_iou'):
    assert m[key] == pytest.approx(1.0), key


def test_ignored_pixels_do_not_count():
  logits, labels = _batch(1)
  predictions = np.argmax(logits, -1)
  changed = predictions.copy()
  ignored = labels == seg.IGNORE_LABEL
  changed[ignored] = (changed[ignored] + 1) % C
  assert ignored.any() and (changed != predictions).any()
  np.testing.assert_array_equal(
    confusion(predictions, labels, num_classes=C),
    confusion(changed, labels, num_classes=C),
  )
  # A perfect prediction on the non-ignored pixels still scores 1, whatever the ignored ones hold.
  perfect = np.where(ignored, 0, labels)
  assert _miou(perfect, labels)['mean_iou'] == pytest.approx(1.0)


def test_class_absent_from_labels_and_predictions_is_excluded():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 3, (4, 6, 7))  # classes 3 and 4 never occur ...
  predictions = np.where(rng.random(labels.shape) < 0.3, (labels + 1) % 3, labels)  # ... nor here
  m = _miou(predictions, labels)
  iou = m['per_class_iou']
  assert np.isnan(iou[3:]).all() and not np.isnan(iou[:3]).any()
  assert m['mean_iou'] == pytest.approx(np.mean(iou[:3]))
  # A class that is only predicted (never true) is present: its IoU is 0 and it counts.
  predictions[0, 0, 0] = 4
  m = _miou(predictions, labels)
  assert m['per_class_iou'][4] == 0.0 and m['mean_iou'] == pytest.approx(
    np.mean(m['per_class_iou'][[0, 1, 2, 4]])
  )


def test_metrics_in_range_and_match_definitions():
  logits, labels = _batch(3)
  predictions = np.argmax(logits, -1)
  cm = _numpy_confusion(predictions, labels, C)
  m = seg.metrics_from_confusion(cm)
  for key in ('pixel_accuracy', 'mean_accuracy', 'mean_iou', 'frequency_weighted_iou'):
    assert 0.0 <= m[key] <= 1.0, key
  assert ((m['per_class_iou'] >= 0) & (m['per_class_iou'] <= 1)).all()
  valid = labels != seg.IGNORE_LABEL
  assert m['pixel_accuracy'] == pytest.approx(np.mean(predictions[valid] == labels[valid]))
  iou = [
    np.sum((predictions == c) & (labels == c))
    / np.sum(valid & ((predictions == c) | (labels == c)))
    for c in range(C)
  ]
  np.testing.assert_allclose(m['per_class_iou'], iou)
  assert m['mean_iou'] == pytest.approx(np.mean(iou))
  freq = np.bincount(labels[valid], minlength=C) / valid.sum()
  assert m['frequency_weighted_iou'] == pytest.approx(np.sum(freq * np.array(iou)))
  empty = seg.metrics_from_confusion(np.zeros((C, C), np.int64))
  assert np.isnan(empty['mean_iou']) and np.isnan(empty['pixel_accuracy'])


def _numpy_ce(logits, labels):
  logits = logits.astype(np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  return log_probs


def test_cross_entropy_with_ignore_and_class_weights():
  logits, labels = _batch(4)
  log_probs = _numpy_ce(logits, labels)
  valid = labels != seg.IGNORE_LABEL
  ce = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
  loss_sum, weight_sum = ce_sums(logits, labels, num_classes=C)
  assert float(weight_sum) == valid.sum()
  assert float(loss_sum / weight_sum) == pytest.approx(ce[valid].mean(), rel=1e-5)
  # torch's CrossEntropyLoss(weight=w, ignore_index=255): sum_i w[y_i] ce_i / sum_i w[y_i].
  w = np.array([0.5, 1.0, 2.0, 3.0, 0.1], np.float32)
  loss_sum, weight_sum = ce_sums(logits, labels, num_classes=C, class_weights=w)
  wy = w[labels[valid]]
  assert float(loss_sum / weight_sum) == pytest.approx(np.sum(wy * ce[valid]) / wy.sum(), rel=1e-5)
  # Label smoothing: target (1 - eps) onehot + eps / C.
  eps = 0.1
  smooth = (1 - eps) * ce - eps * log_probs.mean(-1)
  loss_sum, weight_sum = ce_sums(logits, labels, num_classes=C, label_smoothing=eps)
  assert float(loss_sum / weight_sum) == pytest.approx(smooth[valid].mean(), rel=1e-5)
  # Gradients reach only the valid pixels' logits.
  grad = jax.jit(jax.grad(lambda x: seg.pixel_cross_entropy(x, labels, num_classes=C)[0]))(logits)
  assert not np.any(np.asarray(grad)[~valid]) and np.any(np.asarray(grad)[valid])


def test_dice_perfect_prediction_and_range():
  _, labels = _batch(5)
  perfect = 30.0 * jax.nn.one_hot(np.where(labels == seg.IGNORE_LABEL, 0, labels), C)
  assert float(dice_loss(perfect, labels, num_classes=C)) == pytest.approx(0.0, abs=1e-6)
  logits, _ = _batch(6)
  loss = float(dice_loss(logits, labels, num_classes=C))
  assert 0.3 < loss < 1.0
  # Ignored pixels are excluded: scores there change nothing.
  other = np.where((labels == seg.IGNORE_LABEL)[..., None], -logits, logits)
  assert float(dice_loss(other, labels, num_classes=C)) == pytest.approx(loss, rel=1e-6)


def test_sums_of_two_halves_equal_the_whole_batch():
  logits, labels = _batch(7)
  predictions = np.argmax(logits, -1)
  halves = [(logits[:2], labels[:2]), (logits[2:], labels[2:])]
  assert np.sum(labels[:2] != 255) != np.sum(labels[2:] != 255)  # a mean of means would differ

  def sums(x, y):
    ce = ce_sums(x, y, num_classes=C, class_weights=np.arange(1.0, C + 1, dtype=np.float32))
    return ce, dice_sums(x, y, num_classes=C)

  (ce_a, dice_a), (ce_b, dice_b) = (sums(x, y) for x, y in halves)
  (ce, dice) = sums(logits, labels)
  np.testing.assert_allclose(np.add(ce_a, ce_b), ce, rtol=1e-5)
  np.testing.assert_allclose(np.add(dice_a, dice_b), dice, rtol=1e-5)
  assert float(seg.dice_from_sums(*np.add(dice_a, dice_b))) == pytest.approx(
    float(dice_loss(logits, labels, num_classes=C)), rel=1e-5
  )
  np.testing.assert_array_equal(
    confusion(predictions[:2], labels[:2], num_classes=C)
    + confusion(predictions[2:], labels[2:], num_classes=C),
    confusion(predictions, labels, num_classes=C),
  )


def test_psum_over_four_simulated_devices_equals_one_device():
  runner = ShardMapRunner()
  assert runner.num_devices == 4
  logits, labels = _batch(8, shape=(8, 6, 7))

  def eval_step(state, batch):
    x, y = batch['logits'], batch['label']
    sums = {
      'ce': ce_sums(x, y, num_classes=C),
      'dice': dice_sums(x, y, num_classes=C),
      'cm': confusion(jnp.argmax(x, -1), y, num_classes=C),
    }
    return jax.lax.psum(sums, AXIS)

  step = runner.compile_eval(eval_step)
  out = runner.get_output(
    step(runner.put_state(np.zeros(())), runner.put_batch({'logits': logits, 'label': labels}))
  )
  ce = ce_sums(logits, labels, num_classes=C)
  np.testing.assert_allclose(out['ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(out['dice'], dice_sums(logits, labels, num_classes=C), rtol=1e-5)
  np.testing.assert_array_equal(out['cm'], _numpy_confusion(np.argmax(logits, -1), labels, C))


def test_center_crop():
  labels = np.arange(2 * 9 * 10).reshape(2, 9, 10)
  out = seg.center_crop(labels, (5, 4))
  np.testing.assert_array_equal(out, labels[:, 2:7, 3:7])
  images = np.zeros((2, 9, 10, 3))
  assert seg.center_crop(images, (5, 4)).shape == (2, 5, 4, 3)
  with pytest.raises(UserError, match='cannot center-crop a 9x10 mask to a larger 11x4'):
    seg.center_crop(labels, (11, 4))
