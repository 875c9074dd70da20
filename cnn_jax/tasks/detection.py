"""YOLO-style detection: the notes' grid targets (cnn_jax/ops/detection.py), YOLOv2's loss or the
notes' (cnn_jax/ops/detection_loss.py), VOC mAP after NMS as the devkit computes it
(cnn_jax/ops/detection_metrics.py)."""

import dataclasses
import os
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

from cnn_jax.core import overlays
from cnn_jax.core.parallel import AXIS
from cnn_jax.core.ranges import Range
from cnn_jax.ops import detection, detection_loss, detection_metrics
from cnn_jax.tasks.base import Batch, Task, TaskSetup, valid_rows


@dataclasses.dataclass(frozen=True)
class Detection(Task):
  """YOLO-style detection (cnn_jax/ops/detection.py): the notes' grid targets, YOLOv2's loss (or
  the notes'), VOC mAP.

  Batches hold 'boxes' (B, M, 4) as fractions of the image, 'classes' (B, M), -1 for unused
  rows, and 'difficult' (B, M) bool (VOC's flag; all False where a dataset has none); `prepare`
  encodes boxes and classes on the host into 'targets' (B, S_h, S_w, A, 5 + C) for the model's
  grid and anchors (each object to the cell of its centre and the anchor of best shape IoU; of
  objects colliding on one slot, one is kept: detection.assign). Difficult objects are trained on
  like the others. The loss is the mean over images of detection_loss.yolo_loss (`loss_name`:
  'yolov2' or 'notes'; an option left None is that loss's own, detection_loss.LOSS_DEFAULTS),
  whose ignore rule sees every true box of the batch. Evaluation: the loss, and mAP at IoU
  `iou_threshold` (the notes' 0.5) over the whole eval set after per-class NMS, all-point
  ('map50') and VOC2007's 11-point ('map50_11point'), difficult objects neither counted nor
  penalised (the devkit's rule), computed on the host from the gathered outputs.
  """

  num_classes: int
  grid: tuple[int, int]
  anchors: tuple[tuple[float, float], ...]
  loss_name: str = 'yolov2'  # config.detection.loss: detection_loss.LOSSES
  # None: the loss's own (detection_loss.LOSS_DEFAULTS); see detection_loss.yolo_loss_terms.
  box_weight: float | None = None
  object_weight: float | None = None
  no_object_weight: float | None = None
  class_weight: float | None = None
  class_loss: str | None = None
  ignore_threshold: float | None = None
  iou_threshold: float = 0.5  # of NMS and of a true positive
  score_threshold: float = 0.01  # detections scoring at most this are dropped before NMS
  data_kind: ClassVar[str] = 'detection'
  model_kind: ClassVar[str] = 'detection'
  primary_metric: ClassVar[str] = 'map50'
  pictures: ClassVar[tuple[str, ...]] = ('boxes.png',)
  config_ranges: ClassVar[dict[str, Range]] = {
    **Task.config_ranges,
    'detection.loss': Range(only=detection_loss.LOSSES, note="YOLOv2's darknet loss or the notes'"),
    'detection.box_weight': Range(0),
    'detection.object_weight': Range(0),
    'detection.no_object_weight': Range(0),
    'detection.class_weight': Range(0),
    'detection.class_loss': Range(only=detection_loss.CLASS_LOSSES),
    'detection.ignore_threshold': Range(0, 1),
    'detection.iou_threshold': Range(0, 1),
    'detection.score_threshold': Range(0, 1),
  }

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Detection':
    """Grid and anchors from the run's model, options from config.detection."""
    config, model = setup.config, setup.model
    det = config.get('detection', ml_collections.ConfigDict())
    shape = (config.image_size, config.image_size, config.image_channels)
    options = {k: det.get(k) for k in detection_loss.LossOptions._fields[1:]}
    loss_name = det.get('loss', 'yolov2')
    detection_loss.loss_options(loss_name, **options)  # a UserError now, not at the first step
    return cls(
      setup.num_classes,
      grid=model.grid_shape(shape),
      anchors=tuple(tuple(float(v) for v in a) for a in model.anchors),
      loss_name=loss_name,
      **options,
      iou_threshold=det.get('iou_threshold', 0.5),
      score_threshold=det.get('score_threshold', 0.01),
    )

  def prepare(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    targets = detection.encode_targets(
      batch['boxes'],
      batch['classes'],
      grid=self.grid,
      anchors=self.anchors,
      num_classes=self.num_classes,
    )
    return {**batch, 'targets': targets}

  def _terms(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    real = batch['classes'][..., None] >= 0  # padding rows: a zero box, which matches nothing
    return detection_loss.yolo_loss_terms(
      outputs,
      batch['targets'],
      anchors=self.anchors,
      loss=self.loss_name,
      true_boxes=jnp.where(real, batch['boxes'], 0.0),
      box_weight=self.box_weight,
      object_weight=self.object_weight,
      no_object_weight=self.no_object_weight,
      class_weight=self.class_weight,
      class_loss=self.class_loss,
      ignore_threshold=self.ignore_threshold,
    )

  def loss(self, outputs: jax.Array, batch: Batch) -> jax.Array:
    return self._terms(outputs, batch)['loss'].mean()

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    terms = self._terms(outputs, batch)
    count = lax.psum(outputs.shape[0], AXIS)
    return {
      f'{k}_loss': lax.psum(jnp.sum(v), AXIS) / count for k, v in terms.items() if k != 'loss'
    }

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    mask = batch['mask']
    return {'loss': jnp.sum(self._terms(outputs, batch)['loss'] * mask), 'count': jnp.sum(mask)}

  def eval_rows(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {
      'outputs': outputs,
      'boxes': batch['boxes'],
      'classes': batch['classes'],
      'difficult': batch.get('difficult', jnp.zeros(batch['classes'].shape, bool)),
      'mask': batch['mask'],
    }

  def detect(self, outputs: Any) -> list[detection_metrics.Detections]:
    """Raw outputs (B, S_h, S_w, A, 5 + C) -> per-image detections after per-class NMS."""
    return detection_metrics.decode_outputs(
      outputs,
      anchors=self.anchors,
      iou_threshold=self.iou_threshold,
      score_threshold=self.score_threshold,
    )

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    rows = valid_rows(totals)
    found = self.detect(rows['outputs'])
    difficult = rows.get('difficult', np.zeros(rows['classes'].shape, bool))
    matches = detection_metrics.match_dataset(
      found,
      list(zip(rows['boxes'], rows['classes'], difficult, strict=True)),
      num_classes=self.num_classes,
      iou_threshold=self.iou_threshold,
    )
    result = detection_metrics.class_average_precisions(matches)
    eleven = detection_metrics.class_average_precisions(matches, interpolation='11point')
    out = {
      'map50': result['mean_ap'],
      'map50_11point': eleven['mean_ap'],  # VOC2007's measure, as its papers report
      'loss': float(totals['loss']) / max(float(totals['count']), 1.0),
      'detections_per_image': float(np.mean([len(d.scores) for d in found])),
    }
    for c, ap in enumerate(result['per_class_ap']):
      out[f'ap50_class{c}'] = float(ap)  # NaN: no (non-difficult) object of the class
    return out

  def write_pictures(
    self,
    workdir: str,
    apply: Callable[[jax.Array], jax.Array],
    batch: dict[str, np.ndarray],
    spec: Any,
  ) -> None:
    """boxes.png: the first eval images with their true boxes and the detections."""
    overlays.save_boxes(
      os.path.join(workdir, self.pictures[0]),
      batch['image'],
      batch['boxes'],
      batch['classes'],
      self.detect(np.asarray(apply(batch['image']))),
      mean=spec.mean,
      std=spec.std,
    )
