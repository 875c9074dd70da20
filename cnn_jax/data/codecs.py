"""Per-task codecs: what an example carries besides its image, from the stored record to the batch.

Every task's image takes the one path of images.preprocess; a Codec says the rest. CODECS holds
one per DatasetSpec.task and `codec_of` chooses it, in this one place: a new task's data needs a new
entry here, not an edit of the pipeline.

  classification: 'label' (B,) int32, the record's class.
  segmentation: 'segmentation' (B, S, S) int32, the record's label map (an encoded 1-channel
    image) through spec.label_map, resized nearest-neighbour, spec.ignore_label where no loss or
    metric should count; augmented together with the image (augment.joint_augment).
  detection: 'boxes' (B, M, 4) float32, 'classes' (B, M) int32 and 'difficult' (B, M) bool, the
    record's objects padded to M = spec.max_boxes rows (specs.object_rows; 'difficult' is VOC's
    objects/is_difficult, False where a dataset has no such flag and on padding rows); never
    augmented.

Also here, as they depend on the task: the checks of config.augment and RandAugment.
"""

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.core.quiet_tf import tf
from cnn_jax.data import augment as augment_lib
from cnn_jax.data import randaugment as randaugment_lib
from cnn_jax.data.images import eval_resize
from cnn_jax.data.specs import DatasetSpec, object_rows

Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Codec:
  """One task's labels, from the stored record to the batch (see the module docstring).

  read: (spec, record) -> the record's labels, on the host; `column` their tf.data type for one
    example, (spec) -> tf.TensorSpec; as bytes (an encoded label map) they must decode like the
    image (drop_corrupt_images decodes them too).
  decode: (labels, valid, spec) -> the labels in tf, before any resize; valid is 0.0 on eval
    padding.
  train: (image, labels, seed, *, spec, size, stored_channels, augment, randaugment) -> the
    (size, size) training image and its labels: the task's augmentation.
  eval_labels: (labels, spec, size) -> the labels of the (size, size) eval image.
  keys: labels -> the batch entries they become, beside 'image' and 'mask'.
  eval_resize: the eval image's resize, an images.eval_resize kind; '' spec.eval_resize.
  normalise_first: the image is normalised before its resize or augmentation, not after.
  fixed_augment: why config.augment and RandAugment are refused (the dataset's augmentation is
    its own); '' where they are taken.
  """

  read: Callable[[DatasetSpec, Record], Any]
  column: Callable[[DatasetSpec], tf.TensorSpec]
  decode: Callable[[tf.Tensor, tf.Tensor, DatasetSpec], tf.Tensor]
  train: Callable[..., tuple[tf.Tensor, tf.Tensor]]
  eval_labels: Callable[[tf.Tensor, DatasetSpec, int], tf.Tensor]
  keys: Callable[[tf.Tensor], dict[str, tf.Tensor]]
  eval_resize: str = ''
  normalise_first: bool = False
  fixed_augment: str = ''

  def labels(self, spec: DatasetSpec, records: Sequence[Record]) -> np.ndarray:
    """The labels of a batch's records, stacked as tf.data takes them (`column`)."""
    dtype = self.column(spec).dtype.as_numpy_dtype
    return np.array([self.read(spec, r) for r in records], dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Classification


def _classification_train(
  image, label, seed, *, spec, size, stored_channels, augment, randaugment
) -> tuple[tf.Tensor, tf.Tensor]:
  """`augment` (augment.AugmentOptions; None: the dataset's default), then RandAugment's N ops
  at magnitude M when `randaugment` is (N, M); the label as it is."""
  options = augment_lib.default_augment(spec) if augment is None else augment
  image = augment_lib.augment(image, seed, spec=spec, size=size, options=options)
  if randaugment:
    image = augment_lib.randaugment(
      image, seed, spec=spec, size=size, stored_channels=stored_channels, randaugment=randaugment
    )
  return image, label


CLASSIFICATION = Codec(
  read=lambda spec, record: record['label'],
  column=lambda spec: tf.TensorSpec([], tf.int64),
  decode=lambda label, valid, spec: tf.cast(label, tf.int32),
  train=_classification_train,
  eval_labels=lambda label, spec, size: label,
  keys=lambda label: {'label': label},
)


# ---------------------------------------------------------------------------------------------
# Segmentation


def _label_table(spec: DatasetSpec) -> tf.Tensor:
  """Stored mask value (0..255) -> label, as a 256-entry lookup table."""
  table = np.full(256, spec.ignore_label, np.int32)
  if spec.label_map:
    table[: len(spec.label_map)] = spec.label_map
  else:
    table[: spec.num_classes] = np.arange(spec.num_classes)
  return tf.constant(table)


def _decode_label_map(encoded: tf.Tensor, valid: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
  """(H, W) int32 labels: spec.label_map applied; every pixel ignore_label where `valid` is 0,
  i.e. eval padding."""
  stored = tf.io.decode_png(encoded, channels=1)[..., 0]
  labels = tf.gather(_label_table(spec), tf.cast(stored, tf.int32))
  return tf.where(valid > 0, labels, spec.ignore_label)


def _resized_label_map(labels: tf.Tensor, spec: DatasetSpec, size: int) -> tf.Tensor:
  """The label map squashed to (size, size) as the eval image is, nearest-neighbour."""
  if spec.train_augment not in ('scale_crop', 'none'):
    raise ValueError(f'segmentation augmentation {spec.train_augment!r}: scale_crop or none')
  labels = tf.image.resize(labels[..., None], (size,) * 2, method='nearest')[..., 0]
  return tf.ensure_shape(labels, (size, size))


def _segmentation_train(
  image, labels, seed, *, spec, size, stored_channels, augment, randaugment
) -> tuple[tf.Tensor, tf.Tensor]:
  """Image and label map jointly augmented (train_augment 'scale_crop') or resized as in eval
  ('none'). config.augment and RandAugment are refused before (`fixed_augment`)."""
  del stored_channels, augment, randaugment
  if spec.train_augment != 'scale_crop':
    labels = _resized_label_map(labels, spec, size)
    return eval_resize(image, kind='resize', size=size), labels
  image, labels = augment_lib.joint_augment(image, labels, seed, spec=spec, size=size)
  return image, tf.ensure_shape(labels, (size, size))


SEGMENTATION = Codec(
  read=lambda spec, record: record[spec.mask_feature],
  column=lambda spec: tf.TensorSpec([], tf.string),
  decode=_decode_label_map,
  train=_segmentation_train,
  eval_labels=_resized_label_map,
  keys=lambda labels: {'segmentation': labels},
  eval_resize='resize',
  # Normalised before resizing (resizing is linear), so that padding with 0 means the mean colour.
  normalise_first=True,
  fixed_augment='is augmented by its own random rescale and crop (the image and its label map '
  'together)',
)


# ---------------------------------------------------------------------------------------------
# Detection


def _detection_train(
  image, objects, seed, *, spec, size, stored_channels, augment, randaugment
) -> tuple[tf.Tensor, tf.Tensor]:
  """Resized as in eval; the object rows (boxes as fractions of the image, which a resize
  leaves as they are) pass through."""
  del seed, spec, stored_channels, augment, randaugment
  return eval_resize(image, kind='resize', size=size), objects


def _detection_rows(spec: DatasetSpec, record: Record) -> np.ndarray:
  """(spec.max_boxes, 6) float32: specs.object_rows' (y_min, x_min, y_max, x_max, class) and
  the object's "difficult" flag (1.0 / 0.0; 0 where the record has no objects/is_difficult)."""
  rows = object_rows(spec, record)
  difficult = np.zeros((spec.max_boxes, 1), np.float32)
  if spec.boxes_format == 'tfds_objects' and 'is_difficult' in record['objects']:
    flags = np.asarray(record['objects']['is_difficult'], np.float32).reshape(-1)[: spec.max_boxes]
    difficult[: len(flags), 0] = flags  # the same first max_boxes objects as object_rows keeps
  return np.concatenate([rows, difficult], axis=-1)


DETECTION = Codec(
  read=_detection_rows,
  column=lambda spec: tf.TensorSpec([spec.max_boxes, 6], tf.float32),
  decode=lambda objects, valid, spec: objects,
  train=_detection_train,
  eval_labels=lambda objects, spec, size: objects,
  keys=lambda objects: {
    'boxes': objects[:, :4],
    'classes': tf.cast(objects[:, 4], tf.int32),
    'difficult': objects[:, 5] > 0.5,
  },
  eval_resize='resize',
  fixed_augment='is not augmented (a crop or flip would have to move its boxes)',
)


CODECS: dict[str, Codec] = {
  'classification': CLASSIFICATION,
  'segmentation': SEGMENTATION,
  'detection': DETECTION,
}


def codec_of(spec: DatasetSpec) -> Codec:
  """The codec of the dataset's task (spec.task)."""
  if spec.task not in CODECS:
    raise ValueError(
      f"dataset '{spec.tfds_name}' has task {spec.task!r}; the data pipeline knows "
      f'{", ".join(CODECS)} (add a Codec to codecs.CODECS)'
    )
  return CODECS[spec.task]


# ---------------------------------------------------------------------------------------------
# Augmentation settings, checked against the task


def augment_options(spec: DatasetSpec, augment: Any = None) -> augment_lib.AugmentOptions:
  """`augment` ({'crop', 'flip', 'color_shift'}: a config.augment section, a dict, or None)
  resolved against the dataset's default: a field that is None takes the default.

  Raises UserError for an unknown option, a value of the wrong kind, or an option set for a
  dataset whose augmentation is its own (segmentation's spec.train_augment 'scale_crop';
  detection, not augmented).
  """
  fields = augment_lib.AUGMENT_FIELDS
  if augment is None:
    augment = {}
  elif hasattr(augment, 'to_dict'):  # an ml_collections.ConfigDict
    augment = augment.to_dict()
  elif not isinstance(augment, dict):
    raise UserError(
      f'augment options {augment!r}: give a section of {", ".join(fields)} (None: the '
      "dataset's default)"
    )
  unknown = sorted(set(augment) - set(fields))
  if unknown:
    raise UserError(
      f'config.augment has no option {unknown[0]!r}; its options: {", ".join(fields)}'
    )
  chosen = {k: v for k, v in augment.items() if v is not None}
  fixed = codec_of(spec).fixed_augment
  if fixed and chosen:
    raise UserError(
      f'config.augment.{next(iter(chosen))} is set, but the {spec.task} dataset '
      f"'{spec.tfds_name}' {fixed}; leave config.augment unset (None)"
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
  default = augment_lib.default_augment(spec)
  return augment_lib.AugmentOptions(
    crop=bool(chosen.get('crop', default.crop)),
    flip=bool(chosen.get('flip', default.flip)),
    color_shift=float(shift),
  )


def check_randaugment(
  randaugment: Sequence[float] | None, spec: DatasetSpec, name: str
) -> tuple[int, float] | None:
  """(N, M) checked, or None when off (None or empty); `name` the dataset's, for messages."""
  if randaugment is None or (isinstance(randaugment, (tuple, list)) and not randaugment):
    return None
  if codec_of(spec).fixed_augment:
    raise UserError(
      f"RandAugment is not supported for {spec.task} dataset '{name}' (its geometric "
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
