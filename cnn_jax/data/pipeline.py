"""tf.data input pipelines whose batches are a pure function of (seed, step).

Step `s` of training holds the examples at global positions s*B ... s*B + B - 1 of an endless
stream; position p is example perm_e[p mod N] with e = p // N and perm_e a permutation drawn from
(seed, e). Augmentation randomness is drawn from (seed, p) with stateless ops. So a resumed run
starting at step s sees exactly what an uninterrupted run would have seen, and host i of P reads
only positions i*B/P ... (i+1)*B/P - 1 of each step: its own share, nothing else.

Batches hold 'image' (B, S, S, C) float32, normalised, and 'mask' (B,) float32: 1 for a real
example, 0 for eval padding. Classification adds 'label' (B,) int32. Segmentation datasets
(spec.task == 'segmentation') add 'segmentation' (B, S, S) int32 instead: the class of each pixel,
or spec.ignore_label (255) for pixels that no loss or metric should count (borders the dataset
marks as unsure, pixels brought in by augmentation padding, every pixel of a padded eval example).
Detection datasets (spec.task == 'detection') add 'boxes' (B, M, 4) float32, (y_min, x_min, y_max,
x_max) as fractions of the image, 'classes' (B, M) int32, -1 on the rows no object fills
(M = spec.max_boxes), and 'difficult' (B, M) bool (VOC's flag; False where a dataset has none,
and on empty rows); their images are resized, never augmented (a crop or flip would have to move
the boxes too).

Every example's image takes one path (images.py: decode, resize or augment, normalise, channels);
what its task adds (the labels above and how they follow the image) is the task's codec
(codecs.py); classification's augmentation and segmentation's joint one are in augment.py.

Noisy Student self-training (Xie et al. 2020): `self_training_iterator` mixes the labelled stream
above with a second, independent endless stream over the pseudo-labelled examples (its own
permutations, from (seed, epoch, 2), and augmentation seeds folded from (seed, position) with 2).
`pool_iterator` reads the unlabelled pool in order, clean, for the teacher.
"""

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.core.quiet_tf import tf
from cnn_jax.data import images
from cnn_jax.data.augment import PSEUDO_STREAM, AugmentOptions
from cnn_jax.data.codecs import Codec, augment_options, check_randaugment, codec_of
from cnn_jax.data.corrupt import _corrupt_image, name_corrupt_images  # noqa: F401 (tests read it)
from cnn_jax.data.datasets import Dataset, Source, Subset
from cnn_jax.data.specs import DatasetSpec

Batch = dict[str, np.ndarray]


def _permutation(seed: int, epoch: int, n: int, stream: int = 0) -> np.ndarray:
  # NumPy pads seed lists with zeros ([s, e] and [s, e, 0] draw alike): a stream is never 0.
  key = [seed, epoch, stream] if stream else [seed, epoch]
  return np.random.default_rng(key).permutation(n)


class _TrainIndex:
  """Global positions -> example indices, with the permutation of the current epoch cached."""

  def __init__(self, seed: int, n: int, stream: int = 0):
    self.seed, self.n, self.stream = seed, n, stream
    self._perms: dict[int, np.ndarray] = {}

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs = positions // self.n
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      if e not in self._perms:
        self._perms = {k: v for k, v in self._perms.items() if k >= e - 1}
        self._perms[e] = _permutation(self.seed, int(e), self.n, self.stream)
      sel = epochs == e
      out[sel] = self._perms[e][positions[sel] % self.n]
    return out


def _batches(
  source: Source,
  positions_of_step: Callable[[int], np.ndarray],
  index_of: Callable[[np.ndarray], np.ndarray],
  steps: range,
  local_batch: int,
  n: int,
  labels_of: Callable[[list[dict[str, Any]]], np.ndarray],
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  for step in steps:
    positions = positions_of_step(step)
    mask = positions < n if n else np.ones_like(positions, bool)
    indices = index_of(np.where(mask, positions, 0))
    records = source.__getitems__(indices.tolist())
    images = np.array([r['image'] for r in records], dtype=object)
    yield images, labels_of(records), positions.astype(np.int64), mask.astype(np.float32)


def _to_tf(
  batches: Callable[[], Iterator],
  local_batch: int,
  preprocess_fn: Callable,
  seed: int,
  spec: DatasetSpec,
  codec: Codec,
  stream: int = 0,
) -> tf.data.Dataset:
  column = codec.column(spec)
  signature = (
    tf.TensorSpec([local_batch], tf.string),
    tf.TensorSpec([local_batch, *column.shape], column.dtype),
    tf.TensorSpec([local_batch], tf.int64),
    tf.TensorSpec([local_batch], tf.float32),
  )

  def one(image, labels, position, mask):
    seed_ = tf.stack([tf.constant(seed, tf.int64), position])
    if stream:
      seed_ = tf.random.experimental.stateless_fold_in(seed_, stream)
    image, labels = preprocess_fn(image, labels, mask, seed_)
    return {'image': image, **codec.keys(labels), 'mask': mask}

  ds = tf.data.Dataset.from_generator(batches, output_signature=signature).unbatch()
  ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _local_slice(global_batch: int, process_index: int, process_count: int) -> np.ndarray:
  local = global_batch // process_count
  return process_index * local + np.arange(local)


def _labels_of(data: Dataset) -> Callable[[list[dict[str, Any]]], np.ndarray]:
  """A batch's records -> their labels, as `_to_tf` takes them (the task's codec)."""
  return functools.partial(codec_of(data.spec).labels, data.spec)


def _preprocess_fn(
  data: Dataset,
  *,
  image_size: int,
  channels: int,
  train: bool,
  randaugment: tuple[int, float] | None = None,
  augment: AugmentOptions | None = None,
) -> Callable:
  """(encoded image, labels, valid, seed) -> (image, labels): what the iterators map over
  `data`'s examples (images.preprocess with the task's codec). `augment` and `randaugment`:
  classification training's (the task's codec ignores them elsewhere)."""
  return functools.partial(
    images.preprocess,
    codec=codec_of(data.spec),
    spec=data.spec,
    stored_channels=data.channels,
    image_size=image_size,
    channels=channels,
    train=train,
    augment=augment,
    randaugment=randaugment,
  )


def eval_preprocess_fn(
  data: Dataset, *, image_size: int, channels: int
) -> Callable[[tf.Tensor], tf.Tensor]:
  """encoded image bytes -> the normalised (S, S, C) float32 image that eval feeds the model:
  eval_iterator's preprocessing of `data` without the labels (decoded with the stored channels,
  the eval resize, normalised, tiled or averaged to `channels`). Map it with tf.data, as
  eval_iterator does, for the same bits."""
  fn = _preprocess_fn(data, image_size=image_size, channels=channels, train=False)
  return lambda encoded: fn(encoded, None, None, None)[0]


def train_iterator(
  data: Dataset,
  *,
  seed: int,
  global_batch: int,
  start_step: int,
  num_steps: int,
  image_size: int,
  channels: int,
  randaugment: tuple[int, float] | None = None,
  augment: Any = None,
  process_index: int = 0,
  process_count: int = 1,
  index_of: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[Batch]:
  """This host's share of the training batches for steps start_step .. num_steps - 1.

  `augment`: config.augment (crop, flip, color_shift; `augment_options`), None or all None the
  dataset's default. `randaugment` (N, M on 0..30): RandAugment noise on top of that
  (classification only; None or () off, the batches then unchanged). `index_of`: global
  positions -> train example indices, a pure function called from two threads (the triplet
  task's P x K batches, pk_batches.pk_index); None: the permuted epochs above.
  """
  randaugment = check_randaugment(randaugment, data.spec, data.name)
  options = augment_options(data.spec, augment)
  mine = _local_slice(global_batch, process_index, process_count)
  n = len(data.train)
  gen = functools.partial(
    _batches,
    data.train,
    lambda s: s * global_batch + mine,
    _TrainIndex(seed, n) if index_of is None else index_of,
    range(start_step, num_steps),
    len(mine),
    0,
    _labels_of(data),
  )
  pre = _preprocess_fn(
    data,
    image_size=image_size,
    channels=channels,
    train=True,
    randaugment=randaugment,
    augment=options,
  )
  batches = _to_tf(gen, len(mine), pre, seed, data.spec, codec_of(data.spec)).as_numpy_iterator()
  index = _TrainIndex(seed, n) if index_of is None else index_of
  steps = range(start_step, num_steps)
  return name_corrupt_images(
    batches, data, data.train, 'train', lambda s: index(s * global_batch + mine), steps
  )


def eval_steps(
  data: Dataset, global_batch: int, source: Source | None = None, split: str = 'validation'
) -> int:
  """Batches in one pass over `source` (default: the split called `split`)."""
  return -(-len(data.split(split) if source is None else source) // global_batch)


def eval_iterator(
  data: Dataset,
  *,
  global_batch: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
  split: str = 'validation',
  source: Source | None = None,
) -> Iterator[Batch]:
  """This host's share of `split` ('validation' or 'test'; or of `source`, a part of the train
  split) in order; the last batch padded, mask 0.

  Eval preprocessing: no augmentation. Segmentation: padded examples' label maps are all
  ignore_label as well.
  """
  if source is None:
    source = data.split(split)
  else:
    split = 'train'  # the pool: a part of the train split
  mine = _local_slice(global_batch, process_index, process_count)
  n = len(source)
  gen = functools.partial(
    _batches,
    source,
    lambda s: s * global_batch + mine,
    lambda idx: idx,
    range(eval_steps(data, global_batch, source)),
    len(mine),
    n,
    _labels_of(data),
  )
  pre = _preprocess_fn(data, image_size=image_size, channels=channels, train=False)
  batches = _to_tf(gen, len(mine), pre, 0, data.spec, codec_of(data.spec)).as_numpy_iterator()
  steps = range(eval_steps(data, global_batch, source))
  indices = lambda s: np.minimum(s * global_batch + mine, n - 1)  # noqa: E731 (padding: n - 1)
  return name_corrupt_images(batches, data, source, split, indices, steps)


def pool_iterator(
  data: Dataset,
  pool: Source,
  *,
  global_batch: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """This host's share of `pool` in order, clean (eval preprocessing), the last batch padded
  with mask 0: what a Noisy Student teacher labels. 'label' holds the pool's own labels."""
  return eval_iterator(
    data,
    global_batch=global_batch,
    image_size=image_size,
    channels=channels,
    process_index=process_index,
    process_count=process_count,
    source=pool,
  )


class _PseudoRows(Subset):
  """Pseudo-labelled example j: pool example pseudo_indices[j], with j itself as its 'label'
  (the row of its target, gathered on the host after the tf.data pipeline)."""

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    records = super().__getitems__(indices)
    return [{**r, 'label': int(j)} for r, j in zip(records, indices, strict=True)]


def _host_share(name: str, total: int, process_count: int, num_local_devices: int) -> int:
  """Rows of `total` for this host; UserError unless they split evenly over its devices."""
  if total < 1 or total % (process_count * num_local_devices):
    multiple = process_count * num_local_devices
    raise UserError(
      f'{name}={total} does not split evenly over {process_count} host(s) x '
      f'{num_local_devices} device(s); make it a positive multiple of {multiple}'
    )
  return total // process_count


def self_training_iterator(
  data: Dataset,
  pool: Source,
  pseudo_indices: np.ndarray,
  pseudo_targets: np.ndarray,
  *,
  seed: int,
  global_batch: int,
  unlabeled_batch: int,
  start_step: int,
  num_steps: int,
  image_size: int,
  channels: int,
  randaugment: tuple[int, float] | None = None,
  augment: Any = None,
  num_local_devices: int = 1,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """This host's share of Noisy Student's batches (Xie et al. 2020): labelled + pseudo-labelled.

  Step s holds the labelled examples of train_iterator's step s (same seed: the same examples
  and crops) and `unlabeled_batch` pseudo-labelled ones: pseudo row j is pool example
  pseudo_indices[j] with target pseudo_targets[j], drawn from an endless stream of its own
  (epochs of M rows, permutations from (seed, epoch, 2)). Both get the train augmentation
  (`augment`, as in train_iterator) and RandAugment if given. Host-local rows: b = global_batch
  / P labelled, u = unlabeled_batch / P pseudo; each of the n local devices' contiguous chunks
  holds b/n labelled then u/n pseudo rows.

  Args:
    pseudo_indices: (M,) rows of `pool`; repeats allowed (duplicated examples).
    pseudo_targets: (M, K) float32 probability rows, K = data.num_classes; stays in host memory.
    num_local_devices: the devices this host's batch is split over, in order along axis 0.

  Yields:
    'image' (b + u, S, S, C) float32; 'label' (b + u,) int32, -1 on pseudo rows; 'target'
    (b + u, K) float32, one-hot of the label on labelled rows; 'pseudo' (b + u,) float32, 1 on
    pseudo rows; 'mask' (b + u,) float32 ones.
  """
  randaugment = check_randaugment(randaugment, data.spec, data.name)
  if data.spec.task != 'classification':
    raise UserError(f"self-training needs a classification dataset, not '{data.name}'")
  options = augment_options(data.spec, augment)
  pseudo_indices = np.asarray(pseudo_indices).reshape(-1)
  pseudo_targets = np.asarray(pseudo_targets, dtype=np.float32)  # no copy when float32
  m, k = len(pseudo_indices), data.num_classes
  if m == 0:
    raise UserError(
      'no pseudo-labelled examples to train on (every one dropped?); lower the confidence '
      'threshold or label more of the pool'
    )
  if pseudo_targets.shape != (m, k) or pseudo_indices.dtype.kind not in 'iu':
    raise UserError(
      f'pseudo-labels: {m} indices ({pseudo_indices.dtype}) and targets of shape '
      f'{pseudo_targets.shape}; expected integer indices and targets ({m}, {k}) for '
      f"'{data.name}'"
    )
  if pseudo_indices.min() < 0 or pseudo_indices.max() >= len(pool):
    raise UserError(
      f'pseudo-label indices reach {pseudo_indices.max()}, outside the pool of {len(pool)} '
      'examples; make the pseudo-labels again from this pool'
    )
  n = num_local_devices
  b = _host_share('batch size (labelled)', global_batch, process_count, n)
  u = _host_share('unlabeled batch size', unlabeled_batch, process_count, n)
  steps = range(start_step, num_steps)
  pre = _preprocess_fn(
    data,
    image_size=image_size,
    channels=channels,
    train=True,
    randaugment=randaugment,
    augment=options,
  )

  def endless(source: Source, batch: int, local: int, stream: int) -> tf.data.Dataset:
    mine = process_index * local + np.arange(local)
    gen = functools.partial(
      _batches,
      source,
      lambda s: s * batch + mine,
      _TrainIndex(seed, len(source), stream),
      steps,
      local,
      0,
      _labels_of(data),  # classification: 'label' (pseudo rows: their row j, _PseudoRows)
    )
    return _to_tf(gen, local, pre, seed, data.spec, codec_of(data.spec), stream=stream)

  labelled = endless(data.train, global_batch, b, 0)
  pseudo = endless(_PseudoRows(pool, pseudo_indices), unlabeled_batch, u, PSEUDO_STREAM)

  def per_device(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """(b, ...) and (u, ...) -> (b + u, ...): device d's chunk is b/n rows of x, u/n of y."""
    rest = tuple(x.shape[1:])
    xy = tf.concat([tf.reshape(x, (n, b // n, *rest)), tf.reshape(y, (n, u // n, *rest))], 1)
    return tf.reshape(xy, (b + u, *rest))

  def interleave(x, y):
    return {'image': per_device(x['image'], y['image']), 'ids': per_device(x['label'], y['label'])}

  ds = tf.data.Dataset.zip(labelled, pseudo).map(interleave)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  is_pseudo = np.tile(np.repeat([False, True], [b // n, u // n]), n)  # (b + u,)
  rows, pseudo_rows = np.flatnonzero(~is_pseudo), np.flatnonzero(is_pseudo)

  def batches() -> Iterator[Batch]:
    for batch in ds.as_numpy_iterator():
      ids = batch['ids']  # labelled rows: the class; pseudo rows: j
      target = np.zeros((b + u, k), np.float32)
      target[rows, ids[rows]] = 1.0
      target[pseudo_rows] = pseudo_targets[ids[pseudo_rows]]
      yield {
        'image': batch['image'],
        'label': np.where(is_pseudo, -1, ids).astype(np.int32),
        'target': target,
        'pseudo': is_pseudo.astype(np.float32),
        'mask': np.ones(b + u, np.float32),
      }

  return batches()
