"""Resuming a run: the config a workdir was trained with against the one given now, the checkpoint
restored into a state, a fresh state (a pure function of config.seed, with init_from's weights),
and a finished run recognised so that a relaunch trains nothing."""

import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.train.experiment import Experiment, input_shape
from cnn_jax.train.state import TrainState
from cnn_jax.weights import transfer

PyTree = Any

# A workdir keeps the config it was trained with (CONFIG_FILE, written when training starts). On
# resume and eval the config is compared with it before anything compiles:
# - these fields define what the checkpoint holds: a difference is an error;
MODEL_FIELDS = ('model', 'dataset', 'image_size', 'image_channels', 'optimizer.name', 'freeze')
# - these may change freely: how long the run goes, how often it logs, evaluates and saves, where
#   its data and teacher live, how it runs in parallel, what it does with NaNs;
RESUMABLE_FIELDS = (
  'num_train_steps',
  'num_epochs',
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'keep_checkpoints',
  'data_dir',
  'eval_batch_size',
  'parallel',
  'skip_nonfinite_steps',
  'distill.teacher_workdir',
  'distill.train_teacher',
  'noisy_student.pseudo_labels',
  'init_from',  # read on a fresh start only
)
# - any other difference (optimizer.lr, batch_size, seed ...) is allowed with a warning: the run
#   goes on, but it is no longer the run it started as.
CONFIG_FILE = 'config.json'


def _flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _in(name: str, fields: tuple[str, ...]) -> bool:
  return any(name == f or name.startswith(f + '.') for f in fields)


def config_changes(exp: Experiment) -> tuple[list[str], list[str]]:
  """(model-defining, other) differences 'field: trained -> now' between exp.config and the
  config exp.workdir was trained with; ([], []) when the workdir has none."""
  path = os.path.join(exp.workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      then = _flatten(json.load(f))
  except FileNotFoundError:
    return [], []
  except (OSError, ValueError) as e:
    logging.warning('Cannot read %s (%s); the config is not compared with it.', path, e)
    return [], []
  now = _flatten(json.loads(exp.config.to_json_best_effort()))
  for flat in (then, now):  # -1 means "the dataset's": compare what it resolves to
    if isinstance(flat.get('model.num_classes'), int) and flat['model.num_classes'] <= 0:
      flat['model.num_classes'] = exp.num_classes
  blocking, other = [], []
  for name in sorted(set(then) | set(now)):
    if _in(name, RESUMABLE_FIELDS) or then.get(name) == now.get(name):
      continue
    missing = name not in then or name not in now  # a field added or removed since: a warning
    a, b = (repr(d[name]) if name in d else 'absent' for d in (then, now))
    (other if missing or not _in(name, MODEL_FIELDS) else blocking).append(f'{name}: {a} -> {b}')
  return blocking, other


def listed(items: list[str], limit: int = 6) -> str:
  more = f' and {len(items) - limit} more' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def restore_checkpoint(exp: Experiment, ckpt: Checkpointer, step: int) -> TrainState:
  """The checkpoint of `step` as a host TrainState, once exp.config has been compared with the
  config the workdir was trained with (before anything compiles)."""
  blocking, other = config_changes(exp)
  if blocking:
    raise UserError(
      f'the checkpoint {ckpt.step_dir(step)} does not fit this model and optimizer: it was '
      f'trained with another config (trained -> now: {listed(blocking)}); set those fields '
      f'back (its config is in {os.path.join(exp.workdir, CONFIG_FILE)}) or use another --workdir'
    )
  explain = ''
  if other:
    explain = f'config changes since: {listed(other)}'
    logging.warning('%s: restoring with %s.', exp.workdir, explain)
  return ckpt.restore(initial_state(exp), step, explain=explain)


def restore_variables(exp: Experiment) -> dict[str, PyTree]:
  """{'params', 'batch_stats'} of the latest checkpoint in exp.workdir (host arrays)."""
  ckpt = Checkpointer(os.path.join(exp.workdir, 'checkpoints'), keep=exp.config.keep_checkpoints)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f'no checkpoint in {exp.workdir}/checkpoints; train that run first')
    state = restore_checkpoint(exp, ckpt, step)
  finally:
    ckpt.close()
  return {'params': state.params, 'batch_stats': state.batch_stats}


def initial_state(exp: Experiment) -> TrainState:
  """A fresh state on the host, a pure function of config.seed."""
  # The 'rbg' generator for the weights: XLA:CPU compiles a threefry init of a ResNet about 10x
  # slower (resnet_tiny: 13 s vs 1.4 s); the train key stays threefry (dropout masks).
  init_key = jax.random.key(exp.config.seed, impl='rbg')
  train_key = jax.random.PRNGKey(exp.config.seed)
  dummy = jnp.zeros((1, *input_shape(exp.config)), jnp.float32)
  variables = jax.jit(functools.partial(exp.model.init, train=False))(init_key, dummy)
  params = variables['params']
  return jax.device_get(
    TrainState(
      step=jnp.array(0, jnp.int32),
      params=params,
      batch_stats=variables.get('batch_stats', {}),
      opt_state=exp.tx.init(params),
      rng=train_key,
    )
  )


def starting_state(exp: Experiment) -> TrainState:
  """The state a fresh run starts from: initial_state, with the weights config.init_from names
  (cnn_jax/weights/transfer.py); config.freeze checked against the model's parameters."""
  state = initial_state(exp)
  transfer.check_freeze(state.params, exp.config.get('freeze', ''))
  init_from = exp.config.get('init_from')
  if init_from is None or not init_from.path:
    return state
  fresh = {'params': state.params, 'batch_stats': state.batch_stats}
  variables = transfer.initialise(exp.config, exp.model, fresh, input_shape(exp.config))
  return state.replace(
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state=exp.tx.init(variables['params']),
  )


def finished_summary(exp: Experiment) -> dict[str, Any] | None:
  """The summary of a run in exp.workdir that already trained all exp.num_steps, else None.

  A relaunch of a finished run trains nothing, evaluates nothing and rewrites nothing. A longer
  run (num_train_steps raised) resumes instead; a changed model is the resume path's error.
  """
  path = os.path.join(exp.workdir, 'summary.json')
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if summary.get('steps') != exp.num_steps or Checkpointer.find_latest(exp.workdir) != (
    exp.num_steps
  ):
    return None
  blocking, other = config_changes(exp)
  if blocking:
    return None  # restore_checkpoint names the fields
  if other:
    logging.warning(
      'config changes since the run (not applied: it is finished): %s; use another --workdir '
      'to train with them.',
      listed(other),
    )
  logging.info(
    'The run in %s already finished its %d steps: nothing to train. Its summary is %s.',
    exp.workdir,
    exp.num_steps,
    path,
  )
  return summary
