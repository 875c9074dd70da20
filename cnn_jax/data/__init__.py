"""Datasets and input pipelines."""

from cnn_jax.data.datasets import (
  DATASETS,
  Dataset,
  Source,
  Subset,
  class_subset,
  labeled_split,
  load,
)
from cnn_jax.data.pipeline import (
  augment_options,
  drop_corrupt_images,
  eval_iterator,
  eval_steps,
  pool_iterator,
  self_training_iterator,
  train_iterator,
)

__all__ = [
  'DATASETS',
  'Dataset',
  'Source',
  'Subset',
  'augment_options',
  'class_subset',
  'drop_corrupt_images',
  'eval_iterator',
  'eval_steps',
  'labeled_split',
  'load',
  'pool_iterator',
  'self_training_iterator',
  'train_iterator',
]
