"""Shared test helpers: main.py in a subprocess (the way a user runs it), tiny configs, and the
variable shapes and parameter counts of models without compute."""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from cnn_jax.core import config_fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# resnet_tiny on 16x16 digits: a few seconds of training, checkpoints every 4 steps.
TINY = [
  '--config=configs/resnet.py',
  '--config.model.name=resnet_tiny',
  '--config.image_size=16',
  '--config.batch_size=32',
  '--config.eval_batch_size=64',
  '--config.num_train_steps=12',
  '--config.log_every_steps=1',
  '--config.checkpoint_every_steps=4',
  '--config.eval_every_steps=-1',
]


def env(data_dir: str, devices: int = 4, extra: dict[str, str] | None = None) -> dict[str, str]:
  e = dict(os.environ)
  e['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  e['TFDS_DATA_DIR'] = data_dir
  e['JAX_PLATFORMS'] = 'cpu'
  e.pop('CNN_JAX_FAULT', None)
  return {**e, **(extra or {})}


def start(
  args: list[str], data_dir: str, devices: int = 4, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, 'main.py', *args],
    cwd=ROOT,
    env=env(data_dir, devices, extra_env),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def run(
  args: list[str],
  data_dir: str,
  devices: int = 4,
  timeout: float = 300,
  extra_env: dict[str, str] | None = None,
):
  proc = start(args, data_dir, devices, extra_env)
  out, err = proc.communicate(timeout=timeout)
  return proc.returncode, out, err


def summary(workdir: str) -> dict:
  with open(os.path.join(workdir, 'summary.json')) as f:
    return json.load(f)


def metric_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = []
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line being written right now
        pass
    return rows


def tiny_config(data_dir: str, **overrides):
  """configs/resnet.py shrunk for tests: resnet_tiny at 16x16, batch 32, eval batch 64.

  `overrides` set fields by dotted name: tiny_config(d, **{'optimizer.lr': 0.5}, num_train_steps=4).
  """
  from configs import resnet

  config = resnet.get_config()
  config.model.name = 'resnet_tiny'
  config.data_dir = data_dir
  config.image_size = 16
  config.batch_size = 32
  config.eval_batch_size = 64
  return set_fields(config, **overrides)


def set_fields(config, **overrides):
  """`config` with fields set by dotted name: set_fields(c, **{'optimizer.lr': 0.5}, seed=1).

  Only existing fields (cnn_jax.core.config_fields.set_field): a misspelt one is a UserError.
  """
  for key, value in overrides.items():
    config_fields.set_field(config, key, value)
  return config


# ---------------------------------------------------------------------------------------------
# Tiny models without compute: keys, variable shapes, parameter counts.


def key(seed: int = 0) -> jax.Array:
  """A PRNG key of the 'rbg' kind: a threefry random init compiles ~10x slower on XLA:CPU
  (resnet_tiny: 13 s vs 1.4 s)."""
  return jax.random.key(seed, impl='rbg')


def trace_init(model, input_shape: tuple[int, ...] = (1, 32, 32, 3), **init_kwargs) -> dict:
  """The variables of `model.init(key, x, **init_kwargs)` for an `input_shape` x, as
  ShapeDtypeStructs (jax.eval_shape: no compute). Traces every call: for a test that watches the
  modules' calls during init (nn.intercept_methods); others use the cached `shapes`."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **init_kwargs), x)


@functools.lru_cache(maxsize=256)
def _cached_shapes(model, input_shape: tuple[int, ...], init_kwargs: tuple) -> dict:
  return trace_init(model, input_shape, **dict(init_kwargs))


def shapes(model, input_shape: tuple[int, ...] = (1, 32, 32, 3), **init_kwargs) -> dict:
  """`trace_init`'s variable shapes, cached by (model, input_shape, init_kwargs): tracing
  densenet121 or fcn_resnet50 takes a second or two, and several tests need the same model. Each
  call returns its own dicts."""
  args = (model, tuple(input_shape), tuple(sorted(init_kwargs.items())))
  try:
    hash(args)
  except TypeError:  # a module with unhashable fields (e.g. lists)
    return trace_init(model, input_shape, **init_kwargs)
  return jax.tree.map(lambda leaf: leaf, _cached_shapes(*args))


def count(tree) -> int:
  """Elements in the leaves of `tree` (arrays or ShapeDtypeStructs): a parameter count."""
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def param_count(model, input_shape: tuple[int, ...] = (1, 32, 32, 3), **init_kwargs) -> int:
  """Parameters of `model` initialised on `input_shape` inputs (no compute)."""
  return count(shapes(model, input_shape, **init_kwargs)['params'])
