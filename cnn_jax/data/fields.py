"""The ranges of the config fields the data side reads (checked by the trainer before it loads
anything: cnn_jax/core/ranges.py)."""

from cnn_jax.core.ranges import Range
from cnn_jax.data.sources import EVAL_SPLITS

RANGES = {
  # Chosen on during training; the test split is also read once at the end, for the report.
  'eval_split': Range(only=EVAL_SPLITS, note='the split evaluated during training'),
  'image_size': Range(1, 8192, integer=True),
  # Grey datasets are tiled to RGB, RGB averaged to grey (pipeline: the channels step).
  'image_channels': Range(only=(1, 3), note='grey or RGB'),
  'data_classes': Range(0, integer=True),
  'held_out_classes': Range(0, integer=True),
  'train_examples_per_class': Range(1, integer=True, also=(-1,), meaning='all'),
  'augment.color_shift': Range(0, 1),
}
