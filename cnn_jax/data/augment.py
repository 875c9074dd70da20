"""Training augmentation, with stateless ops: what an example gets is a function of its seed.

Classification training augments each image with the dataset's default (spec.train_augment: a
random crop, a mirror image unless it is a digit) or with `augment` options that switch the crop,
the left-right flip and a colour shift on and off one by one (codecs.augment_options); then it may
add RandAugment (Cubuk et al. 2019). The colour shift and RandAugment draw from seeds of their own,
folded from the example's, so batches without them are what they always were. Segmentation
augments the image and its label map together (`joint_augment`); detection is not augmented.
"""

import dataclasses

from cnn_jax.core.quiet_tf import tf
from cnn_jax.data import randaugment as randaugment_lib
from cnn_jax.data.images import eval_resize
from cnn_jax.data.specs import DatasetSpec

# Pad-and-crop as a fraction of the image side: 4 px at 32 px for CIFAR (He et al. 2016),
# 2 px at 32 px for digit shifts (a digit must stay whole in the frame).
_CROP_PAD = {'crop_flip': 1 / 8, 'shift': 1 / 16}
# Seeds of the streams besides the labelled one, folded into an example's (seed, position):
RANDAUGMENT_STREAM = 1  # RandAugment's choices for an example
PSEUDO_STREAM = 2  # the pseudo-labelled examples' order and augmentation (self-training)
COLOR_STREAM = 3  # an example's colour shift (augment.color_shift)


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


def augment(
  image: tf.Tensor, seed: tf.Tensor, *, spec: DatasetSpec, size: int, options: AugmentOptions
) -> tf.Tensor:
  """Random training augmentation of one float image in [0, 1]; `seed` is a stateless seed."""
  kind = spec.train_augment
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if not options.crop:
    image = eval_resize(image, kind=spec.eval_resize, size=size)
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
    color_seed = tf.random.experimental.stateless_fold_in(seed, COLOR_STREAM)
    s = options.color_shift
    offsets = tf.random.stateless_uniform(tf.shape(image)[-1:], color_seed, -s, s)  # (C,)
    image = tf.clip_by_value(image + offsets, 0.0, 1.0)
  return image


def randaugment(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  spec: DatasetSpec,
  size: int,
  stored_channels: int,
  randaugment: tuple[int, float],
) -> tf.Tensor:
  """RandAugment's N ops at magnitude M (of 30) on the augmented (size, size) image in [0, 1],
  with spec.fill and spec.max_translate; its choices from a stream folded from `seed`."""
  num_layers, magnitude = randaugment
  return randaugment_lib.randaugment(
    tf.ensure_shape(image, (size, size, stored_channels)),
    tf.random.experimental.stateless_fold_in(seed, RANDAUGMENT_STREAM),
    num_layers=num_layers,
    magnitude=magnitude,
    fill=spec.fill,
    max_translate=spec.max_translate,
  )


def joint_augment(
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
