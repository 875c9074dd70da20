"""The trainer: the train state, the per-device steps and the train/eval loops, for every task.

What is learned (classification, segmentation) is a `cnn_jax.tasks` Task: its loss, train metrics
and eval sums; everything else here is shared.
"""

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax

from cnn_jax import data as data_lib
from cnn_jax import models, tasks
from cnn_jax.core import faults, parallel
from cnn_jax.core.checkpoint import Checkpointer, tree_sha256
from cnn_jax.core.errors import UserError
from cnn_jax.core.logs import MetricWriter, write_atomically
from cnn_jax.core.parallel import AXIS
from cnn_jax.nn import layers
from cnn_jax.tasks import cross_entropy  # noqa: F401  (kept as train.cross_entropy)
from cnn_jax.train import optim
from cnn_jax.weights import transfer

PyTree = Any
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  teacher_variables: PyTree = None,
  *,
  model: flax.linen.Module,
  tx: optax.GradientTransformation,
  task: tasks.Task,
  teacher_model: flax.linen.Module | None = None,
  skip_nonfinite: bool = False,
  freeze: str = '',
) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's share of the batch; gradients averaged over AXIS.

  With a `teacher_model` (distillation), its logits on the same augmented images join the batch
  as 'teacher_logits' for the task's loss: the teacher runs in eval mode (running BatchNorm
  statistics, no dropout), outside the differentiated function, and is never updated.

  `skip_nonfinite` (config.skip_nonfinite_steps > 0): a step whose metrics, gradients or new
  parameters, optimizer state or BatchNorm statistics hold a NaN or Inf changes nothing but the
  step counter (so the next step reads the next batch); metrics['skipped'] is 1 for it. Skipped
  steps do not advance optax's own count either, so a schedule runs that many steps behind.

  `freeze` (config.freeze): the BatchNorm layers it matches normalise with their running
  statistics, as in evaluation, and keep them (`tx` already leaves the parameters alone:
  transfer.freeze).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
  if teacher_model is not None:
    teacher_logits = teacher_model.apply(teacher_variables, batch['image'], train=False)
    batch = {**batch, 'teacher_logits': jnp.asarray(teacher_logits, jnp.float32)}

  def loss_fn(params):
    with layers.frozen_norms(transfer.compile_regex(freeze, 'config.freeze')):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=['batch_stats', 'aux_logits'],
        rngs={'dropout': rng},
      )
    loss = task.loss(logits, batch)
    # Auxiliary classifiers (GoogLeNet, DeepLab's FCN head) sow their logits in training only;
    # each adds its loss with the model's weight (0.3 in Szegedy et al. 2015).
    for aux in jax.tree.leaves(updates.get('aux_logits', {})):
      loss = loss + model.aux_weight * task.loss(aux, batch)
    return loss, (logits, updates.get('batch_stats', {}))

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  batch_stats = transfer.keep_frozen_stats(batch_stats, state.batch_stats, freeze)
  # Every device holds the same number of examples, so the mean of the per-device mean
  # gradients is the gradient of the global batch's mean loss. On one device that mean is the
  # gradient itself, but XLA still compiles the all-reduce: on CPU a copy of every gradient
  # (VGG-16: one all-reduce of 553 MB a step in the compiled program).
  if lax.axis_size(AXIS) > 1:
    grads = lax.pmean(grads, AXIS)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  loss = lax.pmean(loss, AXIS)
  metrics = {'loss': loss, **task.train_metrics(logits, batch), 'grad_norm': optax.tree.norm(grads)}
  # BatchNorm statistics are already the same on every device: the norm layers average their
  # batch moments over AXIS (norm_axis_name).
  new = {'params': params, 'batch_stats': batch_stats, 'opt_state': opt_state}
  # Non-finite when an update overflowed the parameters even though the loss and gradients that
  # made it were finite (or when the norm itself overflows float32: above about 1.8e19).
  metrics['param_norm'] = optax.tree.norm(params)
  if skip_nonfinite:
    finite = jnp.array(True)
    for x in jax.tree.leaves((metrics, grads, new)):
      if jnp.issubdtype(x.dtype, jnp.inexact):
        finite &= jnp.all(jnp.isfinite(x))
    # Every replica holds the same values, but the decision must be one: the minimum over AXIS.
    finite = lax.pmin(finite.astype(jnp.int32), AXIS) > 0
    old = {'params': state.params, 'batch_stats': state.batch_stats, 'opt_state': state.opt_state}
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
  return state.replace(step=state.step + 1, **new), metrics


def eval_step(
  state: TrainState, batch: dict[str, jax.Array], *, model: flax.linen.Module, task: tasks.Task
) -> Metrics:
  """The task's sums over this batch (padding masked out), summed over devices; and, for a task
  with `eval_rows`, its per-example rows of the whole global batch under tasks.ROWS."""
  logits = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'], train=False
  )
  out = lax.psum(task.eval_sums(logits, batch), AXIS)
  if hasattr(task, 'eval_rows'):
    # Gathered in device order, which is the global batch's order: the same on every device.
    out[tasks.ROWS] = lax.all_gather(task.eval_rows(logits, batch), AXIS, tiled=True)
  return out


def fingerprint(params: PyTree, batch_stats: PyTree) -> str:
  """SHA-256 of every parameter and BatchNorm statistic, with its name, in a fixed order."""
  return tree_sha256({'params': params, 'batch_stats': batch_stats})


@dataclasses.dataclass
class Experiment:
  """Everything a run needs, built and checked before anything slow starts."""

  config: ml_collections.ConfigDict
  workdir: str
  data: data_lib.Dataset
  model: flax.linen.Module
  num_classes: int
  task: tasks.Task
  steps_per_epoch: int
  num_steps: int
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  runner: Any
  teacher: 'Experiment | None' = None  # distillation: the teacher's run (config.teacher)
  # Noisy Student: the unlabelled part of the train split, and this run's pseudo-labels
  # ({'indices': (M,), 'targets': (M, K)}, rows of `pool`) when it is a student.
  pool: Any = None
  pseudo: dict[str, np.ndarray] | None = None


def _check_workdir(workdir: str) -> None:
  """Fails if `workdir` could not be made or written; creates nothing (build does, once every
  other check has passed, so a run that cannot start leaves no folder behind)."""
  if not workdir:
    raise UserError('--workdir is required: the folder for checkpoints, logs and summary.json')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir={workdir} is a file, not a folder; pass a folder path')
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # the nearest existing folder above it is where it goes
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(
      f'--workdir={workdir} cannot be created: {existing} is a file; pass a folder path'
    )
  if not os.access(existing, os.W_OK | os.X_OK):
    raise UserError(f'--workdir={workdir} is not writable ({existing}); pick another folder')


def _create_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'--workdir={workdir} cannot be created ({e.strerror}); pick another') from e


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> flax.linen.Module:
  """The registry model named by config.model.name; other config.model fields are kwargs."""
  kwargs = {k: v for k, v in config.model.items() if k not in ('name', 'num_classes')}
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.create(
    config.model.name, num_classes=num_classes, dtype=dtype, norm_axis_name=AXIS, **kwargs
  )


def input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, config.image_channels)


def model_summary(config: ml_collections.ConfigDict):
  """cnn_jax.models.summary's per-layer summary of config's model at config's input size (no
  compute).

  num_classes <= 0 is taken from the dataset; a size the model cannot take is a UserError.
  """
  from cnn_jax.models import summary

  num_classes = config.model.num_classes
  if num_classes <= 0:
    spec = data_lib.DATASETS.get(config.dataset)
    num_classes = spec.num_classes if spec else data_lib.load(config.dataset).num_classes
  model = create_model(config, num_classes)
  check_input_size(model, config)
  return summary.summarize(model, input_shape(config))


def check_input_size(model: flax.linen.Module, config: ml_collections.ConfigDict) -> None:
  """Traces the model on the configured input shape (no compute) and explains a failure."""
  shape = input_shape(config)
  try:
    jax.eval_shape(
      functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, *shape))
    )
  except UserError:
    raise
  except Exception as e:  # shape errors surface as TypeError, ValueError, ZeroDivisionError...
    reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
    raise UserError(
      f"model '{config.model.name}' cannot take {shape[0]}x{shape[1]}x{shape[2]} images "
      f'({reason}); set --config.image_size to a size it accepts'
    ) from e


def build(
  config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None
) -> Experiment:
  """Checks the config, workdir and data, and builds model, optimizer and runner.

  `devices`: the devices to run on (default: all devices of all hosts).
  """
  models.create(config.model.name)  # an unknown name fails here, before any data is read
  if config.get('skip_nonfinite_steps', 0) < 0:
    raise UserError(
      f'config.skip_nonfinite_steps={config.skip_nonfinite_steps}; use 0 (stop at the first '
      'NaN or Inf) or N > 0 (skip up to N such steps)'
    )
  runner = parallel.create_runner(config.parallel, devices)
  parallel.check_batch_size('config.batch_size', config.batch_size, runner.num_devices)
  parallel.check_batch_size('config.eval_batch_size', config.eval_batch_size, runner.num_devices)
  data = data_lib.load(config.dataset, config.data_dir or None)
  held_out = tuple(config.get('held_out_classes', ()))
  if held_out and config.get('triplet') is None:
    raise UserError(
      'config.held_out_classes is for metric learning (config.triplet, configs/triplet.py): a '
      'classifier cannot score classes it has no output for; leave it at ()'
    )
  data = data_lib.class_subset(
    data,
    config.get('data_classes', ()),
    config.get('train_examples_per_class', -1),
    seed=config.seed,
    held_out=held_out,
  )
  if config.get('skip_corrupt_images', False):
    data = data_lib.drop_corrupt_images(data)
    for split, bad in data.skipped.items():
      for index, name, reason in bad:
        logging.warning(
          'Leaving out example %d of the %s split%s: not a readable image (%s).',
          index,
          split,
          f' ({name})' if name else '',
          reason,
        )
  data_lib.augment_options(data.spec, config.get('augment'))  # bad options: an error now
  self_training = config.get('noisy_student')
  pool = pseudo = None
  if self_training is not None:
    data, pool = data_lib.labeled_split(
      data, self_training.labeled_fraction, seed=self_training.split_seed
    )
    if self_training.pseudo_labels:
      pseudo = _load_pseudo_labels(self_training.pseudo_labels, len(pool), data.num_classes)
  _check_workdir(workdir)
  num_classes = config.model.num_classes
  if num_classes <= 0:
    num_classes = data.num_classes
  elif num_classes != data.num_classes:
    raise UserError(
      f"config.model.num_classes={num_classes} but dataset '{config.dataset}' has "
      f'{data.num_classes} classes; set it to {data.num_classes} (or -1: take it from the data)'
    )
  _check_model_kind(config, data.spec)
  model = create_model(config, num_classes)
  check_input_size(model, config)
  steps_per_epoch = max(len(data.train) // config.batch_size, 1)
  if config.num_train_steps > 0:
    num_steps = config.num_train_steps
  else:
    num_steps = math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.create_schedule(config.optimizer, num_steps, steps_per_epoch)
  tx = transfer.freeze(optim.create_optimizer(config.optimizer, schedule), config.get('freeze', ''))
  if config.get('init_from') is not None and config.init_from.path:
    transfer.check_source(config.init_from)
  task = tasks.create(config, data.spec, num_classes, model)
  teacher = _build_teacher(config, workdir, num_classes, devices) if 'distill' in config else None
  _create_workdir(workdir)  # only once the config, data and teacher are known to be good
  return Experiment(
    config,
    workdir,
    data,
    model,
    num_classes,
    task,
    steps_per_epoch,
    num_steps,
    schedule,
    tx,
    runner,
    teacher,
    pool,
    pseudo,
  )


# What each kind of model returns, and the configs that train one.
_KIND_OUTPUTS = {
  'classification': ('per-image logits', 'configs/resnet.py, configs/vgg.py, ...'),
  'segmentation': ('per-pixel logits', 'configs/unet.py, configs/fcn.py, configs/deeplab.py'),
  'detection': ('detection outputs', 'configs/yolo.py'),
  'embedding': ('embeddings', 'configs/triplet.py'),
}


def _check_model_kind(config: ml_collections.ConfigDict, spec: Any) -> None:
  """The model's outputs must be what the run's task learns from (models.output_kind)."""
  task = getattr(spec, 'task', 'classification')
  wanted = task
  if task == 'classification' and config.get('triplet') is not None:
    wanted = 'embedding'
  kind = models.output_kind(config.model.name)
  if kind == wanted:
    return
  gives, _ = _KIND_OUTPUTS[kind]
  needs, where = _KIND_OUTPUTS[wanted]
  if wanted == 'embedding':
    run, fix = 'a metric-learning (config.triplet) run', 'use an encoder model'
  else:
    run = f"dataset '{config.dataset}' is a {task} dataset and"
    fix = 'pick a model and dataset of the same task'
  raise UserError(
    f"model '{config.model.name}' gives {gives} but {run} needs {needs}; {fix} ({where})"
  )


def _load_pseudo_labels(path: str, pool_size: int, num_classes: int) -> dict[str, np.ndarray]:
  if not os.path.exists(path):
    raise UserError(f'no pseudo-labels at {path}; cnn_jax.recipes.noisy_student writes them')
  with np.load(path) as f:
    pseudo = {'indices': f['indices'], 'targets': f['targets'].astype(np.float32)}
  if pseudo['targets'].shape[1:] != (num_classes,) or np.any(pseudo['indices'] >= pool_size):
    raise UserError(
      f'the pseudo-labels at {path} do not fit this dataset ({num_classes} classes, a pool of '
      f'{pool_size}); delete the file to have them made again'
    )
  return pseudo


def _train_batches(exp: Experiment, start_step: int):
  """The training batches from start_step on: labelled, or labelled + pseudo-labelled."""
  config = exp.config
  common = dict(
    seed=config.seed,
    global_batch=config.batch_size,
    start_step=start_step,
    num_steps=exp.num_steps,
    image_size=config.image_size,
    channels=config.image_channels,
    randaugment=tuple(config.get('randaugment', ())) or None,
    augment=config.get('augment'),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  if exp.pseudo is None:
    return data_lib.train_iterator(exp.data, **common)
  return data_lib.self_training_iterator(
    exp.data,
    exp.pool,
    exp.pseudo['indices'],
    exp.pseudo['targets'],
    unlabeled_batch=config.noisy_student.unlabeled_batch_size,
    num_local_devices=exp.runner.num_local_devices,
    **common,
  )


def teacher_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where a distillation teacher is trained / read: config.distill.teacher_workdir or
  <workdir>/teacher."""
  return config.distill.teacher_workdir or os.path.join(workdir, 'teacher')


def _build_teacher(
  config: ml_collections.ConfigDict,
  workdir: str,
  num_classes: int,
  devices: list[jax.Device] | None,
) -> Experiment:
  """The teacher's Experiment (config.teacher, a whole config), checked against the student's."""
  if 'teacher' not in config:
    raise UserError('config.distill is set but config.teacher is missing; see configs/distill.py')
  tconfig = config.teacher
  if tconfig.dataset != config.dataset:
    raise UserError(
      f"the teacher's dataset '{tconfig.dataset}' differs from the student's "
      f"'{config.dataset}'; set --config.teacher.dataset={config.dataset}"
    )
  if input_shape(tconfig) != input_shape(config):
    raise UserError(
      f"the teacher sees the student's images, but its input is {input_shape(tconfig)} and the "
      f"student's {input_shape(config)}; set config.teacher.image_size / image_channels to match"
    )
  if 'distill' in tconfig:
    raise UserError('config.teacher has a distill section of its own; chains are not supported')
  twork = teacher_workdir(config, workdir)
  # A teacher_workdir given in the config is a workdir of its own, like --workdir: the teacher is
  # trained there (train_teacher) or read from there, and may lie outside the student's workdir
  # (one teacher shared by several students, experiments/recipes_table.py). It must not be the
  # student's own folder: their checkpoints would overwrite each other.
  if os.path.realpath(twork) == os.path.realpath(workdir):
    raise UserError(
      f"config.distill.teacher_workdir={twork} is the student's --workdir; give the teacher a "
      "folder of its own (or '' for <workdir>/teacher)"
    )
  if not config.distill.train_teacher and Checkpointer.find_latest(twork) is None:
    raise UserError(
      f'no teacher checkpoint in {twork}/checkpoints; train it there first, point '
      '--config.distill.teacher_workdir at one, or set --config.distill.train_teacher=True'
    )
  texp = build(tconfig, twork, devices)
  if texp.num_classes != num_classes:
    raise UserError(
      f'the teacher has {texp.num_classes} classes and the student {num_classes}; '
      'set config.teacher.model.num_classes=-1'
    )
  return texp


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


def _listed(items: list[str], limit: int = 6) -> str:
  more = f' and {len(items) - limit} more' if len(items) > limit else ''
  return ', '.join(items[:limit]) + more


def restore_checkpoint(exp: Experiment, ckpt: Checkpointer, step: int) -> TrainState:
  """The checkpoint of `step` as a host TrainState, once exp.config has been compared with the
  config the workdir was trained with (before anything compiles)."""
  blocking, other = config_changes(exp)
  if blocking:
    raise UserError(
      f'the checkpoint {ckpt.step_dir(step)} does not fit this model and optimizer: it was '
      f'trained with another config (trained -> now: {_listed(blocking)}); set those fields '
      f'back (its config is in {os.path.join(exp.workdir, CONFIG_FILE)}) or use another --workdir'
    )
  explain = ''
  if other:
    explain = f'config changes since: {_listed(other)}'
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


def evaluate(exp: Experiment, state: TrainState, eval_fn) -> dict[str, float]:
  """Loss and accuracy over the whole eval split (each example counted once)."""
  config = exp.config
  totals, rows = None, []
  for batch in data_lib.eval_iterator(
    exp.data,
    global_batch=config.eval_batch_size,
    image_size=config.image_size,
    channels=config.image_channels,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  ):
    sums = eval_fn(state, exp.runner.put_batch(tasks.prepare(exp.task, batch)))
    if tasks.ROWS in sums:  # per-example rows: to the host, concatenated after the loop
      rows.append(exp.runner.get_output(sums.pop(tasks.ROWS)))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = exp.runner.get_output(totals)
  if rows:
    totals[tasks.ROWS] = jax.tree.map(lambda *r: np.concatenate(r), *rows)
  return exp.task.finalize(totals)


class _Preemption:
  """Turns SIGTERM into a flag that the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """True on every host if any host was asked to stop."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


class NonFiniteError(UserError):
  """The loss, gradients or parameters became NaN or Inf (or too many steps were skipped)."""


class _NumericsGuard:
  """Checks the per-step metrics on the host before they are logged and before every save.

  limit = config.skip_nonfinite_steps. 0: the first non-finite metric stops the run. N > 0: the
  step already skipped such updates on the device (metrics['skipped']); this counts them, over
  restarts too (the count travels with the checkpoint), and stops the run at the N+1st.
  """

  def __init__(self, limit: int, skipped: int = 0, last_saved: int | None = None):
    self.limit = limit
    self.skipped = skipped
    self.last_saved = last_saved  # the step of the newest checkpoint, for the error message
    self._checked_through = 0

  def check(self, first_step: int, rows: list[dict[str, float]], now: int) -> None:
    """rows[i]: the metrics of step first_step + i; `now`: the step being checked at."""
    first_bad: dict[str, int] = {}
    for i, row in enumerate(rows):
      step = first_step + i
      if step <= self._checked_through:
        continue  # seen at a checkpoint step already
      self._checked_through = step
      if row.get('skipped'):
        self.skipped += 1
        if self.skipped > self.limit:
          raise NonFiniteError(
            f'{self.skipped} steps with a non-finite loss, gradient or update were skipped, the '
            f'last at step {step}: more than config.skip_nonfinite_steps={self.limit}. '
            f'{self._kept()} Lower optimizer.lr or check the input data.'
          )
        continue
      for name, value in row.items():
        if name not in first_bad and not math.isfinite(value):
          first_bad[name] = step
    if first_bad:
      by_step: dict[int, list[str]] = {}
      for name, step in first_bad.items():
        by_step.setdefault(step, []).append(name)
      found = '; '.join(f'{", ".join(names)} from step {s}' for s, names in sorted(by_step.items()))
      raise NonFiniteError(
        f'non-finite {found} (checked at step {now}). {self._kept()} Lower optimizer.lr, '
        'check the input data, or set config.skip_nonfinite_steps=N to skip up to N such steps.'
      )

  def _kept(self) -> str:
    if self.last_saved is None:
      return 'No checkpoint was written: a rerun starts over.'
    return f'Nothing after step {self.last_saved} was saved: a rerun resumes from its checkpoint.'

  def summarize(self, rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the steps that were not skipped, and the skip count."""
    kept = [r for r in rows if not r.get('skipped')]
    means = {k: float(np.mean([r[k] for r in kept])) for k in (kept[0] if kept else {})}
    means.pop('skipped', None)
    if self.limit:
      means['skipped_steps'] = self.skipped
    return means


def _write_overlays(exp: Experiment, state: TrainState, path: str, count: int = 8) -> None:
  """The first `count` eval images with their true and predicted labels, as one PNG."""
  from cnn_jax.core import overlays

  config = exp.config
  batch = next(
    data_lib.eval_iterator(
      exp.data, global_batch=count, image_size=config.image_size, channels=config.image_channels
    )
  )

  @jax.jit
  def predict(state, images):
    logits = exp.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, images, train=False
    )
    return jnp.argmax(exp.task.refine(logits, images), -1)

  predictions = np.asarray(predict(state, batch['image']))
  labels = np.asarray(exp.task.labels(predictions[..., None], batch))
  overlays.save(
    path,
    batch['image'],
    labels,
    predictions,
    num_classes=exp.num_classes,
    ignore_label=exp.task.ignore_label,
    mean=exp.data.spec.mean,
    std=exp.data.spec.std,
  )


def _write_boxes(exp: Experiment, state: TrainState, path: str, count: int = 8) -> None:
  """The first `count` eval images with their true boxes and the detections, as one PNG."""
  from cnn_jax.core import overlays

  config = exp.config
  batch = next(
    data_lib.eval_iterator(
      exp.data, global_batch=count, image_size=config.image_size, channels=config.image_channels
    )
  )
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  outputs = jax.jit(functools.partial(exp.model.apply, train=False))(variables, batch['image'])
  overlays.save_boxes(
    path,
    batch['image'],
    batch['boxes'],
    batch['classes'],
    exp.task.detect(np.asarray(outputs)),
    mean=exp.data.spec.mean,
    std=exp.data.spec.std,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None
) -> dict[str, Any] | None:
  """Trains (resuming from workdir's latest checkpoint), evaluates, writes summary.json.

  Returns the summary, or None when stopped by SIGTERM (after saving a checkpoint).
  """
  exp = build(config, workdir, devices)
  finished = _finished_summary(exp)
  if finished is not None:
    return finished
  start_time = time.time()
  consts, teacher_summary = (), {}
  if exp.teacher is not None:
    texp = exp.teacher
    summary_path = os.path.join(texp.workdir, 'summary.json')
    if config.distill.train_teacher and not os.path.exists(summary_path):
      logging.info('Training the teacher first, in %s.', texp.workdir)
      if train_and_evaluate(texp.config, texp.workdir, devices) is None:
        return None  # stopped by SIGTERM while training the teacher: rerun to resume
    if os.path.exists(summary_path):
      with open(summary_path) as f:
        teacher_summary = {'teacher_test_accuracy': json.load(f).get('test_accuracy')}
    # Replicated like the state, passed to every step, never donated, never saved with the
    # student's checkpoints.
    consts = (exp.runner.put_state(restore_variables(texp)),)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  try:
    return _train(exp, ckpt, consts, teacher_summary, start_time)
  finally:
    ckpt.close()  # a save in flight completes, also when the run stops with an error


def _finished_summary(exp: Experiment) -> dict[str, Any] | None:
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
      _listed(other),
    )
  logging.info(
    'The run in %s already finished its %d steps: nothing to train. Its summary is %s.',
    exp.workdir,
    exp.num_steps,
    path,
  )
  return summary


def _train(
  exp: Experiment,
  ckpt: Checkpointer,
  consts: tuple[PyTree, ...],
  teacher_summary: dict[str, Any],
  start_time: float,
) -> dict[str, Any] | None:
  """train_and_evaluate's loop, from the latest checkpoint in `ckpt` (or a fresh state) on."""
  from tqdm import tqdm

  config, workdir, runner = exp.config, exp.workdir, exp.runner
  primary = jax.process_index() == 0
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = restore_checkpoint(exp, ckpt, start_step)
    logging.info('Resuming from the checkpoint of step %d.', start_step)
  else:
    state = starting_state(exp)
  if primary:
    write_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  guard = _NumericsGuard(
    config.get('skip_nonfinite_steps', 0),
    skipped=ckpt.extra(start_step).get('skipped_steps', 0) if start_step else 0,
    last_saved=start_step or None,
  )
  writer = MetricWriter(workdir, enabled=primary, resume_step=start_step)
  state = runner.put_state(state)
  step_fn = runner.compile(
    functools.partial(
      train_step,
      model=exp.model,
      tx=exp.tx,
      task=exp.task,
      teacher_model=exp.teacher.model if exp.teacher is not None else None,
      skip_nonfinite=guard.limit > 0,
      freeze=config.get('freeze', ''),
    ),
    num_consts=len(consts),
  )
  eval_fn = runner.compile_eval(functools.partial(eval_step, model=exp.model, task=exp.task))
  batches = _train_batches(exp, start_step)
  logging.info(
    'Training %s on %s: %d steps (%d per epoch), batch %d over %d device(s).',
    config.model.name,
    config.dataset,
    exp.num_steps,
    exp.steps_per_epoch,
    config.batch_size,
    runner.num_devices,
  )

  def save(step: int) -> None:
    # Only a state whose metrics, up to this step, were all found finite is ever saved.
    guard.check(last_log + 1, runner.get_output(history), step)
    ckpt.save(step, runner.get_state(state), extra={'skipped_steps': guard.skipped})
    guard.last_saved = step
    faults.reached('saving', step, ckpt.directory)
    faults.reached('saved', step, ckpt.directory, before=ckpt.wait)

  history, last_log, log_time = [], start_step, time.time()
  bar = tqdm(
    total=exp.num_steps, initial=start_step, unit='step', disable=not primary, dynamic_ncols=True
  )
  with bar, _Preemption() as preemption:  # the bar closes before an error is printed
    for step in range(start_step + 1, exp.num_steps + 1):
      batch = runner.put_batch(tasks.prepare(exp.task, next(batches)))
      state, metrics = step_fn(state, batch, *consts)
      # Wait for the previous step, not this one: the device always has the next step queued,
      # while the host stays at most one step ahead (bounded memory, an honest progress bar).
      if history:
        jax.block_until_ready(history[-1])
        bar.update(1)
      history.append(metrics)
      logging_now = step % config.log_every_steps == 0 or step == exp.num_steps
      evaluating = config.eval_every_steps > 0 and step % config.eval_every_steps == 0
      saving = step % config.checkpoint_every_steps == 0 or step == exp.num_steps
      if logging_now or evaluating:
        # Nothing non-finite is logged, evaluated or (in save) saved: the steps since the last
        # log are checked first.
        rows = runner.get_output(history)
        guard.check(last_log + 1, rows, step)
      if logging_now:
        bar.update(1)
        summed = guard.summarize(rows)
        now = time.time()
        summed['images_per_sec'] = (step - last_log) * config.batch_size / (now - log_time)
        summed['lr'] = float(exp.schedule(step - 1))
        writer.write(step, 'train', summed)
        bar.set_postfix(
          loss=f'{summed.get("loss", math.nan):.3f}', img_s=f'{summed["images_per_sec"]:.0f}'
        )
        history, last_log, log_time = [], step, now
      if evaluating:
        writer.write(step, 'test', evaluate(exp, state, eval_fn))
      if saving:
        faults.reached('before_save', step)
        save(step)
      # Agreeing across hosts costs a collective: only at logging steps when multi-host.
      if (jax.process_count() == 1 or step % config.log_every_steps == 0) and preemption.agreed():
        if not saving:
          save(step)
        ckpt.close()
        logging.warning('SIGTERM: saved step %d; rerun the same command to resume.', step)
        return None
      faults.reached('end', step)
  host_state = jax.device_get(runner.get_state(state))
  final = evaluate(exp, state, eval_fn)
  if primary and isinstance(exp.task, tasks.Segmentation):
    _write_overlays(exp, host_state, os.path.join(workdir, 'overlays.png'))
  if primary and isinstance(exp.task, tasks.Detection):
    _write_boxes(exp, host_state, os.path.join(workdir, 'boxes.png'))
  writer.write(exp.num_steps, 'test', final)
  writer.close()
  ckpt.close()
  summary = {
    'model': config.model.name,
    'dataset': config.dataset,
    'steps': exp.num_steps,
    'resumed_from_step': start_step,
    **{f'test_{k}': v for k, v in final.items()},  # test_accuracy, test_loss / test_mean_iou...
    **teacher_summary,
    'wall_seconds': round(time.time() - start_time, 1),
    'devices': runner.num_devices,
    'processes': jax.process_count(),
    'params_sha256': fingerprint(host_state.params, host_state.batch_stats),
  }
  if guard.limit:
    summary['skipped_steps'] = guard.skipped
  if config.get('skip_corrupt_images', False):
    summary['skipped_corrupt_images'] = {k: len(v) for k, v in exp.data.skipped.items()}
  if primary:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return summary


def restore_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Evaluates the latest checkpoint in workdir."""
  exp = build(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f'no checkpoint in {workdir}/checkpoints; train first (--mode=train)')
    state = exp.runner.put_state(restore_checkpoint(exp, ckpt, step))
  finally:
    ckpt.close()
  eval_fn = exp.runner.compile_eval(functools.partial(eval_step, model=exp.model, task=exp.task))
  return {'step': step, **evaluate(exp, state, eval_fn)}
