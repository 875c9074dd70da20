"""`digits`: scikit-learn's 8x8 handwritten digits as a local tfds dataset (no download).

1,797 grayscale images of the digits 0-9 (UCI optdigits, as shipped inside scikit-learn), pixel
values 0..16 stored as uint8 0..255. A fixed, stratified 80/20 train/test split drawn with seed 0:
1,437 train and 360 test images; runs hold 10% of train out for validation (145 images,
cnn_jax/data/datasets.py: hold_out). The pipeline resizes them to the model's input size.
"""

import numpy as np

from cnn_jax.core.quiet_tf import tfds

_SPLIT_SEED = 0
_TEST_FRACTION = 0.2


def split_indices() -> dict[str, np.ndarray]:
  """Stratified, seeded train/test indices into `sklearn.datasets.load_digits()`."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  labels = load_digits().target
  train, test = train_test_split(
    np.arange(len(labels)),
    test_size=_TEST_FRACTION,
    stratify=labels,
    random_state=_SPLIT_SEED,
  )
  return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits, 8x8 grayscale, 10 classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Stratified 80/20 split, seed 0.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(8, 8, 1)),
          'label': tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://archive.ics.uci.edu/dataset/80',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: scikit-learn ships the data.
    return {name: self._generate_examples(idx) for name, idx in split_indices().items()}

  def _generate_examples(self, indices):
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 0..16 -> 0..255, rounded; the 17 grey levels stay distinct.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for i in indices:
      yield int(i), {'image': images[i][..., None], 'label': int(digits.target[i])}
