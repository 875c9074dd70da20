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
x_max) as fractions of the image, and 'classes' (B, M) int32, -1 on the rows no object fills
(M = spec.max_boxes); their images are resized, never augmented (a crop or flip would have to move
the boxes too).

Classification training augments each image with the dataset's default (spec.train_augment: a
random crop, a mirror image unless it is a digit) or with `augment` options that switch the crop,
the left-right flip and a colour shift on and off one by one (`augment_options`); then it may add
RandAugment (Cubuk et al. 2019). The colour shift and RandAugment draw from seeds of their own,
folded from the example's, so batches without them are what they always were.

Noisy Student self-training (Xie et al. 2020): `self_training_iterator` mixes the labelled stream
above with a second, independent endless stream over the pseudo-labelled examples (its own
permutations, from (seed, epoch, 2), and augmentation seeds folded from (seed, position) with 2).
`pool_iterator` reads the unlabelled pool in order, clean, for the teacher.
"""

import dataclasses
import functools
import numbers
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.core.quiet_tf import tf
from cnn_jax.data import randaugment as randaugment_lib
from cnn_jax.data.datasets import Dataset, DatasetSpec, Source, Subset, object_rows

Batch = dict[str, np.ndarray]

# Pad-and-crop as a fraction of the image side: 4 px at 32 px for CIFAR (He et al. 2016),
# 2 px at 32 px for digit shifts (a digit must stay whole in the frame).
_CROP_PAD = {'crop_flip': 1 / 8, 'shift': 1 / 16}
_EVAL_CROP_FRACTION = 0.875  # 224 of 256, the usual ImageNet center crop
# Seeds of the streams besides the labelled one, folded into an example's (seed, position):
_RANDAUGMENT_STREAM = 1  # RandAugment's choices for an example
_PSEUDO_STREAM = 2  # the pseudo-labelled examples' order and augmentation (self-training)
_COLOR_STREAM = 3  # an example's colour shift (augment.color_shift)


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """The training augmentation of a classification dataset, every option resolved.

  crop: a random crop (spec.train_augment's kind: pad-and-crop, or the random-resized crop);
    False: the image is resized as in eval. flip: a left-right mirror with probability 1/2.
  color_shift: s > 0 adds an offset drawn uniformly from [-s, s] to each stored channel of the
    image in [0, 1], then clips to [0, 1]: the notes' "colour shifting" (offsets of about 20 of
    255 are s = 0.08); a grey dataset gets one offset, a brightness shift. Not AlexNet's PCA
    colour augmentation. 0: off.
  """

  crop: bool
  flip: bool
  color_shift: float = 0.0


AUGMENT_FIELDS = ('crop', 'flip', 'color_shift')


def default_augment(spec: DatasetSpec) -> AugmentOptions:
  """What a dataset's training images get when no option is set: spec.train_augment's crop,
  and a mirror for every kind but 'shift' (a mirrored digit is another symbol)."""
  return AugmentOptions(crop=True, flip=spec.train_augment != 'shift')


def augment_options(spec: DatasetSpec, augment: Any = None) -> AugmentOptions:
  """`augment` ({'crop', 'flip', 'color_shift'}: a config.augment section, a dict, or None)
  resolved against the dataset's default: a field that is None takes the default.

  Raises UserError for an unknown option, a value of the wrong kind, or an option set for a
  segmentation dataset (their augmentation is spec.train_augment 'scale_crop').
  """
  if augment is None:
    augment = {}
  elif hasattr(augment, 'to_dict'):  # an ml_collections.ConfigDict
    augment = augment.to_dict()
  elif not isinstance(augment, dict):
    raise UserError(
      f'augment options {augment!r}: give a section of {", ".join(AUGMENT_FIELDS)} (None: the '
      "dataset's default)"
    )
  unknown = sorted(set(augment) - set(AUGMENT_FIELDS))
  if unknown:
    raise UserError(
      f'config.augment has no option {unknown[0]!r}; its options: {", ".join(AUGMENT_FIELDS)}'
    )
  chosen = {k: v for k, v in augment.items() if v is not None}
  if spec.segmentation and chosen:
    raise UserError(
      f'config.augment.{next(iter(chosen))} is set, but the segmentation dataset '
      f"'{spec.tfds_name}' is augmented by its own random rescale and crop (the image and its "
      'label map together); leave config.augment unset (None)'
    )
  if spec.detection and chosen:
    raise UserError(
      f'config.augment.{next(iter(chosen))} is set, but the detection dataset '
      f"'{spec.tfds_name}' is not augmented (a crop or flip would have to move its boxes); leave "
      'config.augment unset (None)'
    )
  for name in ('crop', 'flip'):
    if name in chosen and not isinstance(chosen[name], bool | np.bool_):
      raise UserError(
        f"config.augment.{name}={chosen[name]!r}; give True, False or None (the dataset's default)"
      )
  shift = chosen.get('color_shift', 0.0)
  if (
    isinstance(shift, bool | np.bool_)
    or not isinstance(shift, numbers.Real)
    or not 0.0 <= shift <= 1.0  # NaN fails too
  ):
    raise UserError(
      f'config.augment.color_shift={shift!r}; give the largest offset per channel as a fraction '
      "of the intensity range, in [0, 1] (e.g. 0.1; 0 off, None the dataset's default)"
    )
  default = default_augment(spec)
  return AugmentOptions(
    crop=bool(chosen.get('crop', default.crop)),
    flip=bool(chosen.get('flip', default.flip)),
    color_shift=float(shift),
  )


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


def _augment(
  image: tf.Tensor, seed: tf.Tensor, *, spec: DatasetSpec, size: int, options: AugmentOptions
) -> tf.Tensor:
  """Random training augmentation of one float image in [0, 1]; `seed` is a stateless seed."""
  kind = spec.train_augment
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if not options.crop:
    image = _eval_resize(image, kind=spec.eval_resize, size=size)
  elif kind == 'inception_crop_flip':
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
  if options.flip:  # off by default for digits ('shift'): a mirrored digit is another symbol
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  if options.color_shift:
    color_seed = tf.random.experimental.stateless_fold_in(seed, _COLOR_STREAM)
    s = options.color_shift
    offsets = tf.random.stateless_uniform(tf.shape(image)[-1:], color_seed, -s, s)  # (C,)
    image = tf.clip_by_value(image + offsets, 0.0, 1.0)
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


def _to_channels(image: tf.Tensor, stored: int, channels: int, size: int) -> tf.Tensor:
  """The (size, size, stored) image with `channels` channels: grey tiled to RGB (one net serves
  every dataset), RGB averaged to grey."""
  if stored == 1 and channels == 3:
    image = tf.tile(image, [1, 1, 3])
  elif stored == 3 and channels == 1:
    image = tf.reduce_mean(image, axis=-1, keepdims=True)
  return tf.ensure_shape(image, (size, size, channels))


def _decode(encoded: tf.Tensor, stored_channels: int) -> tf.Tensor:
  """An encoded image as float32 in [0, 1], with the dataset's stored channels."""
  image = tf.io.decode_image(encoded, channels=stored_channels, expand_animations=False)
  return tf.image.convert_image_dtype(image, tf.float32)


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
  randaugment: tuple[int, float] | None = None,
  augment: AugmentOptions | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes one image and returns it augmented (train) or resized (eval), normalised.

  `augment`: the train augmentation (None: the dataset's default). `randaugment` (N, M): train
  images also get RandAugment's N ops at magnitude M (of 30) after it, in [0, 1], with
  spec.fill and spec.max_translate.
  """
  image = _decode(encoded, stored_channels)
  if train:
    options = default_augment(spec) if augment is None else augment
    image = _augment(image, seed, spec=spec, size=image_size, options=options)
    if randaugment:
      num_layers, magnitude = randaugment
      image = randaugment_lib.randaugment(
        tf.ensure_shape(image, (image_size, image_size, stored_channels)),
        tf.random.experimental.stateless_fold_in(seed, _RANDAUGMENT_STREAM),
        num_layers=num_layers,
        magnitude=magnitude,
        fill=spec.fill,
        max_translate=spec.max_translate,
      )
  else:
    image = _eval_resize(image, kind=spec.eval_resize, size=image_size)
  image = (image - spec.mean) / spec.std
  image = _to_channels(image, stored_channels, channels, image_size)
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
  image = _decode(encoded, stored_channels)
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
  image = _to_channels(image, stored_channels, channels, image_size)
  return image, tf.ensure_shape(labels, (image_size, image_size))


def preprocess_detection(
  encoded: tf.Tensor,
  objects: tf.Tensor,
  seed: tf.Tensor,
  *,
  spec: DatasetSpec,
  stored_channels: int,
  image_size: int,
  channels: int,
  train: bool,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Decodes an image, resizes it to image_size (train and eval alike), normalises it; its
  object rows (M, 5) (boxes as fractions of the image, which a resize leaves as they are) pass
  through."""
  del seed, train  # no augmentation: see the module docstring
  image = _decode(encoded, stored_channels)
  image = tf.image.resize(image, (image_size, image_size), antialias=True)
  image = (image - spec.mean) / spec.std
  image = _to_channels(image, stored_channels, channels, image_size)
  return image, objects


def _batches(
  source: Source,
  positions_of_step: Callable[[int], np.ndarray],
  index_of: Callable[[np.ndarray], np.ndarray],
  steps: range,
  local_batch: int,
  n: int,
  label_key: str | Callable[[dict[str, Any]], np.ndarray] = 'label',
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  for step in steps:
    positions = positions_of_step(step)
    mask = positions < n if n else np.ones_like(positions, bool)
    indices = index_of(np.where(mask, positions, 0))
    records = source.__getitems__(indices.tolist())
    images = np.array([r['image'] for r in records], dtype=object)
    if callable(label_key):  # detection: each record's object rows
      labels = np.stack([label_key(r) for r in records]).astype(np.float32)
    elif label_key == 'label':
      labels = np.array([r['label'] for r in records], dtype=np.int64)
    else:  # an encoded label map
      labels = np.array([r[label_key] for r in records], dtype=object)
    yield images, labels, positions.astype(np.int64), mask.astype(np.float32)


def _to_tf(
  batches: Callable[[], Iterator],
  local_batch: int,
  preprocess_fn: Callable,
  seed: int,
  spec: DatasetSpec | None = None,
  stream: int = 0,
) -> tf.data.Dataset:
  task = spec.task if spec is not None else 'classification'
  if task == 'detection':
    label_spec = tf.TensorSpec([local_batch, spec.max_boxes, 5], tf.float32)
  else:
    label_spec = tf.TensorSpec([local_batch], tf.string if task == 'segmentation' else tf.int64)
  signature = (
    tf.TensorSpec([local_batch], tf.string),
    label_spec,
    tf.TensorSpec([local_batch], tf.int64),
    tf.TensorSpec([local_batch], tf.float32),
  )

  def one(image, label, position, mask):
    seed_ = tf.stack([tf.constant(seed, tf.int64), position])
    if stream:
      seed_ = tf.random.experimental.stateless_fold_in(seed_, stream)
    if task == 'segmentation':
      image, label = preprocess_fn(image, label, mask, seed_)
      return {'image': image, 'segmentation': label, 'mask': mask}
    if task == 'detection':
      image, objects = preprocess_fn(image, label, seed_)
      classes = tf.cast(objects[:, 4], tf.int32)
      return {'image': image, 'boxes': objects[:, :4], 'classes': classes, 'mask': mask}
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


def _label_key(data: Dataset) -> str | Callable[[dict[str, Any]], np.ndarray]:
  """What `_batches` reads as each record's label: 'label', the label map's feature, or (for
  detection) a function giving the record's object rows."""
  if data.spec.detection:
    return functools.partial(object_rows, data.spec)
  return data.spec.mask_feature if data.spec.segmentation else 'label'


def _check_randaugment(
  randaugment: Sequence[float] | None, data: Dataset
) -> tuple[int, float] | None:
  """(N, M) checked, or None when off (None or empty)."""
  if randaugment is None or (isinstance(randaugment, (tuple, list)) and not randaugment):
    return None
  if data.spec.task != 'classification':
    raise UserError(
      f"RandAugment is not supported for {data.spec.task} dataset '{data.name}' (its geometric "
      'ops would have to move the labels too); turn it off (randaugment None or ())'
    )
  if not isinstance(randaugment, (tuple, list)) or len(randaugment) != 2:
    raise UserError(f'randaugment {randaugment!r}: give (N, M), e.g. (2, 9.0)')
  num_layers, magnitude = randaugment
  if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 0:
    raise UserError(f'randaugment N={num_layers!r}: give a whole number of ops >= 0, e.g. 2')
  if isinstance(magnitude, bool) or not isinstance(magnitude, numbers.Real):
    raise UserError(f'randaugment M={magnitude!r}: give a number in [0, 30]')
  if not 0 <= magnitude <= randaugment_lib.MAX_MAGNITUDE:
    raise UserError(
      f"randaugment M={magnitude}: outside the paper's scale [0, 30] "
      '(an AutoAugment-style M on [0, 10] is M * 3 here)'
    )
  return int(num_layers), float(magnitude)


def _preprocess_fn(
  data: Dataset,
  *,
  image_size: int,
  channels: int,
  train: bool,
  randaugment: tuple[int, float] | None = None,
  augment: AugmentOptions | None = None,
) -> Callable:
  kwargs = {'randaugment': randaugment} if randaugment else {}
  if augment is not None and data.spec.task == 'classification':
    kwargs['augment'] = augment
  fn = {'segmentation': preprocess_segmentation, 'detection': preprocess_detection}
  return functools.partial(
    fn.get(data.spec.task, preprocess),
    spec=data.spec,
    stored_channels=data.channels,
    image_size=image_size,
    channels=channels,
    train=train,
    **kwargs,
  )


def _decode_error(record: dict[str, Any], stored_channels: int, label_key: str) -> str | None:
  """Why `record`'s image (or label map) does not decode, in one short line; None if it does."""
  try:
    tf.io.decode_image(record['image'], channels=stored_channels, expand_animations=False)
    if isinstance(label_key, str) and label_key != 'label':
      tf.io.decode_png(record[label_key], channels=1)
  except tf.errors.OpError as e:
    reason = re.sub(r'\{\{.*?\}\}\s*', '', e.message)  # TF's '{{function_node ...}}' noise
    return (reason.splitlines() or [type(e).__name__])[0][:120]
  return None


def _file_name(record: dict[str, Any]) -> str:
  name = record.get('image/filename', b'')
  return name.decode() if isinstance(name, bytes) else str(name)


def _corrupt_image(source: Source, indices: np.ndarray, stored_channels: int, label_key: str):
  """(index in the split, file name, reason) of the first of source's `indices` whose image (or
  label map) does not decode, or None. Decodes on the host one by one: only after a failure."""
  for index, record in zip(indices.tolist(), source.__getitems__(indices.tolist()), strict=True):
    base = source
    while isinstance(base, Subset):  # the index in the split itself, not in a part of it
      index, base = int(base.indices[index]), base.source
    reason = _decode_error(record, stored_channels, label_key)
    if reason is not None:
      return index, _file_name(record), reason
  return None


_SCAN_CHUNK = 1024  # records decoded per read when scanning a split: bounded memory


def drop_corrupt_images(data: Dataset) -> Dataset:
  """`data` without the examples whose image (or label map) does not decode.

  For config.skip_corrupt_images. Every record of both splits is decoded once, on the host,
  before training (a second or two for the offline datasets; a long pass for ImageNet-sized
  ones). The examples left keep their order and the same ones are left at every start, so a
  resumed run still sees exactly the batches of an uninterrupted one. The indices left out are
  in the result's `skipped` ({split: [(index, file name, reason), ...]}), each logged.
  """
  skipped, splits = {}, {}
  for split, source in (('train', data.train), ('eval', data.eval)):
    bad = []
    for start in range(0, len(source), _SCAN_CHUNK):
      indices = list(range(start, min(start + _SCAN_CHUNK, len(source))))
      for index, record in zip(indices, source.__getitems__(indices), strict=True):
        reason = _decode_error(record, data.channels, _label_key(data))
        if reason is not None:
          bad.append((index, _file_name(record), reason))
    if bad:
      skipped[split] = bad
      left = np.setdiff1d(np.arange(len(source)), [b[0] for b in bad])
      if left.size == 0:
        raise UserError(
          f"dataset '{data.name}': none of the {len(source)} images of the {split} split "
          'decodes; check the files (config.skip_corrupt_images skips only some)'
        )
      splits[split] = Subset(source, left)
  return dataclasses.replace(data, **splits, skipped=skipped)


def _name_corrupt_images(
  batches: Iterator[Batch],
  data: Dataset,
  source: Source,
  split: str,
  indices_of_step: Callable[[int], np.ndarray],
  steps: range,
) -> Iterator[Batch]:
  """`batches` (one per step of `steps`), with an image that does not decode reported as a
  UserError naming the example (its index in `split`, and its file for an image folder)."""
  for step in steps:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError:
      found = _corrupt_image(source, indices_of_step(step), data.channels, _label_key(data))
      if found is None:
        raise  # not a decoding problem: a bug, with its traceback
      index, name, reason = found
      where = f' ({name})' if name else ''
      raise UserError(
        f"dataset '{data.name}': example {index} of the {split} split{where} is not a readable "
        f'image ({reason}); replace or remove it and prepare the dataset again, or set '
        'config.skip_corrupt_images=True to leave such images out (counted)'
      ) from None
    yield batch


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
) -> Iterator[Batch]:
  """This host's share of the training batches for steps start_step .. num_steps - 1.

  `augment`: config.augment (crop, flip, color_shift; `augment_options`), None or all None the
  dataset's default. `randaugment` (N, M on 0..30): RandAugment noise on top of that
  (classification only; None or () off, the batches then unchanged).
  """
  randaugment = _check_randaugment(randaugment, data)
  options = augment_options(data.spec, augment)
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
  pre = _preprocess_fn(
    data,
    image_size=image_size,
    channels=channels,
    train=True,
    randaugment=randaugment,
    augment=options,
  )
  batches = _to_tf(gen, len(mine), pre, seed, data.spec).as_numpy_iterator()
  index = _TrainIndex(seed, n)
  steps = range(start_step, num_steps)
  return _name_corrupt_images(
    batches, data, data.train, 'train', lambda s: index(s * global_batch + mine), steps
  )


def eval_steps(data: Dataset, global_batch: int, source: Source | None = None) -> int:
  """Batches in one pass over `source` (default: the eval split)."""
  return -(-len(data.eval if source is None else source) // global_batch)


def eval_iterator(
  data: Dataset,
  *,
  global_batch: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
  source: Source | None = None,
) -> Iterator[Batch]:
  """This host's share of the eval set (or `source`) in order; the last batch padded, mask 0.

  Eval preprocessing: no augmentation. Segmentation: padded examples' label maps are all
  ignore_label as well.
  """
  source = data.eval if source is None else source
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
    _label_key(data),
  )
  pre = _preprocess_fn(data, image_size=image_size, channels=channels, train=False)
  batches = _to_tf(gen, len(mine), pre, 0, data.spec).as_numpy_iterator()
  steps = range(eval_steps(data, global_batch, source))
  split = 'eval' if source is data.eval else 'train'  # the pool: a part of the train split
  indices = lambda s: np.minimum(s * global_batch + mine, n - 1)  # noqa: E731 (padding: n - 1)
  return _name_corrupt_images(batches, data, source, split, indices, steps)


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
  randaugment = _check_randaugment(randaugment, data)
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
    )
    return _to_tf(gen, local, pre, seed, stream=stream)

  labelled = endless(data.train, global_batch, b, 0)
  pseudo = endless(_PseudoRows(pool, pseudo_indices), unlabeled_batch, u, _PSEUDO_STREAM)

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
