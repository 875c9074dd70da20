"""Datasets by name: opening one (tfds, or a folder of images), and parts of one.

Every dataset is read by random access (a tfds `ArrayRecordDataSource`, or images held in memory
for a user's folder), so that the examples of a step are a pure function of (seed, step) and each
host reads only its own share of every batch. What each dataset is (DatasetSpec, DATASETS) is in
specs.py.
"""

import dataclasses
import fcntl
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.core.quiet_tf import tfds
from cnn_jax.data.sources import Dataset, Source, Subset
from cnn_jax.data.specs import DATASETS, FOLDER_SPEC, TFDS_BUILD, UNAVAILABLE

FOLDER_PREFIX = 'folder:'


class _InMemorySource:
  """Encoded examples held in a list (a user's image folder)."""

  def __init__(self, examples: list[dict[str, Any]]):
    self._examples = examples

  def __len__(self) -> int:
    return len(self._examples)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [self._examples[int(i)] for i in indices]


_LABEL_CHUNK = 4096  # records read at once when collecting labels: bounded memory


def source_labels(source: Source) -> np.ndarray:
  """(N,) int64 the 'label' of every example, read in chunks (the whole split is read once)."""
  labels = np.empty(len(source), np.int64)
  for start in range(0, len(source), _LABEL_CHUNK):
    stop = min(start + _LABEL_CHUNK, len(source))
    labels[start:stop] = [r['label'] for r in source.__getitems__(list(range(start, stop)))]
  return labels


def labeled_split(data: Dataset, fraction: float, seed: int) -> tuple[Dataset, Subset]:
  """A stratified labelled subset of the train split and the rest as the unlabelled pool.

  For semi-supervised recipes (Noisy Student, Xie et al. 2020). Class c with n_c examples keeps
  max(1, round(fraction * n_c)) of them labelled (halves round up), drawn with NumPy from
  (seed, c); both parts list their examples in train-split order. The pool's records keep
  their 'label', for measuring pseudo-label accuracy only.

  Returns:
    (a copy of `data` whose train split is the labelled Subset, the pool Subset); fraction 1
    labels everything and leaves an empty pool.
  """
  if (
    isinstance(fraction, bool)
    or not isinstance(fraction, numbers.Real)
    or not 0.0 < fraction <= 1.0  # NaN fails too
  ):
    raise UserError(
      f'labelled fraction {fraction!r}: give a number in (0, 1] (0.1 labels 10% of each class)'
    )
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise UserError(f'labelled split seed {seed!r}: give a whole number >= 0')
  if data.spec.task != 'classification':
    raise UserError(
      f"dataset '{data.name}' is a {data.spec.task} dataset: a labelled/unlabelled split needs "
      'per-image class labels; use a classification dataset'
    )
  labels = source_labels(data.train)
  labelled = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    keep = min(members.size, max(1, math.floor(fraction * members.size + 0.5)))
    rng = np.random.default_rng((int(seed), int(c)))
    labelled.append(rng.choice(members, keep, replace=False))
  labelled = np.sort(np.concatenate(labelled)) if labelled else np.zeros(0, np.int64)
  pool = np.setdiff1d(np.arange(len(labels)), labelled)
  return dataclasses.replace(data, train=Subset(data.train, labelled)), Subset(data.train, pool)


class Relabelled(Subset):
  """Examples `indices` of a classification source, each 'label' l replaced by new_label[l]."""

  def __init__(
    self, source: Source, indices: Sequence[int] | np.ndarray, new_label: dict[int, int]
  ):
    super().__init__(source, indices)
    self.new_label = dict(new_label)

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [{**r, 'label': self.new_label[int(r['label'])]} for r in super().__getitems__(indices)]


def _check_class_subset(
  data: Dataset, classes: Any, per_class: Any, seed: Any, held_out: Any = ()
) -> None:
  """class_subset's arguments, checked before any label is read."""
  field = 'config.data_classes'
  for name, value in ((field, classes), ('config.held_out_classes', held_out)):
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
      raise UserError(
        f'{name}={value!r}: give a tuple of class ids, e.g. (5, 6, 7, 8, 9), or () for none'
      )
  if held_out and not classes:
    raise UserError(
      f'config.held_out_classes={tuple(held_out)!r} needs config.data_classes: the classes to '
      'train on, e.g. (0, 1, 2, 3, 4, 5)'
    )
  for c in held_out:
    if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < data.num_classes:
      raise UserError(
        f'config.held_out_classes={tuple(held_out)!r}: {c!r} is not a class id of dataset '
        f"'{data.name}' (0..{data.num_classes - 1}); list ids from that range"
      )
    if c in classes or list(held_out).count(c) > 1:
      raise UserError(
        f'config.held_out_classes={tuple(held_out)!r}: class {c} is listed twice or also in '
        'config.data_classes; a held-out class is one the run never trains on'
      )
  if (
    isinstance(per_class, bool)
    or not isinstance(per_class, numbers.Integral)
    or not (per_class == -1 or per_class >= 1)
  ):
    raise UserError(
      f'config.train_examples_per_class={per_class!r}: give a whole number >= 1 (that many '
      'training examples of each class) or -1 (all of them)'
    )
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise UserError(f'class subset seed {seed!r}: give a whole number >= 0')
  if (classes or per_class != -1) and data.spec.task != 'classification':
    raise UserError(
      f"dataset '{data.name}' is a {data.spec.task} dataset: config.data_classes and "
      'config.train_examples_per_class need per-image class labels; leave them at () and -1'
    )
  for c in classes:
    if isinstance(c, bool) or not isinstance(c, numbers.Integral) or not 0 <= c < data.num_classes:
      raise UserError(
        f"{field}={tuple(classes)!r}: {c!r} is not a class id of dataset '{data.name}' "
        f'(0..{data.num_classes - 1}); list ids from that range'
      )
  for c in classes:
    if list(classes).count(c) > 1:
      raise UserError(f'{field}={tuple(classes)!r}: class {c} is listed twice; list each once')
  if len(classes) == 1:
    raise UserError(
      f'{field}={tuple(classes)!r}: a classifier needs at least 2 classes; list 2 or more '
      'class ids, or () for all'
    )


def class_subset(
  data: Dataset,
  classes: Sequence[int] = (),
  per_class: int = -1,
  seed: int = 0,
  held_out: Sequence[int] = (),
) -> Dataset:
  """`data` with only some classes, and/or only some training examples of each.

  For transfer learning on the offline data: a source task on some classes, a small labelled
  target task on others (config.data_classes, config.train_examples_per_class).

  Args:
    data: a classification dataset.
    classes: the class ids to keep, relabelled 0..k-1 in the order given, in both splits;
      () keeps every class (and its label).
    per_class: a stratified draw of that many training examples of each kept class, with NumPy
      from (seed, the class's id in `data`), as labeled_split draws; -1 keeps them all. The
      validation and test splits keep every example of the kept classes.
    seed: of the draw (the run's config.seed: each seed labels other examples).
    held_out: classes never trained on whose validation and test examples join those splits,
      labelled len(classes) .. len(classes) + len(held_out) - 1 in the order given (one-shot
      learning: config.held_out_classes); needs `classes`.

  Returns:
    `data` itself when classes is () and per_class -1; else a copy whose splits list their
    examples in split order and whose num_classes is len(classes).

  Raises:
    UserError: an id outside the dataset's classes, one listed twice, a single class, a count
      that is not -1 or >= 1 or is more than a kept class holds, a segmentation dataset.
  """
  _check_class_subset(data, classes, per_class, seed, held_out)
  if not classes and per_class == -1:
    return data
  kept = [int(c) for c in classes] or list(range(data.num_classes))
  labels = source_labels(data.train)
  chosen = []
  for c in kept:
    members = np.flatnonzero(labels == c)
    if per_class > members.size:
      smallest = min(int(np.sum(labels == k)) for k in kept)
      raise UserError(
        f'config.train_examples_per_class={per_class}: class {c} of dataset '
        f"'{data.name}' has only {members.size} training examples; ask for at most "
        f'{smallest} (the smallest kept class), or -1 for all'
      )
    if per_class > 0:
      members = np.random.default_rng((int(seed), c)).choice(members, per_class, replace=False)
    chosen.append(members)
  train_indices = np.sort(np.concatenate(chosen))
  if not classes:  # every class, labels unchanged: only the train split shrinks
    return dataclasses.replace(data, train=Subset(data.train, train_indices))
  new_label = {c: i for i, c in enumerate([*kept, *(int(c) for c in held_out)])}

  def relabelled(source: Source) -> Relabelled:
    indices = np.flatnonzero(np.isin(source_labels(source), list(new_label)))
    return Relabelled(source, indices, new_label)

  return dataclasses.replace(
    data,
    train=Relabelled(data.train, train_indices, new_label),
    validation=relabelled(data.validation),
    test=relabelled(data.test),
    num_classes=len(kept),
  )


def default_data_dir() -> str:
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def load(name: str, data_dir: str | None = None) -> Dataset:
  """Opens dataset `name` (a key of DATASETS, or 'folder:/path'); builds local ones if needed.

  Raises UserError, before anything slow, when the name is unknown or the data is not prepared.
  """
  data_dir = data_dir or default_data_dir()
  if name.startswith(FOLDER_PREFIX):
    return _load_folder(name, name[len(FOLDER_PREFIX) :])
  if name.split('/')[0] in UNAVAILABLE:
    raise UserError(f"dataset '{name}': {UNAVAILABLE[name.split('/')[0]]}")
  if name not in DATASETS:
    hint = close_matches(name, DATASETS)
    hint = f'; closest: {hint}' if hint else ''
    raise UserError(
      f"unknown dataset '{name}'{hint}; known: {', '.join(DATASETS)}, "
      f"or '{FOLDER_PREFIX}/path' for a folder of images (one sub-folder per class)"
    )
  spec = DATASETS[name]
  if spec.tfds_name in _LOCAL_BUILDERS:
    builder = _prepare_local(spec.tfds_name, data_dir)
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
  # Decoded later, in the tf.data workers.
  skip = {'image': tfds.decode.SkipDecoding()}
  if spec.segmentation:
    skip[spec.mask_feature] = tfds.decode.SkipDecoding()
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    how = TFDS_BUILD.format(name=spec.tfds_name, data_dir=data_dir)
    raise UserError(
      f"dataset '{name}' in {data_dir} is in {builder.info.file_format.value} format, not "
      f'array_record, which random access needs; rebuild it with: {how}'
    )
  train, validation, test = (
    _split_source(name, builder, s, skip) if s else None
    for s in (spec.train_split, spec.validation_split, spec.test_split)
  )
  if validation is None:
    train, validation = hold_out(train, spec.validation_fraction)
  features = builder.info.features
  return Dataset(
    name=name,
    spec=spec,
    train=train,
    validation=validation,
    test=test,
    num_classes=spec.num_classes
    if spec.task != 'classification'
    else features['label'].num_classes,
    channels=features['image'].shape[-1],
  )


def _split_source(
  name: str, builder: tfds.core.DatasetBuilder, split: str, decoders: dict[str, Any]
) -> Source:
  """Random access to one split (or slice: 'train[99%:]') of a prepared tfds dataset."""
  try:
    return builder.as_data_source(split, decoders=decoders)
  except ValueError as e:  # tfds: an empty slice has no files ('Paths sequence can not be ...')
    sizes = ', '.join(f'{k} {v.num_examples}' for k, v in builder.info.splits.items())
    raise UserError(
      f"dataset '{name}': split '{split}' cannot be read ({e}); the prepared splits hold {sizes} "
      'examples (a percent slice of fewer than ~100 examples can be empty)'
    ) from e


_VALIDATION_SEED = 7_919  # hold_out's draws: not a stream any config.seed draws from


def hold_out(train: Source, fraction: float) -> tuple[Subset, Subset]:
  """The train split cut in two: (what trains, the validation split).

  Class c with n_c examples gives max(1, round(fraction * n_c)) of them to validation (halves
  round up), at most n_c - 1, drawn with NumPy from (_VALIDATION_SEED, c): stratified on the
  records' 'label', or a plain draw of round(fraction * n) where records have none (scenes,
  boxes). The same parts for every run; both list their examples in train-split order.
  """
  n = len(train)
  labelled = n > 0 and 'label' in train.__getitems__([0])[0]
  labels = source_labels(train) if labelled else np.zeros(n, np.int64)
  held = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    share = math.floor(fraction * members.size + 0.5)
    keep = max(0, min(max(1, share) if labelled else share, members.size - 1))
    rng = np.random.default_rng((_VALIDATION_SEED, int(c)))
    held.append(rng.choice(members, keep, replace=False))
  held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  return Subset(train, np.setdiff1d(np.arange(n), held)), Subset(train, held)


def _local_builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
  if name == 'digits':
    from cnn_jax.data.digits import Digits

    return Digits
  from cnn_jax.data.digit_scenes import DigitScenes

  return DigitScenes


_LOCAL_BUILDERS = ('digits', 'digit_scenes')  # built here from scikit-learn's digits


def _prepare_local(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  builder_class = _local_builder_class(name)
  builder = builder_class(data_dir=data_dir, file_format='array_record')
  if not builder.is_prepared():
    os.makedirs(data_dir, exist_ok=True)
    # Several processes (hosts of one run, parallel tests) may start at once: build once.
    with open(os.path.join(data_dir, f'.{name}.lock'), 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      builder = builder_class(data_dir=data_dir, file_format='array_record')
      if not builder.is_prepared():
        builder.download_and_prepare(file_format='array_record')
  return builder


def _load_folder(name: str, root: str) -> Dataset:
  """A folder root/{train,test}/<class name>/<image> (and root/validation/... if the user keeps
  one; else a part of train is held out, as for tfds datasets), read with tfds's ImageFolder."""
  if not os.path.isdir(root):
    raise UserError(
      f"dataset '{name}': {root} is not a folder; expected {root}/train/<class>/<image> "
      f'and {root}/test/<class>/<image>'
    )
  builder = tfds.ImageFolder(root)
  splits = builder.info.splits
  spec = FOLDER_SPEC
  for split in (spec.train_split, spec.test_split):
    if split not in splits:
      raise UserError(
        f"dataset '{name}': no '{split}' sub-folder in {root} (found: {', '.join(splits)})"
      )

  def read(split: str) -> _InMemorySource:
    ds = builder.as_dataset(split, decoders={'image': tfds.decode.SkipDecoding()})
    examples = sorted(tfds.as_numpy(ds), key=lambda ex: ex['image/filename'])  # fixed order
    return _InMemorySource(examples)

  train = read(spec.train_split)
  if 'validation' in splits:
    validation = read('validation')
  else:
    train, validation = hold_out(train, spec.validation_fraction)
  return Dataset(
    name=name,
    spec=spec,
    train=train,
    validation=validation,
    test=read(spec.test_split),
    num_classes=builder.info.features['label'].num_classes,
    channels=3,
  )
