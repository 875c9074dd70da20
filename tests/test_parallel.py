"""One per-device step, three ways to run it: 1 device, shard_map over 4, pmap over 4."""

import functools

import jax
import numpy as np
import pytest

from cnn_jax import data, train
from configs import resnet


def _config():
  config = resnet.get_config()
  config.model.name = 'resnet_tiny'
  config.image_size = 16
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 3
  config.optimizer.warmup_steps = 0
  return config


def _run(config, workdir, devices, data_dir):
  config.data_dir = data_dir
  config.parallel = 'pmap' if devices[0] == 'pmap' else 'shard_map'
  devs = jax.devices()[: devices[1]]
  exp = train.build(config, workdir, devs)
  runner = exp.runner
  state = runner.put_state(train.initial_state(exp))
  step = runner.compile(
    functools.partial(train.train_step, model=exp.model, tx=exp.tx, task=exp.task)
  )
  batches = data.train_iterator(
    exp.data, seed=0, global_batch=16, start_step=0, num_steps=3, image_size=16, channels=3
  )
  for batch in batches:
    state, metrics = step(state, runner.put_batch(batch))
  return jax.device_get(runner.get_state(state)), runner.get_output(metrics)


# About a minute per runner on 2 cores: slow (CI's second step: pytest -m slow).
@pytest.mark.slow
@pytest.mark.parametrize('kind', ['shard_map', 'pmap'])
def test_four_devices_match_one(kind, tmp_path, data_dir):
  assert jax.device_count() == 4
  one, m1 = _run(_config(), str(tmp_path / 'one'), ('shard_map', 1), data_dir)
  four, m4 = _run(_config(), str(tmp_path / 'four'), (kind, 4), data_dir)
  # Same global batch, so the same averaged gradient and the same BatchNorm moments; only the
  # order of float sums differs.
  for tree in ('params', 'batch_stats'):
    flat1 = jax.tree_util.tree_leaves_with_path(getattr(one, tree))
    flat4 = jax.tree.leaves(getattr(four, tree))
    for (path, a), b in zip(flat1, flat4, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f'{tree}{path}')
  np.testing.assert_allclose(m1['loss'], m4['loss'], rtol=1e-5)
  assert int(four.step) == 3
  # Moved at all: the comparison would be empty if nothing trained.
  init = jax.device_get(train.initial_state(train.build(_config(), str(tmp_path / 'i'))))
  assert not np.allclose(init.params['head']['kernel'], four.params['head']['kernel'])
