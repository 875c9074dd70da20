"""overlays.png: the image column is the image itself (grey for one channel), labels in colour."""

import matplotlib.image
import numpy as np

from cnn_jax.core import overlays


def test_grey_image_column_is_grey_and_labels_are_coloured(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 1, (2, 16, 16, 1)).astype(np.float32)
  labels = np.zeros((2, 16, 16), np.int64)
  labels[:, 4:12, 4:12] = 3
  path = tmp_path / 'overlays.png'
  overlays.save(
    str(path),
    (images - 0.5) / 0.25,
    labels,
    labels,
    num_classes=5,
    ignore_label=255,
    mean=(0.5,),
    std=(0.25,),
  )
  picture = matplotlib.image.imread(path)[..., :3]  # (H, W, RGB) in [0, 1]
  third = picture.shape[1] // 3
  image_column, truth_column = picture[:, :third], picture[:, third : 2 * third]
  spread = image_column.max(-1) - image_column.min(-1)  # 0 for grey pixels
  assert spread.max() < 0.02
  assert image_column.std() > 0.05  # the noise image is there, not a blank panel
  assert (truth_column.max(-1) - truth_column.min(-1)).max() > 0.2  # class 3 is coloured
