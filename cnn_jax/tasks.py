"""What a run learns: each task's loss, train metrics and eval sums, for the one shared trainer.

The trainer (cnn_jax/train.py) runs the same per-device step for every task; a task says how
logits and a batch become a loss (a mean over this device's share), which train metrics to log
(made global with collectives over AXIS) and which sums to add up over the eval set (psum'd per
batch, summed over batches on the host, turned into metrics by `finalize`). Sums, not per-batch
means: an eval metric is then exact whatever the batch size, padding or device count.
"""

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from cnn_jax import crf, segmentation
from cnn_jax.errors import UserError
from cnn_jax.parallel import AXIS

Batch = dict[str, jax.Array]


class Task(Protocol):
  # The summary.json and log key of the metric a user reads first ('accuracy', 'mean_iou').
  primary_metric: str

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array: ...

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]: ...

  def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]: ...

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]: ...


def cross_entropy(
  logits: jax.Array, labels: jax.Array, num_classes: int, label_smoothing: float = 0.0
) -> jax.Array:
  """Per-example softmax cross-entropy against (optionally smoothed) one-hot labels.

  Label smoothing as in Szegedy et al. 2016 ("Rethinking the Inception Architecture"): the target
  puts 1 - eps on the true class and eps / num_classes on every class.
  """
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


@dataclasses.dataclass(frozen=True)
class Classification:
  """One label per image: cross-entropy (label smoothing optional), accuracy."""

  num_classes: int
  label_smoothing: float = 0.0
  primary_metric: str = 'accuracy'

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    return cross_entropy(logits, batch['label'], self.num_classes, self.label_smoothing).mean()

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    correct = jnp.sum(jnp.argmax(logits, -1) == batch['label'])
    return {'accuracy': lax.psum(correct, AXIS) / lax.psum(batch['label'].shape[0], AXIS)}

  def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    mask = batch['mask']  # 0 for the examples that pad the last batch
    loss = cross_entropy(logits, batch['label'], self.num_classes)
    correct = jnp.argmax(logits, -1) == batch['label']
    return {
      'loss': jnp.sum(loss * mask),
      'correct': jnp.sum(correct * mask),
      'count': jnp.sum(mask),
    }

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    count = float(totals['count'])
    return {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count}


def distillation_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array,
  *,
  num_classes: int,
  alpha: float,
  temperature: float,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Per-example knowledge-distillation loss (Hinton, Vinyals & Dean 2015) and its KL term.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

  The T^2 keeps the soft term's gradients at the scale of the hard term's as T changes (the
  gradient of the tempered KL shrinks as 1 / T^2). alpha = 0 is plain cross-entropy.

  Args:
    student_logits, teacher_logits: (B, K); the teacher's are treated as constants.
    labels: (B,) int class indices for the hard term.
    num_classes, label_smoothing: of the hard term (`cross_entropy`).
    alpha: weight of the soft term, in [0, 1].
    temperature: T > 0.

  Returns:
    (loss, kl), both (B,) float32; kl is the untempered-scale KL(p_t^T || p_s^T) (no T^2).
  """
  t = temperature
  z_s = student_logits.astype(jnp.float32)
  z_t = lax.stop_gradient(teacher_logits.astype(jnp.float32))
  kl = optax.losses.kl_divergence_with_log_targets(
    jax.nn.log_softmax(z_s / t), jax.nn.log_softmax(z_t / t)
  )
  ce = cross_entropy(z_s, labels, num_classes, label_smoothing)
  return alpha * t * t * kl + (1.0 - alpha) * ce, kl


@dataclasses.dataclass(frozen=True)
class Distillation(Classification):
  """Classification learned from a teacher's logits (batch['teacher_logits'], which the trainer
  computes in the step) and the labels: `distillation_loss`. Evaluation is the student's alone."""

  alpha: float = 0.9
  temperature: float = 4.0

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    loss, _ = distillation_loss(
      logits,
      batch['teacher_logits'],
      batch['label'],
      num_classes=self.num_classes,
      alpha=self.alpha,
      temperature=self.temperature,
      label_smoothing=self.label_smoothing,
    )
    return loss.mean()

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    teacher, labels = batch['teacher_logits'], batch['label']
    _, kl = distillation_loss(
      logits,
      teacher,
      labels,
      num_classes=self.num_classes,
      alpha=self.alpha,
      temperature=self.temperature,
    )
    student_class, teacher_class = jnp.argmax(logits, -1), jnp.argmax(teacher, -1)
    count = lax.psum(labels.shape[0], AXIS)
    return {
      **super().train_metrics(logits, batch),  # 'accuracy': the student's
      'teacher_accuracy': lax.psum(jnp.sum(teacher_class == labels), AXIS) / count,
      'agreement': lax.psum(jnp.sum(student_class == teacher_class), AXIS) / count,
      'kl': lax.psum(jnp.sum(kl), AXIS) / count,
    }


@dataclasses.dataclass(frozen=True)
class SelfTraining(Classification):
  """Noisy Student's student (Xie et al. 2020): labelled and pseudo-labelled rows in one batch.

  batch['target'] holds a probability row per example (one-hot for labelled rows, the teacher's
  hard or soft pseudo-label otherwise), batch['pseudo'] 1.0 on pseudo rows. Loss = mean CE over
  the labelled rows (label smoothing applies to them only) + unlabel_ratio * mean CE over the
  pseudo rows; both means are over this device's rows, which the input pipeline splits evenly
  over devices, so their average over devices is the global batch's. Evaluation is plain
  classification.
  """

  unlabel_ratio: float = 1.0

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    pseudo = batch['pseudo'].astype(jnp.float32)
    labelled = 1.0 - pseudo
    targets = batch['target'].astype(jnp.float32)
    smoothed = optax.smooth_labels(targets, self.label_smoothing)
    targets = jnp.where(pseudo[:, None] > 0, targets, smoothed)
    ce = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
    labelled_loss = jnp.sum(ce * labelled) / jnp.maximum(jnp.sum(labelled), 1.0)
    pseudo_loss = jnp.sum(ce * pseudo) / jnp.maximum(jnp.sum(pseudo), 1.0)
    return labelled_loss + self.unlabel_ratio * pseudo_loss

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    predicted = jnp.argmax(logits, -1)
    pseudo = batch['pseudo'] > 0
    labelled = ~pseudo

    def fraction(hits, rows):
      return lax.psum(jnp.sum(hits & rows), AXIS) / jnp.maximum(lax.psum(jnp.sum(rows), AXIS), 1)

    return {
      'accuracy': fraction(predicted == batch['label'], labelled),  # on the labelled rows
      # How often the student follows its teacher's pseudo-label (its argmax for soft ones).
      'pseudo_agreement': fraction(predicted == jnp.argmax(batch['target'], -1), pseudo),
    }


@dataclasses.dataclass(frozen=True)
class CRFOptions:
  """Eval-time dense CRF (cnn_jax/crf.py), and how to undo the input normalisation for it."""

  num_iterations: int
  w_appearance: float
  theta_alpha: float
  theta_beta: float
  w_smoothness: float
  theta_gamma: float
  mean: tuple[float, ...]  # the dataset's, of images in [0, 1]
  std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Segmentation:
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
  primary_metric: str = 'mean_iou'

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


def create(config: ml_collections.ConfigDict, spec: Any, num_classes: int) -> Task:
  """The task of a dataset (its spec's 'classification' | 'segmentation') with config options."""
  task = getattr(spec, 'task', 'classification')
  if task == 'classification':
    self_training = config.get('noisy_student')
    if self_training is not None and self_training.get('pseudo_labels'):
      return SelfTraining(
        num_classes, config.label_smoothing, unlabel_ratio=self_training.unlabel_ratio
      )
    distill = config.get('distill')
    if distill is not None:
      if not 0 <= distill.alpha <= 1 or not distill.temperature > 0:
        raise UserError(
          f'config.distill.alpha={distill.alpha}, temperature={distill.temperature}; expected '
          'alpha in [0, 1] and temperature > 0'
        )
      return Distillation(
        num_classes, config.label_smoothing, alpha=distill.alpha, temperature=distill.temperature
      )
    return Classification(num_classes, config.label_smoothing)
  if task == 'segmentation':
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
    return Segmentation(
      num_classes,
      ignore_label=spec.ignore_label,
      class_weights=weights,
      label_smoothing=config.label_smoothing,
      dice_weight=seg.get('dice_weight', 0.0),
      crf=crf_options,
    )
  raise UserError(f'unknown task {task!r}')


__all__ = [
  'Batch',
  'CRFOptions',
  'Classification',
  'Segmentation',
  'Task',
  'create',
  'cross_entropy',
]
