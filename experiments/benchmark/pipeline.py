"""The input pipeline alone: images/s of `cnn_jax.data.train_iterator`."""

import time
from typing import Any

from cnn_jax import data as data_lib


def bench_pipeline(
  dataset: str, data_dir: str, batch: int, image_size: int, batches: int
) -> dict[str, Any]:
  """Images/s of `train_iterator` alone, after 2 start-up batches (graph build, first fill)."""
  data = data_lib.load(dataset, data_dir or None)
  it = data_lib.train_iterator(
    data,
    seed=0,
    global_batch=batch,
    start_step=0,
    num_steps=batches + 2,
    image_size=image_size,
    channels=3,
  )
  next(it)
  next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - t0
  return dict(dataset=dataset, batches=batches, images_per_s=batches * batch / seconds)
