"""One label per image: softmax cross-entropy (label smoothing optional), accuracy."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnn_jax.core.parallel import AXIS
from cnn_jax.tasks.base import Batch, Task, TaskSetup


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
class Classification(Task):
  """One label per image: cross-entropy (label smoothing optional), accuracy."""

  num_classes: int
  label_smoothing: float = 0.0

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Classification':
    return cls(setup.num_classes, setup.config.label_smoothing)

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
