"""Two processes joined by jax.distributed (CPU collectives, 2 devices each) = one with 4."""

import socket

import helpers
import jax
import numpy as np
import pytest

from cnn_jax import train
from cnn_jax.core.checkpoint import Checkpointer
from configs import resnet

# 4 steps at a constant small learning rate: the gloo all-reduce sums in another order than the
# in-process one, and early training of a tiny BatchNorm net amplifies such float differences
# (0.002 in the loss by step 7 at lr 0.1); few gentle steps keep them at float level.
ARGS = [
  *helpers.TINY,
  '--config.num_train_steps=4',
  '--config.optimizer.schedule=constant',
  '--config.optimizer.lr=0.01',
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _final_state(workdir: str, data_dir: str):
  config = resnet.get_config()
  config.model.name = 'resnet_tiny'
  config.image_size = 16
  config.data_dir = data_dir
  template = train.initial_state(train.build(config, workdir))
  return Checkpointer(f'{workdir}/checkpoints').restore(template)


@pytest.mark.slow  # end to end, about a minute on 2 cores: CI runs it in its second step
def test_two_hosts_match_one(tmp_path, data_dir):
  one = str(tmp_path / 'one')
  code, _, err = helpers.run([*ARGS, f'--workdir={one}'], data_dir, devices=4)
  assert code == 0, err[-2000:]
  two = str(tmp_path / 'two')
  port = _free_port()
  procs = [
    helpers.start(
      [
        *ARGS,
        f'--workdir={two}',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      data_dir,
      devices=2,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs, strict=True):
    assert p.returncode == 0, err[-3000:]
  summary = helpers.summary(two)
  assert (summary['processes'], summary['devices'], summary['steps']) == (2, 4, 4)
  a, b = _final_state(one, data_dir), _final_state(two, data_dir)
  assert int(a.step) == int(b.step) == 4
  for tree in ('params', 'batch_stats'):
    leaves_a = jax.tree_util.tree_leaves_with_path(getattr(a, tree))
    for (path, x), y in zip(leaves_a, jax.tree.leaves(getattr(b, tree)), strict=True):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f'{tree}{path}')
