"""The notes' pictures: edge filters, transposed-conv checkerboards, a trained net's feature maps.

  python -m experiments.claims_pictures                         # all three figures
  python -m experiments.claims_pictures --only edges checkerboard   # no training
  python -m experiments.claims_pictures --only feature_maps --workdir=runs/pictures_lenet5

Writes into experiments/results/ (or --out_dir):
- claims_edge_filters.png / .md: the notes' (004) vertical and horizontal 3x3 edge detectors,
  Sobel and Scharr (each with its transpose, which finds horizontal edges), run as one
  `layers.Conv` layer of six fixed filters ('VALID', no bias: cross-correlation, as the notes
  compute it) on the lecture's 6x6 image (10s on the left half, 0s on the right), on a 300x300
  crop of scikit-learn's sample photo 'china.jpg' (grey; --photo=flower.jpg) and on a digit. The
  .md holds the exact 4x4 outputs on the 6x6 image: vertical [0, 30, 30, 0] in every row, Sobel
  40s, Scharr 160s, the horizontal filters 0. The notes' text (OCR'd) has the filters, the 6x6 ->
  4x4 shapes and "left bright, right dark", not the pixel values: those are the lecture's.
- claims_checkerboard.png / .md / .json: Odena et al. 2016, "Deconvolution and Checkerboard
  Artifacts", with the project's `upsample.Upsample` (the FCN / U-Net decoders' layer), one
  channel, 16x16 -> 32x32: a stride-2 transposed conv of kernel 2, 3 or 4 against nearest /
  bilinear resize + 3x3 conv. With all-ones weights on an all-ones input the output counts the
  kernel taps landing on each pixel: 4 / 2 / 2 / 1 in the four stride phases for kernel 3 (uneven
  overlap: spread 0.484), 4 everywhere for kernel 4 and 1 for kernel 2 (spread 0). With random
  weights (the layer's default init, 10 seeds) every transposed conv makes a checkerboard, kernel
  4 too (spread 0.96 +- 0.20: each phase sums other taps); resize + conv stays flat (0.000).
  Over a smooth input the share of energy at the period-2 frequencies is 0.57-0.66 for the
  random transposed convs, 2.2e-3 for nearest + conv (faint block edges where a random kernel
  differentiates the 2x2 blocks) and 6.5e-5 for bilinear + conv.
- claims_feature_maps.png: trains configs/lenet5.py for --steps (150; <= 0: the config's 330)
  with cnn_jax.train in a temporary workdir (or --workdir, kept and reused), then shows the first
  test 4, the learned conv1 filters and the outputs of the first two convolutions on it (flax's
  capture_intermediates: conv outputs, before the ReLU). 150 steps: 97.8% test accuracy.

Measured on a 2-core x86-64 CPU shared with another job (load average 6): the whole script
1 min 20 s, of which 41 s trains LeNet-5 (compile included); --only edges checkerboard about 20 s.
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnn_jax.core.errors import UserError
from cnn_jax.nn import layers, upsample
from experiments import common

PARTS = ('edges', 'checkerboard', 'feature_maps')
# scikit-learn's sample photos (shipped, no download) -> the 300x300 crop the figure shows (rows,
# columns): at the figure's scale the edges of the whole 427x640 photo are thinner than a pixel.
PHOTOS = {'china.jpg': (40, 60), 'flower.jpg': (60, 160)}
PHOTO_CROP = 300
DIGIT = 4  # the digit both the edge figure and the feature-map figure show

# ---------------------------------------------------------------------------------------------
# 1. Edge filters
# ---------------------------------------------------------------------------------------------

_VERTICAL = np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]], np.float32)  # notes 004
_SOBEL = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)  # centre row weighs 2
_SCHARR = np.array([[3, 0, -3], [10, 0, -10], [3, 0, -3]], np.float32)  # notes 004

# name -> (3, 3) filter. Positive output: brighter on the left (vertical edges) or on top
# (horizontal edges), as the notes put it. The notes' horizontal filter is the vertical one's
# transpose; the transposes of Sobel and Scharr find horizontal edges the same way.
EDGE_FILTERS: dict[str, np.ndarray] = {
  'vertical': _VERTICAL,
  'horizontal': _VERTICAL.T,
  'sobel_vertical': _SOBEL,
  'sobel_horizontal': _SOBEL.T,
  'scharr_vertical': _SCHARR,
  'scharr_horizontal': _SCHARR.T,
}


def notes_image() -> np.ndarray:
  """The 6x6 grey image of the vertical-edge example: 10 on the left half, 0 on the right."""
  image = np.zeros((6, 6), np.float32)
  image[:, :3] = 10
  return image


def apply_filters(
  image: np.ndarray, filters: dict[str, np.ndarray] = EDGE_FILTERS
) -> dict[str, np.ndarray]:
  """Each (f, f) filter run over the (H, W) image: name -> (H - f + 1, W - f + 1).

  One `layers.Conv` with the filters as its output channels (a layer of len(filters) filters,
  as in the notes' "two filters -> 4 x 4 x 2"), 'VALID' padding, no bias: each output is the sum
  of the filter times the window under it (cross-correlation, no flip).
  """
  image = np.asarray(image, np.float32)
  if image.ndim != 2:
    raise UserError(f'apply_filters takes one (H, W) grey image, got shape {image.shape}')
  kernel = np.stack(list(filters.values()), axis=-1)[:, :, None, :]  # (f, f, 1, n)
  f = kernel.shape[0]
  if min(image.shape) < f:
    raise UserError(f'apply_filters: a {image.shape} image is smaller than the {f}x{f} filters')
  conv = layers.Conv(kernel.shape[-1], (f, f), padding='VALID', use_bias=False)
  y = conv.apply({'params': {'kernel': jnp.asarray(kernel)}}, jnp.asarray(image)[None, :, :, None])
  y = np.asarray(y[0])  # (H - f + 1, W - f + 1, n)
  return {name: y[..., i] for i, name in enumerate(filters)}


def grey_photo(name: str = 'china.jpg', crop: bool = True) -> np.ndarray:
  """scikit-learn's sample photo `name` as an (H, W) grey image in 0..255 (ITU-R 601 luma).

  `crop`: the PHOTO_CROP x PHOTO_CROP part the figure shows (the pagoda, the flower).
  """
  if name not in PHOTOS:
    raise UserError(f'--photo={name!r}: scikit-learn ships {tuple(PHOTOS)}; pick one of them')
  from sklearn.datasets import load_sample_image

  grey = load_sample_image(name).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  if crop:
    top, left = PHOTOS[name]
    grey = grey[top : top + PHOTO_CROP, left : left + PHOTO_CROP]
  return grey


def digit_image(digit: int = 4, size: int = 32) -> np.ndarray:
  """The first `digit` of scikit-learn's 8x8 digits, resized (bilinear) to size x size, 0..255."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  image = digits.images[np.flatnonzero(digits.target == digit)[0]] * (255 / 16)
  return np.asarray(jax.image.resize(jnp.asarray(image, jnp.float32), (size, size), 'bilinear'))


def edges_markdown(outputs: dict[str, np.ndarray]) -> str:
  lines = [
    "# Edge filters on the notes' 6x6 image (10 on the left half, 0 on the right)",
    '',
    'One `layers.Conv` layer of six fixed 3x3 filters, VALID padding, no bias '
    '(cross-correlation). Each 4x4 output, row by row:',
    '',
    '| filter | kernel rows | 4x4 output rows |',
    '|---|---|---|',
  ]
  for name, y in outputs.items():
    kernel = ' '.join(str(EDGE_FILTERS[name].astype(int).tolist()[i]) for i in range(3))
    rows = ' '.join(str(r) for r in np.rint(y).astype(int).tolist())
    lines.append(f'| {name} | {kernel} | {rows} |')
  return '\n'.join(lines)


def _show(ax, image, title, *, cmap='RdBu_r', symmetric=True, numbers=False, clip=100.0):
  """imshow with a colour bar; `symmetric`: limits +-(the `clip` percentile of |image|)."""
  image = np.asarray(image)
  if symmetric:
    lim = float(np.percentile(np.abs(image), clip)) or 1.0
    im = ax.imshow(image, cmap=cmap, vmin=-lim, vmax=lim)
  else:
    im = ax.imshow(image, cmap=cmap)
  if numbers:
    for (i, j), v in np.ndenumerate(image):
      r, g, b, _ = im.cmap(im.norm(v))
      dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # white text on dark cells
      ax.text(j, i, f'{v:g}', ha='center', va='center', fontsize=8, color='w' if dark else 'k')
  ax.set_title(title, fontsize=9)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
  return im


def edge_figure(out_dir: str, photo: str) -> dict[str, np.ndarray]:
  """Writes claims_edge_filters.png and .md; returns the outputs on the notes' 6x6 image."""
  inputs = [
    ("notes' 6x6 image", notes_image(), True, 100.0),
    (f'{photo} (grey, a {{h}}x{{w}} crop)', grey_photo(photo), False, 99.0),
    (f'digit {DIGIT} (sklearn, 32x32)', digit_image(DIGIT), False, 100.0),
  ]
  n = len(EDGE_FILTERS)
  plt = common.pyplot()
  fig, axes = plt.subplots(1 + len(inputs), n + 1, figsize=(3.0 * (n + 1), 2.7 * (1 + len(inputs))))
  axes[0, 0].axis('off')
  axes[0, 0].text(
    0.0,
    0.5,
    'Filters (3x3, cross-correlation).\nOutput > 0: brighter on the\nleft (vertical edges) or on\n'
    'top (horizontal edges).',
    fontsize=9,
    va='center',
  )
  for j, (name, kernel) in enumerate(EDGE_FILTERS.items()):
    _show(axes[0, j + 1], kernel, name, numbers=True)
  notes_outputs = {}
  for i, (label, image, numbers, clip) in enumerate(inputs, start=1):
    outputs = apply_filters(image)
    if i == 1:
      notes_outputs = outputs
    title = label.format(h=image.shape[0], w=image.shape[1])
    _show(axes[i, 0], image, title, cmap='gray', symmetric=False, numbers=numbers)
    for j, (name, y) in enumerate(outputs.items()):
      _show(axes[i, j + 1], y, f'{name} ({y.shape[0]}x{y.shape[1]})', numbers=numbers, clip=clip)
  fig.suptitle(
    'Edge detection as convolution (notes 004): vertical / horizontal, Sobel, Scharr; '
    'photo colour scales clipped at the 99th percentile of |output|',
    fontsize=12,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  common.save_figure(fig, os.path.join(out_dir, 'claims_edge_filters.png'), dpi=80)
  table = edges_markdown(notes_outputs)
  common.write_text(os.path.join(out_dir, 'claims_edge_filters.md'), table + '\n')
  print(table, flush=True)
  return notes_outputs


# ---------------------------------------------------------------------------------------------
# 2. Transposed-conv checkerboard vs resize + conv
# ---------------------------------------------------------------------------------------------

# (label, Upsample.mode, kernel size): every one grows the map 2x.
UPSAMPLERS = (
  ('transposed conv 2x2 / 2', 'transpose', 2),
  ('transposed conv 3x3 / 2', 'transpose', 3),
  ('transposed conv 4x4 / 2', 'transpose', 4),
  ('nearest resize + 3x3 conv', 'nearest', 3),
  ('bilinear resize + 3x3 conv', 'bilinear', 3),
)
BORDER = 2  # pixels left out on each side: zero padding and the crop make the border differ


def upsample_2x(x: np.ndarray, mode: str, kernel_size: int, seed: int | None) -> np.ndarray:
  """(H, W) -> (2H, 2W) through a one-channel `upsample.Upsample`.

  seed None: all-ones weights; else the layer's default init (kaiming normal) drawn from seed.
  """
  init = nn.initializers.ones if seed is None else layers.conv_kernel_init
  layer = upsample.Upsample(
    features=1, factor=2, mode=mode, kernel_size=kernel_size, bilinear_init=False, kernel_init=init
  )
  x = jnp.asarray(x, jnp.float32)[None, :, :, None]
  variables = layer.init(jax.random.key(0 if seed is None else seed), x)
  return np.asarray(layer.apply(variables, x)[0, :, :, 0])


def smooth_image(size: int = 16) -> np.ndarray:
  """A smooth test input: a Gaussian bump on a gentle ramp, values about 0.1..1.1."""
  t = np.linspace(-1, 1, size, dtype=np.float32)
  yy, xx = np.meshgrid(t, t, indexing='ij')
  return 0.1 + 0.2 * (xx + 1) / 2 + 0.8 * np.exp(-(xx**2 + yy**2) / 0.3)


def interior(y: np.ndarray, border: int = BORDER) -> np.ndarray:
  return y[border:-border, border:-border]


def relative_spread(y: np.ndarray) -> float:
  """std / mean|y| over the interior: 0 for a flat output."""
  y = interior(y).astype(np.float64)
  return float(y.std() / max(np.abs(y).mean(), 1e-12))


def period2_energy(y: np.ndarray) -> float:
  """Share of the interior's energy at the period-2 frequencies (pi, 0), (0, pi), (pi, pi).

  A checkerboard of period 2 lives there; for an even-sized window these are exact DFT bins,
  so by Parseval the share is sum |Y(f)|^2 over those bins / sum |Y|^2 over all bins.
  """
  y = interior(y).astype(np.float64)
  y = y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2]
  spectrum = np.abs(np.fft.fft2(y)) ** 2
  h, w = y.shape
  return float(
    (spectrum[h // 2, 0] + spectrum[0, w // 2] + spectrum[h // 2, w // 2]) / spectrum.sum()
  )


def phase_means(y: np.ndarray) -> np.ndarray:
  """(2, 2) means of the interior's four stride-2 phases y[a::2, b::2] (aligned to the output)."""
  a = BORDER % 2
  y = y[BORDER:-BORDER, BORDER:-BORDER]
  return np.array([[y[(p + a) % 2 :: 2, (q + a) % 2 :: 2].mean() for q in (0, 1)] for p in (0, 1)])


def checkerboard_stats(seeds: Sequence[int] = range(10), size: int = 16) -> list[dict]:
  """One row per upsampler: the statistics on a constant and a smooth input, ones and random."""
  const, smooth = np.ones((size, size), np.float32), smooth_image(size)
  rows = []
  for label, mode, k in UPSAMPLERS:
    ones_const = upsample_2x(const, mode, k, None)
    spread = [relative_spread(upsample_2x(const, mode, k, s)) for s in seeds]
    energy = [period2_energy(upsample_2x(smooth, mode, k, s)) for s in seeds]
    rows.append(
      {
        'label': label,
        'mode': mode,
        'kernel_size': k,
        'ones_phase_means': np.round(phase_means(ones_const), 4).tolist(),
        'ones_spread': relative_spread(ones_const),
        'ones_period2_energy': period2_energy(upsample_2x(smooth, mode, k, None)),
        'random_spread_mean': float(np.mean(spread)),
        'random_spread_std': float(np.std(spread)),
        'random_period2_energy_mean': float(np.mean(energy)),
        'random_period2_energy_std': float(np.std(energy)),
        'seeds': len(seeds),
      }
    )
  return rows


def checkerboard_markdown(rows: list[dict], size: int) -> str:
  n = rows[0]['seeds']
  lines = [
    f'# Checkerboard artifacts: {size}x{size} -> {2 * size}x{2 * size}, one channel '
    f'(`upsample.Upsample`; {common.SHARED_MACHINE})',
    '',
    f'Spread: std / mean|y| of the output over an all-ones input (0 = flat). Period-2 energy: '
    f'share of the output energy at the frequencies (pi, 0), (0, pi), (pi, pi) over a smooth '
    f'input (a Gaussian bump on a ramp). Interior only ({BORDER} border pixels left out). '
    f"Random: the layer's default init, mean +- std over {n} seeds.",
    '',
    '| upsampler | 2x2 phase means, ones | spread, ones | spread, random '
    '| period-2 energy, ones | period-2 energy, random |',
    '|---|---|---:|---:|---:|---:|',
  ]
  for r in rows:
    pm = r['ones_phase_means']
    lines.append(
      f'| {r["label"]} | {pm[0][0]:g} {pm[0][1]:g} / {pm[1][0]:g} {pm[1][1]:g} '
      f'| {r["ones_spread"]:.3f} | {r["random_spread_mean"]:.3f} +- {r["random_spread_std"]:.3f} '
      f'| {r["ones_period2_energy"]:.2e} '
      f'| {r["random_period2_energy_mean"]:.2e} +- {r["random_period2_energy_std"]:.2e} |'
    )
  return '\n'.join(lines)


def checkerboard_figure(out_dir: str, seeds: Sequence[int] = range(10)) -> list[dict]:
  """Writes claims_checkerboard.png, .md and .json; returns the table's rows."""
  size, small = 16, 6
  rows = checkerboard_stats(seeds, size)
  const_small, smooth = np.ones((small, small), np.float32), smooth_image(size)
  plt = common.pyplot()
  fig, axes = plt.subplots(1 + len(UPSAMPLERS), 3, figsize=(11, 3.1 * (1 + len(UPSAMPLERS))))
  _show(axes[0, 0], const_small, f'input: all ones, {small}x{small}', cmap='gray', symmetric=False)
  _show(axes[0, 1], const_small, f'input: all ones, {small}x{small}', cmap='gray', symmetric=False)
  _show(axes[0, 2], smooth, f'input: smooth, {size}x{size}', cmap='gray', symmetric=False)
  for i, (label, mode, k) in enumerate(UPSAMPLERS, start=1):
    taps = upsample_2x(const_small, mode, k, None)
    _show(
      axes[i, 0],
      taps,
      f'{label}\nall-ones weights (= taps per pixel)',
      cmap='viridis',
      symmetric=False,
      numbers=True,
    )
    y = upsample_2x(const_small, mode, k, 0)
    _show(axes[i, 1], y, f'{label}\nrandom weights (seed 0)\nspread {relative_spread(y):.3f}')
    y = upsample_2x(smooth, mode, k, 0)
    _show(
      axes[i, 2],
      y,
      f'{label}\nrandom weights (seed 0)\nperiod-2 energy {period2_energy(y):.1e}',
      symmetric=False,
      cmap='viridis',
    )
  fig.suptitle(
    'Transposed conv vs resize + conv (Odena et al. 2016): uneven overlap makes a checkerboard',
    fontsize=12,
  )
  fig.tight_layout(rect=(0, 0, 1, 0.97))
  common.save_figure(fig, os.path.join(out_dir, 'claims_checkerboard.png'), dpi=80)
  table = checkerboard_markdown(rows, size)
  machine = common.machine(note=common.SHARED_MACHINE)
  common.write_json(
    os.path.join(out_dir, 'claims_checkerboard.json'),
    {'machine': machine, 'size': size, 'border': BORDER, 'rows': rows},
  )
  common.write_text(os.path.join(out_dir, 'claims_checkerboard.md'), table + '\n')
  print(table, flush=True)
  return rows


# ---------------------------------------------------------------------------------------------
# 3. Feature maps of a trained net
# ---------------------------------------------------------------------------------------------


def conv_feature_maps(
  model: nn.Module, variables: dict, image: np.ndarray, count: int = 2
) -> list[tuple[str, np.ndarray]]:
  """The outputs of `model`'s first `count` convolutions on one (H, W, C) image, in call order.

  Captured with flax's `capture_intermediates` (every `nn.Conv`, the project's `layers.Conv`
  included): (module path, (H', W', features)) pairs, the conv outputs before any norm or ReLU.
  """
  if count < 1:
    raise UserError(f'conv_feature_maps: count={count}; ask for at least one layer')
  is_conv = lambda module, method: isinstance(module, nn.Conv) and method == '__call__'
  _, state = model.apply(
    variables,
    jnp.asarray(image, jnp.float32)[None],
    capture_intermediates=is_conv,
    mutable=['intermediates'],
  )
  flat = traverse_util.flatten_dict(state['intermediates'], sep='/')  # call order is kept
  maps = [(path.removesuffix('/__call__'), np.asarray(out[0][0])) for path, out in flat.items()]
  return maps[:count]


def conv_kernel(params: dict, path: str) -> np.ndarray:
  """The (f, f, C_in, C_out) kernel of the conv at module `path` ('conv1', 'stage1_block1/conv1').

  Looked up by path: the order of a params dict is not the call order (jit sorts dict keys).
  """
  flat = traverse_util.flatten_dict(params, sep='/')
  if np.ndim(flat.get(f'{path}/kernel')) != 4:  # missing, or a Dense layer's (C_in, C_out)
    raise UserError(f'no convolution kernel at {path!r} in the params')
  return np.asarray(flat[f'{path}/kernel'])


def load_config(path: str):
  """`get_config()` of a classification config file (relative paths from the repository root)."""
  from cnn_jax import models

  full = path if os.path.isabs(path) else os.path.join(common.ROOT, path)
  if not os.path.isfile(full):
    raise UserError(f'--config={path}: no such file; pass a file of configs/ (configs/lenet5.py)')
  spec = importlib.util.spec_from_file_location('_pictures_config', full)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if 'model' not in config or models.is_segmentation(config.model.name):
    raise UserError(
      f'--config={path}: the feature-map figure needs a classification config '
      '(configs/lenet5.py, configs/resnet.py)'
    )
  return config


def train_for_pictures(config_path: str, steps: int, workdir: str) -> tuple:
  """Trains (or reuses) a run of `config_path` in `workdir`; returns (exp, variables, summary)."""
  from cnn_jax import train

  config = load_config(config_path)
  if steps > 0:
    config.num_train_steps = steps
  summary = train.train_and_evaluate(config, workdir)
  if summary is None:
    raise UserError(f'training in {workdir} was stopped (SIGTERM); rerun to resume it')
  exp = train.build(config, workdir)
  variables = train.restore_variables(exp)
  variables = {k: v for k, v in variables.items() if v}  # LeNet-5 has no batch_stats
  return exp, variables, summary


def _grid(subfig, maps: np.ndarray, title: str, *, cols: int = 8, cmap: str = 'RdBu_r') -> None:
  """(H, W, n) maps as a grid of n panels, one symmetric colour scale and one colour bar."""
  n = maps.shape[-1]
  rows = -(-n // cols)
  axes = np.atleast_2d(subfig.subplots(rows, cols)).reshape(rows, cols)
  lim = float(np.abs(maps).max()) or 1.0
  im = None
  for idx, ax in enumerate(axes.flat):
    ax.set_xticks([])
    ax.set_yticks([])
    if idx >= n:
      ax.axis('off')
      continue
    im = ax.imshow(maps[..., idx], cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_title(f'#{idx}', fontsize=8)
  subfig.colorbar(im, ax=axes, fraction=0.02, pad=0.01)
  subfig.suptitle(title, fontsize=10)


def feature_map_figure(
  out_dir: str, config_path: str, steps: int, workdir: str | None, max_maps: int = 16
) -> dict:
  """Trains (or reuses --workdir), writes claims_feature_maps.png; returns a small summary."""
  from cnn_jax import data as data_lib

  keep = workdir is not None
  workdir = workdir or tempfile.mkdtemp(prefix='claims_pictures_')
  t0 = time.perf_counter()
  try:
    exp, variables, summary = train_for_pictures(config_path, steps, workdir)
  finally:
    if not keep:
      shutil.rmtree(workdir, ignore_errors=True)
  train_seconds = time.perf_counter() - t0
  cfg = exp.config
  batch = next(
    data_lib.eval_iterator(
      exp.data,
      global_batch=cfg.eval_batch_size,
      image_size=cfg.image_size,
      channels=cfg.image_channels,
    )
  )
  # The first test example of DIGIT (the edge figure's digit), else the first test example.
  hits = np.flatnonzero((batch['label'] == DIGIT) & (batch['mask'] > 0))
  first = int(hits[0]) if len(hits) else 0
  image, label = batch['image'][first], int(batch['label'][first])
  logits = exp.model.apply(variables, jnp.asarray(image)[None])
  predicted = int(jnp.argmax(logits[0]))
  maps = conv_feature_maps(exp.model, variables, image, count=2)
  kernel_path = maps[0][0]  # the first conv called
  kernel = conv_kernel(variables['params'], kernel_path)
  # Grey digits are tiled to RGB, so the three input channels see the same pixels: a filter acts
  # on them as the sum of its three slices.
  filters = kernel.sum(axis=2)  # (f, f, C_out)

  sections = [('filters', filters), *maps]
  heights = [1 + (min(m.shape[-1], max_maps) - 1) // 8 for _, m in sections]
  plt = common.pyplot()
  fig = plt.figure(figsize=(14, 2.0 + 1.9 * sum(heights)))
  top, *subs = fig.subfigures(1 + len(sections), 1, height_ratios=[1.3, *heights])
  ax_image, ax_text = top.subplots(1, 2, width_ratios=[1, 3])
  ax_image.imshow(image[..., 0], cmap='gray')
  ax_image.set_xticks([])
  ax_image.set_yticks([])
  ax_image.set_title(f'input: test digit {label} ({cfg.image_size}x{cfg.image_size})', fontsize=10)
  ax_text.axis('off')
  ax_text.text(
    0.0,
    0.5,
    f'{cfg.model.name} trained {summary["steps"]} steps on the offline digits\n'
    f'({config_path}, cnn_jax.train): test accuracy {100 * summary["test_accuracy"]:.1f}%.\n'
    f'Prediction for this digit: {predicted}.\n\n'
    'Below: the learned first-layer filters, then what the first two\n'
    'convolutions output on this digit (red > 0 survives the ReLU).',
    fontsize=11,
    va='center',
  )
  f = filters.shape[0]
  _grid(
    subs[0],
    filters[..., :max_maps],
    f'learned {kernel_path} filters ({f}x{f}, summed over the 3 tiled input channels)',
  )
  for sub, (path, m) in zip(subs[1:], maps, strict=True):
    shown = min(m.shape[-1], max_maps)
    _grid(
      sub,
      m[..., :shown],
      f'{path} output on this digit ({m.shape[0]}x{m.shape[1]}, '
      f'{shown} of {m.shape[-1]} maps; before the ReLU)',
    )
  common.save_figure(fig, os.path.join(out_dir, 'claims_feature_maps.png'), dpi=70)
  result = {
    'config': config_path,
    'steps': summary['steps'],
    'test_accuracy': summary['test_accuracy'],
    'train_seconds': round(train_seconds, 1),
    'label': label,
    'predicted': predicted,
    'maps': {path: list(m.shape) for path, m in maps},
  }
  print(json.dumps(result), flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', nargs='*', choices=PARTS, help='figures to make (default: all)')
  parser.add_argument('--out_dir', default=common.RESULTS)
  parser.add_argument(
    '--photo', default='china.jpg', help=f'edge figure photo, one of {tuple(PHOTOS)}'
  )
  parser.add_argument('--config', default='configs/lenet5.py', help='feature maps: config file')
  parser.add_argument(
    '--steps', type=int, default=150, help="feature maps: training steps (<= 0: the config's)"
  )
  parser.add_argument('--workdir', default=None, help='feature maps: keep (and reuse) the run here')
  args = parser.parse_args(argv)
  parts = args.only or PARTS
  # Bad input fails here, before anything slow.
  if 'edges' in parts and args.photo not in PHOTOS:
    raise UserError(f'--photo={args.photo!r}: scikit-learn ships {tuple(PHOTOS)}; pick one of them')
  if 'feature_maps' in parts:
    load_config(args.config)
  os.makedirs(args.out_dir, exist_ok=True)
  results = {}
  if 'edges' in parts:
    results['edges'] = edge_figure(args.out_dir, args.photo)
  if 'checkerboard' in parts:
    results['checkerboard'] = checkerboard_figure(args.out_dir)
  if 'feature_maps' in parts:
    results['feature_maps'] = feature_map_figure(
      args.out_dir, args.config, args.steps, args.workdir
    )
  return results


if __name__ == '__main__':
  try:
    main()
  except UserError as e:
    sys.exit(f'error: {e}')
