"""`digit_scenes`: an offline segmentation dataset of handwritten digits on a canvas (no download).

Each scene is a 64x64 grey canvas holding 1-3 of scikit-learn's 8x8 digits, each upscaled
(bilinear, from its 0..16 intensities) to a random square of 16-24 px and pasted at a random
place. The label map holds, per pixel, the digit's class + 1 where that digit's upscaled
intensity is above half of its own maximum, else 0 (background): 11 classes.

- Digit boxes never overlap (positions are redrawn until they do not), so every digit is whole
  and every labelled pixel belongs to exactly one digit: no occlusion to resolve.
- Train scenes use only digits of `digits`'s train split, test scenes only its test split
  (`digits.split_indices()`): a test digit was never seen, in any scene, during training.
- Background pixels (those no digit inks) get uniform noise 0..12 of 255, far below any digit's
  labelling threshold (about 128), so the net cannot key on exact zeros.
- 3,000 train and 500 test scenes, each a pure function of (split, scene index): rebuilding gives
  identical arrays.

Each example also carries its bookkeeping: the source digits' indices into
`sklearn.datasets.load_digits()` (`digit_ids`), their classes and boxes (-1 where unused).
"""

import functools

import numpy as np

from cnn_jax.core.quiet_tf import tfds
from cnn_jax.data import digits

SIZE = 64  # canvas side
MAX_DIGITS = 3
DIGIT_SIZES = (16, 24)  # inclusive range of the upscaled digit's side, px
NUM_SCENES = {'train': 3000, 'test': 500}
NOISE = 12  # background noise amplitude, of 255
_SEED = 0
_SPLIT_CODE = {'train': 0, 'test': 1}  # part of each scene's seed
_MAX_PLACEMENT_TRIES = 100


@functools.cache
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of 1-D bilinear resampling with half-pixel centres (TF's convention)."""
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  m = np.zeros((n_out, n_in))
  m[np.arange(n_out), lo] += 1 - frac
  m[np.arange(n_out), hi] += frac
  m.setflags(write=False)  # cached: shared by every call
  return m


def upscale_digit(image: np.ndarray, side: int) -> np.ndarray:
  """An 8x8 digit (0..16 floats) upscaled bilinearly to side x side, as uint8 0..255."""
  m = bilinear_matrix(image.shape[0], side)
  return np.round(m @ image @ m.T * (255.0 / 16.0)).astype(np.uint8)


def render_scene(
  rng: np.random.Generator,
  pool: np.ndarray,
  images: np.ndarray,
  labels: np.ndarray,
  noise: int = NOISE,
) -> dict[str, np.ndarray]:
  """One scene drawn with `rng` from the digits `pool` (indices into images/labels).

  Returns image (64, 64, 1) uint8, segmentation_mask (64, 64, 1) uint8 in 0..10, and per slot
  (MAX_DIGITS of them, -1 where unused): digit_ids, digit_labels, digit_boxes (top, left, side).
  """
  count = int(rng.integers(1, MAX_DIGITS + 1))
  ids = rng.choice(pool, size=count)
  sides = rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1, size=count)
  ink = np.zeros((SIZE, SIZE), np.uint8)
  mask = np.zeros((SIZE, SIZE), np.uint8)
  boxes = np.full((MAX_DIGITS, 3), -1, np.int32)
  placed = []
  for slot, (i, side) in enumerate(zip(ids, sides, strict=True)):
    for _ in range(_MAX_PLACEMENT_TRIES):
      top, left = rng.integers(0, SIZE - side + 1, size=2)
      if all(
        top + side <= t or t + s <= top or left + side <= lf or lf + s <= left
        for t, lf, s in placed
      ):
        break
    else:  # never seen with 3 digits of <= 24 px on 64 px, but keep the scene valid
      ids, count = ids[:slot], slot
      break
    placed.append((int(top), int(left), int(side)))
    boxes[slot] = (top, left, side)
    digit = upscale_digit(images[i], int(side))
    # Labelled where the digit is brighter than half its own maximum (strictly).
    on = digit.astype(np.int32) * 2 > int(digit.max())
    ink[top : top + side, left : left + side] = digit
    mask[top : top + side, left : left + side] = np.where(on, labels[i] + 1, 0)
  # Noise drawn for every pixel (so the draws do not depend on the ink), kept on background only.
  bg_noise = rng.integers(0, noise + 1, size=(SIZE, SIZE)).astype(np.uint8)
  image = np.where(ink > 0, ink, bg_noise).astype(np.uint8)

  def slots(values, fill=-1):
    out = np.full(MAX_DIGITS, fill, np.int32)
    out[: len(values)] = values
    return out

  return {
    'image': image[..., None],
    'segmentation_mask': mask[..., None],
    'digit_ids': slots(ids),
    'digit_labels': slots(labels[ids]),
    'digit_boxes': boxes,
  }


def scene_rng(split: str, index: int) -> np.random.Generator:
  """The generator of scene `index` of `split`: each scene depends on nothing else."""
  return np.random.default_rng([_SEED, _SPLIT_CODE[split], index])


def generate(split: str, num_scenes: int | None = None):
  """Yields (key, example) for the scenes of `split` ('train' or 'test'), in order."""
  from sklearn.datasets import load_digits

  source = load_digits()
  pool = digits.split_indices()[split]
  for index in range(NUM_SCENES[split] if num_scenes is None else num_scenes):
    scene = render_scene(scene_rng(split, index), pool, source.images, source.target)
    yield index, {'scene_id': index, **scene}


class DigitScenes(tfds.core.GeneratorBasedBuilder):
  """1-3 handwritten digits on a 64x64 canvas, per-pixel labels: background + 10 digit classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '3,000 train / 500 test scenes; digits of digits 1.0.0 splits.'}

  def _info(self) -> tfds.core.DatasetInfo:
    slot = tfds.features.Tensor(shape=(MAX_DIGITS,), dtype=np.int32)
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(SIZE, SIZE, 1)),
          'segmentation_mask': tfds.features.Image(shape=(SIZE, SIZE, 1)),
          'scene_id': tfds.features.Scalar(dtype=np.int32),
          'digit_ids': slot,
          'digit_labels': slot,
          'digit_boxes': tfds.features.Tensor(shape=(MAX_DIGITS, 3), dtype=np.int32),
        }
      ),
      supervised_keys=('image', 'segmentation_mask'),
      homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: composed from scikit-learn's digits.
    return {split: self._generate_examples(split) for split in NUM_SCENES}

  def _generate_examples(self, split):
    yield from generate(split)
