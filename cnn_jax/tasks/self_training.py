"""Noisy Student's student (Xie et al. 2020): labelled and pseudo-labelled rows in one batch."""

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.tasks.base import Batch, TaskSetup
from cnn_jax.tasks.classification import Classification


def load_pseudo_labels(path: str, pool_size: int, num_classes: int) -> dict[str, np.ndarray]:
  """{'indices', 'targets'} of a pseudo-label file, checked against the pool and the classes."""
  if not os.path.exists(path):
    raise UserError(f'no pseudo-labels at {path}; cnn_jax.recipes.noisy_student writes them')
  with np.load(path) as f:
    pseudo = {'indices': f['indices'], 'targets': f['targets'].astype(np.float32)}
  if pseudo['targets'].shape[1:] != (num_classes,) or np.any(pseudo['indices'] >= pool_size):
    raise UserError(
      f'the pseudo-labels at {path} do not fit this dataset ({num_classes} classes, a pool of '
      f'{pool_size}); delete the file to have them made again'
    )
  return pseudo


@dataclasses.dataclass(frozen=True)
class SelfTraining(Classification):
  """Noisy Student's student (Xie et al. 2020): labelled and pseudo-labelled rows in one batch.

  batch['target'] holds a probability row per example (one-hot for labelled rows, the teacher's
  hard or soft pseudo-label otherwise), batch['pseudo'] 1.0 on pseudo rows. Loss = mean CE over
  the labelled rows + unlabel_ratio * mean CE over the pseudo rows, with unlabel_ratio the
  pseudo-labelled rows per labelled row of a batch (unlabeled_batch_size / batch_size), as the
  reference (google-research/noisystudent, main.py: data_loss = (lab_loss * lab_bsz + unl_loss *
  unl_bsz) / lab_bsz): every image counts alike, pseudo-labelled or labelled. Label smoothing
  applies to the labelled rows and to hard pseudo-labels (the reference smooths its one-hot
  pseudo-labels too), not to soft ones. Both means are over this device's rows, which the input
  pipeline splits evenly over devices, so their average over devices is the global batch's.
  Evaluation is plain classification.
  """

  unlabel_ratio: float = 1.0  # pseudo-labelled rows per labelled row of a batch
  hard_pseudo_labels: bool = False  # one-hot pseudo-labels: label smoothing applies to them
  # The unlabelled pool (a Subset of the train split) and this student's pseudo-labels
  # ({'indices': (M,), 'targets': (M, K)}, rows of `pool`), written by cnn_jax/recipes/.
  pool: Any = dataclasses.field(default=None, compare=False)
  pseudo: dict[str, np.ndarray] | None = dataclasses.field(default=None, compare=False)
  unlabeled_batch: int = 0

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'SelfTraining':
    """config.noisy_student: its pseudo_labels file (rows of the pool), unlabeled_batch_size
    (unlabel_ratio = unlabeled_batch_size / batch_size) and mode."""
    ns = setup.config.get('noisy_student')
    if ns is None or not ns.get('pseudo_labels') or setup.pool is None:
      raise UserError(
        "config.task='self_training' needs config.noisy_student with pseudo_labels (the recipe "
        'cnn_jax/recipes/noisy_student.py writes them); see configs/noisy_student.py'
      )
    return cls(
      setup.num_classes,
      setup.config.label_smoothing,
      unlabel_ratio=ns.unlabeled_batch_size / setup.config.batch_size,
      hard_pseudo_labels=ns.get('mode', 'soft') == 'hard',
      pool=setup.pool,
      pseudo=load_pseudo_labels(ns.pseudo_labels, len(setup.pool), setup.num_classes),
      unlabeled_batch=ns.unlabeled_batch_size,
    )

  def train_batches(
    self, data: Any, *, num_local_devices: int, **options: Any
  ) -> Iterator[dict[str, np.ndarray]]:
    """Labelled and pseudo-labelled rows in each batch (data_lib.self_training_iterator)."""
    return data_lib.self_training_iterator(
      data,
      self.pool,
      self.pseudo['indices'],
      self.pseudo['targets'],
      unlabeled_batch=self.unlabeled_batch,
      num_local_devices=num_local_devices,
      **options,
    )

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    pseudo = batch['pseudo'].astype(jnp.float32)
    labelled = 1.0 - pseudo
    targets = batch['target'].astype(jnp.float32)
    smoothed = optax.smooth_labels(targets, self.label_smoothing)
    if not self.hard_pseudo_labels:  # soft pseudo-labels are the teacher's, unsmoothed
      targets = jnp.where(pseudo[:, None] > 0, targets, smoothed)
    else:
      targets = smoothed
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
