"""What the trainer holds of a dataset, with no TensorFlow: its splits as random-access sources of
records, and views of them (Subset). cnn_jax/data/datasets.py fills them from tfds and folders,
cnn_jax/data/synthetic.py from nothing."""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from cnn_jax.data.specs import DatasetSpec


class Source(Protocol):
  """Random access to encoded examples: {'image': encoded bytes, 'label': int} (classification)
  or {'image': encoded bytes, spec.mask_feature: encoded 1-channel image} (segmentation)."""

  def __len__(self) -> int: ...

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...


SPLITS = ('train', 'validation', 'test')
EVAL_SPLITS = ('validation', 'test')  # what config.eval_split may name


@dataclasses.dataclass
class Dataset:
  """A dataset's three splits. `validation` chooses (learning rates, sweeps, pseudo-label
  thresholds); `test` is read once, at the end of a run, for the report."""

  name: str
  spec: DatasetSpec
  train: Source
  validation: Source
  test: Source
  num_classes: int  # segmentation: including background (digit_scenes: 11)
  channels: int  # of the stored images
  # Examples left out as unreadable (pipeline.drop_corrupt_images): {split: [(index, file,
  # reason), ...]}; empty unless config.skip_corrupt_images.
  skipped: dict[str, list[tuple[int, str, str]]] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> Source:
    """The split called `name` ('train', 'validation' or 'test')."""
    if name not in SPLITS:
      raise ValueError(f'unknown split {name!r}; use one of {", ".join(map(repr, SPLITS))}')
    return getattr(self, name)


class Subset:
  """Examples `indices` of another source: example i here is source example indices[i]."""

  def __init__(self, source: Source, indices: Sequence[int] | np.ndarray):
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    outside = indices[(indices < 0) | (indices >= len(source))]
    if outside.size:
      raise ValueError(f'Subset index {outside[0]} outside the source [0, {len(source)})')
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return int(self.indices.size)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return self.source.__getitems__(self.indices[np.asarray(indices, np.int64)].tolist())
