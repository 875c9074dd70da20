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
"""

import functools
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow as tf

from cnn_jax.data.datasets import Dataset, DatasetSpec, Source

Batch = dict[str, np.ndarray]

# Pad-and-crop as a fraction of the image side: 4 px at 32 px for CIFAR (He et al. 2016),
# 2 px at 32 px for digit shifts (a digit must stay whole in the frame).
_CROP_PAD = {'crop_flip': 1 / 8, 'shift': 1 / 16}
_EVAL_CROP_FRACTION = 0.875  # 224 of 256, the usual ImageNet center crop


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


class _TrainIndex:
  """Global positions -> example indices, with the permutation of the current epoch cached."""

  def __init__(self, seed: int, n: int):
    self.seed, self.n = seed, n
    self._perms: dict[int, np.ndarray] = {}

  def __call__(self, positions: np.ndarray) -> np.ndarray:
    epochs = positions // self.n
    out = np.empty_like(positions)
    for e in np.unique(epochs):
      if e not in self._perms:
        self._perms = {k: v for k, v in self._perms.items() if k >= e - 1}
        self._perms[e] = _permutation(self.seed, int(e), self.n)
      sel = epochs == e
      out[sel] = self._perms[e][positions[sel] % self.n]
    return out


def _augment(image: tf.Tensor, seed: tf.Tensor, *, kind: str, size: int) -> tf.Tensor:
  """Random training augmentation of one float image in [0, 1]; `seed` is a stateless seed."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if kind == 'inception_crop_flip':
    # Random-resized crop (Szegedy et al. 2015): 8%-100% of the area, aspect 3/4-4/3.
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=crop_seed,
      min_object_covered=0.1,
      aspect_ratio_range=(3 / 4, 4 / 3),
      area_range=(0.08, 1.0),
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), antialias=True)
  else:
    image = tf.image.resize(image, (size, size), antialias=True)
    pad = max(1, round(size * _CROP_PAD[kind]))
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(
      image, tf.shape(image) - [2 * pad, 2 * pad, 0], crop_seed
    )
  if kind != 'shift':  # a mirrored digit is another symbol
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return image


def _label_table(spec: DatasetSpec) -> tf.Tensor:
  """Stored mask value (0..255) -> label, as a 256-entry lookup table."""
  table = np.full(256, spec.ignore_label, np.int32)
  if spec.label_map:
    table[: len(spec.label_map)] = spec.label_map
  else:
    table[: spec.num_classes] = np.arange(spec.num_classes)
  return tf.constant(table)


def _joint_augment(
  image: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, *, spec: DatasetSpec, size: int
) -> tuple[tf.Tensor, tf.Tensor]:
  """The same random rescale, window and flip for a normalised image and its label map.

  The image is squashed to a random square side s * size (s uniform in spec.scale_range; the
  eval resize squashes too), then a size x size window is drawn uniformly among those that
  overlap it fully in each axis: inside the image when it is larger, holding it when smaller (a
  random shift). Image resized bilinearly, labels nearest-neighbour (never a blend of two
  classes); pixels the window brings in from outside are 0 in the image (the mean colour) and
  ignore_label in the labels.
  """
  scale_seed, y_seed, x_seed, flip_seed = tf.unstack(
    tf.random.experimental.stateless_split(seed, 4)
  )
  low, high = spec.scale_range
  scale = tf.random.stateless_uniform([], scale_seed, low, high)
  side = tf.maximum(tf.cast(tf.round(scale * size), tf.int32), 1)
  image = tf.image.resize(image, (side, side), antialias=True)
  labels = tf.image.resize(labels[..., None], (side, side), method='nearest')[..., 0]

  def offset(axis_seed):  # window start, in image pixels; negative: the window starts outside
    lo, hi = tf.minimum(0, side - size), tf.maximum(0, side - size)
    return tf.random.stateless_uniform([], axis_seed, lo, hi + 1, dtype=tf.int32)

  y, x = offset(y_seed), offset(x_seed)
  pads = [[tf.maximum(0, -y), tf.maximum(0, y + size - side)]]
  pads += [[tf.maximum(0, -x), tf.maximum(0, x + size - side)]]
  image = tf.pad(image, pads + [[0, 0]])
  labels = tf.pad(labels, pads, constant_values=spec.ignore_label)
  y, x = tf.maximum(y, 0), tf.maximum(x, 0)
  image = image[y : y + size, x : x + size]
  labels = labels[y : y + size, x : x + size]
  if spec.flip:
    flip = tf.random.stateless_uniform([], flip_seed) < 0.5
    image = tf.cond(flip, lambda: image[:, ::-1], lambda: image)
    labels = tf.cond(flip, lambda: labels[:, ::-1], lambda: labels)
  return image, labels


def _eval_resize(image: tf.Tensor, *, kind: str, size: int) -> tf.Tensor:
  if kind == 'center_crop':
    # Resize the shorter side to size / 0.875, then take the central size x size.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / _EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
  else:
    image = tf.image.resize(image, (size, size), antialias=True)
  return image


def preprocess(
  encoded: tf.Tensor,
  label: tf.Tensor,
  seed: tf.Tensor,
  *,
  spec: DatasetSpec,
  stored_channels: int,
  image_size: int,
  channels: int,
  train: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes one image and returns it augmented (train) or resized (eval), normalised."""
  image = tf.io.decode_image(encoded, channels=stored_channels, expand_animations=False)
  image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
  if train:
    image = _augment(image, seed, kind=spec.train_augment, size=image_size)
  else:
    image = _eval_resize(image, kind=spec.eval_resize, size=image_size)
  image = (image - spec.mean) / spec.std
  if stored_channels == 1 and channels == 3:
    image = tf.tile(image, [1, 1, 3])  # grey to RGB, so one net serves every dataset
  elif stored_channels == 3 and channels == 1:
    image = tf.reduce_mean(image, axis=-1, keepdims=True)
  image = tf.ensure_shape(image, (image_size, image_size, channels))
  return image, tf.cast(label, tf.int32)


def preprocess_segmentation(
  encoded: tf.Tensor,
  encoded_labels: tf.Tensor,
  valid: tf.Tensor,
  seed: tf.Tensor,
  *,
  spec: DatasetSpec,
  stored_channels: int,
  image_size: int,
  channels: int,
  train: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes an image and its label map; returns them jointly augmented (train) or resized (eval).

  Returns the normalised image (S, S, C) float32 and the labels (S, S) int32 (spec.label_map
  applied; every pixel ignore_label where `valid` is 0, i.e. eval padding).
  """
  image = tf.io.decode_image(encoded, channels=stored_channels, expand_animations=False)
  image = tf.image.convert_image_dtype(image, tf.float32)  # [0, 1]
  # Normalised before resizing (resizing is linear), so that padding with 0 means the mean colour.
  image = (image - spec.mean) / spec.std
  stored = tf.io.decode_png(encoded_labels, channels=1)[..., 0]
  labels = tf.gather(_label_table(spec), tf.cast(stored, tf.int32))
  if train and spec.train_augment == 'scale_crop':
    image, labels = _joint_augment(image, labels, seed, spec=spec, size=image_size)
  else:  # eval, or train_augment 'none'
    if spec.train_augment not in ('scale_crop', 'none'):
      raise ValueError(f'segmentation augmentation {spec.train_augment!r}: scale_crop or none')
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    labels = tf.image.resize(labels[..., None], (image_size,) * 2, method='nearest')[..., 0]
  labels = tf.where(valid > 0, labels, spec.ignore_label)
  if stored_channels == 1 and channels == 3:
    image = tf.tile(image, [1, 1, 3])
  elif stored_channels == 3 and channels == 1:
    image = tf.reduce_mean(image, axis=-1, keepdims=True)
  image = tf.ensure_shape(image, (image_size, image_size, channels))
  return image, tf.ensure_shape(labels, (image_size, image_size))


def _batches(
  source: Source,
  positions_of_step: Callable[[int], np.ndarray],
  index_of: Callable[[np.ndarray], np.ndarray],
  steps: range,
  local_batch: int,
  n: int,
  label_key: str = 'label',
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  for step in steps:
    positions = positions_of_step(step)
    mask = positions < n if n else np.ones_like(positions, bool)
    indices = index_of(np.where(mask, positions, 0))
    records = source.__getitems__(indices.tolist())
    images = np.array([r['image'] for r in records], dtype=object)
    if label_key == 'label':
      labels = np.array([r['label'] for r in records], dtype=np.int64)
    else:  # an encoded label map
      labels = np.array([r[label_key] for r in records], dtype=object)
    yield images, labels, positions.astype(np.int64), mask.astype(np.float32)


def _to_tf(
  batches: Callable[[], Iterator],
  local_batch: int,
  preprocess_fn: Callable,
  seed: int,
  segmentation: bool = False,
) -> tf.data.Dataset:
  signature = (
    tf.TensorSpec([local_batch], tf.string),
    tf.TensorSpec([local_batch], tf.string if segmentation else tf.int64),
    tf.TensorSpec([local_batch], tf.int64),
    tf.TensorSpec([local_batch], tf.float32),
  )

  def one(image, label, position, mask):
    seed_ = tf.stack([tf.constant(seed, tf.int64), position])
    if segmentation:
      image, label = preprocess_fn(image, label, mask, seed_)
      return {'image': image, 'segmentation': label, 'mask': mask}
    image, label = preprocess_fn(image, label, seed_)
    return {'image': image, 'label': label, 'mask': mask}

  ds = tf.data.Dataset.from_generator(batches, output_signature=signature).unbatch()
  ds = ds.map(one, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _local_slice(global_batch: int, process_index: int, process_count: int) -> np.ndarray:
  local = global_batch // process_count
  return process_index * local + np.arange(local)


def _label_key(data: Dataset) -> str:
  return data.spec.mask_feature if data.spec.segmentation else 'label'


def _preprocess_fn(data: Dataset, *, image_size: int, channels: int, train: bool) -> Callable:
  return functools.partial(
    preprocess_segmentation if data.spec.segmentation else preprocess,
    spec=data.spec,
    stored_channels=data.channels,
    image_size=image_size,
    channels=channels,
    train=train,
  )


def train_iterator(
  data: Dataset,
  *,
  seed: int,
  global_batch: int,
  start_step: int,
  num_steps: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """This host's share of the training batches for steps start_step .. num_steps - 1."""
  mine = _local_slice(global_batch, process_index, process_count)
  n = len(data.train)
  gen = functools.partial(
    _batches,
    data.train,
    lambda s: s * global_batch + mine,
    _TrainIndex(seed, n),
    range(start_step, num_steps),
    len(mine),
    0,
    _label_key(data),
  )
  pre = _preprocess_fn(data, image_size=image_size, channels=channels, train=True)
  return _to_tf(gen, len(mine), pre, seed, data.spec.segmentation).as_numpy_iterator()


def eval_steps(data: Dataset, global_batch: int) -> int:
  return -(-len(data.eval) // global_batch)


def eval_iterator(
  data: Dataset,
  *,
  global_batch: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
) -> Iterator[Batch]:
  """This host's share of the eval set in order; the last batch padded, with mask 0.

  Segmentation: padded examples' label maps are all ignore_label as well.
  """
  mine = _local_slice(global_batch, process_index, process_count)
  n = len(data.eval)
  gen = functools.partial(
    _batches,
    data.eval,
    lambda s: s * global_batch + mine,
    lambda idx: idx,
    range(eval_steps(data, global_batch)),
    len(mine),
    n,
    _label_key(data),
  )
  pre = _preprocess_fn(data, image_size=image_size, channels=channels, train=False)
  return _to_tf(gen, len(mine), pre, 0, data.spec.segmentation).as_numpy_iterator()
