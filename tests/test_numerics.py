"""NaN and Inf: caught before they are logged or saved, or skipped (opt-in) up to a limit.

Non-finite values come from real causes: a batch of NaN images (a corrupt input, injected where
the trainer reads its batches) or a learning rate that overflows float32.
"""

import functools
import json
import os

import flax.linen as nn
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import tasks, train
from cnn_jax.core import parallel
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS

# Keyword defaults of helpers.tiny_config; a call's own keywords win.
_tiny = functools.partial(
  helpers.tiny_config,
  num_train_steps=8,
  log_every_steps=4,
  eval_every_steps=-1,
  checkpoint_every_steps=2,  # steps 2 and 6 are saved without being logged
  keep_checkpoints=3,
)


def _poison(monkeypatch, steps):
  """The training batches of `steps` (1-based) become NaN images: a corrupt input."""
  real = train.loop.train_batches

  def batches(exp, start_step):
    for step, batch in enumerate(real(exp, start_step), start_step + 1):
      if step in steps:
        batch = {**batch, 'image': np.full_like(batch['image'], np.nan)}
      yield batch

  monkeypatch.setattr(train.loop, 'train_batches', batches)


def _record_saves(monkeypatch) -> dict[int, str]:
  """{step: fingerprint} of every state handed to Checkpointer.save."""
  saved = {}
  real = Checkpointer.save

  def save(self, step, state, extra=None):
    host = jax.device_get(state)
    saved[step] = train.fingerprint(host.params, host.batch_stats)
    return real(self, step, state, extra)

  monkeypatch.setattr(Checkpointer, 'save', save)
  return saved


def _train_rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row for row in map(json.loads, f) if row['split'] == 'train']


def test_nan_stops_the_run_and_the_last_checkpoint_is_intact(tmp_path, data_dir, monkeypatch):
  workdir = str(tmp_path / 'run')
  _poison(monkeypatch, {5})
  saved = _record_saves(monkeypatch)
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(_tiny(data_dir), workdir)
  message = str(e.value)
  # Found at the checkpoint step 6, before saving it (the next log step would be 8).
  assert message.startswith(
    'non-finite grad_norm, loss, param_norm from step 5 (checked at step 6)'
  )
  assert 'Nothing after step 4 was saved: a rerun resumes from its checkpoint.' in message
  assert 'set config.skip_nonfinite_steps=N' in message and '\n' not in message
  assert sorted(saved) == [2, 4]
  directory = os.path.join(workdir, 'checkpoints')
  assert sorted(os.listdir(directory)) == ['2', '4']
  assert [r['step'] for r in _train_rows(workdir)] == [4]
  # The last good checkpoint restores (its hash verified) to exactly the state that was saved.
  ckpt = Checkpointer(directory)
  state = ckpt.restore(train.initial_state(train.build(_tiny(data_dir), workdir)))
  ckpt.close()
  assert int(state.step) == 4
  assert train.fingerprint(state.params, state.batch_stats) == saved[4]


def test_skip_mode_skips_counts_and_gives_up_after_the_limit(tmp_path, data_dir, monkeypatch):
  workdir = str(tmp_path / 'run')
  _poison(monkeypatch, {3, 5, 7})
  with pytest.raises(train.NonFiniteError) as e:
    train.train_and_evaluate(_tiny(data_dir, skip_nonfinite_steps=2), workdir)
  assert str(e.value) == (
    '3 steps with a non-finite loss, gradient or update were skipped, the last at step 7: more '
    'than config.skip_nonfinite_steps=2. Nothing after step 6 was saved: a rerun resumes from '
    'its checkpoint. Lower optimizer.lr or check the input data.'
  )
  # Steps 3 and 5 were skipped and the run went on: the logs count them, and their NaNs do not
  # reach the logged means.
  (row,) = _train_rows(workdir)
  assert row['step'] == 4 and row['skipped_steps'] == 1 and np.isfinite(row['loss'])
  directory = os.path.join(workdir, 'checkpoints')
  assert sorted(os.listdir(directory)) == ['2', '4', '6']
  ckpt = Checkpointer(directory)
  assert [ckpt.extra(s)['skipped_steps'] for s in (2, 4, 6)] == [0, 1, 2]  # survives a restart
  state = ckpt.restore(train.initial_state(train.build(_tiny(data_dir), workdir)), 6)
  ckpt.close()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves((state.params, state.batch_stats)))


class _Tiny(nn.Module):
  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Dense(4)(x.reshape(x.shape[0], -1))
    x = nn.BatchNorm(use_running_average=not train, axis_name=AXIS if train else None)(x)
    return nn.Dense(3)(x)


def _step_once(images, *, lr=0.1, skip_nonfinite=True):
  """One train_step on 4 devices: (state before, state after, metrics), on the host."""
  model, tx = _Tiny(), optax.sgd(lr, momentum=0.9)
  variables = model.init(jax.random.key(0), images[:1])
  state = train.TrainState(
    step=jnp.array(0, jnp.int32),
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state=tx.init(variables['params']),
    rng=jax.random.PRNGKey(0),
  )
  runner = parallel.ShardMapRunner()
  step = runner.compile(
    functools.partial(
      train.train_step,
      model=model,
      tx=tx,
      task=tasks.Classification(num_classes=3),
      skip_nonfinite=skip_nonfinite,
    )
  )
  labels = np.arange(len(images), dtype=np.int32) % 3
  after, metrics = step(
    runner.put_state(state), runner.put_batch({'image': images, 'label': labels})
  )
  return jax.device_get(state), jax.device_get(after), runner.get_output(metrics)


def _images(nan_rows=()):
  images = np.random.default_rng(0).normal(size=(8, 2, 2, 1)).astype(np.float32)
  images[list(nan_rows)] = np.nan
  return images


def _unchanged(before, after) -> bool:
  pairs = zip(
    jax.tree.leaves((before.params, before.batch_stats, before.opt_state)),
    jax.tree.leaves((after.params, after.batch_stats, after.opt_state)),
    strict=True,
  )
  return all(np.array_equal(a, b) for a, b in pairs)


def test_a_skipped_step_changes_nothing_but_the_step_counter():
  assert jax.device_count() == 4
  # NaN in the rows of the last device only: every replica must still skip, together.
  before, after, metrics = _step_once(_images(nan_rows=(6, 7)))
  assert metrics['skipped'] == 1 and int(after.step) == 1
  assert _unchanged(before, after)
  before, after, metrics = _step_once(_images())
  assert metrics['skipped'] == 0 and not _unchanged(before, after)
  # Without skip mode the same batch poisons the parameters, and param_norm says so.
  _, after, metrics = _step_once(_images(nan_rows=(6, 7)), skip_nonfinite=False)
  assert 'skipped' not in metrics and not np.isfinite(metrics['param_norm'])
  assert not np.isfinite(np.asarray(after.params['Dense_0']['kernel'])).all()


def test_an_update_that_overflows_the_parameters_is_caught():
  """Finite loss and gradients, but lr=1e30 sends the parameters past float32's range."""
  _, after, metrics = _step_once(_images(), lr=1e30, skip_nonfinite=False)
  assert np.isfinite(metrics['loss']) and np.isfinite(metrics['grad_norm'])
  assert not np.isfinite(metrics['param_norm'])
  before, after, metrics = _step_once(_images(), lr=1e30)
  assert metrics['skipped'] == 1 and _unchanged(before, after)


def test_negative_skip_limit_is_a_clear_error(tmp_path, data_dir):
  message = r'config.skip_nonfinite_steps=-1 is out of range; use a whole number >= 0 \(0: stop'
  with pytest.raises(UserError, match=message):
    train.build(_tiny(data_dir, skip_nonfinite_steps=-1), str(tmp_path / 'w'))
