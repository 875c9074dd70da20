"""RandAugment (Cubuk, Zoph, Shlens & Le 2019) as TensorFlow ops for the tf.data pipeline.

N operations drawn uniformly, with replacement, from the paper's 14, each at one global
magnitude M. Images are float32 (H, W, C) in [0, 1] with C = 1 or 3; every random choice (which
op, which sign) comes from a stateless seed of shape (2,), so the output is a pure function of
(image, seed) and the ops run inside `tf.data.Dataset.map` (graph mode) as in eager mode.

Magnitude scale: M in [0, 30], the paper's scale (its body searches M = 0..30; Noisy Student
uses M = 27). Each op's strength is linear in M / 30 and reaches the reference ranges of
AutoAugment (Cubuk et al. 2019, table 1 of its appendix) at M = 30; every op grows stronger with
M, and M = 0 leaves every op but AutoContrast and Equalize (which have no magnitude) the identity
(Color, Contrast and Sharpness to float rounding, 1e-7).
`s` is a random sign, +1 or -1 with equal odds:

  Identity      -
  AutoContrast  -                       each channel stretched to [0, 1]
  Equalize      -                       each channel's 256-bin histogram equalised (PIL's
                                        rule: output on 8-bit levels; unchanged when fewer
                                        than 255 pixels lie below the brightest level)
  Rotate        s * 30 * M/30 degrees   about the image centre
  Solarize      threshold 1 - M/30      pixels above it inverted: M = 0 none, M = 30 all but black
  Color         factor 1 + s * 0.9 * M/30   (0.1 .. 1.9); identity on grey images
  Posterize     8 - round(4 * M/30) bits    (8 .. 4 bits kept of 8)
  Contrast      factor 1 + s * 0.9 * M/30
  Brightness    factor 1 + s * 0.9 * M/30
  Sharpness     factor 1 + s * 0.9 * M/30
  ShearX/Y      s * 0.3 * M/30          about the image centre
  TranslateX/Y  s * max_translate * M/30 of the image side, rounded to whole pixels

The enhance factors follow PIL's ImageEnhance: blend(degenerate, image, factor) with the
degenerate image black (Brightness), grey (Color), the mean grey level (Contrast) or the image
smoothed by PIL's 3x3 SMOOTH kernel (Sharpness). `max_translate` defaults to 150/331 of the side,
AutoAugment's ImageNet range (150 px at 331 px); its CIFAR range is 10 px at 32 px (0.3125).

Geometric ops resample bilinearly (ImageProjectiveTransformV3) and fill pixels brought in from
outside the image with `fill`: 0.5 (mid grey, the reference implementations' 128) by default;
pass 0.0 for digits on a black background.
"""

import math
import numbers
from collections.abc import Callable

from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.core.quiet_tf import tf

MAX_MAGNITUDE = 30.0  # the paper's scale: M in [0, 30]
MAX_TRANSLATE = 150 / 331  # AutoAugment's ImageNet range, as a fraction of the side
_MAX_ROTATE = 30.0  # degrees
_MAX_SHEAR = 0.3
_MAX_ENHANCE = 0.9  # enhance factors 1 - 0.9 .. 1 + 0.9
_MIN_POSTERIZE_BITS = 4

OpFn = Callable[[tf.Tensor, float, tf.Tensor, float, float], tf.Tensor]


def _sign(seed: tf.Tensor) -> tf.Tensor:
  """-1.0 or +1.0 with equal odds."""
  return tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """PIL's ImageEnhance: factor 0 gives `degenerate`, 1 the image, > 1 extrapolates."""
  return tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 1.0)


def _grey(image: tf.Tensor) -> tf.Tensor:
  """(H, W, 1) luma; the image itself when it has one channel."""
  return image if image.shape[-1] == 1 else tf.image.rgb_to_grayscale(image)


def _enhance_factor(magnitude: float, seed: tf.Tensor) -> tf.Tensor:
  return 1.0 + _sign(seed) * (_MAX_ENHANCE * magnitude / MAX_MAGNITUDE)


def _transform(image: tf.Tensor, matrix: tf.Tensor, fill: float) -> tf.Tensor:
  """Resamples `image` at input = matrix @ (x, y, 1) for each output pixel (x, y), bilinearly."""
  transform = tf.concat([tf.reshape(tf.cast(matrix, tf.float32), [6]), tf.zeros([2])], 0)
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform[None],
    output_shape=tf.shape(image)[:2],
    fill_value=tf.constant(fill, tf.float32),
    interpolation='BILINEAR',
    fill_mode='CONSTANT',
  )
  return out[0]


def _about_centre(image: tf.Tensor, linear: tf.Tensor, fill: float) -> tf.Tensor:
  """Applies the 2x2 inverse map `linear` about the centre of the image (pixel centres are
  integer coordinates, so the centre is ((W - 1) / 2, (H - 1) / 2))."""
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  centre = tf.stack([hw[1] - 1.0, hw[0] - 1.0]) / 2.0  # (x, y)
  offset = centre - tf.linalg.matvec(linear, centre)
  return _transform(image, tf.concat([linear, offset[:, None]], axis=1), fill)


def _identity(image, magnitude, seed, fill, max_translate):
  del magnitude, seed, fill, max_translate
  return image


def _auto_contrast(image, magnitude, seed, fill, max_translate):
  del magnitude, seed, fill, max_translate
  lo = tf.reduce_min(image, axis=[0, 1], keepdims=True)
  hi = tf.reduce_max(image, axis=[0, 1], keepdims=True)
  stretched = (image - lo) / tf.maximum(hi - lo, 1e-12)
  return tf.where(hi > lo, stretched, image)  # a flat channel stays as it is


def _equalize_channel(x: tf.Tensor) -> tf.Tensor:
  """PIL's ImageOps.equalize on one (H, W) channel, on its 8-bit levels."""
  q = tf.cast(tf.round(x * 255.0), tf.int32)
  hist = tf.math.bincount(q, minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(q))  # count of the highest level present
  step = (tf.reduce_sum(hist) - last) // 255
  safe_step = tf.maximum(step, 1)
  before = tf.cumsum(hist, exclusive=True)
  lut = tf.minimum((safe_step // 2 + before) // safe_step, 255)
  equalized = tf.cast(tf.gather(lut, q), tf.float32) / 255.0
  return tf.where(step > 0, equalized, x)  # too few levels to spread: unchanged, as in PIL


def _equalize(image, magnitude, seed, fill, max_translate):
  del magnitude, seed, fill, max_translate
  return tf.stack([_equalize_channel(image[..., c]) for c in range(image.shape[-1])], axis=-1)


def _rotate(image, magnitude, seed, fill, max_translate):
  del max_translate
  angle = _sign(seed) * math.radians(_MAX_ROTATE * magnitude / MAX_MAGNITUDE)
  cos, sin = tf.cos(angle), tf.sin(angle)
  return _about_centre(image, tf.stack([[cos, -sin], [sin, cos]]), fill)


def _solarize(image, magnitude, seed, fill, max_translate):
  del seed, fill, max_translate
  threshold = 1.0 - magnitude / MAX_MAGNITUDE
  return tf.where(image > threshold, 1.0 - image, image)


def _color(image, magnitude, seed, fill, max_translate):
  del fill, max_translate
  if image.shape[-1] == 1:
    return image  # a grey image has no colour to change
  return _blend(_grey(image), image, _enhance_factor(magnitude, seed))


def _posterize(image, magnitude, seed, fill, max_translate):
  del seed, fill, max_translate
  bits = 8 - round((8 - _MIN_POSTERIZE_BITS) * magnitude / MAX_MAGNITUDE)
  if bits >= 8:
    return image  # keeping all 8 bits: leave float images unquantised
  q = tf.cast(tf.round(image * 255.0), tf.int32)
  q = tf.bitwise.bitwise_and(q, 256 - 2 ** (8 - bits))  # drop the low 8 - bits bits
  return tf.cast(q, tf.float32) / 255.0


def _contrast(image, magnitude, seed, fill, max_translate):
  del fill, max_translate
  mean = tf.reduce_mean(_grey(image))
  return _blend(tf.fill(tf.shape(image), mean), image, _enhance_factor(magnitude, seed))


def _brightness(image, magnitude, seed, fill, max_translate):
  del fill, max_translate
  return _blend(tf.zeros_like(image), image, _enhance_factor(magnitude, seed))


def _sharpness(image, magnitude, seed, fill, max_translate):
  del fill, max_translate
  # PIL's SMOOTH kernel; border pixels stay as they are (PIL's filter has no full neighbourhood).
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  channels_first = tf.transpose(image, [2, 0, 1])[..., None]  # (C, H, W, 1)
  smooth = tf.nn.conv2d(channels_first, kernel[:, :, None, None], 1, 'VALID')
  smooth = tf.transpose(smooth[..., 0], [1, 2, 0])  # (H - 2, W - 2, C)
  inner = tf.ones_like(smooth, tf.bool)
  inner = tf.pad(inner, [[1, 1], [1, 1], [0, 0]], constant_values=False)
  degenerate = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
  return _blend(degenerate, image, _enhance_factor(magnitude, seed))


def _shear(axis: int) -> OpFn:
  def op(image, magnitude, seed, fill, max_translate):
    del max_translate
    v = _sign(seed) * (_MAX_SHEAR * magnitude / MAX_MAGNITUDE)
    # x_in = x + v * y (ShearX) or y_in = y + v * x (ShearY), about the centre.
    linear = [[1.0, v], [0.0, 1.0]] if axis == 0 else [[1.0, 0.0], [v, 1.0]]
    return _about_centre(image, tf.convert_to_tensor(linear, tf.float32), fill)

  return op


def _translate(axis: int) -> OpFn:
  def op(image, magnitude, seed, fill, max_translate):
    side = tf.cast(tf.shape(image)[1 - axis], tf.float32)  # width for X, height for Y
    # Whole pixels, so that the content moves without being blurred by resampling.
    pixels = tf.round(side * max_translate * magnitude / MAX_MAGNITUDE) * _sign(seed)
    dx, dy = (pixels, 0.0) if axis == 0 else (0.0, pixels)
    matrix = [[1.0, 0.0, -dx], [0.0, 1.0, -dy]]  # the content moves by (+dx, +dy)
    return _transform(image, tf.convert_to_tensor(matrix, tf.float32), fill)

  return op


_OPS: dict[str, OpFn] = {
  'Identity': _identity,
  'AutoContrast': _auto_contrast,
  'Equalize': _equalize,
  'Rotate': _rotate,
  'Solarize': _solarize,
  'Color': _color,
  'Posterize': _posterize,
  'Contrast': _contrast,
  'Brightness': _brightness,
  'Sharpness': _sharpness,
  'ShearX': _shear(0),
  'ShearY': _shear(1),
  'TranslateX': _translate(0),
  'TranslateY': _translate(1),
}
OPS: tuple[str, ...] = tuple(_OPS)  # the paper's 14 operations, in its order

# Ops that draw a random sign: the same seed repeats the output, another may change it.
SIGNED_OPS: frozenset[str] = frozenset(
  ('Rotate', 'Color', 'Contrast', 'Brightness', 'Sharpness')
  + ('ShearX', 'ShearY', 'TranslateX', 'TranslateY')
)


def _check(image: tf.Tensor, magnitude: float, fill: float, max_translate: float) -> None:
  if isinstance(magnitude, bool) or not isinstance(magnitude, numbers.Real):
    raise UserError(f'RandAugment magnitude {magnitude!r}: give a number in [0, 30]')
  if not 0 <= magnitude <= MAX_MAGNITUDE:
    raise UserError(
      f"RandAugment magnitude {magnitude}: outside the paper's scale [0, 30]"
      ' (an AutoAugment-style M on [0, 10] is M * 3 here)'
    )
  if not 0.0 <= fill <= 1.0:
    raise UserError(f'RandAugment fill {fill}: give a value in [0, 1] (0 for black, 0.5 grey)')
  if not 0.0 <= max_translate <= 1.0:
    raise UserError(f'RandAugment max_translate {max_translate}: give a fraction of the side')
  if image.dtype != tf.float32 or image.shape.rank != 3 or image.shape[-1] not in (1, 3):
    raise UserError(
      f'RandAugment needs a float32 (H, W, 1 or 3) image in [0, 1], got {image.dtype.name} '
      f'{image.shape}: convert with tf.image.convert_image_dtype first'
    )


# Plain TF ops with Python-level choices: nothing for AutoGraph to convert (it only slows
# tracing inside Dataset.map).
@tf.autograph.experimental.do_not_convert
def apply_op(
  name: str,
  image: tf.Tensor,
  magnitude: float,
  seed: tf.Tensor,
  *,
  fill: float = 0.5,
  max_translate: float = MAX_TRANSLATE,
) -> tf.Tensor:
  """Applies the RandAugment operation `name` (one of OPS) at `magnitude` in [0, 30].

  Args:
    name: one of OPS.
    image: float32 (H, W, C), C = 1 or 3, values in [0, 1].
    magnitude: M on the paper's scale [0, 30] (see the module docstring for each op's range).
    seed: stateless seed, int32 or int64 of shape (2,); draws the sign of signed ops.
    fill: value of pixels that geometric ops bring in from outside the image.
    max_translate: largest translation, as a fraction of the image side (reached at M = 30).

  Returns:
    The transformed image: same shape, float32, values in [0, 1].
  """
  if name not in _OPS:
    near = close_matches(name, OPS)
    hint = f' (did you mean {near}?)' if near else ''
    raise UserError(f'unknown RandAugment op {name!r}{hint}: choose from {", ".join(OPS)}')
  image = tf.convert_to_tensor(image)
  _check(image, magnitude, fill, max_translate)
  out = _OPS[name](image, float(magnitude), seed, float(fill), float(max_translate))
  return tf.ensure_shape(tf.clip_by_value(out, 0.0, 1.0), image.shape)


@tf.autograph.experimental.do_not_convert
def randaugment(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  num_layers: int,
  magnitude: float,
  fill: float = 0.5,
  max_translate: float = MAX_TRANSLATE,
) -> tf.Tensor:
  """RandAugment (Cubuk et al. 2019): `num_layers` ops drawn uniformly from OPS, each at M.

  Args:
    image: float32 (H, W, C), C = 1 or 3, values in [0, 1].
    seed: stateless seed, int32 or int64 of shape (2,): the same seed gives the same output.
    num_layers: N, how many ops in sequence (drawn with replacement); 0 returns the image.
    magnitude: M on the paper's scale [0, 30], shared by every op.
    fill: value of pixels that geometric ops bring in (0.5 grey; 0.0 for digits on black).
    max_translate: largest translation, as a fraction of the image side (reached at M = 30).

  Returns:
    The augmented image: same shape, float32, values in [0, 1].
  """
  if isinstance(num_layers, bool) or not isinstance(num_layers, numbers.Integral) or num_layers < 0:
    raise UserError(f'RandAugment num_layers {num_layers!r}: give a whole number >= 0 (N)')
  image = tf.convert_to_tensor(image)
  _check(image, magnitude, fill, max_translate)
  if num_layers == 0:
    return image
  magnitude, fill, max_translate = float(magnitude), float(fill), float(max_translate)
  layer_seeds = tf.random.experimental.stateless_split(seed, int(num_layers))  # (N, 2)

  def layer(i: tf.Tensor, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seeds[i], 2))
    index = tf.random.stateless_uniform([], choice_seed, 0, len(OPS), dtype=tf.int32)
    branches = [
      lambda fn=fn: tf.ensure_shape(fn(image, magnitude, op_seed, fill, max_translate), image.shape)
      for fn in _OPS.values()
    ]
    return i + 1, tf.clip_by_value(tf.switch_case(index, branches), 0.0, 1.0)

  # A while loop, not a Python one: the 14 branches are traced once, whatever N.
  _, image = tf.while_loop(lambda i, _: i < num_layers, layer, (tf.constant(0), image))
  return image
