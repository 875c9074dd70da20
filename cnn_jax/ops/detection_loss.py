"""YOLO's detection loss on the grid targets of `cnn_jax.ops.detection`: YOLOv2's, as darknet's
region layer trains it (Redmon & Farhadi 2017; region_layer.c with yolov2-voc.cfg), or the notes'
plain squared error (seeds/004, "[Object Localization]"). `yolo_loss_terms` says both.

Box conventions as in cnn_jax/ops/detection.py.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core.errors import UserError
from cnn_jax.ops.detection import ArrayLike, activate, check_anchors, iou, slot_boxes

CLASS_LOSSES = ('squared', 'cross_entropy')


class LossOptions(NamedTuple):
  """The weights and rules of `yolo_loss_terms`, all set (`loss_options` fills them in)."""

  loss: str  # 'yolov2' | 'notes'
  box_weight: float  # lambda_coord (darknet: coord_scale)
  object_weight: float  # darknet: object_scale
  no_object_weight: float  # lambda_noobj (darknet: noobject_scale)
  class_weight: float  # darknet: class_scale
  class_loss: str  # 'squared' | 'cross_entropy'
  ignore_threshold: float  # no-object term dropped where the best IoU > this (darknet: thresh)


# What each loss takes for an option left None. 'yolov2': darknet's yolov2-voc.cfg (and
# yolo-voc.cfg) scales, coord_scale 1, object_scale 5, noobject_scale 1, class_scale 1, its thresh
# .6, and 'cross_entropy' (darknet's class delta, one-hot - softmax put on the logits, is the
# gradient of softmax cross-entropy). Not YOLOv1's lambda_coord 5, lambda_noobj 0.5 (Redmon et
# al. 2016, Sec. 2.2; object weight 1): with those the IoU-valued objectness target loses to the
# no-object terms on digit_boxes, every p̂ saturates near 0 within 60 steps and mAP stays 0
# (docs/detection.md); they remain three overrides away. 'notes': the notes' plain squared
# error, every weight 1, nothing ignored (an IoU never exceeds 1).
LOSS_DEFAULTS: dict[str, LossOptions] = {
  'yolov2': LossOptions('yolov2', 1.0, 5.0, 1.0, 1.0, 'cross_entropy', 0.6),
  'notes': LossOptions('notes', 1.0, 1.0, 1.0, 1.0, 'squared', 1.0),
}
LOSSES = tuple(LOSS_DEFAULTS)


def loss_options(loss: str = 'yolov2', **overrides: Any) -> LossOptions:
  """`LOSS_DEFAULTS[loss]` with the options of `overrides` that are not None; checked.

  Raises:
    UserError: on an unknown loss or class loss, a negative weight, or an ignore threshold
      outside [0, 1].
  """
  if loss not in LOSS_DEFAULTS:
    raise UserError(f'loss={loss!r}; expected one of {LOSSES}')
  unknown = sorted(set(overrides) - set(LossOptions._fields))
  if unknown:
    raise UserError(f'no loss option {unknown[0]!r}; the options: {LossOptions._fields[1:]}')
  options = LOSS_DEFAULTS[loss]._replace(**{k: v for k, v in overrides.items() if v is not None})
  if options.class_loss not in CLASS_LOSSES:
    raise UserError(f'class_loss={options.class_loss!r}; expected one of {CLASS_LOSSES}')
  weights = {k: getattr(options, k) for k in LossOptions._fields if k.endswith('_weight')}
  if not all(w >= 0 for w in weights.values()):
    shown = ', '.join(f'{k}={v}' for k, v in weights.items())
    raise UserError(f'{shown}; expected weights >= 0')
  if not 0 <= options.ignore_threshold <= 1:
    raise UserError(
      f'ignore_threshold={options.ignore_threshold}; expected an IoU in [0, 1] (1: ignore none)'
    )
  return options


def yolo_loss_terms(
  outputs: jax.Array,
  targets: jax.Array,
  *,
  anchors: ArrayLike,
  loss: str = 'yolov2',
  true_boxes: ArrayLike | None = None,
  box_weight: float | None = None,
  object_weight: float | None = None,
  no_object_weight: float | None = None,
  class_weight: float | None = None,
  class_loss: str | None = None,
  ignore_threshold: float | None = None,
) -> dict[str, jax.Array]:
  """YOLOv2's detection loss (darknet's region layer), or the notes' one, per image, and its parts.

  With ŷ = `activate`(outputs) (p̂, b̂_x, b̂_y from sigmoids, b̂_h = a_h exp(t_h), b̂_w = a_w
  exp(t_w), softmax class probabilities ĉ) and y the targets, per image, summed over cells and
  anchors (an anchor is an "object" one where p_c = 1):

    objectness  sum_{object} (p̂ - o)^2
    no_object   sum_{no object, best IoU <= ignore_threshold} p̂^2
    box         sum_{object} s [(b̂_x - b_x)^2 + (b̂_y - b_y)^2 + e_h + e_w]
    class       sum_{object} sum_c (ĉ_c - c_c)^2          ('squared')
                sum_{object} -sum_c c_c log ĉ_c           ('cross_entropy')
    loss        object_weight objectness + no_object_weight no_object + box_weight box
                + class_weight class

  'yolov2' (Redmon & Farhadi 2017, as darknet's region_layer.c trains it):
  - o = IoU(predicted box, its target box), a constant for the gradient (darknet's `rescore`:
    the objectness learns to predict the IoU, YOLOv1's confidence; no gradient flows into the box
    through it);
  - sizes in log space against the anchor, e_h = (t_h - log(b_h / a_h))^2 (and w), where darknet's
    delta_region_box puts its delta (tw = log(w / anchor_w));
  - s = 2 - w h with (h, w) the target box's size as fractions of the image (the same function's
    scale: small boxes weigh up to twice as much as one covering the image);
  - an anchor without object whose predicted box has IoU > ignore_threshold (0.6, darknet's
    `thresh`) with any true box of the image adds no no-object term: it found an object that
    another anchor is responsible for.
  Darknet's deltas are the negative gradients of half of these squared errors and of the whole
  cross-entropy; here every square is whole (YOLOv1's form, the notes'), so against darknet the
  class term weighs half as much (class_weight 2 restores its balance). Not modelled: darknet's
  first 12,800 images, in which every anchor's box is also pulled towards its anchor shape at the
  cell's centre (scale .01).

  'notes' (004, "[Object Localization]": "Pc = 0: the loss ignores components 2 to 8"): o = 1,
  s = 1, e_h = (b̂_h - b_h)^2 (and w), every weight 1, class 'squared', nothing ignored.

  Box and class terms of no-object anchors are masked with a select, so their gradients are
  exactly 0. `LOSS_DEFAULTS` holds each loss's options ('yolov2': darknet's yolov2-voc.cfg scales,
  box 1, object 5, no object 1, class 1); an option given here (not None) replaces it, e.g.
  YOLOv1's box_weight 5, object_weight 1 and no_object_weight 0.5.

  Args:
    outputs: (..., S_h, S_w, A, 5 + C) raw head outputs (any float dtype; computed in float32).
    targets: same shape, from `encode_targets` (p_c exactly 0 or 1).
    anchors: (A, 2) anchor shapes (h, w) in cell units, those the head was built for.
    loss: 'yolov2' | 'notes'.
    true_boxes: (..., M, 4) every true box of each image (y_min, x_min, y_max, x_max) as fractions
      of the image, for the ignore rule; rows of zero area (padding) match nothing. None: the
      boxes in `targets` (an object that lost its slot in a collision is then not seen).
    box_weight, object_weight, no_object_weight, class_weight: the weights above, >= 0.
    class_loss: 'squared' | 'cross_entropy'.
    ignore_threshold: in [0, 1]; 1 ignores nothing.

  Returns:
    {'loss', 'objectness', 'no_object', 'box', 'class'}: float32 arrays of the leading (batch)
    shape, e.g. (B,) per image; the training loss is the mean of 'loss' over the batch.
  """
  opts = loss_options(
    loss,
    box_weight=box_weight,
    object_weight=object_weight,
    no_object_weight=no_object_weight,
    class_weight=class_weight,
    class_loss=class_loss,
    ignore_threshold=ignore_threshold,
  )
  if outputs.shape != targets.shape:
    raise UserError(
      f'detection outputs {outputs.shape} and targets {targets.shape} differ; encode targets on '
      "the head's grid (S_h, S_w), anchors and classes"
    )
  pred = activate(outputs, anchors)
  anchor_hw = jnp.asarray(check_anchors(anchors), jnp.float32)  # (A, 2)
  raw = jnp.asarray(outputs, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  obj = targets[..., 0] > 0.5  # (..., S_h, S_w, A)
  zero = jnp.zeros((), jnp.float32)
  gh, gw = targets.shape[-4:-2]
  if opts.loss == 'yolov2':
    pred_boxes, target_boxes = slot_boxes(pred), slot_boxes(targets)  # (..., S_h, S_w, A, 4)
    paired = iou(pred_boxes[..., None, :], target_boxes[..., None, :])[..., 0, 0]
    p_target = jnp.where(obj, lax.stop_gradient(paired), 0.0)
    # log(b / a); the select keeps no-object anchors (b = 0) finite, so their masked gradient is 0.
    log_hw = jnp.log(jnp.maximum(jnp.where(obj[..., None], targets[..., 3:5], anchor_hw), 1e-9))
    size_err = jnp.square(raw[..., 3:5] - (log_hw - jnp.log(anchor_hw)))
    scale = 2.0 - targets[..., 3] / gh * targets[..., 4] / gw
    box_err = scale * (
      jnp.sum(jnp.square(pred[..., 1:3] - targets[..., 1:3]), -1) + size_err.sum(-1)
    )
  else:
    p_target = targets[..., 0]
    box_err = jnp.sum(jnp.square(pred[..., 1:5] - targets[..., 1:5]), axis=-1)
  counted = ~obj
  if opts.ignore_threshold < 1:
    counted &= ~(_best_iou(pred, targets, true_boxes) > opts.ignore_threshold)
  p_err = jnp.square(pred[..., 0] - p_target)
  if opts.class_loss == 'squared':
    class_err = jnp.sum(jnp.square(pred[..., 5:] - targets[..., 5:]), axis=-1)
  else:
    log_probs = jax.nn.log_softmax(raw[..., 5:], axis=-1)
    class_err = -jnp.sum(targets[..., 5:] * log_probs, axis=-1)
  axes = (-3, -2, -1)
  terms = {
    'objectness': jnp.sum(jnp.where(obj, p_err, zero), axis=axes),
    'no_object': jnp.sum(jnp.where(counted, p_err, zero), axis=axes),
    'box': jnp.sum(jnp.where(obj, box_err, zero), axis=axes),
    'class': jnp.sum(jnp.where(obj, class_err, zero), axis=axes),
  }
  terms['loss'] = (
    opts.object_weight * terms['objectness']
    + opts.no_object_weight * terms['no_object']
    + opts.box_weight * terms['box']
    + opts.class_weight * terms['class']
  )
  return terms


def _best_iou(pred: jax.Array, targets: jax.Array, true_boxes: ArrayLike | None) -> jax.Array:
  """(..., S_h, S_w, A): each predicted box's highest IoU with a true box of its image."""
  batch, slots = pred.shape[:-4], pred.shape[-4:-1]
  boxes = slot_boxes(pred).reshape(*batch, -1, 4)  # (..., S_h S_w A, 4)
  if true_boxes is None:
    truth = slot_boxes(targets).reshape(*batch, -1, 4)  # no-object slots: zero area
  else:
    truth = jnp.asarray(true_boxes, jnp.float32)
    if truth.ndim < 2 or truth.shape[-1] != 4 or truth.shape[:-2] != batch:
      raise UserError(
        f'true_boxes of shape {truth.shape} for detection outputs {pred.shape}; expected '
        f'({", ".join(map(str, batch)) + ", " if batch else ""}M, 4)'
      )
  if truth.shape[-2] == 0:
    return jnp.zeros(pred.shape[:-1], jnp.float32)
  best = jnp.max(iou(boxes, truth), axis=-1)  # (..., S_h S_w A)
  return best.reshape(*batch, *slots)


def yolo_loss(outputs: jax.Array, targets: jax.Array, **kwargs: Any) -> jax.Array:
  """`yolo_loss_terms(...)['loss']`: the per-image loss, shape (B,) (or the leading shape)."""
  return yolo_loss_terms(outputs, targets, **kwargs)['loss']


__all__ = [
  'CLASS_LOSSES',
  'LOSSES',
  'LOSS_DEFAULTS',
  'LossOptions',
  'loss_options',
  'yolo_loss',
  'yolo_loss_terms',
]
