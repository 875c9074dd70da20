"""Optimizers and learning-rate schedules from a config, built in one place with optax."""

import jax
import ml_collections
import optax

from cnn_jax.errors import UserError

PyTree = object


def _steps(cfg: ml_collections.ConfigDict, key: str, steps_per_epoch: int) -> int:
  """`cfg.<key>_steps` if set (>= 0), else `cfg.<key>_epochs` converted to steps."""
  steps = cfg.get(f'{key}_steps', -1)
  if steps is not None and steps >= 0:
    return int(steps)
  return int(round(cfg.get(f'{key}_epochs', 0.0) * steps_per_epoch))


def create_schedule(
  cfg: ml_collections.ConfigDict, num_steps: int, steps_per_epoch: int
) -> optax.Schedule:
  """Linear warmup from 0, then 'cosine' decay to 0, 'step' decay, or 'constant'."""
  warmup = min(_steps(cfg, 'warmup', steps_per_epoch), num_steps)
  if cfg.schedule == 'cosine':
    main = optax.cosine_decay_schedule(cfg.lr, decay_steps=max(num_steps - warmup, 1))
  elif cfg.schedule == 'step':
    if cfg.get('decay_steps'):
      boundaries = [int(s) for s in cfg.decay_steps]
    else:
      boundaries = [int(round(e * steps_per_epoch)) for e in cfg.decay_epochs]
    # Multiply by decay_factor at each boundary (He et al.: /10 at 32k and 48k of 64k).
    main = optax.piecewise_constant_schedule(
      cfg.lr, {max(b - warmup, 1): cfg.decay_factor for b in boundaries}
    )
  elif cfg.schedule == 'constant':
    main = optax.constant_schedule(cfg.lr)
  else:
    raise UserError(
      f"unknown optimizer.schedule '{cfg.schedule}'; use 'cosine', 'step' or 'constant'"
    )
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def decay_mask(params: PyTree) -> PyTree:
  """True for kernels; biases and norm scales/offsets (1-D) get no weight decay."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
  cfg: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
  """'sgd' (momentum, optional Nesterov) or 'adamw', weight decay on kernels only."""
  if cfg.name == 'sgd':
    # Coupled L2 as in the ResNet papers: wd * w is added to the gradient before momentum.
    return optax.chain(
      optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
    )
  if cfg.name == 'adamw':
    return optax.adamw(
      schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask
    )
  raise UserError(f"unknown optimizer.name '{cfg.name}'; use 'sgd' or 'adamw'")
