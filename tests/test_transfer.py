"""config.init_from and config.freeze (cnn_jax/weights/transfer.py): fine-tuning a new head on a
frozen
backbone, loading rules, and their errors."""

import os
import re

import helpers
import jax
import numpy as np
import optax
import pytest
from flax import traverse_util

from cnn_jax import models, train
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.nn import layers
from cnn_jax.weights import transfer


def _flat(tree):
  return traverse_util.flatten_dict(jax.device_get(tree), sep='/')


def _source_run(tmp_path, data_dir, num_classes: int) -> str:
  """A workdir whose one checkpoint holds a resnet_tiny with `num_classes` outputs (seed 7)."""
  workdir = str(tmp_path / 'source')
  config = helpers.tiny_config(data_dir, seed=7)
  config.model.num_classes = num_classes
  exp = train.Experiment(
    config=config,
    workdir=workdir,
    data=None,
    model=train.create_model(config, num_classes),
    num_classes=num_classes,
    task=None,
    steps_per_epoch=1,
    num_steps=1,
    schedule=None,
    tx=optax.sgd(0.1),
    runner=None,
  )
  state = train.initial_state(exp)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  ckpt.save(3, state)
  ckpt.close()
  return workdir


def test_new_head_on_a_frozen_backbone(tmp_path, data_dir):
  """A 7-class checkpoint fine-tuned on the 10 digits: backbone and its BatchNorm statistics
  bit-identical to the checkpoint's after training, the new head trained."""
  source = _source_run(tmp_path, data_dir, num_classes=7)
  saved = Checkpointer(os.path.join(source, 'checkpoints')).restore(None)
  config = helpers.tiny_config(data_dir, num_train_steps=4, seed=0)
  config.init_from.path = source
  config.init_from.skip = '^head/'
  config.freeze = '^(?!head/)'
  config.optimizer.lr = 0.5
  workdir = str(tmp_path / 'finetune')
  train.train_and_evaluate(config, workdir)

  exp = train.build(config, str(tmp_path / 'template'))
  fresh = train.initial_state(exp)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  after = ckpt.restore(fresh)
  ckpt.close()
  before_params, before_stats = _flat(saved['params']), _flat(saved['batch_stats'])
  params, stats = _flat(after.params), _flat(after.batch_stats)
  backbone = [k for k in params if not k.startswith('head/')]
  assert len(backbone) > 10 and int(after.step) == 4
  for name in backbone:
    np.testing.assert_array_equal(params[name], before_params[name], err_msg=name)
  assert stats.keys() == before_stats.keys()
  for name in stats:
    np.testing.assert_array_equal(stats[name], before_stats[name], err_msg=name)
  # The head: 10 classes, not the checkpoint's 7, and moved away from its fresh init.
  fresh_params = _flat(fresh.params)
  assert params['head/kernel'].shape[-1] == 10 and before_params['head/kernel'].shape[-1] == 7
  for name in ('head/kernel', 'head/bias'):
    assert not np.array_equal(params[name], fresh_params[name]), name


@pytest.mark.slow  # trains a second run (about 20 s)
def test_fine_tuning_everything_moves_the_backbone(tmp_path, data_dir):
  source = _source_run(tmp_path, data_dir, num_classes=10)
  saved = _flat(Checkpointer(os.path.join(source, 'checkpoints')).restore(None)['params'])
  config = helpers.tiny_config(data_dir, num_train_steps=2)
  config.init_from.path = os.path.join(source, 'checkpoints', '3')  # a step folder works too
  workdir = str(tmp_path / 'all')
  train.train_and_evaluate(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  after = _flat(ckpt.restore(None)['params'])
  ckpt.close()
  assert not np.array_equal(after['stem_conv/kernel'], saved['stem_conv/kernel'])


def test_load_rules():
  fresh = {
    'params': {'a': {'kernel': np.zeros((2, 3))}, 'head': {'kernel': np.zeros((3, 4))}},
    'batch_stats': {'bn': {'mean': np.zeros(3)}},
  }
  source = {
    'params': {'a': {'kernel': np.ones((2, 3))}, 'head': {'kernel': np.ones((3, 5))}},
    'batch_stats': {'bn': {'mean': np.ones(3)}},
  }
  out, report = transfer.load_variables(fresh, source, skip='^head/')
  assert report['loaded'] == ['a/kernel', 'bn/mean'] and report['kept'] == ['head/kernel']
  assert report['unused'] == ['head/kernel']
  np.testing.assert_array_equal(out['params']['a']['kernel'], 1)
  np.testing.assert_array_equal(out['params']['head']['kernel'], 0)
  np.testing.assert_array_equal(out['batch_stats']['bn']['mean'], 1)
  out, report = transfer.load_variables(fresh, source, load='^bn/', skip='^head/')
  assert report['loaded'] == ['bn/mean']
  np.testing.assert_array_equal(out['params']['a']['kernel'], 0)
  with pytest.raises(UserError, match=r'1 of another shape \(head/kernel \(3, 5\) -> \(3, 4\)\)'):
    transfer.load_variables(fresh, source)
  with pytest.raises(UserError, match='take no weight'):
    transfer.load_variables(fresh, source, load='nothing')
  with pytest.raises(UserError, match=r"config.init_from.skip='\(' is not a regular expression"):
    transfer.load_variables(fresh, source, skip='(')


def test_frozen_parameters_get_no_update_not_even_weight_decay():
  params = {'a': {'kernel': np.ones((2, 2), np.float32)}, 'head': {'kernel': np.ones((2, 2))}}
  grads = jax.tree.map(np.ones_like, params)
  tx = transfer.freeze(optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.5, 0.9)), '^a/')
  state = tx.init(params)
  for _ in range(2):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(params['a']['kernel'], 1)
  assert np.all(params['head']['kernel'] < 0)


@pytest.mark.parametrize(
  'field, value, message',
  [
    ('freeze', 'no_such_layer', "config.freeze='no_such_layer' matches none of the model's"),
    ('freeze', '.', 'matches every parameter of the model: nothing would train'),
    ('init_from.path', '/nonexistent/run', 'no such workdir or checkpoint'),
    ('init_from.path', '/nonexistent/w.pth', 'no such file'),
  ],
)
def test_bad_transfer_settings_are_one_clear_line(tmp_path, data_dir, field, value, message):
  config = helpers.tiny_config(data_dir, num_train_steps=1, **{field: value})
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=message):
    train.train_and_evaluate(config, str(workdir))
  assert not (workdir / 'checkpoints').exists() or not os.listdir(workdir / 'checkpoints')


def test_a_workdir_without_checkpoints_is_refused_before_training(tmp_path, data_dir):
  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  config = helpers.tiny_config(data_dir, num_train_steps=1, **{'init_from.path': str(empty)})
  with pytest.raises(UserError, match='holds no finished checkpoint; train that run first'):
    train.build(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_frozen_batch_norm_layers_run_as_in_evaluation():
  model = models.create('resnet_tiny', num_classes=10)
  rng = np.random.default_rng(0)
  x = jax.numpy.asarray(rng.normal(size=(4, 16, 16, 3)), jax.numpy.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  stats = jax.tree.map(lambda v: v + rng.uniform(0.5, 1.5, v.shape), variables['batch_stats'])
  variables = {'params': variables['params'], 'batch_stats': stats}
  evaluated = jax.jit(lambda v: model.apply(v, x, train=False))(variables)

  def training(pattern):
    def apply(v):
      with layers.frozen_norms(pattern):  # active while jit traces the model
        return model.apply(v, x, train=True, mutable=['batch_stats'])

    return jax.jit(apply)(variables)

  out, updates = training(re.compile('.'))
  np.testing.assert_allclose(out, evaluated, rtol=1e-5, atol=1e-5)
  assert _flat(updates['batch_stats']).keys() == _flat(stats).keys()
  for name, value in _flat(updates['batch_stats']).items():
    np.testing.assert_array_equal(value, _flat(stats)[name], err_msg=name)
  # Only the matched layers: the stem's statistics stay, the others move.
  _, updates = training(re.compile('^stem_bn/'))
  moved = {
    k for k, v in _flat(updates['batch_stats']).items() if not np.array_equal(v, _flat(stats)[k])
  }
  assert moved and not any(k.startswith('stem_bn/') for k in moved)
  assert not np.allclose(training(None)[0], evaluated, atol=1e-3)
