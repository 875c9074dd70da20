"""Optimizers and learning-rate schedules from a config, built in one place with optax."""

import jax
import ml_collections
import numpy as np
import optax

from cnn_jax.core.errors import UserError
from cnn_jax.core.ranges import Range

PyTree = object

# The config.optimizer fields' ranges (cnn_jax/core/ranges.py), checked before anything is built.
RANGES = {
  'optimizer.lr': Range(0, low_open=True),
  'optimizer.lr_batch_size': Range(
    0, integer=True, note='0: lr as given; N: lr is for batch N, scaled to config.batch_size'
  ),
  'optimizer.momentum': Range(0, 1, high_open=True),
  'optimizer.b1': Range(0, 1, high_open=True),
  'optimizer.b2': Range(0, 1, high_open=True),
  'optimizer.rms_decay': Range(0, 1, high_open=True),
  'optimizer.eps': Range(0, low_open=True),
  'optimizer.weight_decay': Range(0),
  'optimizer.warmup_epochs': Range(0),
  'optimizer.warmup_steps': Range(0, integer=True, also=(-1,), meaning='use warmup_epochs'),
  'optimizer.decay_epochs': Range(0),
  'optimizer.decay_steps': Range(0, integer=True),
  'optimizer.decay_every_epochs': Range(0, low_open=True),
  'optimizer.decay_factor': Range(0, 1, low_open=True),
}


def _steps(cfg: ml_collections.ConfigDict, key: str, steps_per_epoch: int) -> int:
  """`cfg.<key>_steps` if set (>= 0), else `cfg.<key>_epochs` converted to steps."""
  steps = cfg.get(f'{key}_steps', -1)
  if steps is not None and steps >= 0:
    return int(steps)
  return int(round(cfg.get(f'{key}_epochs', 0.0) * steps_per_epoch))


def peak_lr(cfg: ml_collections.ConfigDict, batch_size: int | None = None) -> float:
  """cfg.lr, scaled linearly to `batch_size` when cfg.lr_batch_size > 0 names the batch it is for
  (Goyal et al. 2017: the ImageNet recipes' lr 0.1 per 256 images)."""
  reference = cfg.get('lr_batch_size', 0)
  if reference and batch_size:
    return cfg.lr * batch_size / reference
  return cfg.lr


def create_schedule(
  cfg: ml_collections.ConfigDict,
  num_steps: int,
  steps_per_epoch: int,
  batch_size: int | None = None,
) -> optax.Schedule:
  """Linear warmup from 0 to peak_lr(cfg, batch_size), then one of:

  'cosine' decay to 0; 'linear' decay to 0 (SqueezeNet's "poly" policy with power 1);
  'step': times decay_factor at each of decay_epochs (or decay_steps);
  'exponential': times decay_factor every decay_every_epochs, staircase (MobileNet, EfficientNet:
  0.97 every 2.4 epochs); 'constant'.
  """
  warmup = min(_steps(cfg, 'warmup', steps_per_epoch), num_steps)
  lr = peak_lr(cfg, batch_size)
  if cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(lr, decay_steps=max(num_steps - warmup, 1))
  elif cfg.schedule == 'step':
    if cfg.get('decay_steps'):
      boundaries = [int(s) for s in cfg.decay_steps]
    else:
      boundaries = [int(round(e * steps_per_epoch)) for e in cfg.decay_epochs]
    # Multiply by decay_factor at each boundary (He et al.: /10 at 32k and 48k of 64k).
    main = optax.piecewise_constant_schedule(
      lr, {max(b - warmup, 1): cfg.decay_factor for b in boundaries}
    )
  elif cfg.schedule == 'linear':
    main = optax.linear_schedule(lr, 0.0, max(num_steps - warmup, 1))
  elif cfg.schedule == 'exponential':
    every = max(int(round(cfg.decay_every_epochs * steps_per_epoch)), 1)
    main = optax.exponential_decay(lr, every, cfg.decay_factor, staircase=True)
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(lr)
  else:
    raise UserError(
      f"unknown optimizer.schedule '{cfg.schedule}'; "
      "use 'cosine', 'linear', 'step', 'exponential' or 'constant'"
    )
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def decay_mask(params: PyTree) -> PyTree:
  """True for kernels; biases and norm scales/offsets (1-D) get no weight decay."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """'sgd' (momentum, optional Nesterov), 'rmsprop' or 'adamw'; weight decay on kernels only."""
  # sgd and rmsprop: coupled L2 as in the papers' code (wd * w added to the gradient first).
  l2 = optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask)
  if cfg.name == 'sgd':
    return optax.chain(
      l2, optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    )
  if cfg.name == 'rmsprop':
    # TensorFlow's RMSProp, which MobileNet and EfficientNet were trained with: eps inside the
    # square root and the mean square started at 1, not 0 (so the first steps are not huge).
    return optax.chain(
      l2,
      optax.rmsprop(
        schedule,
        decay=cfg.rms_decay,
        eps=cfg.eps,
        initial_scale=1.0,
        eps_in_sqrt=True,
        momentum=cfg.momentum or None,
      ),
    )
  if cfg.name == 'adamw':
    return optax.adamw(
      schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask
    )
  raise UserError(f"unknown optimizer.name '{cfg.name}'; use 'sgd', 'rmsprop' or 'adamw'")


def applied_learning_rate(schedule: optax.Schedule, opt_state: PyTree) -> float:
  """The learning rate of the latest update the optimizer applied, from its own step count.

  optax counts applied updates in the state of its schedule (ScaleByScheduleState.count); a step
  skipped as non-finite (config.skip_nonfinite_steps) keeps the old state, count included, so
  this is the rate that update really used: schedule(count - 1) (schedule(0) before any update).
  A host-side copy of the schedule indexed by the trainer's step would run ahead of it by the
  number of skipped steps.
  """
  counts = [
    count
    for path, count in optax.tree_utils.tree_get_all_with_path(opt_state, 'count')
    if getattr(path[-1], 'tuple_name', None) == 'ScaleByScheduleState'
  ]
  if not counts:
    raise ValueError('the optimizer state holds no schedule count (ScaleByScheduleState)')
  count = int(np.asarray(jax.device_get(counts[0])).reshape(-1)[0])  # pmap: one copy per device
  return float(schedule(max(count - 1, 0)))
