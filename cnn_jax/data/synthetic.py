"""`synthetic` and `synthetic_segmentation`: random images and labels, nothing on disk and no
TensorFlow, for throughput runs and accelerator checks (as big_vision's and the Flax examples'
fake data).

  --config.dataset=synthetic                    10 classes, one label per image
  --config.dataset=synthetic:1000               any number of classes (ImageNet-sized heads)
  --config.dataset=synthetic_segmentation       one label per pixel, 10 classes (task
  --config.dataset=synthetic_segmentation:21    segmentation), or as many as given

Images take the run's config.image_size and config.image_channels: pixels uniform on
[-sqrt(3), sqrt(3)] (mean 0, variance 1, as if already normalised), float32. Labels are uniform
over the classes; a segmentation label map is constant on 8 x 8 pixel cells (regions, not
per-pixel noise). A batch is a pure function of (seed, step): its rows are drawn in blocks of
`BLOCK` rows, block j from the stream (seed, step, j), so each host draws only the blocks of its
own rows and resume is exact as with real data. The blocks are drawn in threads (NumPy releases
the GIL while it fills an array): a ResNet-50 batch of 256 x 224 x 224 x 3 took 61-79 ms
(after the first two; 12 batches, the machine shared with another job) on the 2-core AMD EPYC
development machine (lscpu), where one single-threaded standard-normal draw of it took 450 ms,
which would have capped a GPU run at about 570 images/s.

The train split counts 12,800 examples (100 steps an epoch at batch 128), the validation and test
splits 1,024 each, each drawn from a fixed stream of its own. No augmentation, class subsets or
corrupt-image scans (there is nothing to read).
"""

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.data.sources import Dataset
from cnn_jax.data.specs import DatasetSpec

NAME = 'synthetic'
SEGMENTATION = 'synthetic_segmentation'
TRAIN_SIZE = 12_800
EVAL_SIZE = 1_024
BLOCK = 32  # rows drawn from one stream
CELL = 8  # a segmentation label map is constant on CELL x CELL pixels
IGNORE_LABEL = 255  # padded eval rows of a segmentation batch
_HALF_WIDTH = math.sqrt(3.0)  # uniform on [-sqrt(3), sqrt(3)]: mean 0, variance 1
# The streams of the draws: training steps (0, seed, step, block); the eval splits their own.
_TRAIN_STREAM = 0
_EVAL_STREAMS = {'validation': 1, 'test': 2}
Batch = dict[str, np.ndarray]
_threads: ThreadPoolExecutor | None = None


class _Count:
  """A split of `n` examples that are drawn, not stored: its length is all the trainer reads."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    raise UserError('synthetic data has no stored records (class subsets, scans, predict)')


def is_synthetic(name: str) -> bool:
  base = name.partition(':')[0]
  return base in (NAME, SEGMENTATION)


def load(name: str) -> Dataset:
  """The `synthetic[:<classes>]` or `synthetic_segmentation[:<classes>]` dataset."""
  base, _, arg = name.partition(':')
  try:
    num_classes = int(arg) if arg else 10
  except ValueError:
    num_classes = 0
  if num_classes < 1 or (base == SEGMENTATION and num_classes >= IGNORE_LABEL):
    top = f' and < {IGNORE_LABEL}' if base == SEGMENTATION else ''
    raise UserError(
      f"dataset '{name}': give the number of classes as a whole number >= 1{top}, "
      f'e.g. {base}:{21 if base == SEGMENTATION else 1000}'
    )
  task = 'segmentation' if base == SEGMENTATION else 'classification'
  spec = DatasetSpec(
    base,
    'train',
    'test',
    (0.0,),
    (1.0,),
    'none',
    'resize',
    num_classes=num_classes,
    task=task,
    ignore_label=IGNORE_LABEL,
  )
  splits = _Count(TRAIN_SIZE), _Count(EVAL_SIZE), _Count(EVAL_SIZE)
  return Dataset(name, spec, *splits, num_classes, 0)


def _pool() -> ThreadPoolExecutor:
  global _threads
  if _threads is None:
    _threads = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix='synthetic')
  return _threads


def _draw_block(rng: np.random.Generator, image: np.ndarray, classes: int, segmentation: bool):
  """Fills `image` (n, S, S, C) in place; returns the labels (n,) or label maps (n, S, S)."""
  rng.random(out=image, dtype=np.float32)
  image *= np.float32(2 * _HALF_WIDTH)
  image -= np.float32(_HALF_WIDTH)
  n, size = image.shape[:2]
  if not segmentation:
    return rng.integers(0, classes, n, dtype=np.int32)
  cells = -(-size // CELL)
  coarse = rng.integers(0, classes, (n, cells, cells), dtype=np.int32)
  return coarse.repeat(CELL, 1).repeat(CELL, 2)[:, :size, :size]


def _draw(
  key: tuple[int, ...],
  rows: range,
  global_batch: int,
  size: int,
  channels: int,
  classes: int,
  segmentation: bool,
) -> Batch:
  """Rows `rows` of the global batch drawn from `key`: block j of BLOCK rows from (*key, j)."""
  image = np.empty((len(rows), size, size, channels), np.float32)
  label_shape = (len(rows), size, size) if segmentation else (len(rows),)
  labels = np.empty(label_shape, np.int32)

  def block(j: int) -> None:
    lo, hi = j * BLOCK, min((j + 1) * BLOCK, global_batch)
    rng = np.random.default_rng((*key, j))
    a, b = max(lo, rows.start), min(hi, rows.stop)  # the part of this block that is ours
    if (a, b) == (lo, hi):  # drawn straight into the batch
      labels[a - rows.start : b - rows.start] = _draw_block(
        rng, image[a - rows.start : b - rows.start], classes, segmentation
      )
      return
    whole = np.empty((hi - lo, size, size, channels), np.float32)
    drawn = _draw_block(rng, whole, classes, segmentation)
    image[a - rows.start : b - rows.start] = whole[a - lo : b - lo]
    labels[a - rows.start : b - rows.start] = drawn[a - lo : b - lo]

  first, last = rows.start // BLOCK, -(-rows.stop // BLOCK)
  list(_pool().map(block, range(first, last)))
  return {'image': image, ('segmentation' if segmentation else 'label'): labels}


def _rows(global_batch: int, process_index: int, process_count: int) -> range:
  local = global_batch // process_count
  return range(process_index * local, (process_index + 1) * local)


def train_iterator(
  data: Dataset,
  *,
  seed: int,
  global_batch: int,
  start_step: int,
  num_steps: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
  **unused: Any,
) -> Iterator[Batch]:
  """This host's rows of the batches of steps start_step .. num_steps - 1 (randaugment and
  augment options were refused when the run was built)."""
  del unused
  rows = _rows(global_batch, process_index, process_count)
  seg = data.spec.segmentation
  for step in range(start_step, num_steps):
    key = (_TRAIN_STREAM, seed, step)
    yield _draw(key, rows, global_batch, image_size, channels, data.num_classes, seg)


def eval_iterator(
  data: Dataset,
  *,
  global_batch: int,
  image_size: int,
  channels: int,
  process_index: int = 0,
  process_count: int = 1,
  split: str = 'validation',
) -> Iterator[Batch]:
  """The split `split` in batches of global_batch (the last one padded, mask 0); the same images
  at every evaluation of every run."""
  rows = _rows(global_batch, process_index, process_count)
  seg = data.spec.segmentation
  n = len(data.split(split))
  for start in range(0, n, global_batch):
    key = (_EVAL_STREAMS[split], start)
    batch = _draw(key, rows, global_batch, image_size, channels, data.num_classes, seg)
    batch['mask'] = (np.arange(start, start + global_batch)[rows.start : rows.stop] < n).astype(
      np.float32
    )
    if seg:
      batch['segmentation'][batch['mask'] == 0] = IGNORE_LABEL
    yield batch


def refuse(what: str) -> UserError:
  return UserError(f'{what} is not available for synthetic data (random images, nothing stored)')


__all__ = [
  'BLOCK',
  'EVAL_SIZE',
  'NAME',
  'SEGMENTATION',
  'TRAIN_SIZE',
  'eval_iterator',
  'is_synthetic',
  'load',
  'train_iterator',
]
