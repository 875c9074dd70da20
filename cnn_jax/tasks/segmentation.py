"""One label per pixel: cross-entropy with an ignore label (+ optional Dice), mean IoU, and the
optional eval-time dense CRF (cnn_jax/ops/crf.py)."""

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
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.core.ranges import Range
from cnn_jax.ops import crf, segmentation
from cnn_jax.tasks.base import Batch, Task, TaskSetup


@dataclasses.dataclass(frozen=True)
class CRFOptions:
  """Eval-time dense CRF (cnn_jax/ops/crf.py), and how to undo the input normalisation for it."""

  num_iterations: int
  w_appearance: float
  theta_alpha: float
  theta_beta: float
  w_smoothness: float
  theta_gamma: float
  mean: tuple[float, ...]  # the dataset's, of images in [0, 1]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Segmentation(Task):
  """One label per pixel: cross-entropy with an ignore label (+ optional Dice), mean IoU.

  Labels come as batch['segmentation'] (B, H, W), `ignore_label` where a pixel does not count
  (borders, augmentation padding, eval padding). A net whose output is smaller than its input
  (the valid-padding U-Net) is scored on the center crop of the labels that its output covers.
  The eval metrics come from one confusion matrix summed over the whole eval set.
  """

  num_classes: int
  ignore_label: int = segmentation.IGNORE_LABEL
  class_weights: tuple[float, ...] | None = None
  label_smoothing: float = 0.0
  dice_weight: float = 0.0  # loss += dice_weight * soft Dice loss (Milletari et al. 2016)
  crf: CRFOptions | None = None
  data_kind: ClassVar[str] = 'segmentation'
  model_kind: ClassVar[str] = 'segmentation'
  primary_metric: ClassVar[str] = 'mean_iou'
  pictures: ClassVar[tuple[str, ...]] = ('overlays.png',)
  config_ranges: ClassVar[dict[str, Range]] = {
    **Task.config_ranges,
    'segmentation.class_weights': Range(0),
    'segmentation.dice_weight': Range(0),
    'segmentation.crf_iterations': Range(1, integer=True),
    'segmentation.crf_w_appearance': Range(0),
    'segmentation.crf_theta_alpha': Range(0, low_open=True, also=(-1.0,), meaning='scaled'),
    'segmentation.crf_theta_beta': Range(0, low_open=True),
    'segmentation.crf_w_smoothness': Range(0),
    'segmentation.crf_theta_gamma': Range(0, low_open=True),
  }

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Segmentation':
    config, spec, num_classes = setup.config, setup.data.spec, setup.num_classes
    seg = config.get('segmentation', ml_collections.ConfigDict())
    crf_options = None
    if seg.get('crf', False):
      crf_options = CRFOptions(
        num_iterations=seg.crf_iterations,
        w_appearance=seg.crf_w_appearance,
        theta_alpha=crf.scaled_theta_alpha(config.image_size)
        if seg.crf_theta_alpha <= 0
        else seg.crf_theta_alpha,
        theta_beta=seg.crf_theta_beta,
        w_smoothness=seg.crf_w_smoothness,
        theta_gamma=seg.crf_theta_gamma,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
      )
    weights = tuple(seg.get('class_weights', ())) or None
    if weights is not None and len(weights) != num_classes:
      raise UserError(
        f'config.segmentation.class_weights has {len(weights)} entries for {num_classes} '
        'classes; give one weight per class (or () for none)'
      )
    return cls(
      num_classes,
      ignore_label=spec.ignore_label,
      class_weights=weights,
      label_smoothing=config.label_smoothing,
      dice_weight=seg.get('dice_weight', 0.0),
      crf=crf_options,
    )

  def labels(self, logits: jax.Array, batch: Batch) -> jax.Array:
    labels = batch['segmentation']
    if labels.shape[1:3] != logits.shape[1:3]:
      labels = segmentation.center_crop(labels, logits.shape[1:3])
    return labels

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    labels = self.labels(logits, batch)
    kw = {'num_classes': self.num_classes, 'ignore_label': self.ignore_label}
    loss_sum, weight_sum = segmentation.pixel_cross_entropy(
      logits, labels, class_weights=self.class_weights, label_smoothing=self.label_smoothing, **kw
    )
    loss = loss_sum / jnp.maximum(weight_sum, 1e-8)  # mean over this device's counted pixels
    if self.dice_weight:
      loss = loss + self.dice_weight * segmentation.dice_loss(logits, labels, **kw)
    return loss

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels = self.labels(logits, batch)
    valid = labels != self.ignore_label
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) & valid)
    return {'pixel_accuracy': lax.psum(correct, AXIS) / lax.psum(jnp.sum(valid), AXIS)}

  def refine(self, logits: jax.Array, images: jax.Array) -> jax.Array:
    """The dense CRF's log-probabilities (or the logits when no CRF is configured)."""
    if self.crf is None:
      return logits
    c = self.crf
    if images.shape[1:3] != logits.shape[1:3]:
      images = segmentation.center_crop(images, logits.shape[1:3])
    raw = images * jnp.asarray(c.std) + jnp.asarray(c.mean)  # back to [0, 1]
    return crf.dense_crf(
      logits,
      raw,
      num_iterations=c.num_iterations,
      w_appearance=c.w_appearance,
      theta_alpha=c.theta_alpha,
      theta_beta=c.theta_beta,
      w_smoothness=c.w_smoothness,
      theta_gamma=c.theta_gamma,
      image_scale=255.0,
    )

  def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    labels = self.labels(logits, batch)  # padded examples are all ignore_label
    kw = {'num_classes': self.num_classes, 'ignore_label': self.ignore_label}
    loss_sum, pixels = segmentation.pixel_cross_entropy(logits, labels, **kw)
    predictions = jnp.argmax(self.refine(logits, batch['image']), -1)
    return {
      'loss': loss_sum,
      'pixels': pixels,
      'confusion': segmentation.confusion_matrix(predictions, labels, **kw),
    }

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    m = segmentation.metrics_from_confusion(np.asarray(totals['confusion'], np.int64))
    out = {
      'mean_iou': float(m['mean_iou']),
      'pixel_accuracy': float(m['pixel_accuracy']),
      'mean_accuracy': float(m['mean_accuracy']),
      'loss': float(totals['loss']) / max(float(totals['pixels']), 1.0),
    }
    for c, iou in enumerate(m['per_class_iou']):
      out[f'iou_class{c}'] = float(iou)  # NaN: the class is absent from labels and predictions
    return out

  def write_pictures(
    self,
    workdir: str,
    apply: Callable[[jax.Array], jax.Array],
    batch: dict[str, np.ndarray],
    spec: Any,
  ) -> None:
    """overlays.png: the first eval images with their true and predicted labels."""
    predictions = np.asarray(
      jax.jit(lambda images: jnp.argmax(self.refine(apply(images), images), -1))(batch['image'])
    )
    labels = np.asarray(self.labels(predictions[..., None], batch))
    overlays.save(
      os.path.join(workdir, self.pictures[0]),
      batch['image'],
      labels,
      predictions,
      num_classes=self.num_classes,
      ignore_label=self.ignore_label,
      mean=spec.mean,
      std=spec.std,
    )
