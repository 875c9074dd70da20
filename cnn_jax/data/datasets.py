"""Datasets by name: what to read, how to prepare it, and how its images are augmented.

Every dataset is read by random access (a tfds `ArrayRecordDataSource`, or images held in memory
for a user's folder), so that the examples of a step are a pure function of (seed, step) and each
host reads only its own share of every batch.
"""

import dataclasses
import fcntl
import os
from collections.abc import Sequence
from typing import Any, Protocol

import tensorflow_datasets as tfds

from cnn_jax.errors import UserError, close_matches

FOLDER_PREFIX = 'folder:'


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How a dataset is read and preprocessed."""

  tfds_name: str
  train_split: str
  eval_split: str
  mean: tuple[float, ...]  # per channel, of images scaled to [0, 1]
  std: tuple[float, ...]
  train_augment: str  # 'shift' | 'crop_flip' | 'inception_crop_flip' (see pipeline.py)
  eval_resize: str  # 'resize' | 'center_crop'
  num_classes: int = 0  # known without opening the data (0: read it from the data)
  how_to_prepare: str = ''


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_TFDS_BUILD = 'tfds build {name} --file_format=array_record --data_dir={data_dir}'

DATASETS: dict[str, DatasetSpec] = {
  # Built here from scikit-learn's copy; mean/std of the 8x8 pixels scaled to [0, 1].
  'digits': DatasetSpec('digits', 'train', 'test', (0.3053,), (0.3760,), 'shift', 'resize', 10),
  'mnist': DatasetSpec(
    'mnist',
    'train',
    'test',
    (0.1307,),
    (0.3081,),
    'shift',
    'resize',
    10,
    how_to_prepare=_TFDS_BUILD,
  ),
  'cifar10': DatasetSpec(
    'cifar10',
    'train',
    'test',
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
    'crop_flip',
    'resize',
    10,
    how_to_prepare=_TFDS_BUILD,
  ),
  'cifar100': DatasetSpec(
    'cifar100',
    'train',
    'test',
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
    'crop_flip',
    'resize',
    100,
    how_to_prepare=_TFDS_BUILD,
  ),
  'imagenet2012': DatasetSpec(
    'imagenet2012',
    'train',
    'validation',
    _IMAGENET_MEAN,
    _IMAGENET_STD,
    'inception_crop_flip',
    'center_crop',
    1000,
    how_to_prepare='put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in '
    '{data_dir}/downloads/manual, then run: ' + _TFDS_BUILD,
  ),
}

_FOLDER_SPEC = DatasetSpec(
  'image_folder',
  'train',
  'test',
  _IMAGENET_MEAN,
  _IMAGENET_STD,
  'inception_crop_flip',
  'center_crop',
)


class Source(Protocol):
  """Random access to encoded examples: {'image': encoded bytes, 'label': int}."""

  def __len__(self) -> int: ...

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...


@dataclasses.dataclass
class Dataset:
  name: str
  spec: DatasetSpec
  train: Source
  eval: Source
  num_classes: int
  channels: int  # of the stored images


class _InMemorySource:
  """Encoded examples held in a list (a user's image folder)."""

  def __init__(self, examples: list[dict[str, Any]]):
    self._examples = examples

  def __len__(self) -> int:
    return len(self._examples)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self._examples[int(i)] for i in indices]


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def load(name: str, data_dir: str | None = None) -> Dataset:
  """Opens dataset `name` (a key of DATASETS, or 'folder:/path'); builds `digits` if needed.

  Raises UserError, before anything slow, when the name is unknown or the data is not prepared.
  """
  data_dir = data_dir or default_data_dir()
  if name.startswith(FOLDER_PREFIX):
    return _load_folder(name, name[len(FOLDER_PREFIX) :])
  if name not in DATASETS:
    hint = close_matches(name, DATASETS)
    hint = f'; closest: {hint}' if hint else ''
    raise UserError(
      f"unknown dataset '{name}'{hint}; known: {', '.join(DATASETS)}, "
      f"or '{FOLDER_PREFIX}/path' for a folder of images (one sub-folder per class)"
    )
  spec = DATASETS[name]
  if name == 'digits':
    builder = _prepare_digits(data_dir)
  else:
    # Checked by hand first: tfds warns about a missing folder before it says "not prepared".
    present = os.path.isdir(os.path.join(data_dir, spec.tfds_name))
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir) if present else None
    if builder is None or not builder.is_prepared():
      how = spec.how_to_prepare.format(name=spec.tfds_name, data_dir=data_dir)
      raise UserError(
        f"dataset '{name}' is not prepared in {data_dir} (and this run does not download); "
        f'to prepare it, on a machine with network access: {how}'
      )
  skip = {'image': tfds.decode.SkipDecoding()}  # decoded later, in the tf.data workers
  try:
    train = builder.as_data_source(spec.train_split, decoders=skip)
    eval_ = builder.as_data_source(spec.eval_split, decoders=skip)
  except (ValueError, NotImplementedError) as e:
    how = _TFDS_BUILD.format(name=spec.tfds_name, data_dir=data_dir)
    raise UserError(
      f"dataset '{name}' in {data_dir} is not in array_record format, which random access "
      f'needs ({e}); rebuild it with: {how}'
    ) from e
  features = builder.info.features
  return Dataset(
    name=name,
    spec=spec,
    train=train,
    eval=eval_,
    num_classes=features['label'].num_classes,
    channels=features['image'].shape[-1],
  )


def _prepare_digits(data_dir: str) -> tfds.core.DatasetBuilder:
  from cnn_jax.data.digits import Digits

  builder = Digits(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    os.makedirs(data_dir, exist_ok=True)
    # Several processes (hosts of one run, parallel tests) may start at once: build once.
    with open(os.path.join(data_dir, '.digits.lock'), 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = Digits(data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        builder.download_and_prepare(file_format='array_record')
  return builder


def _load_folder(name: str, root: str) -> Dataset:
  """A folder root/{train,test}/<class name>/<image>, read with tfds's ImageFolder."""
  if not os.path.isdir(root):
    raise UserError(
      f"dataset '{name}': {root} is not a folder; expected {root}/train/<class>/<image> "
      f'and {root}/test/<class>/<image>'
    )
  builder = tfds.ImageFolder(root)
  splits = builder.info.splits
  spec = _FOLDER_SPEC
  for split in (spec.train_split, spec.eval_split):
    if split not in splits:
      raise UserError(
        f"dataset '{name}': no '{split}' sub-folder in {root} (found: {', '.join(splits)})"
      )

  def read(split: str) -> _InMemorySource:
    ds = builder.as_dataset(split, decoders={'image': tfds.decode.SkipDecoding()})
    examples = sorted(tfds.as_numpy(ds), key=lambda ex: ex['image/filename'])  # fixed order
    return _InMemorySource(examples)

  return Dataset(
    name=name,
    spec=spec,
    train=read(spec.train_split),
    eval=read(spec.eval_split),
    num_classes=builder.info.features['label'].num_classes,
    channels=3,
  )
