"""Datasets and input pipelines.

Importing this package imports no TensorFlow: the tf.data / tfds modules load on first use of a
name that needs them (PEP 562 `__getattr__`), and the `synthetic` dataset never uses them, so a
run on synthetic data trains, evaluates and resumes where TensorFlow is not installed.
"""

import importlib
import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

from cnn_jax.data import synthetic
from cnn_jax.data.sources import Dataset, Source, Subset
from cnn_jax.data.specs import DATASETS

# Names served by the tf.data / tfds modules, imported when first asked for.
_LAZY = {
  'CODECS': 'cnn_jax.data.codecs',
  'Codec': 'cnn_jax.data.codecs',
  'eval_preprocess_fn': 'cnn_jax.data.pipeline',
  'eval_steps': 'cnn_jax.data.pipeline',
  'pool_iterator': 'cnn_jax.data.pipeline',
  'self_training_iterator': 'cnn_jax.data.pipeline',
  'labeled_split': 'cnn_jax.data.datasets',
}


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  if importlib.util.find_spec(f'{__name__}.{name}') is not None:  # a module: data.pipeline
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f"module 'cnn_jax.data' has no attribute {name!r}")


def load(name: str, data_dir: str | None = None) -> Dataset:
  """The dataset `name` (cnn_jax/data/datasets.py: tfds, local builders, folders; or synthetic)."""
  if synthetic.is_synthetic(name):
    return synthetic.load(name)
  from cnn_jax.data import datasets

  return datasets.load(name, data_dir)


def train_iterator(data: Dataset, **options: Any) -> Iterator[dict[str, Any]]:
  """This host's training batches (cnn_jax/data/pipeline.py: train_iterator)."""
  if synthetic.is_synthetic(data.name):
    return synthetic.train_iterator(data, **options)
  from cnn_jax.data import pipeline

  return pipeline.train_iterator(data, **options)


def eval_iterator(data: Dataset, **options: Any) -> Iterator[dict[str, Any]]:
  """This host's eval batches, the last one padded (cnn_jax/data/pipeline.py: eval_iterator)."""
  if synthetic.is_synthetic(data.name):
    return synthetic.eval_iterator(data, **options)
  from cnn_jax.data import pipeline

  return pipeline.eval_iterator(data, **options)


def class_subset(
  data: Dataset,
  classes: Sequence[int] = (),
  per_class: int = -1,
  seed: int = 0,
  held_out: Sequence[int] = (),
) -> Dataset:
  """Some classes and/or examples of `data` (cnn_jax/data/datasets.py: class_subset)."""
  if synthetic.is_synthetic(data.name):
    if tuple(classes) or per_class >= 0 or tuple(held_out):
      raise synthetic.refuse('config.data_classes / train_examples_per_class / held_out_classes')
    return data
  from cnn_jax.data import datasets

  return datasets.class_subset(data, classes, per_class, seed=seed, held_out=held_out)


def augment_options(spec: Any, augment: Any = None) -> Any:
  """config.augment resolved for the dataset (cnn_jax/data/codecs.py: augment_options)."""
  if synthetic.is_synthetic(spec.tfds_name):
    if augment is not None and any(v is not None for v in dict(augment).values()):
      raise synthetic.refuse('config.augment')
    return None
  from cnn_jax.data import codecs

  return codecs.augment_options(spec, augment)


def drop_corrupt_images(data: Dataset) -> Dataset:
  """`data` without its unreadable images (cnn_jax/data/corrupt.py)."""
  if synthetic.is_synthetic(data.name):
    raise synthetic.refuse('config.skip_corrupt_images')
  from cnn_jax.data import corrupt

  return corrupt.drop_corrupt_images(data)


__all__ = [
  'CODECS',
  'DATASETS',
  'Codec',
  'Dataset',
  'Source',
  'Subset',
  'augment_options',
  'class_subset',
  'drop_corrupt_images',
  'eval_iterator',
  'eval_preprocess_fn',
  'eval_steps',
  'labeled_split',
  'load',
  'pool_iterator',
  'self_training_iterator',
  'train_iterator',
]
