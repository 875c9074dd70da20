"""Datasets and input pipelines."""

from cnn_jax.data.codecs import CODECS, Codec, augment_options
from cnn_jax.data.corrupt import drop_corrupt_images
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
  eval_iterator,
  eval_preprocess_fn,
  eval_steps,
  pool_iterator,
  self_training_iterator,
  train_iterator,
)

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
