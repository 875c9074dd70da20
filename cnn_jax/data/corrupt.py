"""Images (or label maps) that do not decode: named in a UserError, or left out on request."""

import dataclasses
import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.core.quiet_tf import tf
from cnn_jax.data.codecs import codec_of
from cnn_jax.data.datasets import Dataset, Source, Subset
from cnn_jax.data.sources import SPLITS

Batch = dict[str, np.ndarray]
LabelReader = str | Callable[[dict[str, Any]], Any]


def _label_reader(data: Dataset) -> Callable[[dict[str, Any]], Any]:
  """How the pipeline reads a record's labels (its task's codec)."""
  return functools.partial(codec_of(data.spec).read, data.spec)


def _decode_error(
  record: dict[str, Any], stored_channels: int, labels: LabelReader = 'label'
) -> str | None:
  """Why `record`'s image (or label map) does not decode, in one short line; None if it does.

  `labels` reads the record's labels (a feature name, or a codec's read): stored as bytes (an
  encoded label map), they must decode as well.
  """
  try:
    tf.io.decode_image(record['image'], channels=stored_channels, expand_animations=False)
    stored = labels(record) if callable(labels) else record[labels]
    if isinstance(stored, bytes):
      tf.io.decode_png(stored, channels=1)
  except tf.errors.OpError as e:
    reason = re.sub(r'\{\{.*?\}\}\s*', '', e.message)  # TF's '{{function_node ...}}' noise
    return (reason.splitlines() or [type(e).__name__])[0][:120]
  return None


def _file_name(record: dict[str, Any]) -> str:
  name = record.get('image/filename', b'')
  return name.decode() if isinstance(name, bytes) else str(name)


def _corrupt_image(
  source: Source, indices: np.ndarray, stored_channels: int, labels: LabelReader = 'label'
):
  """(index in the split, file name, reason) of the first of source's `indices` whose image (or
  label map) does not decode, or None. Decodes on the host one by one: only after a failure."""
  for index, record in zip(indices.tolist(), source.__getitems__(indices.tolist()), strict=True):
    base = source
    while isinstance(base, Subset):  # the index in the split itself, not in a part of it
      index, base = int(base.indices[index]), base.source
    reason = _decode_error(record, stored_channels, labels)
    if reason is not None:
      return index, _file_name(record), reason
  return None


_SCAN_CHUNK = 1024  # records decoded per read when scanning a split: bounded memory


def drop_corrupt_images(data: Dataset) -> Dataset:
  """`data` without the examples whose image (or label map) does not decode.

  For config.skip_corrupt_images. Every record of the three splits is decoded once, on the host,
  before training (a second or two for the offline datasets; a long pass for ImageNet-sized
  ones). The examples left keep their order and the same ones are left at every start, so a
  resumed run still sees exactly the batches of an uninterrupted one. The indices left out are
  in the result's `skipped` ({split: [(index, file name, reason), ...]}), each logged.
  """
  skipped, splits = {}, {}
  for split in SPLITS:
    source = data.split(split)
    bad = []
    for start in range(0, len(source), _SCAN_CHUNK):
      indices = list(range(start, min(start + _SCAN_CHUNK, len(source))))
      for index, record in zip(indices, source.__getitems__(indices), strict=True):
        reason = _decode_error(record, data.channels, _label_reader(data))
        if reason is not None:
          bad.append((index, _file_name(record), reason))
    if bad:
      skipped[split] = bad
      left = np.setdiff1d(np.arange(len(source)), [b[0] for b in bad])
      if left.size == 0:
        raise UserError(
          f"dataset '{data.name}': none of the {len(source)} images of the {split} split "
          'decodes; check the files (config.skip_corrupt_images skips only some)'
        )
      splits[split] = Subset(source, left)
  return dataclasses.replace(data, **splits, skipped=skipped)


def name_corrupt_images(
  batches: Iterator[Batch],
  data: Dataset,
  source: Source,
  split: str,
  indices_of_step: Callable[[int], np.ndarray],
  steps: range,
) -> Iterator[Batch]:
  """`batches` (one per step of `steps`), with an image that does not decode reported as a
  UserError naming the example (its index in `split`, and its file for an image folder)."""
  for step in steps:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError:
      found = _corrupt_image(source, indices_of_step(step), data.channels, _label_reader(data))
      if found is None:
        raise  # not a decoding problem: a bug, with its traceback
      index, name, reason = found
      where = f' ({name})' if name else ''
      raise UserError(
        f"dataset '{data.name}': example {index} of the {split} split{where} is not a readable "
        f'image ({reason}); replace or remove it and prepare the dataset again, or set '
        'config.skip_corrupt_images=True to leave such images out (counted)'
      ) from None
    yield batch
