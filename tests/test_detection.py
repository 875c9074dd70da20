"""YOLO-style detection primitives: IoU, targets, loss, head, NMS and mAP against hand-computed
cases and direct NumPy loops."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.models.yolo import YOLO, DetectionHead
from cnn_jax.ops import detection as det
from cnn_jax.ops import detection_loss as det_loss
from cnn_jax.ops import detection_metrics as det_metrics

ANCHORS = ((2.0, 1.0), (1.0, 2.0))  # the notes' tall (pedestrian) and wide (car) anchor boxes
_loss_static = (
  'anchors',
  'loss',
  'box_weight',
  'object_weight',
  'no_object_weight',
  'class_weight',
  'class_loss',
  'ignore_threshold',
)
loss_terms = jax.jit(det_loss.yolo_loss_terms, static_argnames=_loss_static)


# ----------------------------------------------------------------------------------------- IoU


def _loop_iou(a, b):
  out = np.zeros((len(a), len(b)))
  for i, j in itertools.product(range(len(a)), range(len(b))):
    ih = max(0.0, min(a[i][2], b[j][2]) - max(a[i][0], b[j][0]))
    iw = max(0.0, min(a[i][3], b[j][3]) - max(a[i][1], b[j][1]))
    area_a = max(0.0, a[i][2] - a[i][0]) * max(0.0, a[i][3] - a[i][1])
    area_b = max(0.0, b[j][2] - b[j][0]) * max(0.0, b[j][3] - b[j][1])
    union = area_a + area_b - ih * iw
    out[i, j] = ih * iw / union if union > 0 else 0.0
  return out


def test_iou_hand_cases():
  a = np.array([[0, 0, 2, 2]], float)
  b = np.array(
    [
      [0, 0, 2, 2],  # identical: 1
      [1, 1, 3, 3],  # overlap 1, union 4 + 4 - 1 = 7
      [5, 5, 6, 6],  # disjoint: 0
      [2, 0, 4, 2],  # touching along an edge: 0
      [0, 0, 1, 2],  # inside, half the area: 2 / 4
      [1, 1, 1, 1],  # zero area (a point inside): 0
    ]
  )
  got = det.iou(a, b)
  assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (1, 6)
  np.testing.assert_allclose(got[0], [1, 1 / 7, 0, 0, 0.5, 0], atol=1e-12)
  point = np.array([[1, 1, 1, 1.0]])
  assert det.iou(point, point)[0, 0] == 0.0  # 0 / 0 is defined as 0, not NaN
  # Pixels and fractions give the same IoU; the result is symmetric.
  np.testing.assert_allclose(det.iou(a * 32, b * 32), got, atol=1e-12)
  np.testing.assert_allclose(det.iou(b, a), got.T, atol=1e-12)


def test_iou_matches_a_loop_numpy_and_jax():
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 10, (2, 7, 2, 2))
  boxes = np.concatenate([corners.min(2), corners.max(2)], -1)  # (2, 7, 4) valid boxes
  a, b = boxes[0], boxes[1, :5]
  want = _loop_iou(a, b)
  np.testing.assert_allclose(det.iou(a, b), want, atol=1e-12)
  got = jax.jit(det.iou)(jnp.asarray(a), jnp.asarray(b))
  assert isinstance(got, jax.Array) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Leading dimensions broadcast: (2, 7, 4) x (2, 5, 4) -> (2, 7, 5).
  batched = det.iou(boxes, boxes[:, :5])
  np.testing.assert_allclose(batched[1], _loop_iou(boxes[1], boxes[1, :5]), atol=1e-12)


def test_iou_gradient_is_finite_for_zero_area_boxes():
  a = jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
  b = jnp.array([[1.0, 1.0, 1.0, 1.0]])
  grad = jax.jit(jax.grad(lambda x: jnp.sum(det.iou(x, b))))(a)
  assert np.all(np.isfinite(grad))


def test_iou_rejects_bad_shapes():
  with pytest.raises(UserError, match=r'iou takes boxes of shape \(\.\.\., N, 4\)'):
    det.iou(np.zeros((3, 3)), np.zeros((2, 4)))


# ------------------------------------------------------------------------------------- targets


def test_shape_iou_and_the_notes_anchor_example():
  # (2, 1) against (1, 2) at a common centre: overlap 1x1, union 2 + 2 - 1.
  np.testing.assert_allclose(det.shape_iou([[2, 1]], [[1, 2]]), [[1 / 3]])
  # The notes' example (004, [Anchor boxes]): 100x100 image, 3x3 grid, a pedestrian (tall) and a
  # car (wide) with their midpoints in the same (middle) cell: anchor 1 and anchor 2 of that cell.
  boxes = [[20, 45, 80, 55], [40, 30, 60, 70]]  # pedestrian 60x10, car 20x40 (h x w, pixels)
  classes = [0, 1]
  y = det.encode_targets(
    boxes, classes, grid=3, anchors=ANCHORS, num_classes=3, image_size=(100, 100)
  )
  assert y.shape == (3, 3, 2, 8)  # the notes' 3 x 3 x 16 as (3, 3, 2, 8)
  assert np.argwhere(y[..., 0]).tolist() == [[1, 1, 0], [1, 1, 1]]
  cell = 100 / 3
  np.testing.assert_allclose(
    y[1, 1, 0], [1, 50 / cell - 1, 50 / cell - 1, 60 / cell, 10 / cell, 1, 0, 0], rtol=1e-6
  )
  np.testing.assert_allclose(
    y[1, 1, 1], [1, 50 / cell - 1, 50 / cell - 1, 20 / cell, 40 / cell, 0, 1, 0], rtol=1e-6
  )
  assert y.sum() == pytest.approx(y[1, 1].sum())  # every other entry is 0 (the notes' "?")


def test_centre_on_a_cell_border_and_on_the_image_edge():
  # 64 px, grid 4 (16 px cells): a centre at 16 px lies on the border -> the cell below/right,
  # b = 0; a centre at 64 px (a box reaching past the edge) -> the last cell, b = 1.
  boxes = [[8, 8, 24, 24], [60, 60, 68, 68]]
  a = det.assign(boxes, [0, 0], grid=4, anchors=[(1, 1)], num_classes=1, image_size=(64, 64))
  assert a.row.tolist() == [1, 3] and a.col.tolist() == [1, 3] and a.kept.tolist() == [True] * 2
  np.testing.assert_allclose(a.cell_box, [[0, 0, 1, 1], [1, 1, 0.5, 0.5]])


def test_collisions_keep_the_best_fitting_object_then_the_first():
  kw = dict(grid=2, anchors=[(1.0, 1.0), (2.0, 0.5)], num_classes=3)
  # Both centres in cell (0, 0), both closest to the square anchor 0: the 1x1-cell object fits it
  # exactly (IoU 1), the 0.8x0.8 one less (0.64), whatever the order.
  square = [0.0, 0.0, 0.5, 0.5]  # 1 x 1 cells
  smaller = [0.05, 0.05, 0.45, 0.45]  # 0.8 x 0.8 cells
  for order in ((0, 1), (1, 0)):
    boxes = np.array([square, smaller])[list(order)]
    classes = np.array([1, 2])[list(order)]
    a = det.assign(boxes, classes, **kw)
    assert a.anchor.tolist() == [0, 0]
    assert a.kept.tolist() == [order[0] == 0, order[0] == 1]
    y = det.encode_targets(boxes, classes, **kw)
    assert y[..., 0].sum() == 1 and y[0, 0, 0, 5 + 1] == 1  # the square object's class 1
  # Equal fit (same shape, centres in the same cell): the first in input order keeps the slot.
  twin = [0.05, 0.0, 0.55, 0.5]
  a = det.assign([twin, square], [2, 1], **kw)
  assert a.kept.tolist() == [True, False]
  assert det.encode_targets([twin, square], [2, 1], **kw)[0, 0, 0, 5 + 2] == 1
  # A different anchor in the same cell is no collision (the notes' two-anchor case).
  tall = [0.0, 0.2, 0.9, 0.3]  # 1.8 x 0.2 cells: IoU 0.17 with anchor 0, 0.36 with anchor 1
  a = det.assign([square, tall], [0, 1], **kw)
  assert a.anchor.tolist() == [0, 1] and a.kept.tolist() == [True, True]


def _random_scene(rng, grid, image_size, num_objects, num_classes):
  """Boxes whose centres lie in distinct cells (so nothing collides), in pixels."""
  gh, gw = grid
  cells = rng.choice(gh * gw, num_objects, replace=False)
  cy = (cells // gw + rng.uniform(0.01, 0.99, num_objects)) / gh * image_size[0]
  cx = (cells % gw + rng.uniform(0.01, 0.99, num_objects)) / gw * image_size[1]
  h = rng.uniform(0.05, 0.6, num_objects) * image_size[0]
  w = rng.uniform(0.05, 0.6, num_objects) * image_size[1]
  boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
  return boxes, rng.integers(0, num_classes, num_objects)


@pytest.mark.parametrize('grid,image_size', [((4, 4), (64, 64)), ((3, 5), (48, 80))])
def test_encode_then_decode_gives_back_boxes_and_classes(grid, image_size):
  rng = np.random.default_rng(1)
  batch, slots, num_classes = 3, 4, 5
  boxes = np.zeros((batch, slots, 4))
  classes = np.full((batch, slots), -1)  # padding rows (digit_scenes' -1)
  for i, n in enumerate((4, 1, 2)):
    boxes[i, :n], classes[i, :n] = _random_scene(rng, grid, image_size, n, num_classes)
  boxes[classes < 0] = 1e6  # padding boxes are never read
  y = det.encode_targets(
    boxes, classes, grid=grid, anchors=ANCHORS, num_classes=num_classes, image_size=image_size
  )
  assert y.shape == (batch, *grid, 2, 5 + num_classes) and y.dtype == np.float32
  out_boxes, scores, out_classes = map(np.asarray, det.decode(y, image_size=image_size))
  for i in range(batch):
    found = scores[i] > 0.5
    assert found.sum() == (classes[i] >= 0).sum()
    got = sorted(zip(out_boxes[i][found].round(3).tolist(), out_classes[i][found], strict=True))
    want = [(b, c) for b, c in zip(boxes[i].round(3).tolist(), classes[i], strict=True) if c >= 0]
    for (gb, gc), (wb, wc) in zip(got, sorted(want), strict=True):
      np.testing.assert_allclose(gb, wb, atol=2e-3)
      assert gc == wc
    np.testing.assert_array_equal(scores[i][found], 1.0)
    np.testing.assert_array_equal(scores[i][~found], 0.0)


def test_encode_rejects_bad_input():
  kw = dict(grid=2, anchors=[(1, 1)], num_classes=2)
  box = [[0.1, 0.1, 0.3, 0.3]]
  with pytest.raises(UserError, match=r'class 2 in the targets, but num_classes=2'):
    det.encode_targets(box, [2], **kw)
  with pytest.raises(UserError, match='centre lies outside the 1x1 image'):
    det.encode_targets([[10, 10, 20, 20]], [0], **kw)  # pixels without image_size
  with pytest.raises(UserError, match='NaN or infinite'):
    det.encode_targets([[0.1, np.nan, 0.3, 0.3]], [0], **kw)
  with pytest.raises(UserError, match='y_max < y_min'):
    det.encode_targets([[0.3, 0.1, 0.1, 0.3]], [0], **kw)
  with pytest.raises(UserError, match=r'expected \(\.\.\., N, 4\) and \(\.\.\., N\)'):
    det.encode_targets(box, [0, 1], **kw)
  with pytest.raises(UserError, match='classes must be integers'):
    det.encode_targets(box, [0.0], **kw)
  with pytest.raises(UserError, match=r'anchors=.*all > 0'):
    det.encode_targets(box, [0], grid=2, anchors=[(1, 0)], num_classes=2)
  with pytest.raises(UserError, match='grid=0'):
    det.encode_targets(box, [0], grid=0, anchors=[(1, 1)], num_classes=2)


# ---------------------------------------------------------------------------------------- loss


def _loop_loss(outputs, targets, anchors, *, loss, true_boxes, weights, ignore_threshold):
  """Both losses one anchor at a time in float64, boxes and IoUs by plain loops; `weights`
  (box, object, no object, class); the class loss cross-entropy for 'yolov2', squared else."""
  box_w, obj_w, noobj_w, class_w = weights
  out = np.zeros(outputs.shape[0])
  _, gh, gw, _, _ = outputs.shape
  for b, i, j, a in np.ndindex(*outputs.shape[:4]):
    t, y = outputs[b, i, j, a].astype(np.float64), targets[b, i, j, a]
    sig = 1 / (1 + np.exp(-t[:3]))
    hw = np.asarray(anchors[a]) * np.exp(t[3:5])
    probs = np.exp(t[5:] - t[5:].max())
    probs /= probs.sum()

    def box(x, y_, h, w, i=i, j=j):  # the cell-relative y -> (y_min, x_min, y_max, x_max)
      cy, cx = (i + y_) / gh, (j + x) / gw
      return [cy - h / gh / 2, cx - w / gw / 2, cy + h / gh / 2, cx + w / gw / 2]

    predicted = box(sig[1], sig[2], *hw)
    if y[0] == 1:
      if loss == 'yolov2':
        target_p = _loop_iou([predicted], [box(*y[1:5])])[0, 0]
        scale = 2 - y[3] / gh * y[4] / gw
        sizes = (t[3] - np.log(y[3] / anchors[a][0])) ** 2 + (
          t[4] - np.log(y[4] / anchors[a][1])
        ) ** 2
        box_err = scale * (np.sum((sig[1:3] - y[1:3]) ** 2) + sizes)
        class_err = -np.log(probs[np.argmax(y[5:])])
      else:
        target_p, box_err = 1.0, np.sum((np.concatenate([sig[1:3], hw]) - y[1:5]) ** 2)
        class_err = np.sum((probs - y[5:]) ** 2)
      out[b] += obj_w * (sig[0] - target_p) ** 2 + box_w * box_err + class_w * class_err
    elif max(_loop_iou([predicted], true_boxes[b])[0], default=0) <= ignore_threshold:
      out[b] += noobj_w * sig[0] ** 2
  return out


def test_loss_hand_computed():
  # A 1x2 grid, one square anchor, 2 classes; all raw outputs 0: p_c = 0.5, centre (0.5, 0.5),
  # size the anchor's (1, 1), class probabilities (0.5, 0.5). Cell 0 holds an object
  # [1, b_x 0.25, b_y 0.75, b_h 2, b_w 0.5, class 0], cell 1 none.
  outputs = jnp.zeros((1, 1, 2, 1, 7))
  targets = np.zeros((1, 1, 2, 1, 7), np.float32)
  targets[0, 0, 0, 0] = [1, 0.25, 0.75, 2.0, 0.5, 1, 0]
  anchors = ((1.0, 1.0),)
  kw = dict(anchors=anchors, loss='notes')
  t = {k: float(v[0]) for k, v in loss_terms(outputs, targets, **kw).items()}
  # (0.5 - 1)^2; 0.5^2; 0.25^2 + 0.25^2 + (1 - 2)^2 + (1 - 0.5)^2; 0.5^2 + 0.5^2.
  assert t == pytest.approx(
    {'objectness': 0.25, 'no_object': 0.25, 'box': 1.375, 'class': 0.5, 'loss': 2.375}
  )
  yolo_v1 = loss_terms(outputs, targets, **kw, box_weight=5.0, no_object_weight=0.5)
  assert float(yolo_v1['loss'][0]) == pytest.approx(0.25 + 0.5 * 0.25 + 5 * 1.375 + 0.5)
  ce = loss_terms(outputs, targets, **kw, class_loss='cross_entropy')
  assert float(ce['class'][0]) == pytest.approx(math.log(2))
  assert float(det_loss.yolo_loss(outputs, targets, **kw)[0]) == pytest.approx(2.375)


def _yolov2_case(anchor1_log_w):
  """A 2x2 grid (cells 0.5 of the image), anchors (h, w) (1, 1) and (1, 0.5) cells, 2 classes.

  Cell (0, 1), anchor 0 holds an object [b_x 0.5, b_y 0.5, b_h 1, b_w 1, class 0]: the box
  (0, 0.5, 0.5, 1.0). Its raw outputs: t_p = log 4 (p̂ 0.8), centre logits 0 (b̂ 0.5, 0.5),
  t_h = 0, t_w = log 2: predicted box 1 x 2 cells, (0, 0.25, 0.5, 1.25), IoU 0.25 / 0.5 = 0.5.
  Anchor 1 of the same cell predicts p̂ 0.5 at the cell's centre, 1 cell high and 0.5 exp(t_w)
  wide; every other anchor predicts p̂ 0.5 and boxes that touch the object at most (IoU 0).
  """
  outputs = np.zeros((1, 2, 2, 2, 7), np.float32)
  targets = np.zeros_like(outputs)
  targets[0, 0, 1, 0] = [1, 0.5, 0.5, 1.0, 1.0, 1, 0]
  outputs[0, 0, 1, 0, 0] = math.log(4)
  outputs[0, 0, 1, 0, 4] = math.log(2)
  outputs[0, 0, 1, 1, 4] = anchor1_log_w
  return jnp.asarray(outputs), targets, ((1.0, 1.0), (1.0, 0.5))


def test_yolov2_loss_hand_computed():
  # The terms (yolo_loss_terms), by hand:
  #   objectness: the target is the IoU 0.5 (rescore): (0.8 - 0.5)^2 = 0.09 (the notes': 0.04).
  #   box: (0.5 - 0.5)^2 twice, t_h - log(1 / 1) = 0, t_w - log(1 / 1) = log 2, times
  #     2 - w h = 2 - 0.5 * 0.5 (the target's size as fractions of the image): 1.75 (log 2)^2.
  #   class: cross-entropy of the uniform softmax, log 2.
  #   no_object: 0.5^2 for each of the 7 anchors without object (6 in the other cells), unless
  #     ignored: anchor 1 with t_w = 0 is 0.5 cells wide, (0, 0.625, 0.5, 0.875), IoU 0.125 /
  #     0.25 = 0.5 <= 0.6: counted; with t_w = log 1.4, 0.7 cells, (0, 0.575, 0.5, 0.925), IoU
  #     0.175 / 0.25 = 0.7 > 0.6: dropped.
  box = 1.75 * math.log(2) ** 2
  defaults = det_loss.LOSS_DEFAULTS['yolov2']
  assert (defaults.box_weight, defaults.object_weight, defaults.no_object_weight) == (1, 5, 1)
  assert (defaults.class_weight, defaults.class_loss, defaults.ignore_threshold) == (
    1,
    'cross_entropy',
    0.6,
  )
  for log_w, no_object in ((0.0, 7 * 0.25), (math.log(1.4), 6 * 0.25)):
    outputs, targets, anchors = _yolov2_case(log_w)
    t = {k: float(v[0]) for k, v in loss_terms(outputs, targets, anchors=anchors).items()}
    want = {'objectness': 0.09, 'no_object': no_object, 'box': box, 'class': math.log(2)}
    # darknet's yolov2-voc.cfg scales: object 5, box, no-object and class 1.
    want['loss'] = 5 * 0.09 + no_object + box + math.log(2)
    assert t == pytest.approx(want, rel=1e-5)
    # Issue 24's YOLOv1 weights on the same terms.
    v1 = dict(box_weight=5.0, object_weight=1.0, no_object_weight=0.5)
    got = float(loss_terms(outputs, targets, anchors=anchors, **v1)['loss'][0])
    assert got == pytest.approx(0.09 + 0.5 * no_object + 5 * box + math.log(2), rel=1e-5)
  # Exactly at the threshold nothing is dropped (darknet: best_iou > thresh); 0.5 > 0.45 is.
  outputs, targets, anchors = _yolov2_case(0.0)
  at = loss_terms(outputs, targets, anchors=anchors, ignore_threshold=0.5)
  below = loss_terms(outputs, targets, anchors=anchors, ignore_threshold=0.45)
  assert (float(at['no_object'][0]), float(below['no_object'][0])) == pytest.approx((1.75, 1.5))
  # The notes' loss on the same outputs: (0.8 - 1)^2; b̂_w = 2 against 1; squared class error.
  outputs, targets, anchors = _yolov2_case(math.log(1.4))
  t = {
    k: float(v[0]) for k, v in loss_terms(outputs, targets, anchors=anchors, loss='notes').items()
  }
  want = {'objectness': 0.04, 'no_object': 1.75, 'box': 1.0, 'class': 0.5, 'loss': 3.29}
  assert t == pytest.approx(want, rel=1e-5)


def test_yolov2_objectness_target_is_a_constant_and_sizes_are_log_space():
  outputs, targets, anchors = _yolov2_case(0.0)
  grad = jax.jit(jax.grad(lambda o: det_loss.yolo_loss(o, targets, anchors=anchors)[0]))(outputs)
  g = np.asarray(grad[0, 0, 1, 0])
  # d/dt_w of box_weight 1.75 (t_w - log(b_w / a_w))^2 alone: no gradient reaches the box through
  # the IoU in the objectness target (darknet's delta for the box ignores the rescore).
  assert g[4] == pytest.approx(2 * 1.75 * math.log(2), rel=1e-5)
  assert g[3] == 0.0  # t_h is already log(b_h / a_h) = 0
  # d/dt_p of 5 (sigmoid(t_p) - 0.5)^2 at sigmoid 0.8: 5 * 2 * 0.3 * 0.8 * 0.2.
  assert g[0] == pytest.approx(10 * 0.3 * 0.16, rel=1e-5)
  # The size target is log(b / a) for the anchor's own (h, w): raw outputs of exactly
  # log(b / a) give no size error, whatever the anchor.
  targets = np.zeros((1, 1, 1, 2, 6), np.float32)
  targets[0, 0, 0] = [[1, 0.5, 0.5, 3.0, 0.5, 1], [1, 0.5, 0.5, 0.2, 4.0, 1]]
  anchors = ((2.0, 1.0), (0.5, 2.0))
  raw = np.zeros_like(targets)
  raw[..., 0] = 20.0
  raw[0, 0, 0, :, 3:5] = np.log(targets[0, 0, 0, :, 3:5] / np.asarray(anchors))
  assert float(loss_terms(jnp.asarray(raw), targets, anchors=anchors)['box'][0]) < 1e-10
  raw[0, 0, 0, 1, 3] += 0.5  # h 0.5 too large in log space: 0.5^2 times 2 - (0.2 * 4.0)
  got = float(loss_terms(jnp.asarray(raw), targets, anchors=anchors)['box'][0])
  assert got == pytest.approx(0.25 * (2 - 0.8), rel=1e-5)


def test_ignore_rule_reads_every_true_box():
  outputs, targets, anchors = _yolov2_case(0.0)
  # By default the true boxes are the targets' (anchor 1's IoU 0.5: counted).
  assert float(loss_terms(outputs, targets, anchors=anchors)['no_object'][0]) == 1.75
  # An object that lost its slot in a collision is not in the targets, but passed as a true box
  # it makes anchor 1 (predicting exactly it) ignored; a zero padding row matches nothing.
  lost = [0.0, 0.625, 0.5, 0.875]
  boxes = np.array([[[0.0, 0.5, 0.5, 1.0], lost, [0.0, 0.0, 0.0, 0.0]]], np.float32)
  got = loss_terms(outputs, targets, anchors=anchors, true_boxes=boxes)['no_object']
  assert float(got[0]) == 1.5
  with pytest.raises(UserError, match=r'true_boxes of shape \(2, 3, 4\) .* expected \(1, M, 4\)'):
    det_loss.yolo_loss(outputs, targets, anchors=anchors, true_boxes=np.zeros((2, 3, 4)))


def test_loss_options_are_checked():
  assert det_loss.loss_options('notes', box_weight=None) == det_loss.LOSS_DEFAULTS['notes']
  assert det_loss.loss_options('yolov2', box_weight=5.0).box_weight == 5.0
  with pytest.raises(UserError, match=r"loss='yolo'; expected one of \('yolov2', 'notes'\)"):
    det_loss.loss_options('yolo')
  with pytest.raises(UserError, match=r'object_weight=-1.0.*expected weights >= 0'):
    det_loss.loss_options('yolov2', object_weight=-1.0)
  with pytest.raises(UserError, match=r'ignore_threshold=1.5; expected an IoU in \[0, 1\]'):
    det_loss.loss_options('yolov2', ignore_threshold=1.5)
  with pytest.raises(UserError, match="no loss option 'lambda_coord'"):
    det_loss.loss_options('yolov2', lambda_coord=5.0)


def test_config_chooses_the_loss_and_checks_its_fields():
  from cnn_jax import tasks
  from cnn_jax.core import ranges
  from configs import yolo

  config = yolo.get_config()
  assert config.detection.loss == 'yolov2' and config.detection.box_weight is None
  ranges.check(config, tasks.Detection.config_ranges)  # placeholders left None pass
  for field, value, message in (
    ('loss', 'yolo', r"config.detection.loss='yolo' is out of range; use 'yolov2' or 'notes'"),
    ('object_weight', -1.0, r'config.detection.object_weight=-1.0 is out of range; use a number'),
    ('ignore_threshold', 1.5, r'config.detection.ignore_threshold=1.5 is out of range'),
    ('class_loss', 'hinge', r"config.detection.class_loss='hinge' is out of range"),
  ):
    bad = yolo.get_config()
    setattr(bad.detection, field, value)
    with pytest.raises(UserError, match=message):
      ranges.check(bad, tasks.Detection.config_ranges)


def test_loss_matches_a_loop_and_ignores_empty_anchors_in_its_gradient():
  rng = np.random.default_rng(2)
  grid, num_classes = (3, 3), 4
  scenes = [_random_scene(rng, grid, (1, 1), 3, num_classes) for _ in range(2)]
  boxes, classes = np.stack([b for b, _ in scenes]), np.stack([c for _, c in scenes])
  targets = det.encode_targets(boxes, classes, grid=grid, anchors=ANCHORS, num_classes=num_classes)
  outputs = rng.normal(0, 1, targets.shape).astype(np.float32)
  for loss, ignore in (('notes', 1.0), ('yolov2', 0.3)):  # 0.3: some anchors are ignored
    weights = dict(box_weight=2.0, object_weight=3.0, no_object_weight=0.5, class_weight=1.5)
    got = loss_terms(
      outputs,
      targets,
      anchors=ANCHORS,
      loss=loss,
      true_boxes=boxes,
      ignore_threshold=ignore,
      **weights,
    )
    want = _loop_loss(
      outputs,
      targets,
      ANCHORS,
      loss=loss,
      true_boxes=boxes,
      weights=tuple(weights.values()),
      ignore_threshold=ignore,
    )
    np.testing.assert_allclose(got['loss'], want, rtol=1e-5)
  empty = targets[..., 0] == 0
  assert empty.sum() == 2 * 9 * 2 - 6  # 6 objects, 36 anchors
  for loss, class_loss in itertools.product(det_loss.LOSSES, det_loss.CLASS_LOSSES):
    grad = jax.jit(
      jax.grad(
        lambda o, loss=loss, cl=class_loss: jnp.sum(
          det_loss.yolo_loss(
            o, targets, anchors=ANCHORS, loss=loss, class_loss=cl, ignore_threshold=1
          )
        )
      )
    )(jnp.asarray(outputs))
    grad = np.asarray(grad)
    assert np.all(grad[empty][:, 1:] == 0.0)  # box and class entries of p_c = 0: exactly zero
    assert np.all(grad[empty][:, 0] != 0.0)  # p_c itself is pushed towards 0 everywhere
    assert np.all(np.abs(grad[~empty][:, 1:5]).sum(-1) > 0)  # object anchors learn their boxes


def test_loss_rejects_bad_input():
  outputs = jnp.zeros((1, 2, 2, 2, 7))
  with pytest.raises(UserError, match=r'detection outputs \(1, 2, 2, 2, 7\) and targets'):
    det_loss.yolo_loss(outputs, np.zeros((1, 2, 2, 1, 7)), anchors=ANCHORS)
  with pytest.raises(UserError, match='for 1 anchors'):
    det_loss.yolo_loss(outputs, np.zeros(outputs.shape), anchors=((1.0, 1.0),))
  with pytest.raises(UserError, match="class_loss='hinge'"):
    det_loss.yolo_loss(outputs, np.zeros(outputs.shape), anchors=ANCHORS, class_loss='hinge')


# ------------------------------------------------------------------------------------- models


@pytest.mark.slow
def test_head_shapes_and_initial_predictions():
  head = DetectionHead(num_anchors=2, num_classes=3, kernel_size=3)
  # A feature map of unit scale, like a BatchNorm'd backbone's.
  feats = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 4, 16)), jnp.float32)
  variables = jax.jit(head.init)(jax.random.key(0), feats)
  assert variables['params']['conv']['kernel'].shape == (3, 3, 16, 16)
  outputs = jax.jit(head.apply)(variables, feats)
  assert outputs.shape == (2, 5, 4, 2, 8) and outputs.dtype == jnp.float32
  # Kernel N(0, 0.01^2), zero bias: raw outputs start small (std 0.01 * sqrt(9 * 16) = 0.12), so
  # every anchor predicts about p_c 0.5 at the cell's centre and its own shape.
  assert 0 < float(jnp.abs(outputs).max()) < 0.6
  y = np.asarray(det.activate(outputs, ANCHORS))
  np.testing.assert_allclose(y[..., 0:3], 0.5, atol=0.15)
  ratio = y[..., 3:5] / np.asarray(ANCHORS)
  assert np.all((ratio > np.exp(-0.6)) & (ratio < np.exp(0.6)))


def test_yolo_on_a_registered_backbone():
  # Shape inference only (jax.eval_shape): compiling even resnet_tiny's init takes tens of seconds
  # on the shared 2-core machine, and the head's numbers are tested above.
  model = YOLO(num_classes=3, backbone='resnet_tiny', anchors=[[2, 1], [1, 2]])
  assert model.anchors == ANCHORS  # lists from a config become a hashable tuple
  # resnet_tiny (CIFAR stem, 3 stages): stride 4, so a 32x32 input gives an 8x8 grid.
  assert model.grid_shape((32, 32, 3)) == (8, 8)
  assert model.clone(feature='stage1').grid_shape((32, 32, 3)) == (32, 32)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert set(variables['params']) == {'backbone', 'head'}
  assert variables['params']['head']['conv']['kernel'].shape == (1, 1, 16, 16)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  assert outputs.shape == (2, 8, 8, 2, 8) and outputs.dtype == jnp.float32
  with pytest.raises(UserError, match=r"no feature map 'stage9'; it has \['stage1', "):
    model.clone(feature='stage9').grid_shape((32, 32, 3))


# ----------------------------------------------------------------------------------------- NMS


def test_nms_per_class_hand_cases():
  boxes = np.array(
    [
      [0, 0, 10, 10],  # 0: class 0, 0.9: kept
      [1, 1, 11, 11],  # 1: class 0, 0.8: IoU 81 / 119 = 0.68 with box 0: suppressed
      [20, 20, 30, 30],  # 2: class 0, 0.7: far away: kept
      [0, 0, 10, 10],  # 3: class 1, 0.6: same place as box 0 but another class: kept
      [0, 0, 10, 5],  # 4: class 0, 0.5: IoU exactly 0.5 with box 0: suppressed (IoU >= 0.5)
      [20, 20, 30, 30],  # 5: class 1, 0.05: under the score threshold below
    ],
    float,
  )
  scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.05])
  classes = np.array([0, 0, 0, 1, 0, 1])
  assert det_metrics.nms(boxes, scores, classes).tolist() == [0, 2, 3, 5]
  assert det_metrics.nms(boxes, scores, classes, score_threshold=0.1).tolist() == [0, 2, 3]
  assert det_metrics.nms(boxes, scores, classes, max_detections=2).tolist() == [0, 2]
  # A higher threshold lets the IoU-0.5 box through, not the 0.68 one.
  assert det_metrics.nms(boxes, scores, classes, iou_threshold=0.6).tolist() == [0, 2, 3, 4, 5]
  # Class-blind input (all class 0): box 3 now duplicates box 0.
  assert det_metrics.nms(boxes, scores, np.zeros(6, int)).tolist() == [0, 2]
  assert det_metrics.nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)).tolist() == []


def test_nms_is_greedy_suppressed_boxes_suppress_nothing():
  # B overlaps A (IoU 70 / 130 = 0.54) and C (0.54); C and A overlap 40 / 160 = 0.25. A is kept,
  # B suppressed by A, so C survives although B would have suppressed it.
  boxes = np.array([[0, 0, 10, 10], [0, 3, 10, 13], [0, 6, 10, 16]], float)
  assert det_metrics.nms(boxes, [0.9, 0.8, 0.7], [0, 0, 0]).tolist() == [0, 2]
  # Equal scores: the lower index goes first.
  assert det_metrics.nms(boxes[:2], [0.5, 0.5], [0, 0]).tolist() == [0]
  assert det_metrics.nms(boxes[:2][::-1], [0.5, 0.5], [0, 0]).tolist() == [0]
  with pytest.raises(UserError, match='iou_threshold=1.5'):
    det_metrics.nms(boxes, [0.9, 0.8, 0.7], [0, 0, 0], iou_threshold=1.5)


def test_decode_outputs_recovers_the_objects_through_nms():
  rng = np.random.default_rng(4)
  grid, num_classes, image = (4, 4), 3, (64, 64)
  boxes, classes = _random_scene(rng, grid, image, 3, num_classes)
  y = det.encode_targets(
    boxes, classes, grid=grid, anchors=ANCHORS, num_classes=num_classes, image_size=image
  )
  # Raw outputs that `activate` maps (almost) onto y: logits of +-20, log sizes, centre logits.
  obj = y[..., :1] > 0
  xy = np.clip(y[..., 1:3], 1e-3, 1 - 1e-3)
  raw = np.concatenate(
    [
      np.where(obj, 20.0, -20.0),
      np.log(xy / (1 - xy)),
      np.log(np.where(obj, y[..., 3:5], 1.0) / np.asarray(ANCHORS)),
      np.where(y[..., 5:] > 0, 20.0, 0.0),
    ],
    -1,
  )
  # A near-duplicate of object 0 in the neighbouring anchor slot, scored lower: NMS removes it.
  i, j, a = np.argwhere(obj[..., 0])[0]
  raw[i, j, 1 - a] = raw[i, j, a]
  raw[i, j, 1 - a, 0] = 2.0
  raw[i, j, 1 - a, 3:5] += np.log(np.asarray(ANCHORS[a]) / np.asarray(ANCHORS[1 - a]))
  (found,) = det_metrics.decode_outputs(
    raw[None], anchors=ANCHORS, image_size=image, score_threshold=0.5
  )
  assert len(found.scores) == 3
  order = np.argsort(found.boxes[:, 0])
  want = np.argsort(boxes[:, 0])
  np.testing.assert_allclose(found.boxes[order], boxes[want], atol=0.1)
  assert found.classes[order].tolist() == classes[want].tolist()


# ----------------------------------------------------------------------------------------- mAP

GT = ([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])  # one image, two objects of class 0


def _map(detections, ground_truth=(GT,), **kw):
  return det_metrics.mean_average_precision(detections, list(ground_truth), num_classes=1, **kw)


def test_average_precision_hand_cases():
  both = ([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [0, 0])
  assert _map([both])['mean_ap'] == 1.0  # perfect detections
  # A false positive ranked first: precision 1/2 and 2/3 at recalls 1/2 and 1 -> the envelope is
  # 2/3 everywhere: AP = 2/3.
  fp_first = ([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 30]], [0.95, 0.9, 0.8], [0, 0, 0])
  assert _map([fp_first])['mean_ap'] == pytest.approx(2 / 3)
  # TP, FP, TP: precisions 1, 1/2, 2/3 at recalls 1/2, 1/2, 1: AP = 0.5 * 1 + 0.5 * 2/3.
  middle = ([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.85, 0.8], [0, 0, 0])
  assert _map([middle])['mean_ap'] == pytest.approx(0.5 + 1 / 3)
  # A missed object: recall stops at 1/2 with precision 1: AP = 1/2 (11-point: 6 of 11 points).
  missed = ([[0, 0, 10, 10]], [0.9], [0])
  assert _map([missed])['mean_ap'] == pytest.approx(0.5)
  assert _map([missed], interpolation='11point')['mean_ap'] == pytest.approx(6 / 11)
  # A duplicate of a matched object is a false positive (each ground truth matches once).
  duplicate = ([[0, 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]], [0.9, 0.85, 0.8], [0, 0, 0])
  assert _map([duplicate])['mean_ap'] == pytest.approx(0.5 + 1 / 3)
  # IoU exactly 0.5 is a hit; just below is not.
  half = ([[0, 0, 10, 5]], [0.9], [0])
  assert _map([half], [([[0, 0, 10, 10]], [0])])['mean_ap'] == 1.0
  assert _map([([[0, 0, 10, 4.9]], [0.9], [0])], [([[0, 0, 10, 10]], [0])])['mean_ap'] == 0.0
  # Lower detection scores do not matter, only their order.
  assert _map([(both[0], [0.2, 0.1], [0, 0])])['mean_ap'] == 1.0


def test_match_detections_does_not_fall_back_to_the_second_best():
  # The 0.8 detection's best ground truth (IoU 0.82) is taken by the 0.9 one; its IoU with the
  # other ground truth is 0.54 >= 0.5, but VOC counts it as a false positive anyway.
  gt = [[0, 0, 10, 10], [0, 4, 10, 14]]
  boxes = [[0, 0, 10, 10], [0, 1, 10, 11]]
  assert det.iou(np.array(boxes[1:]), np.array(gt)).round(2).tolist() == [[0.82, 0.54]]
  assert det_metrics.match_detections(boxes, [0.9, 0.8], gt).true_positive.tolist() == [True, False]
  assert det_metrics.match_detections(boxes, [0.7, 0.8], gt).true_positive.tolist() == [False, True]


def test_mean_average_precision_over_classes_and_images():
  dets = [
    ([[0, 0, 10, 10], [5, 5, 8, 8]], [0.9, 0.4], [0, 2]),  # class 2 has no ground truth
    ([[0, 0, 10, 10]], [0.7], [0]),  # misses its class-1 object
  ]
  gts = [([[0, 0, 10, 10], [0, 0, 0, 0]], [0, -1]), ([[0, 0, 10, 10], [30, 30, 40, 40]], [0, 1])]
  m = det_metrics.mean_average_precision(dets, gts, num_classes=3)
  assert m['per_class_ap'][:2].tolist() == [1.0, 0.0] and np.isnan(m['per_class_ap'][2])
  assert m['mean_ap'] == 0.5  # mean over the classes that have ground truth
  with pytest.raises(UserError, match='2 images of detections but 1 of ground truth'):
    det_metrics.mean_average_precision(dets, gts[:1], num_classes=3)


def _loop_map(dets, gts, num_classes, iou_threshold=0.5, interpolation='all'):
  """VOC AP by a different route, VOCevaldet.m's: all images' detections in one global score
  order, matched one by one (a difficult best match: neither TP nor FP), then AP over the
  ranked list, all-point as the sum over recall steps of the best precision at that recall or
  above, 11-point as the mean of the best precision at recall >= t / 10 (compared exactly)."""
  aps = []
  for c in range(num_classes):
    rows = [
      (s, img, box)
      for img, (boxes, scores, classes) in enumerate(dets)
      for box, s, k in zip(boxes, scores, classes, strict=True)
      if k == c
    ]
    rows.sort(key=lambda r: -r[0])  # stable: image order, then input order, as the library
    gt = {
      img: [(b, bool(h)) for b, k, h in zip(*g, strict=True) if k == c] for img, g in enumerate(gts)
    }
    npos = sum(not h for v in gt.values() for _, h in v)
    if npos == 0:
      continue
    taken = {img: [False] * len(v) for img, v in gt.items()}
    outcome = []  # per ranked detection: 'tp', 'fp' or 'ignored' (neither)
    for _, img, box in rows:
      ious = [_loop_iou([box], [g])[0, 0] for g, _ in gt[img]]
      best = int(np.argmax(ious)) if ious else -1
      if best < 0 or ious[best] < iou_threshold:
        outcome.append('fp')
      elif gt[img][best][1]:  # difficult
        outcome.append('ignored')
      elif not taken[img][best]:
        taken[img][best] = True
        outcome.append('tp')
      else:
        outcome.append('fp')
    # Precision and recall after each counted detection (an ignored one adds no point).
    counted = [o for o in outcome if o != 'ignored']
    hits = [counted[: k + 1].count('tp') for k in range(len(counted))]
    precision = [h / (k + 1) for k, h in enumerate(hits)]
    if interpolation == '11point':
      ap = np.mean(
        [
          max([p for p, h in zip(precision, hits, strict=True) if 10 * h >= t * npos], default=0)
          for t in range(11)
        ]
      )
    else:
      ap, prev = 0.0, 0
      for k, h in enumerate(hits):
        if h > prev:
          ap += (h - prev) / npos * max(precision[k:])
          prev = h
    aps.append(ap)
  return float(np.mean(aps))


@pytest.mark.parametrize('interpolation', det_metrics.INTERPOLATIONS)
def test_mean_average_precision_matches_a_loop_on_random_data(interpolation):
  rng = np.random.default_rng(5)
  num_classes, dets, gts = 3, [], []
  for _ in range(6):
    g_boxes, g_classes = _random_scene(rng, (3, 3), (30, 30), 3, num_classes)
    d_boxes = np.concatenate([g_boxes + rng.normal(0, 2, g_boxes.shape), g_boxes[:2] + 1])
    d_boxes = np.concatenate([d_boxes, rng.uniform(0, 30, (2, 4))])
    d_classes = np.concatenate([g_classes, g_classes[:2], rng.integers(0, num_classes, 2)])
    d_classes[0] = (d_classes[0] + rng.integers(0, 2)) % num_classes  # sometimes a wrong class
    dets.append((d_boxes, rng.uniform(0, 1, len(d_classes)).round(1), d_classes))  # with ties
    gts.append((g_boxes, g_classes, rng.uniform(size=3) < 0.2))  # some objects difficult
  assert 0 < sum(g[2].sum() for g in gts) < 18
  kw = dict(num_classes=num_classes, interpolation=interpolation)
  got = det_metrics.mean_average_precision(dets, gts, **kw)['mean_ap']
  assert 0.2 < got < 1.0  # a non-trivial case
  assert got == pytest.approx(
    _loop_map(dets, gts, num_classes, interpolation=interpolation), abs=1e-12
  )
  # Without the flags every object counts: another number, the same as a loop with none set.
  plain = [(b, c) for b, c, _ in gts]
  got = det_metrics.mean_average_precision(dets, plain, **kw)['mean_ap']
  no_flags = [(b, c, np.zeros(len(c), bool)) for b, c, _ in gts]
  assert got == pytest.approx(
    _loop_map(dets, no_flags, num_classes, interpolation=interpolation), abs=1e-12
  )
