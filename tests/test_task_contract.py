"""The task contract and the config checks around it.

- A new task needs no edit of the step, the loop or the data pipeline: a regression of each
  image's mean brightness, defined here, registered by name, trains through cli.run (what main.py
  calls) on digits.
- The logged learning rate is the one the optimizer applied, also after a skipped step.
- Every numeric field of configs/default.py has a declared range, and a value outside it is one
  line naming the field, before anything is built.
"""

import dataclasses
import json
from typing import Any, ClassVar

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import lax

from cnn_jax import cli, tasks, train
from cnn_jax.core import config_fields, ranges
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from configs import default


@dataclasses.dataclass(frozen=True)
class Brightness(tasks.Task):
  """Regresses each image's mean pixel (after normalisation) from the net's first output."""

  primary_metric: ClassVar[str] = 'mse'

  @classmethod
  def from_config(cls, setup: tasks.TaskSetup) -> 'Brightness':
    return cls()

  def _errors(self, outputs: jax.Array, batch: tasks.Batch) -> jax.Array:
    target = jnp.mean(batch['image'], axis=(1, 2, 3))
    return jnp.square(outputs[:, 0].astype(jnp.float32) - target)  # (B,)

  def loss(self, outputs: jax.Array, batch: tasks.Batch) -> jax.Array:
    return self._errors(outputs, batch).mean()

  def train_metrics(self, outputs: jax.Array, batch: tasks.Batch) -> dict[str, jax.Array]:
    return {'mse': lax.pmean(self.loss(outputs, batch), AXIS)}

  def eval_sums(self, outputs: jax.Array, batch: tasks.Batch) -> dict[str, jax.Array]:
    mask = batch['mask']
    return {'squared': jnp.sum(self._errors(outputs, batch) * mask), 'count': jnp.sum(mask)}

  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    return {'mse': float(totals['squared']) / float(totals['count'])}


def test_a_task_defined_here_trains_through_the_cli(data_dir, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(tasks.TASKS, 'brightness', Brightness)
  config = helpers.tiny_config(
    data_dir, task='brightness', num_train_steps=30, log_every_steps=10, **{'optimizer.lr': 0.05}
  )
  workdir = str(tmp_path / 'run')
  cli.run(config, workdir, 'train')
  summary = json.loads(capsys.readouterr().out)
  assert summary['steps'] == 30 and set(summary) >= {'test_mse', 'params_sha256'}
  train_rows = [r for r in helpers.metric_rows(workdir) if r.get('split') == 'train']
  assert [r['step'] for r in train_rows] == [10, 20, 30]
  # It learned: the error of the last 10 steps is a fraction of the first 10's, and the test
  # error is below the training error of the first 10 steps.
  assert train_rows[-1]['mse'] < 0.5 * train_rows[0]['mse']
  assert summary['test_mse'] < train_rows[0]['mse']
  assert isinstance(train.build(config, str(tmp_path / 'probe')).task, Brightness)


def test_an_unknown_task_is_named_with_the_valid_ones(data_dir, tmp_path):
  with pytest.raises(UserError, match=r"config.task='segmentaton' is not a task; did you mean"):
    train.build(helpers.tiny_config(data_dir, task='segmentaton'), str(tmp_path / 'w'))
  with pytest.raises(UserError, match=r"config.task='segmentation' trains on segmentation data"):
    train.build(helpers.tiny_config(data_dir, task='segmentation'), str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_logged_learning_rate_is_the_applied_one_after_a_skipped_step(
  data_dir, tmp_path, monkeypatch
):
  config = helpers.tiny_config(
    data_dir,
    num_train_steps=6,
    log_every_steps=1,
    skip_nonfinite_steps=2,
    **{'optimizer.schedule': 'linear', 'optimizer.lr': 0.4},
  )
  real = train.loop.train_batches

  def poisoned(exp, start_step):  # step 3's images are NaN: its update is skipped
    for step, batch in enumerate(real(exp, start_step), start_step + 1):
      yield {**batch, 'image': np.full_like(batch['image'], np.nan)} if step == 3 else batch

  monkeypatch.setattr(train.loop, 'train_batches', poisoned)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  logged = {r['step']: r['lr'] for r in helpers.metric_rows(workdir) if r.get('split') == 'train'}
  schedule = train.build(config, str(tmp_path / 'probe')).schedule
  # Updates applied by the end of step s: s, but one fewer from step 3 on; the rate logged at s
  # is the one of the latest applied update, schedule(count - 1).
  applied = {s: s - (s >= 3) for s in range(1, 7)}
  assert logged == pytest.approx({s: float(schedule(applied[s] - 1)) for s in range(1, 7)})
  assert logged[4] != pytest.approx(float(schedule(3)))  # what the trainer's own step gave
  # ... and optax's count, saved with the final state, agrees.
  exp = train.build(config, workdir)
  state = train.restore_checkpoint(exp, Checkpointer(f'{workdir}/checkpoints'), 6)
  assert train.optim.applied_learning_rate(schedule, state.opt_state) == pytest.approx(logged[6])


def _numeric_fields(config: ml_collections.ConfigDict) -> list[str]:
  out = []
  for name in config_fields.field_names(config):
    value = config_fields.get_field(config, name)
    items = value if isinstance(value, tuple | list) else (value,)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
      out.append(name)
  return out


def _declared() -> dict[str, ranges.Range]:
  declared = {}
  for table in (
    train.RANGES,
    train.optim.RANGES,
    train.experiment.data_fields.RANGES,
    train.experiment.models.RANGES,
    tasks.Task.config_ranges,
  ):
    declared.update(table)
  return declared


def _outside(allowed: ranges.Range) -> Any:
  """A value out of `allowed`; None when every value of the field's type is in it."""
  if allowed.only:
    return max(allowed.only) + 1
  if allowed.low is not None:
    below = allowed.low - (1 if allowed.integer else 0.5)
    return below - 1 if below in allowed.also else below
  if allowed.high is not None:
    return allowed.high + 1
  return None


DEFAULT_FIELDS = _numeric_fields(default.get_config())


def test_every_numeric_default_field_has_a_declared_range():
  assert 'optimizer.lr' in DEFAULT_FIELDS and 'batch_size' in DEFAULT_FIELDS
  missing = [f for f in DEFAULT_FIELDS if f not in _declared()]
  assert not missing, f'numeric fields without a declared range: {missing}'


@pytest.mark.parametrize('field', DEFAULT_FIELDS)
def test_each_numeric_field_out_of_range_is_one_line(field, data_dir):
  config = helpers.tiny_config(data_dir)
  allowed = _declared()[field]
  current = config_fields.get_field(config, field)
  items = current if isinstance(current, tuple) else (current,)
  assert all(allowed.contains(v) for v in items)  # the default is valid
  bad = _outside(allowed)
  if bad is None:  # eval_every_steps: any whole number means something (ml_collections checks
    assert allowed.integer and isinstance(current, int)  # the type: 0.5 is refused when set)
    return
  value = (bad,) if isinstance(current, tuple) else bad
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  with config.unlocked():
    config_fields.set_field(config, field, value)
  with pytest.raises(UserError, match=rf'^config\.{field}=.* is out of range; use ') as e:
    train.check_ranges(config)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['--config.optimizer.lr=-0.1'],
      'error: config.optimizer.lr=-0.1 is out of range; use a number > 0',
    ),
    (
      ['--config.batch_size=0'],
      'error: config.batch_size=0 is out of range; use a whole number >= 1',
    ),
    (
      ['--config.image_size=1'],
      "error: config.image_size=1 is less than half of what model 'resnet20' downsamples",
    ),
    (
      ['--config=configs/does_not_exist.py'],
      'error: --config=configs/does_not_exist.py: there is no file',
    ),
  ],
)
@pytest.mark.parametrize('onednn', ['0', '1'])
def test_bad_input_through_main_is_one_line_before_training(
  args, message, onednn, data_dir, tmp_path
):
  """The issue's four bad inputs, with TensorFlow's oneDNN notice forced on and off."""
  workdir = tmp_path / 'w'
  argv = ['--config=configs/resnet.py', f'--workdir={workdir}', *args]
  if args[0].startswith('--config='):
    argv = [args[0], f'--workdir={workdir}']
  code, out, err = helpers.run(
    argv, data_dir, devices=1, extra_env={'TF_ENABLE_ONEDNN_OPTS': onednn}
  )
  assert code == 2 and err.splitlines() == [err.strip()] and err.startswith(message), err
  assert not workdir.exists()
