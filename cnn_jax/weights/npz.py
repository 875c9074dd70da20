"""Weights as one .npz of '/'-joined names: what --mode=export writes (variables.npz) and what
config.init_from reads back. Plain arrays only: never pickled objects."""

from typing import Any

import numpy as np
from flax import traverse_util

PyTree = Any
COLLECTIONS = ('params', 'batch_stats')


def save_npz(path: str, variables: dict[str, PyTree]) -> int:
  """Writes {'params', 'batch_stats'} as one .npz of '/'-joined names; returns the array count."""
  arrays = {}
  for collection in COLLECTIONS:
    flat = traverse_util.flatten_dict(dict(variables.get(collection, {})), sep='/')
    arrays.update({f'{collection}/{k}': np.asarray(v) for k, v in flat.items()})
  np.savez(path, **arrays)
  return len(arrays)


def load_npz(path: str) -> dict[str, PyTree]:
  """{'params', 'batch_stats'} (nested dicts of numpy arrays) from a `save_npz` file."""
  with np.load(path, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  out = {}
  for collection in COLLECTIONS:
    prefix = f'{collection}/'
    mine = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
    out[collection] = traverse_util.unflatten_dict(mine, sep='/') if mine else {}
  return out
