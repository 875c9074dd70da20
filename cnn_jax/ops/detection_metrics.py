"""Detection on the host (NumPy): per-class non-max suppression, decoding a head's raw outputs
into boxes, and PASCAL VOC's average precision (Everingham et al. 2010) at an IoU threshold.

Box conventions as in cnn_jax/ops/detection.py: (y_min, x_min, y_max, x_max), fractions of the
image unless `image_size` says pixels.
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.ops.detection import INTERPOLATIONS, ArrayLike, activate, decode, iou


class Detections(NamedTuple):
  """One image's detections (host side, NumPy)."""

  boxes: np.ndarray  # (K, 4) (y_min, x_min, y_max, x_max)
  scores: np.ndarray  # (K,)
  classes: np.ndarray  # (K,) int


def nms(
  boxes: ArrayLike,
  scores: ArrayLike,
  classes: ArrayLike,
  *,
  iou_threshold: float = 0.5,
  score_threshold: float = 0.0,
  max_detections: int | None = None,
) -> np.ndarray:
  """Greedy non-max suppression per class (004, "[Non-max Suppression]"), host side.

  Boxes with score <= score_threshold are dropped; then, class by class, the highest-scoring box
  left is kept and every box of its class with IoU >= iou_threshold with it is suppressed (the
  notes' "IOU >= 0.5" criterion at the default), until none is left. Boxes of different classes
  never suppress each other. Equal scores: the lower index first.

  Args:
    boxes: (N, 4); scores: (N,); classes: (N,) int.
    iou_threshold: in [0, 1].
    score_threshold: a box must score above it.
    max_detections: keep at most this many (the highest scores over all classes); None: all.

  Returns:
    int64 indices of the kept boxes, highest score first.
  """
  boxes = np.asarray(boxes, np.float64)
  scores = np.asarray(scores, np.float64)
  classes = np.asarray(classes)
  n = scores.shape[0] if scores.ndim == 1 else -1
  if boxes.shape != (n, 4) or classes.shape != (n,):
    raise UserError(
      f'nms takes boxes (N, 4), scores (N,) and classes (N,); got {boxes.shape}, '
      f'{scores.shape} and {classes.shape}'
    )
  if not 0 <= iou_threshold <= 1:
    raise UserError(f'iou_threshold={iou_threshold}; expected a value in [0, 1]')
  if max_detections is not None and max_detections < 0:
    raise UserError(f'max_detections={max_detections}; expected None or a count >= 0')
  candidates = np.flatnonzero(scores > score_threshold)
  candidates = candidates[np.argsort(-scores[candidates], kind='stable')]
  kept = []
  for c in np.unique(classes[candidates]):
    order = candidates[classes[candidates] == c]
    overlap = iou(boxes[order], boxes[order])  # (n_c, n_c)
    alive = np.ones(order.size, bool)
    for i in range(order.size):
      if alive[i]:
        kept.append(order[i])
        alive[i + 1 :] &= overlap[i, i + 1 :] < iou_threshold
  kept = np.asarray(kept, np.int64)
  kept = kept[np.argsort(-scores[kept], kind='stable')] if kept.size else kept
  return kept if max_detections is None else kept[:max_detections]


def decode_outputs(
  outputs: ArrayLike,
  *,
  anchors: ArrayLike,
  image_size: Sequence[float] = (1.0, 1.0),
  iou_threshold: float = 0.5,
  score_threshold: float = 0.0,
  max_detections: int | None = None,
) -> list[Detections]:
  """Raw head outputs (B, S_h, S_w, A, 5 + C) -> per-image `Detections` after per-class `nms`.

  `activate` and `decode` run once for the whole batch (jnp), NMS per image on the host.
  """
  boxes, scores, classes = decode(activate(jnp.asarray(outputs), anchors), image_size=image_size)
  boxes, scores, classes = np.asarray(boxes), np.asarray(scores), np.asarray(classes)
  out = []
  for b in range(boxes.shape[0]):
    keep = nms(
      boxes[b],
      scores[b],
      classes[b],
      iou_threshold=iou_threshold,
      score_threshold=score_threshold,
      max_detections=max_detections,
    )
    out.append(Detections(boxes[b][keep], scores[b][keep], classes[b][keep]))
  return out


def average_precision(
  scores: ArrayLike,
  true_positive: ArrayLike,
  num_ground_truth: int,
  *,
  interpolation: str = 'all',
) -> float:
  """Average precision of one class's ranked detections (PASCAL VOC, Everingham et al. 2010).

  Detections are ranked by score (stable: equal scores keep their order); precision and recall
  are taken after each. 'all' (the VOC devkit's rule from 2010 on, Everingham et al. 2015, Sec.
  3.1 of "The PASCAL VOC Challenge: A Retrospective"): the area under the precision-recall curve
  after replacing each precision by the highest precision at any recall >= its own,
  sum_i (r_i - r_{i-1}) p_interp(r_i). '11point' (VOC 2007, Everingham et al. 2010, Sec. 4.2):
  the mean over r in {0, 0.1, ..., 1} of the highest precision at recall >= r (0 if none).

  Args:
    scores: (K,) the class's detections' scores, over all images.
    true_positive: (K,) bool: matched to a ground truth (see `mean_average_precision`).
    num_ground_truth: the class's ground-truth objects over all images, >= 1.
    interpolation: 'all' | '11point'.

  Returns:
    AP in [0, 1]: 0 when no detection is a true positive.
  """
  if interpolation not in INTERPOLATIONS:
    raise UserError(f'interpolation={interpolation!r}; expected one of {INTERPOLATIONS}')
  if num_ground_truth < 1:
    raise UserError(f'num_ground_truth={num_ground_truth}; AP needs at least one ground truth')
  scores = np.asarray(scores, np.float64)
  tp = np.asarray(true_positive, bool)
  if scores.shape != tp.shape or scores.ndim != 1:
    raise UserError(f'scores {scores.shape} and true_positive {tp.shape}; expected both (K,)')
  tp = tp[np.argsort(-scores, kind='stable')]
  tp_cum = np.cumsum(tp)
  recall = tp_cum / num_ground_truth
  precision = tp_cum / np.arange(1, tp.size + 1)
  if interpolation == '11point':
    return float(
      np.mean([np.max(precision[recall >= t], initial=0.0) for t in np.linspace(0, 1, 11)])
    )
  r = np.concatenate([[0.0], recall, [1.0]])
  p = np.concatenate([[0.0], precision, [0.0]])
  p = np.maximum.accumulate(p[::-1])[::-1]  # the envelope: max precision at recall >= r
  step = np.flatnonzero(r[1:] != r[:-1])
  return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))


def match_detections(
  boxes: ArrayLike, scores: ArrayLike, gt_boxes: ArrayLike, *, iou_threshold: float = 0.5
) -> np.ndarray:
  """True positives among one image's detections of one class (VOC's rule), host side.

  In order of decreasing score (stable), a detection is a true positive when its highest-IoU
  ground truth has IoU >= iou_threshold and was not matched by a higher-scoring detection; each
  ground truth is matched at most once, and a detection whose best ground truth is taken is a
  false positive (VOC does not fall back to the second best).

  Returns:
    (K,) bool, in the input order.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  tp = np.zeros(scores.size, bool)
  if not gt_boxes.shape[0] or not scores.size:
    return tp
  overlap = iou(boxes, gt_boxes)  # (K, G)
  taken = np.zeros(gt_boxes.shape[0], bool)
  for k in np.argsort(-scores, kind='stable'):
    g = int(np.argmax(overlap[k]))
    if overlap[k, g] >= iou_threshold and not taken[g]:
      taken[g] = tp[k] = True
  return tp


def mean_average_precision(
  detections: Sequence[Detections | tuple[ArrayLike, ArrayLike, ArrayLike]],
  ground_truth: Sequence[tuple[ArrayLike, ArrayLike]],
  *,
  num_classes: int,
  iou_threshold: float = 0.5,
  interpolation: str = 'all',
) -> dict[str, float | np.ndarray]:
  """Mean over classes of VOC average precision at IoU `iou_threshold` (Everingham et al. 2010).

  Per class: every image's detections of that class are matched to its ground truths of that
  class (`match_detections`: greedy by score, each ground truth at most once, IoU >= 0.5 at the
  default, the notes' "correct"), then all images' detections are ranked together by score for
  `average_precision`. VOC's "difficult" objects are not modelled (every ground truth counts).

  Args:
    detections: per image, (boxes (K, 4), scores (K,), classes (K,)) (e.g. `decode_outputs`).
    ground_truth: per image, (boxes (N, 4), classes (N,)) in the detections' units; negative
      classes mark padding rows and are skipped.
    num_classes: C.
    iou_threshold: the IoU a true positive needs.
    interpolation: 'all' (VOC 2010 on) | '11point' (VOC 2007).

  Returns:
    {'mean_ap': float, the mean over classes with at least one ground truth (NaN if none has);
    'per_class_ap': (C,) float64, NaN for classes without ground truth (their detections are all
    false positives but no AP is defined); a class with ground truth and no detection has AP 0}.
  """
  if len(detections) != len(ground_truth):
    raise UserError(
      f'{len(detections)} images of detections but {len(ground_truth)} of ground truth; '
      'give one entry per image to both'
    )
  per_class_scores = [[] for _ in range(num_classes)]
  per_class_tp = [[] for _ in range(num_classes)]
  num_gt = np.zeros(num_classes, np.int64)
  for (boxes, scores, classes), (gt_boxes, gt_classes) in zip(
    detections, ground_truth, strict=True
  ):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_classes = np.asarray(gt_classes).reshape(-1)
    if np.any(classes >= num_classes) or np.any(gt_classes >= num_classes):
      raise UserError(f'a class >= num_classes={num_classes} in the detections or ground truth')
    for c in range(num_classes):
      det, gt = classes == c, gt_classes == c
      num_gt[c] += int(gt.sum())
      if det.any():
        per_class_scores[c].append(scores[det])
        per_class_tp[c].append(
          match_detections(boxes[det], scores[det], gt_boxes[gt], iou_threshold=iou_threshold)
        )
  ap = np.full(num_classes, np.nan)
  for c in range(num_classes):
    if num_gt[c]:
      s = np.concatenate(per_class_scores[c]) if per_class_scores[c] else np.zeros(0)
      tp = np.concatenate(per_class_tp[c]) if per_class_tp[c] else np.zeros(0, bool)
      ap[c] = average_precision(s, tp, int(num_gt[c]), interpolation=interpolation)
  present = ~np.isnan(ap)
  return {
    'mean_ap': float(np.mean(ap[present])) if present.any() else float('nan'),
    'per_class_ap': ap,
  }


__all__ = [
  'Detections',
  'average_precision',
  'decode_outputs',
  'match_detections',
  'mean_average_precision',
  'nms',
]
