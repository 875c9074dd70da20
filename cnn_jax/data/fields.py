"""The ranges of the config fields the data side reads (checked by the trainer before it loads
anything: cnn_jax/core/ranges.py)."""

from cnn_jax.core.ranges import Range

RANGES = {
  'image_size': Range(1, 8192, integer=True),
  # Grey datasets are tiled to RGB, RGB averaged to grey (pipeline: the channels step).
  'image_channels': Range(only=(1, 3), note='grey or RGB'),
  'data_classes': Range(0, integer=True),
  'held_out_classes': Range(0, integer=True),
  'train_examples_per_class': Range(1, integer=True, also=(-1,), meaning='all'),
  'augment.color_shift': Range(0, 1),
}
