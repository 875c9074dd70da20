"""The neural style transfer recipe: train a backbone (or reuse one), then stylise an image.

  python main.py --config=configs/style_transfer.py --workdir=runs/style_transfer

The config holds two sections (configs/style_transfer.py): `backbone`, a whole trainer config of
any classification family (overridable as usual: --config.backbone.num_epochs=...), and `style`,
the images, layers, weights and optimiser of the stylisation. `run`:

1. checks the style options, the two images (a file, or 'sklearn:china.jpg' / 'sklearn:flower.jpg',
   the photos scikit-learn ships: offline) and the layers against the backbone, before anything
   slow;
2. trains the backbone in style.backbone_workdir ('' = <workdir>/backbone) with the ordinary
   trainer where style.train_backbone is set (a finished run is not retrained, an interrupted one
   resumes), or reads the checkpoint already there;
3. minimises J(G) = alpha J_content(C, G) + beta J_style(S, G) over G's pixels
   (cnn_jax/recipes/style_transfer.py: stylise) on the centre-cropped, resized images, in the
   backbone's
   input normalisation (the dataset's mean / std);
4. writes into the workdir stylised.png, content.png and style.png (the images as the network saw
   them), loss_curve.png, config.json and summary.json (J, J_content and J_style at the start and
   the end, the seconds it took, the backbone's test accuracy, the layers).
"""

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import train
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.core.logs import write_atomically
from cnn_jax.recipes import style_transfer

SAMPLE_PREFIX = 'sklearn:'
SAMPLE_IMAGES = ('china.jpg', 'flower.jpg')  # sklearn.datasets.load_sample_image's two photos


def backbone_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """config.style.backbone_workdir, or <workdir>/backbone."""
  return config.style.backbone_workdir or os.path.join(workdir, 'backbone')


def load_image(source: str, size: int, channels: int, what: str) -> np.ndarray:
  """(size, size, channels) float32 in [0, 1]: the centred square of the image, resized.

  `source`: a path to an image file PIL reads, or 'sklearn:<name>' for one of scikit-learn's
  bundled photos (SAMPLE_IMAGES). `what` names the option in errors ('content', 'style').
  """
  from PIL import Image, UnidentifiedImageError

  option = f'config.style.{what}_image={source!r}'
  if source.startswith(SAMPLE_PREFIX):
    name = source[len(SAMPLE_PREFIX) :]
    if name not in SAMPLE_IMAGES:
      raise UserError(
        f'{option}: scikit-learn ships no sample image {name!r}; use one of '
        f'{", ".join(SAMPLE_PREFIX + n for n in SAMPLE_IMAGES)} or a path to an image file'
      )
    from sklearn.datasets import load_sample_image

    image = Image.fromarray(load_sample_image(name))
  else:
    if not source or not os.path.isfile(source):
      raise UserError(
        f'{option}: no such file; give a path to an image (PNG, JPEG, ...) or one of '
        f'{", ".join(SAMPLE_PREFIX + n for n in SAMPLE_IMAGES)}'
      )
    try:
      with Image.open(source) as f:
        f.load()
        image = f.copy()
    except (UnidentifiedImageError, OSError) as e:
      raise UserError(f'{option} is not an image PIL can read ({e}); give a PNG or JPEG') from e
  image = image.convert('RGB' if channels == 3 else 'L')
  w, h = image.size
  side = min(w, h)
  left, top = (w - side) // 2, (h - side) // 2
  image = image.crop((left, top, left + side, top + side))
  image = image.resize((size, size), Image.Resampling.LANCZOS)
  pixels = np.asarray(image, np.float32) / 255.0
  return pixels.reshape(size, size, channels)


def _check_style(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Checks of the style section that need no data and no model; returns the style weights."""
  style = config.style
  channels = config.backbone.image_channels
  if channels not in (1, 3):
    raise UserError(
      f'config.backbone.image_channels={channels}; style transfer reads grey (1) or RGB (3) images'
    )
  if not isinstance(style.image_size, int) or style.image_size < 1:
    raise UserError(f'config.style.image_size={style.image_size!r}; expected a side in pixels')
  layers = tuple(style.style_layers)
  weights = tuple(style.style_weights)
  if weights and len(weights) != len(layers):
    raise UserError(
      f'config.style.style_weights has {len(weights)} values for {len(layers)} style_layers; '
      'give one per layer, or () for 1/L each'
    )
  bwork = backbone_workdir(config, workdir)
  if os.path.realpath(bwork) == os.path.realpath(workdir):
    raise UserError(
      f"config.style.backbone_workdir={bwork} is the style run's --workdir (both write "
      "summary.json); give the backbone a folder of its own (or '' for <workdir>/backbone)"
    )
  if not style.train_backbone and Checkpointer.find_latest(bwork) is None:
    raise UserError(
      f'no backbone checkpoint in {bwork}/checkpoints; train it there first, point '
      '--config.style.backbone_workdir at one, or set --config.style.train_backbone=True'
    )
  return style_transfer.check_arguments(
    style_layers=layers,
    style_weights=dict(zip(layers, map(float, weights), strict=True)) if weights else None,
    alpha=float(style.alpha),
    beta=float(style.beta),
    steps=style.steps,
    lr=float(style.lr),
    init=style.init,
    optimizer=style.optimizer,
    content_lam=None,
    style_normalisation=style.style_normalisation,
  )


def _check_layers(bconfig: ml_collections.ConfigDict, size: int, layers: tuple[str, ...]) -> None:
  """An unknown model or layer, or an image size the backbone cannot take, as one line; traced
  only (no compute, no data read, no folder made)."""
  # The conv layers' names and shapes do not depend on the classifier's width: 10 stands in for
  # the dataset's number of classes where the config leaves it to the data.
  num_classes = bconfig.model.num_classes if bconfig.model.num_classes > 0 else 10
  model = train.create_model(bconfig, num_classes)
  try:
    style_transfer.check_layers(model, (size, size, bconfig.image_channels), layers)
  except UserError:
    raise
  except Exception as e:  # shape errors surface as TypeError, ValueError, ...
    reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
    raise UserError(
      f"model '{bconfig.model.name}' cannot take {size}x{size} images ({reason}); set "
      '--config.style.image_size to a size it accepts'
    ) from e


def _backbone_accuracy(workdir: str) -> tuple[float | None, float | None]:
  """(test accuracy, training seconds) from the backbone's summary.json, if it has one."""
  try:
    with open(os.path.join(workdir, 'summary.json')) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None, None
  return summary.get('test_accuracy'), summary.get('wall_seconds')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """Trains the backbone if asked, stylises, writes the images and summary.json; returns it.

  None when stopped by SIGTERM while the backbone trains (rerun the command to resume).
  """
  run_start = time.time()
  missing = [k for k in ('backbone', 'style') if k not in config]
  if missing:
    raise UserError(f'config has no {" or ".join(missing)} section; see configs/style_transfer.py')
  style, bconfig = config.style, config.backbone
  weights = _check_style(config, workdir)
  layers = tuple(weights)
  all_layers = tuple(dict.fromkeys((style.content_layer, *layers)))
  size, channels = style.image_size, bconfig.image_channels
  content = load_image(style.content_image, size, channels, 'content')
  style_image = load_image(style.style_image, size, channels, 'style')
  _check_layers(bconfig, size, all_layers)
  bwork = backbone_workdir(config, workdir)
  exp = train.build(bconfig, bwork)  # the backbone's config, data and workdir
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'--workdir={workdir} cannot be created ({e.strerror}); pick another') from e

  if style.train_backbone:
    if train.train_and_evaluate(bconfig, bwork) is None:
      return None  # SIGTERM while training the backbone: a checkpoint is saved, rerun to resume
  accuracy, backbone_seconds = _backbone_accuracy(bwork)
  variables = train.restore_variables(exp)
  logging.info(
    'Stylising %s with %s on %s (%s), %d steps.',
    style.content_image,
    style.style_image,
    bconfig.model.name,
    bwork,
    style.steps,
  )
  start = time.time()
  image, losses = style_transfer.stylise(
    content,
    style_image,
    model=exp.model,
    variables=variables,
    content_layer=style.content_layer,
    style_layers=layers,
    style_weights=weights,
    alpha=float(style.alpha),
    beta=float(style.beta),
    steps=style.steps,
    lr=float(style.lr),
    init=style.init,
    seed=style.seed,
    mean=exp.data.spec.mean,
    std=exp.data.spec.std,
    optimizer=style.optimizer,
    style_normalisation=style.style_normalisation,
  )
  seconds = time.time() - start
  if not all(np.all(np.isfinite(v)) for v in losses.values()):
    raise UserError(
      f'J(G) became NaN or inf during stylisation (last values {losses["total"][-3:]}); '
      'lower config.style.lr'
    )
  first = {k: float(v[0]) for k, v in losses.items()}
  last = {k: float(v[-1]) for k, v in losses.items()}
  summary = {
    'J_start': first['total'],
    'J_end': last['total'],
    'J_content_start': first['content'],
    'J_content_end': last['content'],
    'J_style_start': first['style'],
    'J_style_end': last['style'],
    'alpha': float(style.alpha),
    'beta': float(style.beta),
    'steps': style.steps,
    'optimizer': style.optimizer,
    'lr': float(style.lr),
    'init': style.init,
    'style_normalisation': style.style_normalisation,
    'content_layer': style.content_layer,
    'style_layers': list(layers),
    'style_weights': weights,
    'content_image': style.content_image,
    'style_image': style.style_image,
    'image_size': size,
    'backbone': bconfig.model.name,
    'backbone_dataset': bconfig.dataset,
    'backbone_workdir': bwork,
    'backbone_test_accuracy': accuracy,
    'backbone_wall_seconds': backbone_seconds,
    'stylise_seconds': round(seconds, 1),  # compile included
    'wall_seconds': round(time.time() - run_start, 1),  # this run: training, if any, included
  }
  if jax.process_index() == 0:
    style_transfer.save_png(image, os.path.join(workdir, 'stylised.png'))
    style_transfer.save_png(content, os.path.join(workdir, 'content.png'))
    style_transfer.save_png(style_image, os.path.join(workdir, 'style.png'))
    style_transfer.save_loss_curve(
      losses, os.path.join(workdir, 'loss_curve.png'), alpha=summary['alpha'], beta=summary['beta']
    )
    write_atomically(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
    write_atomically(os.path.join(workdir, 'summary.json'), json.dumps(summary, indent=2))
  return summary
