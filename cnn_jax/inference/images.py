"""The images --mode=predict reads: the files --inputs names, each through the eval preprocessing.

Each image goes through the eval preprocessing of the run's dataset: the function that
data.eval_iterator maps over the eval split, without the labels (`eval_preprocess`:
data.eval_preprocess_fn). A file that holds an eval example's encoded bytes therefore gets exactly
the input that eval computes for it.
"""

import glob
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError

# encoded image bytes -> the image the model takes, both tf.Tensors. TensorFlow is imported
# where images are decoded, not with this module: predict's other users (export) need none.
Preprocess = Callable[[Any], Any]

# What tf.io.decode_image reads.
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')


def find_images(inputs: Sequence[str]) -> list[str]:
  """The image files that `inputs` (files, globs, folders) name, in the order given; a folder's
  images (IMAGE_EXTENSIONS, any depth) and a glob's matches sorted, duplicates dropped.

  Raises UserError for an empty list, a path that does not exist, a glob that matches nothing
  and a folder that holds no image file.
  """
  if not inputs:
    raise UserError(
      '--mode=predict needs --inputs: image files, globs or folders, e.g. --inputs=a.png,photos/'
    )
  found: list[str] = []
  for item in inputs:
    path = os.path.expanduser(item)
    if glob.has_magic(path):
      matches = sorted(glob.glob(path, recursive=True))
      files = [m for m in matches if os.path.isfile(m)]
      files += [f for m in matches if os.path.isdir(m) for f in _folder_images(m)]
      if not files:
        raise UserError(f'--inputs: {item!r} matches no file; check the pattern')
    elif os.path.isdir(path):
      files = _folder_images(path)
      if not files:
        raise UserError(
          f'--inputs: the folder {item} holds no image ({", ".join(IMAGE_EXTENSIONS)}); '
          'point at a folder of images or list the files'
        )
    elif os.path.isfile(path):
      files = [path]
    else:
      raise UserError(f'--inputs: {item} does not exist; give image files, globs or folders')
    found += files
  return list(dict.fromkeys(found))  # each file once, first position kept


def _folder_images(folder: str) -> list[str]:
  files = []
  for root, dirs, names in os.walk(folder):
    dirs.sort()
    files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
  return files


def eval_preprocess(data: Any, config: ml_collections.ConfigDict) -> Preprocess:
  """encoded image bytes -> the normalised (S, S, C) float32 image that eval feeds the model.

  The pipeline's own eval preprocessing of `data` (data.eval_preprocess_fn: what eval_iterator
  maps, without the labels) at config.image_size and config.image_channels.
  """
  if data.spec.task not in data_lib.CODECS:
    raise UserError(
      f"predicting from '{data.spec.task}' datasets is not supported yet ('{data.name}'); "
      f'only {", ".join(data_lib.CODECS)} runs'
    )
  return data_lib.eval_preprocess_fn(
    data, image_size=config.image_size, channels=config.image_channels
  )


def load_images(paths: Sequence[str], preprocess: Preprocess) -> np.ndarray:
  """(N, S, S, C) float32: each file read and preprocessed; an unreadable file is a UserError
  naming it.

  Mapped with tf.data, as eval_iterator maps it: a tf.function of the same ops can round
  differently (Grappler rewrites the graph: 1 ulp on 1 value in 6 of 64 digits eval images).
  """
  from cnn_jax.core.quiet_tf import tf

  encoded = []
  for path in paths:
    try:
      with open(path, 'rb') as f:
        encoded.append(f.read())
    except OSError as e:
      raise UserError(
        f'cannot read {path} ({e.strerror}); check the file and its permissions'
      ) from None
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, tf.string))
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
  try:
    return np.concatenate(list(ds.as_numpy_iterator()))
  except tf.errors.OpError:
    for path, data in zip(paths, encoded, strict=True):  # which one: each decoded on its own
      try:
        preprocess(tf.constant(data))
      except tf.errors.OpError as e:
        reason = re.sub(r'\{\{.*?\}\}\s*', '', e.message)  # TF's '{{function_node ...}}' noise
        reason = (reason.strip().splitlines() or [type(e).__name__])[0][:120]
        raise UserError(
          f'{path} is not a readable image ({reason}); give PNG, JPEG, BMP, GIF or WebP files'
        ) from None
    raise
