"""Batches of P classes x K images (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet
Loss"), host side, NumPy: what the triplet task trains on (config.triplet.sampler='pk'), so that
batch-hard and semi-hard mining find a positive and a negative for every anchor."""

from collections.abc import Callable

import numpy as np

from cnn_jax.core.errors import UserError


def pk_batch_indices(
  labels: np.ndarray,
  *,
  classes_per_batch: int,
  images_per_class: int,
  seed: int,
  step: int,
  shards: int = 1,
) -> np.ndarray:
  """Indices into a dataset for one 'PK' batch (Hermans et al. 2017): P classes x K images.

  The P classes are drawn without replacement from the classes present in `labels`; each class's
  K images without replacement, or with replacement when the class has fewer than K (then some
  positives are duplicates at distance 0). A pure function of (seed, step): the same batch after
  a resume.

  Order: the batch is cut into `shards` equal contiguous parts (one per device: the trainer
  splits a batch into contiguous chunks and mines within each), and every part holds K / shards
  images of each of the P classes ([K/shards of c1, K/shards of c2, ..., then the next part]), so
  that every device mines over all P classes with positives for every anchor. shards=1 is the
  class-contiguous batch [K of c1, K of c2, ...].

  Args:
    labels: (N,) integer class of every example of the dataset.
    classes_per_batch: P >= 2 (an anchor needs a negative).
    images_per_class: K >= 2 (an anchor needs a positive), a multiple of `shards` with
      K / shards >= 2.
    seed, step: non-negative integers.
    shards: the parts the batch is split into (hosts x devices per host).

  Returns:
    (P * K,) int64 indices into `labels`.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0:
    raise UserError(f'labels must be a non-empty 1-D array; got shape {labels.shape}')
  p, k = classes_per_batch, images_per_class
  if p < 2 or k < 2:
    raise UserError(
      f'a PK batch needs classes_per_batch >= 2 and images_per_class >= 2 (a negative and a '
      f'positive for every anchor); got P={p}, K={k}'
    )
  if shards < 1 or k % shards or k // shards < 2:
    raise UserError(
      f'images_per_class K={k} must split over {shards} device(s) with at least 2 images of '
      f'each class on each (every device mines its own share); make K a multiple of {shards}, '
      f'at least {2 * max(shards, 1)}'
    )
  if seed < 0 or step < 0:
    raise UserError(f'seed and step must be >= 0; got seed={seed}, step={step}')
  classes = np.unique(labels)
  if p > classes.size:
    raise UserError(
      f'classes_per_batch={p} but the data holds {classes.size} classes; lower it to at most '
      f'{classes.size}'
    )
  rng = np.random.default_rng([seed, step])
  chosen = rng.choice(classes, size=p, replace=False)
  out = np.empty((p, k), np.int64)
  for i, c in enumerate(chosen):
    members = np.flatnonzero(labels == c)
    out[i] = rng.choice(members, size=k, replace=members.size < k)
  # (P, K) -> (shards, P, K / shards): part j holds images j*K/shards ... of every class.
  return out.reshape(p, shards, k // shards).transpose(1, 0, 2).reshape(-1)


def pk_index(
  labels: np.ndarray,
  *,
  classes_per_batch: int,
  images_per_class: int,
  seed: int,
  shards: int = 1,
) -> Callable[[np.ndarray], np.ndarray]:
  """Global batch positions -> example indices for a stream of PK batches.

  Position s * P * K + r is row r of step s's `pk_batch_indices` batch: the mapping a training
  pipeline takes (cnn_jax/data/pipeline.py `train_iterator`'s `index_of`), so that each host
  reads its own rows of every step. Stateless: safe to call from several threads.
  """
  labels = np.asarray(labels)
  batch = classes_per_batch * images_per_class

  def index_of(positions: np.ndarray) -> np.ndarray:
    positions = np.asarray(positions, np.int64)
    steps = positions // batch
    out = np.empty_like(positions)
    for s in np.unique(steps):
      rows = pk_batch_indices(
        labels,
        classes_per_batch=classes_per_batch,
        images_per_class=images_per_class,
        seed=seed,
        step=int(s),
        shards=shards,
      )
      sel = steps == s
      out[sel] = rows[positions[sel] % batch]
    return out

  return index_of


__all__ = ['pk_batch_indices', 'pk_index']
