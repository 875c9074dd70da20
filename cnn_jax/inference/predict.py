"""Predictions of a trained run on a user's image files: top-k classes, or segmentation masks.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20_digits --mode=predict \
      --inputs=photos/,more/*.png --top_k=3
  python main.py --config=configs/unet.py --workdir=runs/unet/checkpoints/300 --mode=predict \
      --inputs=scenes/ --output=masks/

--workdir is the trained run's folder (its latest checkpoint) or one of its step folders
(<workdir>/checkpoints/<step>); --config is the config it was trained with (compared with the
workdir's config.json as for resuming: a model-defining difference is an error). --inputs lists
image files, globs and folders (searched recursively for .png, .jpg, .jpeg, .bmp, .gif, .webp).

Each image goes through the eval preprocessing of the run's dataset: the function that
data.eval_iterator maps over the eval split, without the labels (images.eval_preprocess, i.e.
data.eval_preprocess_fn: decoded with the dataset's stored channels, the eval resize, normalised,
tiled or averaged to config.image_channels). A file that
holds an eval example's encoded bytes therefore gets exactly the input, and the logits, that eval
computes for it. All images are preprocessed before the checkpoint is read (an unreadable one is
an error before anything compiles) and held in memory: N x S x S x C float32, 0.6 MB an image at
224 px, so a folder of thousands is fine and a whole dataset is --mode=eval's work.

Classifiers: per image the top-k classes with their softmax probabilities (class names from the
dataset where it has them). Segmentation nets (argmax of the eval logits, after the dense CRF when
config.segmentation.crf is on, as eval scores them): <name>_mask.png, the class of each pixel as
8-bit grey at the net's output size (config.image_size, or the center crop a valid-padding U-Net
covers), and <name>_overlay.png, the image with every non-background class coloured as in the
training run's overlays.png, upscaled (nearest) to at least 256 pixels a side. Both kinds write
predictions.json to --output (default <workdir>/predictions). Detection runs list the
boxes scoring >= SHOWN_SCORE after per-class NMS (as eval's Detection.detect) and draw them in
detections.png; embedding runs are refused (`task_kind`).
"""

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cnn_jax import tasks, train
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.data import synthetic
from cnn_jax.inference.images import IMAGE_EXTENSIONS, eval_preprocess, find_images, load_images

PyTree = Any
_OVERLAY_MIN_SIDE = 256  # small masks (64 px scenes) are upscaled to be looked at
_OVERLAY_ALPHA = 0.5


# ---------------------------------------------------------------------------------------------
# The trained run


@dataclasses.dataclass
class Restored:
  """A trained run read back: its Experiment, {'params', 'batch_stats'} and the step."""

  exp: train.Experiment
  variables: dict[str, PyTree]
  step: int


def resolve_checkpoint(path: str | None, mode: str = 'predict') -> tuple[str, int | None]:
  """(workdir, step) for --workdir: a run's folder (step None: its latest checkpoint) or a step
  folder <workdir>/checkpoints/<step>. Raises UserError when there is no checkpoint there."""
  if not path:
    raise UserError(
      f"--mode={mode} needs --workdir: a trained run's folder, or one of its step folders "
      '(<workdir>/checkpoints/<step>)'
    )
  full = os.path.abspath(os.path.expanduser(path)).rstrip('/')
  name, parent = os.path.basename(full), os.path.dirname(full)
  if name.isdigit() and os.path.basename(parent) == 'checkpoints':
    if not os.path.isdir(full):
      steps = (
        sorted(int(d) for d in os.listdir(parent) if d.isdigit()) if os.path.isdir(parent) else []
      )
      have = f'its steps: {", ".join(map(str, steps))}' if steps else 'it has none'
      raise UserError(f'no checkpoint {full} ({have}); give a step that was saved')
    return os.path.dirname(parent), int(name)
  if not os.path.isdir(full):
    raise UserError(f'--workdir={path} does not exist; give the folder the run was trained in')
  if Checkpointer.find_latest(full) is None:
    raise UserError(
      f'no checkpoint in {os.path.join(full, "checkpoints")}; train first (--mode=train) or '
      'give a step folder (<workdir>/checkpoints/<step>)'
    )
  return full, None


def build(config: ml_collections.ConfigDict, path: str | None, mode: str = 'predict'):
  """(Experiment, step or None) of the run at `path` (`resolve_checkpoint`); nothing restored."""
  workdir, step = resolve_checkpoint(path, mode)
  return train.build(config, workdir), step


def restore(exp: train.Experiment, step: int | None = None) -> Restored:
  """The variables of `step` (default: the latest) in exp.workdir, once exp.config has been
  compared with the config the run was trained with (train.restore_checkpoint)."""
  ckpt = Checkpointer(os.path.join(exp.workdir, 'checkpoints'), keep=exp.config.keep_checkpoints)
  try:
    step = ckpt.latest_step() if step is None else step
    state = train.restore_checkpoint(exp, ckpt, step)
  finally:
    ckpt.close()
  return Restored(exp, {'params': state.params, 'batch_stats': state.batch_stats}, step)


def forward_fn(exp: train.Experiment) -> Callable[[PyTree, jax.Array], jax.Array]:
  """(variables, images) -> float32 logits of the model in eval mode, as eval_step computes
  them (not jitted; export lowers the same function)."""

  def forward(variables, images):
    logits = exp.model.apply(variables, images, train=False)
    return jnp.asarray(logits, jnp.float32)

  return forward


def _batched(fn: Callable, variables: PyTree, images: np.ndarray, batch: int) -> np.ndarray:
  """fn(variables, images) in chunks of `batch` (the last padded: one compiled shape)."""
  outputs = []
  for start in range(0, len(images), batch):
    chunk = images[start : start + batch]
    n = len(chunk)
    if n < batch:
      chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
    outputs.append(np.asarray(fn(variables, chunk))[:n])
  return np.concatenate(outputs)


def class_names(exp: train.Experiment) -> list[str]:
  """The name of each of the run's classes: the dataset's label names where tfds has them (after
  config.data_classes' relabelling), else the class indices as strings (synthetic data: no
  TensorFlow imported)."""
  data, config = exp.data, exp.config
  if synthetic.is_synthetic(data.name):
    return [str(c) for c in range(exp.num_classes)]
  from cnn_jax.core.quiet_tf import tfds

  names = None
  if data.spec.task == 'classification':
    if data.name.startswith('folder:'):
      builder = tfds.ImageFolder(data.name[len('folder:') :])
    else:
      builder = tfds.builder(data.spec.tfds_name, data_dir=config.data_dir or None)
    names = list(builder.info.features['label'].names)
    kept = tuple(config.get('data_classes', ()))
    if kept:
      names = [names[c] for c in kept]
  if names is None or len(names) != exp.num_classes:
    names = [str(c) for c in range(exp.num_classes)]
  return names


# ---------------------------------------------------------------------------------------------
# Predictors, one per task


def _predict_classes(
  restored: Restored, paths: list[str], images: np.ndarray, output: str, top_k: int
) -> list[dict[str, Any]]:
  exp = restored.exp
  forward = forward_fn(exp)
  probs_fn = jax.jit(lambda v, x: jax.nn.softmax(forward(v, x), -1))
  batch = min(exp.config.eval_batch_size, len(images))
  probabilities = _batched(probs_fn, restored.variables, images, batch)
  names = class_names(exp)
  k = min(top_k, exp.num_classes)
  rows = []
  for path, p in zip(paths, probabilities, strict=True):
    order = np.argsort(-p, kind='stable')[:k]
    top = [{'class': int(c), 'name': names[c], 'probability': float(p[c])} for c in order]
    rows.append({'file': path, 'top_k': top})
  return rows


def _unique_stems(paths: list[str]) -> list[str]:
  """File names without extension, made unique with _2, _3 ... (two folders' 'a.png')."""
  seen: dict[str, int] = {}
  stems = []
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    seen[stem] = seen.get(stem, 0) + 1
    stems.append(stem if seen[stem] == 1 else f'{stem}_{seen[stem]}')
  return stems


def _overlay(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
  """(h, w, 3) uint8: the image with each non-background pixel blended with its class colour."""
  from cnn_jax.core import overlays

  rgb = np.broadcast_to(image, (*image.shape[:2], 3)) if image.shape[-1] == 1 else image[..., :3]
  colors = overlays.label_colors(num_classes)[:num_classes]
  blend = np.where((mask > 0)[..., None], _OVERLAY_ALPHA, 0.0)
  out = rgb * (1 - blend) + colors[mask] * blend
  scale = max(1, -(-_OVERLAY_MIN_SIDE // max(mask.shape)))
  out = out.repeat(scale, 0).repeat(scale, 1)
  return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def _predict_masks(
  restored: Restored, paths: list[str], images: np.ndarray, output: str, top_k: int
) -> list[dict[str, Any]]:
  from PIL import Image

  from cnn_jax.ops import segmentation

  del top_k
  exp = restored.exp
  forward, task = forward_fn(exp), exp.task
  classes_fn = jax.jit(lambda v, x: jnp.argmax(task.refine(forward(v, x), x), -1))
  batch = min(exp.config.eval_batch_size, len(images))
  masks = _batched(classes_fn, restored.variables, images, batch)
  spec = exp.data.spec
  os.makedirs(output, exist_ok=True)
  rows = []
  for path, stem, image, mask in zip(paths, _unique_stems(paths), images, masks, strict=True):
    if image.shape[:2] != mask.shape:  # a valid-padding U-Net: the center its output covers
      image = np.asarray(segmentation.center_crop(image[None], mask.shape))[0]
    shown = np.clip(image * np.asarray(spec.std) + np.asarray(spec.mean), 0, 1)
    mask_path = os.path.join(output, f'{stem}_mask.png')
    overlay_path = os.path.join(output, f'{stem}_overlay.png')
    dtype = np.uint8 if exp.num_classes <= 256 else np.uint16
    Image.fromarray(mask.astype(dtype)).save(mask_path)
    Image.fromarray(_overlay(shown, mask, exp.num_classes)).save(overlay_path)
    counts = np.bincount(mask.ravel(), minlength=exp.num_classes)
    fractions = {str(c): float(n / mask.size) for c, n in enumerate(counts) if n}
    rows.append(
      {'file': path, 'mask': mask_path, 'overlay': overlay_path, 'class_fractions': fractions}
    )
  return rows


# Detections scoring at least this are listed and drawn (NMS keeps every one above
# config.detection.score_threshold, for mAP; most of those are noise to a reader).
SHOWN_SCORE = 0.3


def _predict_boxes(
  restored: Restored, paths: list[str], images: np.ndarray, output: str, top_k: int
) -> list[dict[str, Any]]:
  """Detections after per-class NMS (the eval path's Detection.detect), boxes in pixels of
  each original image (y_min, x_min, y_max, x_max), and detections.png with them drawn."""
  from PIL import Image

  from cnn_jax.core import overlays

  del top_k
  exp = restored.exp
  batch = min(exp.config.eval_batch_size, len(images))
  outputs = _batched(jax.jit(forward_fn(exp)), restored.variables, images, batch)
  found = exp.task.detect(outputs)
  names = class_names(exp)
  rows = []
  for path, d in zip(paths, found, strict=True):
    with Image.open(path) as im:
      width, height = im.size
    shown = d.scores >= SHOWN_SCORE
    rows.append(
      {
        'file': path,
        'detections': [
          {
            'class': int(c),
            'name': names[int(c)],
            'score': float(score),
            'box': [round(float(v), 1) for v in box * (height, width, height, width)],
          }
          for box, score, c in zip(d.boxes[shown], d.scores[shown], d.classes[shown], strict=True)
        ],
      }
    )
  picture = os.path.join(output, 'detections.png')
  none = np.zeros((len(images), 0, 4), np.float32)
  overlays.save_boxes(
    picture,
    images,
    none,
    np.zeros((len(images), 0), np.int32),
    found,
    mean=exp.data.spec.mean,
    std=exp.data.spec.std,
    min_score=SHOWN_SCORE,
  )
  for row in rows:
    row['picture'] = picture
  return rows


def task_kind(task: tasks.Task, mode: str = 'predict') -> str:
  """'classification', 'segmentation' or 'detection': the kinds of run that predict serves (a
  key of PREDICTORS). Embedding (metric-learning) runs are a UserError: an embedding means
  something only against references (their one-shot evaluation is --mode=eval)."""
  if task.model_kind in ('classification', 'segmentation', 'detection'):
    return task.model_kind  # what the model returns: distilled and self-trained students too
  raise UserError(
    f'--mode={mode} handles classification, segmentation and detection runs, not a '
    f'{type(task).__name__} run yet; evaluate it with --mode=eval'
  )


# What predict does for each kind of run: (restored, paths, images, output, top_k) -> rows.
PREDICTORS: dict[str, Callable[..., list[dict[str, Any]]]] = {
  'classification': _predict_classes,
  'segmentation': _predict_masks,
  'detection': _predict_boxes,
}


# ---------------------------------------------------------------------------------------------
# The whole command


def predict(
  config: ml_collections.ConfigDict,
  path: str | None,
  inputs: Sequence[str],
  *,
  top_k: int = 5,
  output: str | None = None,
) -> dict[str, Any]:
  """Predicts for the images `inputs` names with the checkpoint at `path` (see the module doc).

  Returns {'checkpoint', 'step', 'task', 'output', 'predictions': one row per image}, also
  written to <output>/predictions.json. Classification rows: {'file', 'top_k': [{'class',
  'name', 'probability'}, ...]}; segmentation rows: {'file', 'mask', 'overlay',
  'class_fractions': {class: fraction of the mask's pixels}}.

  Every input problem (no or unreadable images, no checkpoint, another config) is a UserError
  raised before the checkpoint is read or anything compiles.
  """
  if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
    raise UserError(f'--top_k={top_k!r}: give a whole number >= 1')
  paths = find_images(inputs)
  exp, step = build(config, path)
  kind = task_kind(exp.task)
  images = load_images(paths, eval_preprocess(exp.data, config))
  restored = restore(exp, step)
  output = output or os.path.join(exp.workdir, 'predictions')
  rows = PREDICTORS[kind](restored, paths, images, output, top_k)
  result = {
    'checkpoint': os.path.join(exp.workdir, 'checkpoints', str(restored.step)),
    'step': restored.step,
    'task': kind,
    'output': os.path.abspath(output),
    'predictions': rows,
  }
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, 'predictions.json'), 'w') as f:
    json.dump(result, f, indent=2)
  return result


def format_result(result: dict[str, Any]) -> str:
  """The lines --mode=predict prints: one per image."""
  lines = [f'checkpoint {result["checkpoint"]} (step {result["step"]})']
  for row in result['predictions']:
    if 'top_k' in row:
      top = '  '.join(f'{t["name"]} ({t["probability"]:.3f})' for t in row['top_k'])
      lines.append(f'{row["file"]}: {top}')
    elif 'detections' in row:
      boxes = '  '.join(
        f'{d["name"]} {d["score"]:.2f} [{", ".join(f"{v:g}" for v in d["box"])}]'
        for d in row['detections']
      )
      lines.append(f'{row["file"]}: {boxes or "nothing"}')
    else:
      shares = sorted(row['class_fractions'].items(), key=lambda kv: -kv[1])
      classes = ', '.join(f'{c} {share:.1%}' for c, share in shares)
      lines.append(f'{row["file"]}: {row["mask"]}, {row["overlay"]} (classes: {classes})')
  lines.append(f'written: {os.path.join(result["output"], "predictions.json")}')
  return '\n'.join(lines)


__all__ = [
  'IMAGE_EXTENSIONS',
  'PREDICTORS',
  'Restored',
  'build',
  'class_names',
  'eval_preprocess',
  'find_images',
  'format_result',
  'forward_fn',
  'load_images',
  'predict',
  'resolve_checkpoint',
  'restore',
  'task_kind',
]
