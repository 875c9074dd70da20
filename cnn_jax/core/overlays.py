"""Pictures of results: segmentation (image, true labels, predicted labels, one row per example)
and detection (each image with its true boxes and the detections)."""

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


def _draw_box(ax, box, hw, color: str, style: str, text: str, *, below: bool) -> None:
  """One box (fractions of the image) on an imshow'n image of size hw, labelled above/below."""
  from matplotlib.patches import Rectangle

  h, w = hw
  y0, x0, y1, x1 = np.asarray(box) * (h, w, h, w)
  ax.add_patch(
    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=color, ls=style, lw=1.2)
  )
  ax.text(
    x0, y1 + 1 if below else y0 - 1, text, color=color, fontsize=7, va='top' if below else 'bottom'
  )


def save_boxes(
  path: str,
  images: np.ndarray,
  boxes: np.ndarray,
  classes: np.ndarray,
  detections: list,
  *,
  mean: tuple[float, ...],
  std: tuple[float, ...],
  min_score: float = 0.3,
  columns: int = 4,
) -> None:
  """Writes a PNG grid of images with true boxes (green, dashed, class below) and detections
  scoring above `min_score` (red, 'class score' above).

  images (N, H, W, C) normalised as the pipeline makes them; boxes (N, M, 4) (y_min, x_min,
  y_max, x_max) as fractions of the image and classes (N, M), -1 unused; detections: per image
  (boxes as fractions, scores, classes), e.g. cnn_jax.ops.detection_metrics.Detections.
  """
  n = len(images)
  rows = -(-n // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  for i in range(n):
    ax = axes.ravel()[i]
    h, w = images.shape[1:3]
    image = np.clip(images[i] * np.asarray(std) + np.asarray(mean), 0, 1)
    ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap='gray', vmin=0, vmax=1)

    for box, c in zip(boxes[i], classes[i], strict=True):
      if c >= 0:
        _draw_box(ax, box, (h, w), 'lime', '--', str(int(c)), below=True)
    det_boxes, det_scores, det_classes = detections[i]
    for box, score, c in zip(det_boxes, det_scores, det_classes, strict=True):
      if score > min_score:
        _draw_box(ax, box, (h, w), 'red', '-', f'{int(c)} {score:.2f}', below=False)
  fig.suptitle('truth (green, dashed) and detections (red, class score)', fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
