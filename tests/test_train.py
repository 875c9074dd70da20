"""The trainer end to end, in process: tiny model, few steps, real code paths."""

import functools
import json
import os

import helpers
import jax
import numpy as np
import optax
import pytest

from cnn_jax import tasks, train
from cnn_jax.core import logs
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.train import optim
from configs import lenet5, resnet

# Keyword defaults of helpers.tiny_config; a call's own keywords win.
_tiny = functools.partial(
  helpers.tiny_config,
  num_train_steps=6,
  log_every_steps=2,
  eval_every_steps=3,
  checkpoint_every_steps=3,
)


def test_train_then_eval(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(_tiny(data_dir), workdir)
  assert result['steps'] == 6 and 0 <= result['test_accuracy'] <= 1
  assert len(result['params_sha256']) == 64
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f) == result
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert [(r['step'], r['split']) for r in rows] == [
    (2, 'train'),
    (3, 'validation'),
    (4, 'train'),
    (6, 'train'),
    (6, 'validation'),  # the scheduled evaluation of the last step is the final one
    (6, 'test'),  # read once, at the end
  ]
  assert {'loss', 'accuracy', 'lr', 'images_per_sec'} <= set(rows[0])
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['3', '6'] or sorted(
    os.listdir(os.path.join(workdir, 'checkpoints'))
  ) == ['3', '6']
  assert os.listdir(os.path.join(workdir, 'tensorboard', 'train'))
  # Eval mode restores the last checkpoint and gets the same accuracy.
  again = train.restore_and_evaluate(_tiny(data_dir), workdir)
  assert again['step'] == 6 and again['accuracy'] == pytest.approx(result['validation_accuracy'])
  # A finished run relaunched trains no further: its summary, unchanged.
  assert train.train_and_evaluate(_tiny(data_dir), workdir) == result


def test_lenet5_trains_with_adamw(tmp_path, data_dir):
  config = lenet5.get_config()
  config.data_dir = data_dir
  config.num_train_steps = 4
  config.batch_size = 32
  config.eval_batch_size = 64
  workdir = str(tmp_path / 'lenet')
  result = train.train_and_evaluate(config, workdir)
  assert result['steps'] == 4
  # The run's last checkpoint: the trained weights, moved away from the initial ones, and Adam's
  # moments after 4 updates (an SGD or a do-nothing optimizer has no ScaleByAdamState).
  exp = train.build(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    state = train.restore_checkpoint(exp, ckpt, 4)
  finally:
    ckpt.close()
  initial = train.initial_state(exp)
  assert result['params_sha256'] == train.fingerprint(state.params, state.batch_stats)
  assert result['params_sha256'] != train.fingerprint(initial.params, initial.batch_stats)
  is_adam = lambda s: isinstance(s, optax.ScaleByAdamState)
  (adam,) = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  assert int(adam.count) == 4
  assert any(np.any(np.asarray(m) != 0) for m in jax.tree.leaves(adam.mu))
  assert all(np.all(np.asarray(v) >= 0) for v in jax.tree.leaves(adam.nu))
  assert any(np.any(np.asarray(v) > 0) for v in jax.tree.leaves(adam.nu))


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'batch_size': 30}, 'config.batch_size=30 does not divide over 4 devices'),
    ({'dataset': 'cifar10'}, "dataset 'cifar10' is not prepared"),
    ({'dataset': 'digitz'}, "unknown dataset 'digitz'; closest: digits"),
    ({'parallel': 'pjit'}, "unknown config.parallel 'pjit'"),
  ],
)
def test_bad_input_is_one_clear_line(tmp_path, data_dir, overrides, message):
  with pytest.raises(UserError, match=message.replace('(', r'\(')) as e:
    train.build(_tiny(data_dir, **overrides), str(tmp_path / 'w'))
  assert '\n' not in str(e.value)


def test_image_too_small_for_lenet(tmp_path, data_dir):
  config = lenet5.get_config()
  config.data_dir = data_dir
  config.image_size = 8  # two valid 5x5 convs and two pools need at least 16 pixels
  with pytest.raises(UserError, match="model 'lenet5' cannot take 8x8x3 images"):
    train.build(config, str(tmp_path / 'w'))


def test_num_classes_must_match_dataset(tmp_path, data_dir):
  config = _tiny(data_dir)
  config.model.num_classes = 100
  with pytest.raises(UserError, match='num_classes=100 but dataset .digits. has 10 classes'):
    train.build(config, str(tmp_path / 'w'))


def test_workdir_that_is_a_file(tmp_path, data_dir):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(UserError, match='is a file, not a folder'):
    train.build(_tiny(data_dir), str(path))
  assert path.read_text() == 'x'


def test_schedules():
  config = resnet.get_config('cifar10').optimizer
  schedule = optim.create_schedule(config, 64_000, 390)
  assert [float(schedule(s)) for s in (0, 31_999, 32_000, 48_000)] == pytest.approx(
    [0.1, 0.1, 0.01, 0.001]
  )
  config = resnet.get_config().optimizer  # 1 warmup epoch, then cosine to 0
  schedule = optim.create_schedule(config, 110, 11)
  assert float(schedule(0)) == 0 and float(schedule(11)) == pytest.approx(0.1)
  assert float(schedule(110)) == pytest.approx(0, abs=1e-6)


def test_no_weight_decay_on_biases_and_norms():
  import jax.numpy as jnp

  mask = optim.decay_mask(
    {'conv': {'kernel': jnp.ones((3, 3, 1, 2))}, 'bn': {'scale': jnp.ones(2)}}
  )
  assert mask == {'conv': {'kernel': True}, 'bn': {'scale': False}}


def test_bfloat16_compute_trains(tmp_path, data_dir):
  config = _tiny(data_dir, half_precision=True, num_train_steps=2, eval_every_steps=-1)
  result = train.train_and_evaluate(config, str(tmp_path / 'bf16'))
  assert result['steps'] == 2 and result['test_loss'] == result['test_loss']  # not NaN


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(_tiny(data_dir, num_train_steps=2, eval_every_steps=-1), workdir)
  config = lenet5.get_config()
  config.data_dir = data_dir
  config.batch_size = 32
  config.eval_batch_size = 64
  with pytest.raises(UserError, match='does not fit this model and optimizer') as e:
    train.train_and_evaluate(config, workdir)
  assert '\n' not in str(e.value)
  # Nothing lost: the first run's checkpoint is still there.
  assert '2' in os.listdir(os.path.join(workdir, 'checkpoints'))


def test_divergence_stops_with_the_step_and_metric(tmp_path, data_dir):
  config = _tiny(data_dir, num_train_steps=4, eval_every_steps=-1, log_every_steps=2)
  config.optimizer.lr = 1e30  # overflows float32 at the first update
  config.optimizer.warmup_steps = 0
  with pytest.raises(train.NonFiniteError, match=r'non-finite .*loss.* at step 2'):
    train.train_and_evaluate(config, str(tmp_path / 'nan'))


def test_aux_logits_add_weighted_losses():
  """A model that sows auxiliary logits in training (GoogLeNet's contract) adds weight * CE."""
  import functools

  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from cnn_jax.core import parallel

  class WithAux(nn.Module):
    aux_weight: float = 0.3

    @nn.compact
    def __call__(self, x, *, train=False):
      x = x.reshape(x.shape[0], -1)
      if train or self.is_initializing():
        aux = nn.Dense(3, name='aux')(x)
        if train:
          self.sow('aux_logits', 'aux1', aux)
      return nn.Dense(3, name='head')(x)

  model = WithAux()
  x = np.random.default_rng(0).normal(size=(4, 2, 2, 1)).astype(np.float32)
  y = np.array([0, 1, 2, 1], np.int32)
  params = model.init(jax.random.key(0), x)['params']
  tx = optax.sgd(0.0)
  state = train.TrainState(
    step=jnp.array(0),
    params=params,
    batch_stats={},
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(0),
  )
  runner = parallel.ShardMapRunner(jax.devices()[:1])
  task = tasks.Classification(num_classes=3)
  step = runner.compile(functools.partial(train.train_step, model=model, tx=tx, task=task))
  _, metrics = step(runner.put_state(state), runner.put_batch({'image': x, 'label': y}))
  main = tasks.cross_entropy(model.apply({'params': params}, x), y, 3).mean()
  aux = tasks.cross_entropy(nn.Dense(3).apply({'params': params['aux']}, x.reshape(4, -1)), y, 3)
  assert float(metrics['loss']) == pytest.approx(float(main + 0.3 * aux.mean()), rel=1e-5)


def test_a_row_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
  """kill -9 in the middle of appending to metrics.jsonl leaves half a line; a rerun drops it."""
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
  logs.MetricWriter(str(tmp_path), resume_step=4).close()
  assert [json.loads(line)['step'] for line in path.read_text().splitlines()] == [1]


def test_eval_split_test_reads_the_test_split_only(tmp_path, data_dir):
  result = train.train_and_evaluate(
    _tiny(data_dir, num_train_steps=2, eval_every_steps=-1, eval_split='test'), str(tmp_path)
  )
  assert 'test_accuracy' in result and not any(k.startswith('validation_') for k in result)
  rows = [json.loads(line) for line in open(os.path.join(tmp_path, 'metrics.jsonl'))]
  assert [r['split'] for r in rows if r['split'] != 'train'] == ['test']


def test_an_unknown_eval_split_is_refused_before_anything_runs(tmp_path, data_dir):
  with pytest.raises(UserError, match=r"config.eval_split='valid' is out of range; use "):
    train.train_and_evaluate(_tiny(data_dir, eval_split='valid'), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
