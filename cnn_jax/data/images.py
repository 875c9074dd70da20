"""The one path every example's image takes: decode, resize (or augment), normalise, channels.

What differs between tasks (the labels beside the image, how training augments the two, whether
the image is normalised before or after its resize) is the task's codec (codecs.py); the steps
themselves are here, once.
"""

from typing import Any

from cnn_jax.core.quiet_tf import tf
from cnn_jax.data.specs import DatasetSpec

_EVAL_CROP_FRACTION = 0.875  # 224 of 256, the usual ImageNet center crop


def decode(encoded: tf.Tensor, stored_channels: int) -> tf.Tensor:
  """An encoded image as float32 in [0, 1], with the dataset's stored channels."""
  image = tf.io.decode_image(encoded, channels=stored_channels, expand_animations=False)
  return tf.image.convert_image_dtype(image, tf.float32)


def eval_resize(image: tf.Tensor, *, kind: str, size: int) -> tf.Tensor:
  """The (size, size) eval image: 'center_crop' (the shorter side to size / 0.875, then the
  central size x size) or 'resize' (squashed)."""
  if kind == 'center_crop':
    # Resize the shorter side to size / 0.875, then take the central size x size.
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / _EVAL_CROP_FRACTION) / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32), antialias=True)
    image = tf.image.resize_with_crop_or_pad(image, size, size)
  else:
    image = tf.image.resize(image, (size, size), antialias=True)
  return image


def normalise(image: tf.Tensor, spec: DatasetSpec) -> tf.Tensor:
  """Each stored channel less the dataset's mean, over its std (of images in [0, 1])."""
  return (image - spec.mean) / spec.std


def to_channels(image: tf.Tensor, stored: int, channels: int, size: int) -> tf.Tensor:
  """The (size, size, stored) image with `channels` channels: grey tiled to RGB (one net serves
  every dataset), RGB averaged to grey."""
  if stored == 1 and channels == 3:
    image = tf.tile(image, [1, 1, 3])
  elif stored == 3 and channels == 1:
    image = tf.reduce_mean(image, axis=-1, keepdims=True)
  return tf.ensure_shape(image, (size, size, channels))


def preprocess(
  encoded: tf.Tensor,
  labels: tf.Tensor | None,
  valid: tf.Tensor | None,
  seed: tf.Tensor | None,
  *,
  codec: Any,
  spec: DatasetSpec,
  stored_channels: int,
  image_size: int,
  channels: int,
  train: bool,
  augment: Any = None,
  randaugment: tuple[int, float] | None = None,
) -> tuple[tf.Tensor, tf.Tensor | None]:
  """One example, decoded and returned augmented (train) or resized (eval), normalised.

  Args:
    encoded: the encoded image.
    labels: the example's labels as the host hands them to tf.data (`codec.column`); None: the
      image alone (eval only; `valid` and `seed` are then unused).
    valid: 1.0 for a real example, 0.0 for eval padding (whose label map is ignored).
    seed: the example's stateless seed (eval draws nothing from it).
    codec: the task's codecs.Codec.
    augment: classification training's augment.AugmentOptions (None: the dataset's default).
    randaugment: (N, M): classification training images also get RandAugment's N ops at
      magnitude M (of 30) after `augment`, in [0, 1], with spec.fill and spec.max_translate.

  Returns:
    The normalised image (S, S, C) float32 and the labels as `codec` decodes them (None when
    `labels` is None).
  """
  image = decode(encoded, stored_channels)
  if codec.normalise_first:
    image = normalise(image, spec)
  if labels is not None:
    labels = codec.decode(labels, valid, spec)
  if train:
    image, labels = codec.train(
      image,
      labels,
      seed,
      spec=spec,
      size=image_size,
      stored_channels=stored_channels,
      augment=augment,
      randaugment=randaugment,
    )
  else:
    image = eval_resize(image, kind=codec.eval_resize or spec.eval_resize, size=image_size)
    if labels is not None:
      labels = codec.eval_labels(labels, spec, image_size)
  if not codec.normalise_first:
    image = normalise(image, spec)
  return to_channels(image, stored_channels, channels, image_size), labels
