"""Metric learning with the triplet loss, evaluated as one-shot recognition on held-out classes."""

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.ops import metric_learning, pk_batches
from cnn_jax.tasks.base import Batch, Task, TaskSetup, valid_rows

# 'pk': P classes x K images per batch (Hermans et al. 2017); 'shuffle': permuted epochs.
SAMPLERS = ('pk', 'shuffle')


@dataclasses.dataclass(frozen=True)
class Triplet(Task):
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

  Training batches (`sampler`): 'pk', P x K batches (Hermans et al. 2017: `p` classes x `k`
  images, pk_batches.pk_batch_indices), each device holding k / devices images of every one
  of the p classes, so that every anchor has positives and negatives to mine; 'shuffle', the
  permuted epochs every other task trains on (a batch may then hold an anchor without a
  positive). Either way the batches of step s are a pure function of (seed, s).
  """

  num_classes: int  # the training (seen) classes
  margin: float = 0.2
  mining: str = 'semi-hard'
  squared: bool = True
  trials: int = 20
  sampler: str = 'pk'
  p: int = 4
  k: int = 32
  model_kind: ClassVar[str] = 'embedding'
  primary_metric: ClassVar[str] = 'one_shot_accuracy'
  held_out_classes: ClassVar[bool] = True

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Triplet':
    """Options from config.triplet (configs/triplet.py)."""
    if setup.config.get('triplet') is None:
      raise UserError(
        "config.task='triplet' needs a config.triplet section; see configs/triplet.py"
      )
    t = setup.config.triplet
    if t.mining not in metric_learning.MINING or not t.margin >= 0 or t.trials < 1:
      raise UserError(
        f'config.triplet: mining={t.mining!r}, margin={t.margin}, trials={t.trials}; expected '
        f'mining one of {", ".join(metric_learning.MINING)}, margin >= 0, trials >= 1'
      )
    if t.sampler not in SAMPLERS:
      raise UserError(f'config.triplet.sampler={t.sampler!r}; use one of {", ".join(SAMPLERS)}')
    batch_size = setup.config.batch_size
    if t.sampler == 'pk':
      if t.p * t.k != batch_size:
        raise UserError(
          f'config.triplet: P x K = {t.p} x {t.k} = {t.p * t.k} images but '
          f'config.batch_size={batch_size}; a P x K batch needs batch_size = P * K (set '
          "config.triplet.k and config.batch_size together, or config.triplet.sampler='shuffle')"
        )
      if not 2 <= t.p <= setup.num_classes or t.k < 2:
        raise UserError(
          f'config.triplet: P={t.p}, K={t.k}; a P x K batch needs 2 <= P <= '
          f'{setup.num_classes} (the training classes) and K >= 2'
        )
    return cls(
      setup.num_classes,
      margin=t.margin,
      mining=t.mining,
      squared=t.squared,
      trials=t.trials,
      sampler=t.sampler,
      p=t.p,
      k=t.k,
    )

  def train_batches(
    self, data: Any, *, num_local_devices: int, **options: Any
  ) -> Iterator[dict[str, np.ndarray]]:
    """P x K batches (sampler 'pk'), each host reading its rows; else the shuffled epochs."""
    if self.sampler != 'pk':
      return super().train_batches(data, num_local_devices=num_local_devices, **options)
    from cnn_jax import data as data_lib

    index_of = pk_batches.pk_index(
      data_lib.datasets.source_labels(data.train),
      classes_per_batch=self.p,
      images_per_class=self.k,
      seed=options['seed'],
      shards=options.get('process_count', 1) * num_local_devices,
    )
    index_of(np.zeros(1, np.int64))  # a bad P, K or device count fails here, not in tf.data
    return data_lib.train_iterator(data, index_of=index_of, **options)

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
    rows = valid_rows(totals)
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
