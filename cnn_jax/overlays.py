"""Pictures of segmentation results: image, true labels, predicted labels, one row per example."""

import os

import matplotlib

matplotlib.use('Agg')  # no screen on the machines this runs on
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402


def label_colors(num_classes: int) -> np.ndarray:
  """(num_classes + 1, 3) RGB in [0, 1]: class 0 (background) black, the ignore label white."""
  cmap = plt.get_cmap('tab20', 20)
  colors = [(0.0, 0.0, 0.0)] + [cmap(i % 20)[:3] for i in range(num_classes - 1)]
  return np.array([*colors, (1.0, 1.0, 1.0)])


def save(
  path: str,
  images: np.ndarray,
  labels: np.ndarray,
  predictions: np.ndarray,
  *,
  num_classes: int,
  ignore_label: int,
  mean: tuple[float, ...],
  std: tuple[float, ...],
) -> None:
  """Writes a PNG grid: per example the image (normalisation undone), truth and prediction.

  images (N, H, W, C) normalised as the pipeline makes them; labels and predictions (N, h, w)
  (h, w <= H, W for a valid-padding U-Net: the image is center-cropped to match).
  """
  n = len(images)
  colors = ListedColormap(label_colors(num_classes))
  fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
  for i in range(n):
    h, w = labels[i].shape
    top, left = (images.shape[1] - h) // 2, (images.shape[2] - w) // 2
    image = images[i, top : top + h, left : left + w] * np.asarray(std) + np.asarray(mean)
    image = np.clip(image, 0, 1)
    truth = np.where(labels[i] == ignore_label, num_classes, labels[i])
    shown = [image if image.shape[-1] == 3 else image[..., 0], truth, predictions[i]]
    for j, (ax, picture) in enumerate(zip(axes[i], shown, strict=True)):
      if j == 0:  # the image: grey for one channel, on its 0..1 range (not auto-stretched)
        ax.imshow(picture, cmap='gray' if picture.ndim == 2 else None, vmin=0, vmax=1)
      else:
        ax.imshow(picture, cmap=colors, vmin=-0.5, vmax=num_classes + 0.5, interpolation='nearest')
      ax.set_axis_off()
      if i == 0:
        ax.set_title(('image', 'truth', 'prediction')[j])
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
