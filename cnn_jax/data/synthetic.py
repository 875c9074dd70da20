"""`synthetic`: random images and labels, nothing on disk and no TensorFlow, for throughput runs and
accelerator checks (as big_vision's and the Flax examples' fake data).

  --config.dataset=synthetic          10 classes
  --config.dataset=synthetic:1000     any number of classes (ImageNet-sized heads)

Images take the run's config.image_size and config.image_channels: standard-normal pixels (as if
already normalised), float32; labels uniform over the classes. A batch is a pure function of
(seed, step) — the global batch is drawn whole and each host takes its rows — so resume is exact as
with real data. The train split counts 12,800 examples (100 steps an epoch at batch 128), the
validation and test splits 1,024 each, each drawn from a fixed stream of its own. Classification
only; no augmentation, class subsets or corrupt-image scans (there is nothing to read).
"""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.data.sources import Dataset
from cnn_jax.data.specs import DatasetSpec

NAME = 'synthetic'
TRAIN_SIZE = 12_800
EVAL_SIZE = 1_024
# The eval splits' draws: streams no training step draws from.
_EVAL_STREAMS = {'validation': 1, 'test': 2}
Batch = dict[str, np.ndarray]


class _Count:
  """A split of `n` examples that are drawn, not stored: its length is all the trainer reads."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    raise UserError('synthetic data has no stored records (class subsets, scans, predict)')


def is_synthetic(name: str) -> bool:
  return name == NAME or name.startswith(NAME + ':')


def load(name: str) -> Dataset:
  """The `synthetic` or `synthetic:<classes>` dataset."""
  _, _, arg = name.partition(':')
  try:
    num_classes = int(arg) if arg else 10
  except ValueError:
    num_classes = 0
  if num_classes < 1:
    raise UserError(
      f"dataset '{name}': give the number of classes as a whole number >= 1, e.g. synthetic:1000"
    )
  spec = DatasetSpec(
    NAME, 'train', 'test', (0.0,), (1.0,), 'none', 'resize', num_classes=num_classes
  )
  splits = _Count(TRAIN_SIZE), _Count(EVAL_SIZE), _Count(EVAL_SIZE)
  return Dataset(name, spec, *splits, num_classes, 0)


def _draw(rng: np.random.Generator, n: int, size: int, channels: int, classes: int) -> Batch:
  image = rng.standard_normal((n, size, size, channels), dtype=np.float32)
  return {'image': image, 'label': rng.integers(0, classes, n, dtype=np.int32)}


def _rows(global_batch: int, process_index: int, process_count: int) -> slice:
  local = global_batch // process_count
  return slice(process_index * local, (process_index + 1) * local)


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
  for step in range(start_step, num_steps):
    rng = np.random.default_rng((seed, step))
    batch = _draw(rng, global_batch, image_size, channels, data.num_classes)
    yield {k: v[rows] for k, v in batch.items()}


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
  n = len(data.split(split))
  for start in range(0, n, global_batch):
    rng = np.random.default_rng((_EVAL_STREAMS[split], start))
    batch = _draw(rng, global_batch, image_size, channels, data.num_classes)
    batch['mask'] = (np.arange(start, start + global_batch) < n).astype(np.float32)
    yield {k: v[rows] for k, v in batch.items()}


def refuse(what: str) -> UserError:
  return UserError(f'{what} is not available for synthetic data (random images, nothing stored)')


__all__ = [
  'EVAL_SIZE',
  'NAME',
  'TRAIN_SIZE',
  'eval_iterator',
  'is_synthetic',
  'load',
  'train_iterator',
]
