"""What a run learns: each task's loss, train metrics and eval sums, for the one shared trainer.

The trainer (cnn_jax/train/) runs the same per-device step for every task; a task says how
logits and a batch become a loss (a mean over this device's share), which train metrics to log
(made global with collectives over AXIS) and which sums to add up over the eval set (psum'd per
batch, summed over batches on the host, turned into metrics by `finalize`). Sums, not per-batch
means: an eval metric is then exact whatever the batch size, padding or device count.

Two optional hooks serve tasks whose targets or metrics are not device arithmetic:
- `prepare(batch)`: turns a host batch (NumPy) into what the step reads, before it is put on the
  devices (detection encodes its grid targets from the boxes here).
- `eval_rows(outputs, batch)`: per-example arrays that the eval step gathers over devices and the
  host concatenates over the eval set; `finalize` then finds them under totals[ROWS] (with the
  padding's 'mask'), for metrics that need every example at once: detection's mAP after NMS,
  one-shot accuracy of embeddings.
"""

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax

from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.ops import crf, detection, detection_metrics, metric_learning, segmentation

Batch = dict[str, jax.Array]
ROWS = 'rows'  # the key of the per-example eval arrays in finalize's totals


class Task(Protocol):
  # The summary.json and log key of the metric a user reads first ('accuracy', 'mean_iou').
  primary_metric: str

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array: ...

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]: ...

  def eval_sums(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]: ...

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]: ...


def prepare(task: Task, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The task's host-side `prepare` of a batch, or the batch itself when it has none."""
  hook = getattr(task, 'prepare', None)
  return batch if hook is None else hook(batch)


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


def _valid_rows(totals: dict[str, Any]) -> dict[str, np.ndarray]:
  """The eval rows of the real examples (padding, mask 0, left out)."""
  rows = totals[ROWS]
  keep = np.asarray(rows['mask']) > 0
  return {k: np.asarray(v)[keep] for k, v in rows.items()}


@dataclasses.dataclass(frozen=True)
class Detection:
  """YOLO-style detection (cnn_jax/ops/detection.py): the notes' grid targets and loss, VOC mAP.

  Batches hold 'boxes' (B, M, 4) as fractions of the image and 'classes' (B, M), -1 for unused
  rows; `prepare` encodes them on the host into 'targets' (B, S_h, S_w, A, 5 + C) for the model's
  grid and anchors (each object to the cell of its centre and the anchor of best shape IoU; of
  objects colliding on one slot, one is kept: detection.assign). The loss is the mean over images
  of detection.yolo_loss. Evaluation: the loss, and mAP at IoU `iou_threshold` (the notes' 0.5)
  over the whole eval set after per-class NMS, computed on the host from the gathered outputs.
  """

  num_classes: int
  grid: tuple[int, int]
  anchors: tuple[tuple[float, float], ...]
  box_weight: float = 1.0
  no_object_weight: float = 1.0
  class_loss: str = 'squared'
  iou_threshold: float = 0.5  # of NMS and of a true positive
  score_threshold: float = 0.01  # detections scoring at most this are dropped before NMS
  primary_metric: str = 'map50'

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
    return detection.yolo_loss_terms(
      outputs,
      batch['targets'],
      anchors=self.anchors,
      box_weight=self.box_weight,
      no_object_weight=self.no_object_weight,
      class_loss=self.class_loss,
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
    rows = _valid_rows(totals)
    found = self.detect(rows['outputs'])
    result = detection_metrics.mean_average_precision(
      found,
      list(zip(rows['boxes'], rows['classes'], strict=True)),
      num_classes=self.num_classes,
      iou_threshold=self.iou_threshold,
    )
    out = {
      'map50': result['mean_ap'],
      'loss': float(totals['loss']) / max(float(totals['count']), 1.0),
      'detections_per_image': float(np.mean([len(d.scores) for d in found])),
    }
    for c, ap in enumerate(result['per_class_ap']):
      out[f'ap50_class{c}'] = float(ap)  # NaN: no object of the class in the eval set
    return out


@dataclasses.dataclass(frozen=True)
class Triplet:
  """Metric learning with the triplet loss (cnn_jax/ops/metric_learning.py) for one-shot
  recognition.

  The model is an encoder f(x) (models 'encoder*'); the loss is the in-batch triplet loss with
  `margin` (the notes' alpha) over the triplets that `mining` picks ('all', 'hard': batch hard,
  'semi-hard': FaceNet's) among each device's examples, labels as classes. Evaluation, on the
  host, from every eval example's embedding: eval labels below `num_classes` are the training
  classes (seen), the others the held-out classes (config.held_out_classes, never trained on).
  The verification threshold is the one that separates same/different pairs of the seen classes
  best (metric_learning.best_threshold); one-shot recognition and verification are then measured
  on the held-out classes with one reference image each, drawn `trials` times (seeds 0, 1, ...):
  the means over the draws are reported.
  """

  num_classes: int  # the training (seen) classes
  margin: float = 0.2
  mining: str = 'semi-hard'
  squared: bool = True
  trials: int = 20
  primary_metric: str = 'one_shot_accuracy'

  def _sums(self, embeddings: jax.Array, batch: Batch) -> metric_learning.TripletSums:
    return metric_learning.triplet_mining_sums(
      embeddings,
      batch['label'],
      margin=self.margin,
      mining=self.mining,
      squared=self.squared,
      mask=batch.get('mask'),
    )

  def loss(self, embeddings: jax.Array, batch: Batch) -> jax.Array:
    sums = self._sums(embeddings, batch)
    return sums.loss_sum / jnp.maximum(sums.count, 1.0)

  def train_metrics(self, embeddings: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    sums = lax.psum(self._sums(embeddings, batch), AXIS)
    return {'active_fraction': sums.num_active / jnp.maximum(sums.num_valid, 1.0)}

  def eval_sums(self, embeddings: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {'count': jnp.sum(batch['mask'])}

  def eval_rows(self, embeddings: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {'embedding': embeddings, 'label': batch['label'], 'mask': batch['mask']}

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    rows = _valid_rows(totals)
    emb, labels = rows['embedding'].astype(np.float64), rows['label']
    seen = labels < self.num_classes
    out = {}
    if seen.sum() >= 2:
      d, same = metric_learning.pair_distances(emb[seen], labels[seen], squared=self.squared)
      threshold, out['seen_verification_accuracy'] = metric_learning.best_threshold(d, same)
      out['threshold'] = threshold
    held_out = np.unique(labels[~seen])
    if held_out.size < 2 or 'threshold' not in out:
      return out  # no one-shot evaluation without held-out classes (config.held_out_classes)
    results = []
    for trial in range(self.trials):
      refs, queries = metric_learning.one_shot_split(labels, held_out.tolist(), seed=trial)
      results.append(
        metric_learning.one_shot_evaluation(
          emb[refs],
          labels[refs],
          emb[queries],
          labels[queries],
          threshold=out['threshold'],
          squared=self.squared,
        )
      )
    for key in results[0]:
      values = np.array([r[key] for r in results])
      out[key] = float(np.mean(values))
      if key == 'one_shot_accuracy':
        out['one_shot_accuracy_std'] = float(np.std(values))
    out['held_out_classes'] = int(held_out.size)
    return out


def create(
  config: ml_collections.ConfigDict, spec: Any, num_classes: int, model: Any = None
) -> Task:
  """The task of a dataset (its spec's 'classification' | 'segmentation' | 'detection') with
  config options; `model` (the run's) gives detection its grid and anchors."""
  task = getattr(spec, 'task', 'classification')
  if task == 'detection':
    det = config.get('detection', ml_collections.ConfigDict())
    shape = (config.image_size, config.image_size, config.image_channels)
    return Detection(
      num_classes,
      grid=model.grid_shape(shape),
      anchors=tuple(tuple(float(v) for v in a) for a in model.anchors),
      box_weight=det.get('box_weight', 1.0),
      no_object_weight=det.get('no_object_weight', 1.0),
      class_loss=det.get('class_loss', 'squared'),
      iou_threshold=det.get('iou_threshold', 0.5),
      score_threshold=det.get('score_threshold', 0.01),
    )
  if task == 'classification' and config.get('triplet') is not None:
    t = config.triplet
    if t.mining not in metric_learning.MINING or not t.margin >= 0 or t.trials < 1:
      raise UserError(
        f'config.triplet: mining={t.mining!r}, margin={t.margin}, trials={t.trials}; expected '
        f'mining one of {", ".join(metric_learning.MINING)}, margin >= 0, trials >= 1'
      )
    return Triplet(
      num_classes, margin=t.margin, mining=t.mining, squared=t.squared, trials=t.trials
    )
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
  'ROWS',
  'Batch',
  'CRFOptions',
  'Classification',
  'Detection',
  'Triplet',
  'prepare',
  'Segmentation',
  'Task',
  'create',
  'cross_entropy',
]
