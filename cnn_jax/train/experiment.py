"""The experiment builder: a run's config, workdir and data checked, its model, optimizer, task and
runner built, before anything slow starts (and before the workdir is created)."""

import dataclasses
import functools
import math
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from cnn_jax import data as data_lib
from cnn_jax import models, tasks
from cnn_jax.core import parallel, ranges
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.data import fields as data_fields
from cnn_jax.train import optim
from cnn_jax.weights import transfer

# The ranges of the run's own config fields (cnn_jax/core/ranges.py); the optimizer's, the data's,
# the model's and the task's are declared by their owners.
RANGES = {
  'num_epochs': ranges.Range(0, low_open=True),
  'num_train_steps': ranges.Range(1, integer=True, also=(-1,), meaning='num_epochs decides'),
  'batch_size': ranges.Range(1, integer=True),
  'eval_batch_size': ranges.Range(1, integer=True),
  'log_every_steps': ranges.Range(1, integer=True),
  'eval_every_steps': ranges.Range(integer=True, note='<= 0: at the end only'),
  'checkpoint_every_steps': ranges.Range(1, integer=True),
  'keep_checkpoints': ranges.Range(1, integer=True),
  'skip_nonfinite_steps': ranges.Range(
    0, integer=True, note='0: stop at the first NaN or Inf; N > 0: skip up to N such steps'
  ),
  'seed': ranges.Range(0, integer=True),
}


@dataclasses.dataclass(kw_only=True)
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


def task_class(config: ml_collections.ConfigDict) -> type[tasks.Task]:
  """The Task class config.task names (a UserError names the valid ones)."""
  return tasks.get(config.get('task', 'classification'))


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Every numeric field of the run against the range its owner declares (one-line errors)."""
  declared_by = (RANGES, optim.RANGES, data_fields.RANGES, models.RANGES)
  for declared in (*declared_by, task_class(config).config_ranges):
    ranges.check(config, declared)


def load_data(config: ml_collections.ConfigDict) -> tuple[data_lib.Dataset, Any]:
  """The run's data: the dataset, the classes and examples it keeps, readable images only (when
  asked), and for semi-supervised runs (config.noisy_student) the labelled part of the train
  split with the rest as an unlabelled pool (else None)."""
  data = data_lib.load(config.dataset, config.data_dir or None)
  held_out = tuple(config.get('held_out_classes', ()))
  if held_out and not task_class(config).held_out_classes:
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
  pool = None
  self_training = config.get('noisy_student')
  if self_training is not None:
    data, pool = data_lib.labeled_split(
      data, self_training.labeled_fraction, seed=self_training.split_seed
    )
  for split in dict.fromkeys(('train', config.get('eval_split', 'validation'), 'test')):
    if len(data.split(split)) == 0:
      raise UserError(
        f"dataset '{config.dataset}' has no examples in its {split} split as this run reads it "
        f'({len(data.train)} train, {len(data.validation)} validation, {len(data.test)} test); '
        'a held-out validation split takes 10% of each class with 2 or more training examples: '
        'give it more images, or fewer classes (config.data_classes)'
      )
  return data, pool


def build(
  config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None
) -> Experiment:
  """Checks the config, workdir and data, and builds model, optimizer, task and runner.

  `devices`: the devices to run on (default: all devices of all hosts).
  """
  task_type = task_class(config)  # an unknown task fails first
  models.create(config.model.name)  # an unknown name fails here, before any data is read
  check_ranges(config)
  runner = parallel.create_runner(config.parallel, devices)
  parallel.check_batch_size('config.batch_size', config.batch_size, runner.num_devices)
  parallel.check_batch_size('config.eval_batch_size', config.eval_batch_size, runner.num_devices)
  data, pool = load_data(config)
  _check_workdir(workdir)
  num_classes = config.model.num_classes
  if num_classes <= 0:
    num_classes = data.num_classes
  elif num_classes != data.num_classes:
    raise UserError(
      f"config.model.num_classes={num_classes} but dataset '{config.dataset}' has "
      f'{data.num_classes} classes; set it to {data.num_classes} (or -1: take it from the data)'
    )
  _check_kinds(config, data.spec, task_type)
  model = create_model(config, num_classes)
  check_input_size(model, config)
  check_total_stride(model, config)
  steps_per_epoch = max(len(data.train) // config.batch_size, 1)
  if config.num_train_steps > 0:
    num_steps = config.num_train_steps
  else:
    num_steps = math.ceil(config.num_epochs * steps_per_epoch)
  schedule = optim.create_schedule(config.optimizer, num_steps, steps_per_epoch, config.batch_size)
  tx = transfer.freeze(optim.create_optimizer(config.optimizer, schedule), config.get('freeze', ''))
  if config.get('init_from') is not None and config.init_from.path:
    transfer.check_source(config.init_from)
  task = task_type.from_config(
    tasks.TaskSetup(
      config=config,
      data=data,
      num_classes=num_classes,
      model=model,
      workdir=workdir,
      build_run=functools.partial(build, devices=devices),
      pool=pool,
    )
  )
  _create_workdir(workdir)  # only once the config, data and the task's runs are known to be good
  return Experiment(
    config=config,
    workdir=workdir,
    data=data,
    model=model,
    num_classes=num_classes,
    task=task,
    steps_per_epoch=steps_per_epoch,
    num_steps=num_steps,
    schedule=schedule,
    tx=tx,
    runner=runner,
  )


# What each kind of model returns, and the configs that train one.
_KIND_OUTPUTS = {
  'classification': ('per-image logits', 'configs/resnet.py, configs/vgg.py, ...'),
  'segmentation': ('per-pixel logits', 'configs/unet.py, configs/fcn.py, configs/deeplab.py'),
  'detection': ('detection outputs', 'configs/yolo.py'),
  'embedding': ('embeddings', 'configs/triplet.py'),
}


def _check_kinds(config: ml_collections.ConfigDict, spec: Any, task: type[tasks.Task]) -> None:
  """The model's outputs must be what the dataset and the task learn from (models.output_kind),
  and the dataset of the kind the task trains on."""
  data_kind = getattr(spec, 'task', 'classification')
  wanted = data_kind
  if data_kind == task.data_kind and task.model_kind != data_kind:
    wanted = task.model_kind  # an embedding learned from class labels (metric learning)
  kind = models.output_kind(config.model.name)
  if kind != wanted:
    gives, _ = _KIND_OUTPUTS[kind]
    needs, where = _KIND_OUTPUTS[wanted]
    if wanted == 'embedding':
      run, fix = 'a metric-learning (config.triplet) run', 'use an encoder model'
    else:
      run = f"dataset '{config.dataset}' is a {data_kind} dataset and"
      fix = 'pick a model and dataset of the same task'
    raise UserError(
      f"model '{config.model.name}' gives {gives} but {run} needs {needs}; {fix} ({where})"
    )
  if data_kind != task.data_kind:
    raise UserError(
      f'config.task={config.get("task", "classification")!r} trains on {task.data_kind} data '
      f"but dataset '{config.dataset}' is a {data_kind} dataset; pick a dataset of that task "
      'or set --config.task'
    )


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


def check_total_stride(model: flax.linen.Module, config: ml_collections.ConfigDict) -> None:
  """A training run's images must be at least half as large as the model downsamples (a 1x1
  image goes through ResNet-20 without an error and means nothing). Half, not all: with 'SAME'
  padding an image of half the total stride still reaches the last stage as one pixel, and the
  EfficientNet sweep's offline base trains B0's stride-32 table on 16x16 digits (95% test
  accuracy: configs/efficientnet_sweep.py). Measured for small sizes only (shape inference, a
  second or two); summaries and MAC probes (cnn_jax/recipes/scaling.py) may trace any size that
  works."""
  shape = input_shape(config)
  if shape[0] >= _STRIDE_PROBE // 8:
    return
  stride = total_stride(model, shape[2])
  if stride is not None and 2 * shape[0] < stride:
    raise UserError(
      f"config.image_size={shape[0]} is less than half of what model '{config.model.name}' "
      f'downsamples ({stride}x: its last feature maps would be padding around less than one '
      f'pixel of the image); set --config.image_size to {-(-stride // 2)} or more'
    )


_STRIDE_PROBE = 256  # the input side at which a model's total stride is measured


def total_stride(model: flax.linen.Module, channels: int) -> int | None:
  """How much the model downsamples: a 256-pixel input over its smallest feature map's side
  (shape inference only); None for a model without named features (`features=True`)."""
  x = jnp.zeros((1, _STRIDE_PROBE, _STRIDE_PROBE, channels))
  try:
    feats = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x, train=False, features=True)[0], x
    )
  except Exception:  # no features=True (or no such size): nothing to measure
    return None
  sides = [f.shape[1] for f in jax.tree.leaves(feats) if len(f.shape) == 4]
  return _STRIDE_PROBE // min(sides) if sides else None
