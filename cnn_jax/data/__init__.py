"""Datasets and input pipelines."""

from cnn_jax.data.datasets import DATASETS, Dataset, load
from cnn_jax.data.pipeline import eval_iterator, eval_steps, train_iterator

__all__ = ['DATASETS', 'Dataset', 'eval_iterator', 'eval_steps', 'load', 'train_iterator']
