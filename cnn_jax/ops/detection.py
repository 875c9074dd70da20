"""YOLO-style detection primitives: targets on a grid of cells and anchors, IoU, activation and
decoding; the loss is in `cnn_jax.ops.detection_loss`, NMS and mAP in `detection_metrics`.

Follows the notes' object detection part (seeds/004, [Object Localization] ... [Anchor boxes];
seeds/002 lists YOLO among the detectors) and, where the notes leave a choice, says which paper
filled it in.

Box conventions (used everywhere in this module):
- An image's box is (y_min, x_min, y_max, x_max), rows first like NHWC images, in pixels of an
  (H, W) image or as fractions of it: every function that maps between the two takes
  `image_size=(H, W)`, and (1.0, 1.0) (the default) means boxes in [0, 1].
- The notes' target per grid cell and anchor (004, "y = [Pc, bx, by, bh, bw, c1, c2, c3]", and
  "[Bounding box predictions]": "0 <= bx, by <= 1") is y = [p_c, b_x, b_y, b_h, b_w, c_1..c_C]:
  p_c = 1 where an object is assigned, (b_x, b_y) its centre relative to the cell's top-left
  corner in cell units (b_x horizontal, b_y vertical, in [0, 1)), (b_h, b_w) its height and width
  in cell units (above 1 for an object larger than a cell) and c one-hot over the C classes. The
  notes leave the entries of a p_c = 0 anchor undefined ("y = [0, ?, ?, ...]"); here they are 0.
- A grid is (S_h, S_w) cells over the image (the notes' 3x3 over 100x100, or 19x19); a cell is
  H / S_h by W / S_w pixels. Anchors are (h, w) shapes in cell units, like b_h, b_w.

Targets (`assign`, `encode_targets`, host side, NumPy): an object goes to the cell holding its
centre (004: "assign the object to the grid cell holding its midpoint") and, within it, to the
anchor whose shape has the highest IoU with the object's (both at a common centre; 004:
"[Anchor boxes]"), giving targets of shape (S_h, S_w, A, 5 + C) (004: "3 X 3 X 16 (3 X 3 X 2 X
8)"). The notes call two objects on one cell and anchor a failure case that needs a "default
tiebreaker"; here the object whose shape matches that anchor best keeps it (equal IoU: the first
in input order) and the others are dropped, as `Assignment.kept` reports.

Predictions: `cnn_jax.models.yolo.DetectionHead` maps a backbone's (B, S_h, S_w, F) feature map to
raw outputs
(B, S_h, S_w, A, 5 + C); `activate` turns them into the notes' y as YOLOv2 parameterises them
(Redmon & Farhadi 2017, "YOLO9000", Sec. 2 "Direct location prediction"): p_c = sigmoid(t_0),
b_x = sigmoid(t_1), b_y = sigmoid(t_2) (inside the cell), b_h = a_h exp(t_3), b_w = a_w exp(t_4)
(a the anchor), class probabilities softmax(t_5..); `decode` turns targets or activated
predictions back into boxes. `detection_loss.yolo_loss` compares predictions with the targets:
'yolov2' as YOLOv2's darknet region layer trains them, or 'notes', the notes' squared error.

Evaluation (host side, NumPy, `cnn_jax.ops.detection_metrics`): `nms` per class (004: "[Non-max
Suppression]", each object
suppressed independently), and `mean_average_precision` at IoU 0.5 (004: "IOU >= 0.5: Correct"),
PASCAL VOC's AP (Everingham et al. 2010).
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError

ArrayLike = Any  # np.ndarray, jax.Array, nested lists
Anchors = Sequence[tuple[float, float]]

# b_h = a_h exp(t) with t clipped to +-MAX_LOG_SCALE: exp(10) = 22,026 cells, far above any real
# box, and the clip keeps exp finite, so the gradient of a masked-out box term stays exactly 0
# (0 * inf would be NaN).
MAX_LOG_SCALE = 10.0
INTERPOLATIONS = ('all', '11point')


# --------------------------------------------------------------------------------------- boxes


def _array_module(*arrays: ArrayLike):
  """jnp when any input is a jax.Array (tracers included), else np."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def iou(boxes_a: ArrayLike, boxes_b: ArrayLike) -> ArrayLike:
  """Pairwise intersection over union of two sets of boxes (004: "intersection / union").

  Args:
    boxes_a: (..., N, 4) boxes (y_min, x_min, y_max, x_max).
    boxes_b: (..., M, 4) boxes in the same units; leading dimensions broadcast.

  Returns:
    (..., N, M) IoU in [0, 1]: NumPy float64 for NumPy (or list) inputs, jnp float32 when either
    input is a jax.Array (so it runs inside jit and is differentiable). Disjoint boxes give 0;
    boxes that only touch give 0; a box of zero area (or an inverted one, max < min, whose area
    counts as 0) gives 0 against anything, itself included (0 / 0 is defined as 0).
  """
  xp = _array_module(boxes_a, boxes_b)
  dtype = jnp.float32 if xp is jnp else np.float64
  a, b = xp.asarray(boxes_a, dtype), xp.asarray(boxes_b, dtype)
  if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != 4 or b.shape[-1] != 4:
    raise UserError(
      f'iou takes boxes of shape (..., N, 4) and (..., M, 4); got {a.shape} and {b.shape}'
    )
  a, b = a[..., :, None, :], b[..., None, :, :]  # (..., N, 1, 4), (..., 1, M, 4)
  ih = xp.clip(xp.minimum(a[..., 2], b[..., 2]) - xp.maximum(a[..., 0], b[..., 0]), 0, None)
  iw = xp.clip(xp.minimum(a[..., 3], b[..., 3]) - xp.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = ih * iw

  def area(x):
    return xp.clip(x[..., 2] - x[..., 0], 0, None) * xp.clip(x[..., 3] - x[..., 1], 0, None)

  union = area(a) + area(b) - inter
  positive = union > 0
  # The inner where keeps the division (and its gradient) finite where union = 0.
  return xp.where(positive, inter / xp.where(positive, union, 1), 0)


def shape_iou(hw_a: ArrayLike, hw_b: ArrayLike) -> np.ndarray:
  """IoU of (h, w) shapes placed at a common centre, pairwise: (N, 2) x (M, 2) -> (N, M).

  The comparison of an object with the anchors (004, "[Anchor boxes]"): min(h) min(w) /
  (h_a w_a + h_b w_b - min(h) min(w)); 0 where both areas are 0.
  """
  a = np.asarray(hw_a, np.float64)[:, None, :]
  b = np.asarray(hw_b, np.float64)[None, :, :]
  inter = np.minimum(a[..., 0], b[..., 0]) * np.minimum(a[..., 1], b[..., 1])
  union = a[..., 0] * a[..., 1] + b[..., 0] * b[..., 1] - inter
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _grid(grid: int | Sequence[int]) -> tuple[int, int]:
  """(S_h, S_w) from S or (S_h, S_w)."""
  sizes = (grid, grid) if np.ndim(grid) == 0 else tuple(grid)
  if len(sizes) != 2 or not all(int(s) == s and s >= 1 for s in sizes):
    raise UserError(f'grid={grid!r}; expected a number of cells S >= 1 or a pair (S_h, S_w)')
  return int(sizes[0]), int(sizes[1])


def check_anchors(anchors: ArrayLike) -> np.ndarray:
  """`anchors` as an (A, 2) float64 array of (h, w) in cell units, all > 0; else UserError."""
  try:
    a = np.asarray(anchors, np.float64)
  except (TypeError, ValueError) as e:
    raise UserError(f'anchors={anchors!r}; expected a list of (h, w) pairs in cell units') from e
  if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != 2 or not np.all(a > 0):
    raise UserError(
      f'anchors={anchors!r}; expected one or more (h, w) pairs in cell units, all > 0, '
      'e.g. ((1.0, 1.0),) or ((2.0, 1.0), (1.0, 2.0))'
    )
  return a


def _image_size(image_size: Sequence[float]) -> np.ndarray:
  size = np.asarray(image_size, np.float64)
  if size.shape != (2,) or not np.all(size > 0):
    raise UserError(
      f'image_size={image_size!r}; expected (height, width) > 0 ((1, 1): boxes in [0, 1])'
    )
  return size


# ------------------------------------------------------------------------------------- targets


class Assignment(NamedTuple):
  """Where `assign` puts each object; every field has the objects' shape (..., N)."""

  row: np.ndarray  # int, the cell's row (of S_h); -1 for padding
  col: np.ndarray  # int, the cell's column (of S_w); -1 for padding
  anchor: np.ndarray  # int, the anchor of highest shape IoU; -1 for padding
  kept: np.ndarray  # bool: the object is in the targets (False: padding, or lost a collision)
  cell_box: np.ndarray  # (..., N, 4) float64: the notes' (b_x, b_y, b_h, b_w)


def assign(
  boxes: ArrayLike,
  classes: ArrayLike,
  *,
  grid: int | Sequence[int],
  anchors: ArrayLike,
  num_classes: int,
  image_size: Sequence[float] = (1.0, 1.0),
) -> Assignment:
  """Assigns objects to grid cells and anchors as the notes do (see the module docstring).

  The cell is the one holding the box's centre: row floor(c_y S_h), column floor(c_x S_w) with
  (c_y, c_x) the centre as a fraction of the image, so a centre on a cell border goes to the cell
  below / to the right, and a centre on the image's bottom or right edge (c = 1) to the last cell
  (then b = 1, the notes' closed bound). The anchor is the argmax of `shape_iou` (ties: the lowest
  anchor index). When several objects land on one (cell, anchor) slot, the one of highest shape
  IoU with that anchor keeps it (ties: the first in input order); the others get kept = False.

  Args:
    boxes: (..., N, 4) boxes (y_min, x_min, y_max, x_max) of one image (or a batch: any leading
      dimensions), in units of `image_size`.
    classes: (..., N) integer classes in [0, num_classes); a negative class marks a padding row
      (fixed-size inputs: digit_scenes' -1), whose box is not read.
    grid: S or (S_h, S_w).
    anchors: (A, 2) anchor shapes (h, w) in cell units.
    num_classes: C.
    image_size: (H, W) of the boxes' units; (1, 1) for boxes in [0, 1].

  Returns:
    An `Assignment`.

  Raises:
    UserError: on shapes that do not match, classes >= num_classes, inverted boxes (max < min) or
      a centre outside the image.
  """
  gh, gw = _grid(grid)
  anchor_hw = check_anchors(anchors)
  size = _image_size(image_size)
  boxes = np.asarray(boxes, np.float64)
  classes = np.asarray(classes)
  if boxes.ndim < 2 or boxes.shape[-1] != 4 or boxes.shape[:-1] != classes.shape:
    raise UserError(
      f'boxes of shape {boxes.shape} and classes of shape {classes.shape}; expected (..., N, 4) '
      'and (..., N) (one class per box, negative for padding rows)'
    )
  if classes.size and not np.issubdtype(classes.dtype, np.integer):
    raise UserError(f'classes must be integers (negative for padding); got dtype {classes.dtype}')
  if num_classes < 1:
    raise UserError(f'num_classes={num_classes}; expected at least 1')
  valid = classes >= 0
  if np.any(classes[valid] >= num_classes):
    raise UserError(
      f'class {int(classes[valid].max())} in the targets, but num_classes={num_classes}; '
      'classes run from 0 to num_classes - 1 (negative for padding rows)'
    )
  b = np.where(valid[..., None], boxes / np.tile(size, 2), 0.0)  # fractions of the image
  if not np.all(np.isfinite(b)):
    raise UserError('a box has a NaN or infinite coordinate; boxes must be finite numbers')
  if np.any(b[..., 2] < b[..., 0]) or np.any(b[..., 3] < b[..., 1]):
    raise UserError(
      'a box has y_max < y_min or x_max < x_min; boxes are (y_min, x_min, y_max, x_max)'
    )
  cy, cx = (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2
  if np.any((cy < 0) | (cy > 1) | (cx < 0) | (cx > 1)):
    raise UserError(
      f'a box centre lies outside the {size[0]:g}x{size[1]:g} image; clip boxes to the image '
      '(or pass image_size=(H, W) for boxes in pixels)'
    )
  row = np.minimum(np.floor(cy * gh), gh - 1).astype(np.int64)
  col = np.minimum(np.floor(cx * gw), gw - 1).astype(np.int64)
  bh, bw = (b[..., 2] - b[..., 0]) * gh, (b[..., 3] - b[..., 1]) * gw
  cell_box = np.stack([cx * gw - col, cy * gh - row, bh, bw], axis=-1)  # (b_x, b_y, b_h, b_w)
  fit = shape_iou(np.stack([bh, bw], -1).reshape(-1, 2), anchor_hw)  # (K, A)
  anchor = np.argmax(fit, axis=-1).reshape(classes.shape)
  best = np.max(fit, axis=-1).reshape(classes.shape)

  # Collisions: sort the valid objects by (slot, -IoU, input order); the first of a slot keeps it.
  num_anchors = anchor_hw.shape[0]
  images = np.arange(int(np.prod(classes.shape[:-1], dtype=np.int64)))[:, None]
  slot = (images * gh + row.reshape(images.size, -1)) * gw + col.reshape(images.size, -1)
  slot = (slot * num_anchors + anchor.reshape(images.size, -1)).ravel()
  flat_valid = valid.ravel()
  index = np.flatnonzero(flat_valid)
  order = index[np.lexsort((index, -best.ravel()[index], slot[index]))]
  first = np.ones(order.size, bool)
  first[1:] = slot[order[1:]] != slot[order[:-1]]
  kept = np.zeros(flat_valid.size, bool)
  kept[order[first]] = True

  def pad(x):
    return np.where(valid, x, -1)

  return Assignment(
    pad(row),
    pad(col),
    pad(anchor),
    kept.reshape(classes.shape),
    np.where(valid[..., None], cell_box, 0.0),
  )


def encode_targets(
  boxes: ArrayLike,
  classes: ArrayLike,
  *,
  grid: int | Sequence[int],
  anchors: ArrayLike,
  num_classes: int,
  image_size: Sequence[float] = (1.0, 1.0),
) -> np.ndarray:
  """The notes' training targets y (004, "[Bounding box predictions]", "[Anchor boxes]").

  Args: as `assign` (boxes (..., N, 4), classes (..., N), negative classes for padding).

  Returns:
    (..., S_h, S_w, A, 5 + C) float32: [p_c, b_x, b_y, b_h, b_w, c_1..c_C] at each kept object's
    (cell, anchor), all zeros elsewhere. Objects that lose a collision are not in it (`assign`).
    NumPy on the host, vectorised over objects and images: meant for the input pipeline.
  """
  gh, gw = _grid(grid)
  a = assign(
    boxes, classes, grid=grid, anchors=anchors, num_classes=num_classes, image_size=image_size
  )
  classes = np.asarray(classes)
  batch = classes.shape[:-1]
  num_anchors = check_anchors(anchors).shape[0]
  y = np.zeros((*batch, gh, gw, num_anchors, 5 + num_classes), np.float32)
  where = np.nonzero(a.kept)  # (batch indices..., object index)
  slot = (*where[:-1], a.row[where], a.col[where], a.anchor[where])
  y[slot + (0,)] = 1.0
  y[slot + (slice(1, 5),)] = a.cell_box[where]
  y[slot + (5 + classes[where],)] = 1.0
  return y


# --------------------------------------------------------------------------------- predictions


def activate(outputs: jax.Array, anchors: ArrayLike) -> jax.Array:
  """Raw head outputs -> the notes' y = [p_c, b_x, b_y, b_h, b_w, class probabilities].

  YOLOv2's parameterisation (Redmon & Farhadi 2017, Sec. 2): sigmoid for p_c and the centre
  (which then stays inside its cell), a_h exp(t_3), a_w exp(t_4) for the size (t clipped to
  +-MAX_LOG_SCALE), softmax over the classes.

  Args:
    outputs: (..., A, 5 + C) raw outputs, e.g. `DetectionHead`'s (B, S_h, S_w, A, 5 + C).
    anchors: (A, 2) anchor shapes (h, w) in cell units (concrete values, not traced).

  Returns:
    float32 array of the shape of `outputs`.
  """
  anchor_hw = jnp.asarray(check_anchors(anchors), jnp.float32)
  if outputs.ndim < 2 or outputs.shape[-2] != anchor_hw.shape[0] or outputs.shape[-1] < 6:
    raise UserError(
      f'detection outputs of shape {outputs.shape} for {anchor_hw.shape[0]} anchors; expected '
      f'(..., {anchor_hw.shape[0]}, 5 + num_classes) with num_classes >= 1'
    )
  t = jnp.asarray(outputs, jnp.float32)
  p_xy = jax.nn.sigmoid(t[..., 0:3])  # p_c, b_x, b_y
  hw = anchor_hw * jnp.exp(jnp.clip(t[..., 3:5], -MAX_LOG_SCALE, MAX_LOG_SCALE))  # b_h, b_w
  probs = jax.nn.softmax(t[..., 5:], axis=-1)
  return jnp.concatenate([p_xy, hw, probs], axis=-1)


def slot_boxes(y: jax.Array) -> jax.Array:
  """(..., S_h, S_w, A, 5 + C) y -> (..., S_h, S_w, A, 4) boxes as fractions of the image, one per
  cell and anchor (`decode` without the flattening; a p_c = 0 target's box has zero area)."""
  gh, gw = y.shape[-4:-2]
  rows = jnp.arange(gh, dtype=jnp.float32)[:, None, None]
  cols = jnp.arange(gw, dtype=jnp.float32)[None, :, None]
  cy, cx = (rows + y[..., 2]) / gh, (cols + y[..., 1]) / gw
  h, w = y[..., 3] / gh, y[..., 4] / gw
  return jnp.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)


def decode(y: ArrayLike, *, image_size: Sequence[float] = (1.0, 1.0)):
  """The notes' y (targets, or `activate`d predictions) -> boxes, scores, classes per anchor.

  Inverse of `encode_targets`: centre ((col + b_x) / S_w, (row + b_y) / S_h), size (b_h / S_h,
  b_w / S_w), as fractions of the image, times `image_size`.

  Args:
    y: (..., S_h, S_w, A, 5 + C).
    image_size: (H, W) of the returned boxes' units; (1, 1) for boxes in [0, 1].

  Returns:
    (boxes, scores, classes) as jnp arrays: boxes (..., S_h S_w A, 4) (y_min, x_min, y_max,
    x_max) float32, scores (..., S_h S_w A) = p_c times the probability of the most probable
    class, classes (..., S_h S_w A) int32 that class. Rows in (row, column, anchor) order.
  """
  size = jnp.asarray(_image_size(image_size), jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  if y.ndim < 4 or y.shape[-1] < 6:
    raise UserError(f'decode takes y of shape (..., S_h, S_w, A, 5 + C), C >= 1; got {y.shape}')
  gh, gw, num_anchors = y.shape[-4:-1]
  boxes = slot_boxes(y) * jnp.concatenate([size, size])
  probs = y[..., 5:]
  scores = y[..., 0] * jnp.max(probs, axis=-1)
  classes = jnp.argmax(probs, axis=-1).astype(jnp.int32)
  batch = y.shape[:-4]
  n = gh * gw * num_anchors
  return boxes.reshape(*batch, n, 4), scores.reshape(*batch, n), classes.reshape(*batch, n)


__all__ = [
  'Assignment',
  'activate',
  'assign',
  'check_anchors',
  'decode',
  'encode_targets',
  'iou',
  'shape_iou',
  'slot_boxes',
]
