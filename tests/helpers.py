"""Running main.py in a subprocess, the way a user does, with a tiny configuration."""

import json
import os
import subprocess
import sys

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
  """`config` with fields set by dotted name: set_fields(c, **{'optimizer.lr': 0.5}, seed=1)."""
  for key, value in overrides.items():
    parent = config
    *path, last = key.split('.')
    for part in path:
      parent = parent[part]
    parent[last] = value
  return config
