"""VOC mAP as the devkit computes it (VOCevaldet.m): the 11-point AP beside the all-point one,
"difficult" objects neither counted nor penalised, duplicates false positives, on hand-computed
cases; and the difficult flag from the tfds record to the eval batch and the task's metrics."""

import numpy as np
import pytest

from cnn_jax import data, tasks
from cnn_jax.ops import detection_metrics as det_metrics


def _map(detections, ground_truth, *, num_classes=1, **kw):
  return det_metrics.mean_average_precision(detections, ground_truth, num_classes=num_classes, **kw)


def _both(detections, ground_truth, **kw):
  """(all-point, 11-point) mAP."""
  return tuple(
    _map(detections, ground_truth, interpolation=i, **kw)['mean_ap'] for i in ('all', '11point')
  )


FAR = [50, 50, 58, 58]  # overlaps no ground truth below


def test_eleven_point_and_all_point_ap_by_hand():
  # Five objects of one class in one image; six detections ranked TP, FP, TP, FP, TP, FP:
  #   rank       1    2    3    4    5    6
  #   recall    1/5  1/5  2/5  2/5  3/5  3/5
  #   precision  1   1/2  2/3  1/2  3/5  1/2
  # All-point: recall steps of 1/5 at the envelope's 1, 2/3 and 3/5: (1 + 2/3 + 3/5) / 5.
  # 11-point: t = 0, 0.1, 0.2 -> 1; t = 0.3, 0.4 -> 2/3; t = 0.5, 0.6 -> 3/5; t = 0.7 .. 1 -> 0
  # (no recall reaches them): (3 + 4/3 + 6/5) / 11. Recalls of exactly 1/5, 2/5 and 3/5 meet
  # t = 0.2, 0.4 and 0.6 (np.arange(0, 1.1, 0.1)[6] = 0.6000000000000001 would miss the last).
  gt_boxes = [[10 * k, 0, 10 * k + 8, 8] for k in range(5)]
  boxes = [gt_boxes[0], FAR, gt_boxes[1], FAR, gt_boxes[2], FAR]
  scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
  got = _both([(boxes, scores, [0] * 6)], [(gt_boxes, [0] * 5)])
  assert got == pytest.approx(((1 + 2 / 3 + 3 / 5) / 5, (3 + 4 / 3 + 6 / 5) / 11), abs=1e-12)
  tp = [True, False, True, False, True, False]
  eleven = det_metrics.average_precision(scores, tp, 5, interpolation='11point')
  assert eleven == pytest.approx((3 + 4 / 3 + 6 / 5) / 11, abs=1e-12)
  # Every object found, precision 1 throughout: 1 either way; none found: 0.
  assert _both([(gt_boxes, scores[:5], [0] * 5)], [(gt_boxes, [0] * 5)]) == (1.0, 1.0)
  assert _both([([FAR], [0.9], [0])], [(gt_boxes, [0] * 5)]) == (0.0, 0.0)


def test_a_duplicate_detection_is_a_false_positive():
  # Two objects; the second-ranked detection repeats the first object (IoU 0.8 with it): a false
  # positive, as the object is taken. TP, FP, TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
  # All-point 1/2 * 1 + 1/2 * 2/3; 11-point (6 * 1 + 5 * 2/3) / 11.
  gt = ([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])
  boxes = [[0, 0, 10, 10], [0, 0, 10, 8], [20, 20, 30, 30]]
  found = det_metrics.match_detections(boxes, [0.9, 0.8, 0.7], gt[0])
  assert found.true_positive.tolist() == [True, False, True] and not found.ignored.any()
  got = _both([(boxes, [0.9, 0.8, 0.7], [0] * 3)], [gt])
  assert got == pytest.approx((0.5 + 1 / 3, (6 + 10 / 3) / 11), abs=1e-12)


def test_difficult_objects_are_neither_counted_nor_penalised():
  # Object A (normal) and B (difficult). Detections: B exactly (0.9), B again (0.85), A (0.7) and
  # one on nothing (0.6). Both detections of B are ignored (a difficult object is never taken, so
  # the second is no duplicate either), A's is a true positive, the last a false positive; one
  # positive counts: TP then FP, precision 1 at recall 1: AP 1 either way.
  gt_boxes, difficult = [[0, 0, 10, 10], [20, 20, 30, 30]], [False, True]
  boxes = [[20, 20, 30, 30], [20, 21, 30, 31], [0, 0, 10, 10], FAR]
  scores = [0.9, 0.85, 0.7, 0.6]
  found = det_metrics.match_detections(boxes, scores, gt_boxes, difficult=difficult)
  assert found.true_positive.tolist() == [False, False, True, False]
  assert found.ignored.tolist() == [True, True, False, False]
  dets = [(boxes, scores, [0] * 4)]
  assert _both(dets, [(gt_boxes, [0, 0], difficult)]) == (1.0, 1.0)
  # Without the flag (or all False) B counts: TP, FP (the duplicate), TP, FP: the duplicate case.
  plain = pytest.approx((0.5 + 1 / 3, (6 + 10 / 3) / 11), abs=1e-12)
  assert _both(dets, [(gt_boxes, [0, 0])]) == plain
  assert _both(dets, [(gt_boxes, [0, 0], [False, False])]) == plain
  # A detection whose best match is difficult is ignored even when a normal object overlaps it
  # by IoU >= 0.5 too (no fall-back to the second best), and that object stays free.
  gt_boxes, boxes = [[0, 0, 10, 10], [0, 1, 10, 11]], [[0, 1, 10, 11], [0, 0, 10, 10]]
  found = det_metrics.match_detections(boxes, [0.9, 0.8], gt_boxes, difficult=[False, True])
  assert found.ignored.tolist() == [True, False] and found.true_positive.tolist() == [False, True]
  # A class whose objects are all difficult has no AP (NaN) and leaves the mean; a missed
  # difficult object costs nothing.
  dets = [([[0, 0, 10, 10]], [0.9], [0])]
  gts = [([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [False, True])]
  m = _map(dets, gts, num_classes=2)
  assert m['per_class_ap'][0] == 1.0 and np.isnan(m['per_class_ap'][1]) and m['mean_ap'] == 1.0
  assert _map(dets, [gts[0][:2]], num_classes=2)['mean_ap'] == 0.5  # counted: AP 0 for class 1


def _perfect_outputs(task, targets, missed=()):
  """Raw outputs whose activation reproduces the targets closely, except the (image, row, col,
  anchor) slots of `missed`, which predict no object."""
  p = np.clip(targets[..., 0:3], 1e-4, 1 - 1e-4)
  outputs = np.zeros_like(targets)
  outputs[..., 0:3] = np.log(p / (1 - p))
  outputs[..., 3:5] = np.log(np.maximum(targets[..., 3:5], 1e-4) / np.asarray(task.anchors))
  outputs[..., 5:] = targets[..., 5:] * 20.0
  for slot in missed:
    outputs[slot + (0,)] = -20.0
  return outputs


def test_detection_finalize_reports_both_maps_and_skips_difficult_objects():
  task = tasks.Detection(2, grid=(2, 2), anchors=((1.0, 1.0),))
  # Image 0: a class-0 object in cell (0, 0); image 1: a difficult class-1 object in cell (1, 1).
  boxes = np.array([[[0.1, 0.1, 0.4, 0.4]], [[0.6, 0.6, 0.9, 0.9]]], np.float32)
  classes = np.array([[0], [1]], np.int32)
  difficult = np.array([[False], [True]])
  targets = task.prepare({'boxes': boxes, 'classes': classes})['targets']
  rows = {'boxes': boxes, 'classes': classes, 'mask': np.ones(2, np.float32)}
  missed = _perfect_outputs(task, targets, missed=[(1, 1, 1, 0)])  # the difficult one unseen
  totals = {'loss': 0.0, 'count': 2.0}
  out = task.finalize({**totals, tasks.ROWS: {**rows, 'outputs': missed, 'difficult': difficult}})
  assert (out['map50'], out['map50_11point']) == (1.0, 1.0)
  assert out['ap50_class0'] == 1.0 and np.isnan(out['ap50_class1'])
  # Counted as an ordinary object (digit_boxes' rows have no flag: all False), its miss costs.
  out = task.finalize({**totals, tasks.ROWS: {**rows, 'outputs': missed}})
  assert (out['map50'], out['map50_11point']) == (0.5, 0.5) and out['ap50_class1'] == 0.0


def test_voc_eval_batches_carry_each_objects_difficult_flag(tfds_dir):
  ds = data.load('voc', tfds_dir)
  n = len(ds.validation)  # 8 pictures of 1 to 7 objects; every fourth object is difficult
  batch = next(data.eval_iterator(ds, global_batch=n, image_size=32, channels=3))
  assert batch['difficult'].dtype == bool and batch['difficult'].shape == (n, 42)
  for i, record in enumerate(ds.validation.__getitems__(list(range(n)))):
    flags = np.asarray(record['objects']['is_difficult'], bool)
    np.testing.assert_array_equal(batch['difficult'][i, : len(flags)], flags)
    assert not batch['difficult'][i, len(flags) :].any()  # padding rows
    np.testing.assert_array_equal(batch['classes'][i, : len(flags)], record['objects']['label'])
  assert batch['difficult'].any() and not batch['difficult'][batch['classes'] >= 0].all()


def test_digit_boxes_batches_have_no_difficult_objects(scenes_dir):
  ds = data.load('digit_boxes', scenes_dir)
  batch = next(data.eval_iterator(ds, global_batch=4, image_size=32, channels=1, split='test'))
  assert batch['difficult'].shape == batch['classes'].shape == (4, 3)
  assert batch['difficult'].dtype == bool and not batch['difficult'].any()
