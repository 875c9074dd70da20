"""Detection on the host (NumPy): per-class non-max suppression, decoding a head's raw outputs
into boxes, and PASCAL VOC's average precision (Everingham et al. 2010) at an IoU threshold, as
the VOC devkit computes it (VOCevaldet.m: "difficult" objects neither count nor penalise; AP
all-point or VOC2007's 11-point).

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
  sum_i (r_i - r_{i-1}) p_interp(r_i). '11point' (VOC 2007, Everingham et al. 2010, Sec. 4.2;
  the devkit's VOCevaldet.m): the mean over t in {0, 0.1, ..., 1} of the highest precision at
  recall >= t (0 if none), with recall >= t compared exactly.

  Args:
    scores: (K,) the class's detections' scores, over all images.
    true_positive: (K,) bool: matched to a ground truth (`match_detections`; detections of
      difficult objects left out).
    num_ground_truth: the class's ground-truth objects over all images that count (not
      difficult), >= 1.
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
    # recall >= k / 10 as 10 tp >= k n in integers: exact at recalls of exactly k / 10, where a
    # floating threshold (np.arange(0, 1.1, 0.1) gives 0.30000000000000004) can miss the point.
    return float(
      np.mean(
        [np.max(precision[10 * tp_cum >= k * num_ground_truth], initial=0.0) for k in range(11)]
      )
    )
  r = np.concatenate([[0.0], recall, [1.0]])
  p = np.concatenate([[0.0], precision, [0.0]])
  p = np.maximum.accumulate(p[::-1])[::-1]  # the envelope: max precision at recall >= r
  step = np.flatnonzero(r[1:] != r[:-1])
  return float(np.sum((r[step + 1] - r[step]) * p[step + 1]))


class Matches(NamedTuple):
  """One image's detections of one class against its ground truths (`match_detections`)."""

  true_positive: np.ndarray  # (K,) bool
  ignored: np.ndarray  # (K,) bool: matched a "difficult" ground truth, neither TP nor FP


def match_detections(
  boxes: ArrayLike,
  scores: ArrayLike,
  gt_boxes: ArrayLike,
  *,
  difficult: ArrayLike | None = None,
  iou_threshold: float = 0.5,
) -> Matches:
  """True positives among one image's detections of one class (the VOC devkit's rule), host side.

  In order of decreasing score (stable), each detection takes the ground truth of highest IoU
  (difficult ones included; equal IoU: the first). Under iou_threshold: a false positive. Else, a
  difficult ground truth makes it ignored (neither true nor false positive, and the ground truth
  stays free: every detection of a difficult object is ignored); a ground truth not yet matched
  makes it a true positive and is then taken; one already taken makes it a false positive (a
  duplicate; VOC does not fall back to the second best). As VOCevaldet.m, without its +1 of
  integer pixel boxes (boxes here are fractions or real-valued pixels).

  Args:
    boxes: (K, 4); scores: (K,); gt_boxes: (G, 4).
    difficult: (G,) bool, VOC's "difficult" flag of each ground truth; None: all False.
    iou_threshold: the IoU a match needs.

  Returns:
    `Matches`, each (K,) bool in the input order; the rest are false positives.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  scores = np.asarray(scores, np.float64).reshape(-1)
  gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
  hard = np.zeros(gt_boxes.shape[0], bool) if difficult is None else np.asarray(difficult, bool)
  if hard.shape != (gt_boxes.shape[0],):
    raise UserError(f'difficult {hard.shape} for {gt_boxes.shape[0]} ground truths; expected (G,)')
  tp, ignored = np.zeros(scores.size, bool), np.zeros(scores.size, bool)
  if not gt_boxes.shape[0] or not scores.size:
    return Matches(tp, ignored)
  overlap = iou(boxes, gt_boxes)  # (K, G)
  taken = np.zeros(gt_boxes.shape[0], bool)
  for k in np.argsort(-scores, kind='stable'):
    g = int(np.argmax(overlap[k]))
    if overlap[k, g] < iou_threshold:
      continue
    if hard[g]:
      ignored[k] = True
    elif not taken[g]:
      taken[g] = tp[k] = True
  return Matches(tp, ignored)


class ClassMatches(NamedTuple):
  """A data set's detections matched per class (`match_dataset`), ready for AP."""

  scores: list[np.ndarray]  # per class: the scores of its counted (not ignored) detections
  true_positive: list[np.ndarray]  # per class: which of them are true positives
  num_positives: np.ndarray  # (C,) int64: ground truths that count (not difficult)


def match_dataset(
  detections: Sequence[Detections | tuple[ArrayLike, ArrayLike, ArrayLike]],
  ground_truth: Sequence[tuple[ArrayLike, ...]],
  *,
  num_classes: int,
  iou_threshold: float = 0.5,
) -> ClassMatches:
  """Every image's detections matched to its ground truths, class by class (`match_detections`).

  Args:
    detections: per image, (boxes (K, 4), scores (K,), classes (K,)) (e.g. `decode_outputs`).
    ground_truth: per image, (boxes (N, 4), classes (N,)) or (boxes, classes, difficult (N,) bool)
      in the detections' units; negative classes mark padding rows and are skipped. Difficult
      objects (VOC's flag) do not count as positives and detections matching them are dropped.
    num_classes: C.
    iou_threshold: the IoU a true positive needs.
  """
  if len(detections) != len(ground_truth):
    raise UserError(
      f'{len(detections)} images of detections but {len(ground_truth)} of ground truth; '
      'give one entry per image to both'
    )
  scores_of = [[] for _ in range(num_classes)]
  tp_of = [[] for _ in range(num_classes)]
  num_pos = np.zeros(num_classes, np.int64)
  for (boxes, scores, classes), truth in zip(detections, ground_truth, strict=True):
    if len(truth) not in (2, 3):
      raise UserError(
        f'ground truth entries of {len(truth)} arrays; give (boxes, classes) or (boxes, classes, '
        'difficult) per image'
      )
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    gt_boxes = np.asarray(truth[0], np.float64).reshape(-1, 4)
    gt_classes = np.asarray(truth[1]).reshape(-1)
    hard = np.zeros(gt_classes.shape, bool)
    if len(truth) == 3:
      hard = np.asarray(truth[2], bool).reshape(-1)
    if np.any(classes >= num_classes) or np.any(gt_classes >= num_classes):
      raise UserError(f'a class >= num_classes={num_classes} in the detections or ground truth')
    for c in range(num_classes):
      det, gt = classes == c, gt_classes == c
      num_pos[c] += int(np.sum(gt & ~hard))
      if det.any():
        found = match_detections(
          boxes[det], scores[det], gt_boxes[gt], difficult=hard[gt], iou_threshold=iou_threshold
        )
        scores_of[c].append(scores[det][~found.ignored])
        tp_of[c].append(found.true_positive[~found.ignored])
  return ClassMatches(
    [_concat(p, np.float64) for p in scores_of], [_concat(p, bool) for p in tp_of], num_pos
  )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
  return np.concatenate(parts) if parts else np.zeros(0, dtype)


def class_average_precisions(
  matches: ClassMatches, *, interpolation: str = 'all'
) -> dict[str, float | np.ndarray]:
  """Per-class `average_precision` of `match_dataset`'s result, and their mean.

  Returns:
    {'mean_ap': float, the mean over classes with at least one counted ground truth (NaN if none
    has); 'per_class_ap': (C,) float64, NaN for classes without one (their detections are all
    false positives but no AP is defined); a class with ground truth and no detection has AP 0}.
  """
  ap = np.full(len(matches.num_positives), np.nan)
  for c, n in enumerate(matches.num_positives):
    if n:
      ap[c] = average_precision(
        matches.scores[c], matches.true_positive[c], int(n), interpolation=interpolation
      )
  present = ~np.isnan(ap)
  return {
    'mean_ap': float(np.mean(ap[present])) if present.any() else float('nan'),
    'per_class_ap': ap,
  }


def mean_average_precision(
  detections: Sequence[Detections | tuple[ArrayLike, ArrayLike, ArrayLike]],
  ground_truth: Sequence[tuple[ArrayLike, ...]],
  *,
  num_classes: int,
  iou_threshold: float = 0.5,
  interpolation: str = 'all',
) -> dict[str, float | np.ndarray]:
  """Mean over classes of VOC average precision at IoU `iou_threshold` (Everingham et al. 2010).

  Per class: every image's detections of that class are matched to its ground truths of that
  class (`match_detections`: greedy by score, each ground truth at most once, IoU >= 0.5 at the
  default, the notes' "correct"; difficult objects as the devkit), then all images' detections
  are ranked together by score for `average_precision`. `match_dataset` and
  `class_average_precisions` are its two halves (match once, then AP of both interpolations).

  Args:
    detections, ground_truth, num_classes, iou_threshold: as `match_dataset`.
    interpolation: 'all' (VOC 2010 on) | '11point' (VOC 2007).

  Returns:
    As `class_average_precisions`.
  """
  matches = match_dataset(
    detections, ground_truth, num_classes=num_classes, iou_threshold=iou_threshold
  )
  return class_average_precisions(matches, interpolation=interpolation)


__all__ = [
  'ClassMatches',
  'Detections',
  'Matches',
  'average_precision',
  'class_average_precisions',
  'decode_outputs',
  'match_dataset',
  'match_detections',
  'mean_average_precision',
  'nms',
]
