"""The train state and the per-device steps, the same for every task.

Written once, per device, with collectives over AXIS (cnn_jax/core/parallel.py runs them under
jit + shard_map over a device mesh, or pmap). What is learned comes from the task
(cnn_jax/tasks/): its loss, train metrics, eval sums and rows, and the extra inputs it declares.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax import lax

from cnn_jax.core.checkpoint import tree_sha256
from cnn_jax.core.parallel import AXIS
from cnn_jax.nn import layers
from cnn_jax.tasks import ROWS, Task
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
  *task_inputs: PyTree,
  model: flax.linen.Module,
  tx: optax.GradientTransformation,
  task: Task,
  skip_nonfinite: bool = False,
  freeze: str = '',
) -> tuple[TrainState, Metrics]:
  """One SGD step on this device's share of the batch; gradients averaged over AXIS.

  `task_inputs`: what the task's `step_inputs` gave (replicated, never updated, never saved;
  distillation's teacher variables); `task.with_inputs` turns them into batch entries before the
  loss (the teacher's logits on the same augmented images).

  `skip_nonfinite` (config.skip_nonfinite_steps > 0): a step whose metrics, gradients or new
  parameters, optimizer state or BatchNorm statistics hold a NaN or Inf changes nothing but the
  step counter (so the next step reads the next batch); metrics['skipped'] is 1 for it. Skipped
  steps do not advance optax's own count either, so a schedule runs that many steps behind (the
  logged learning rate is read from that count: optim.applied_learning_rate).

  `freeze` (config.freeze): the BatchNorm layers it matches normalise with their running
  statistics, as in evaluation, and keep them (`tx` already leaves the parameters alone:
  transfer.freeze).
  """
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
  batch = task.with_inputs(batch, *task_inputs)

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
  state: TrainState, batch: dict[str, jax.Array], *, model: flax.linen.Module, task: Task
) -> Metrics:
  """The task's sums over this batch (padding masked out), summed over devices; and the task's
  per-example rows of the whole global batch under tasks.ROWS, when it has any."""
  logits = model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'], train=False
  )
  out = lax.psum(task.eval_sums(logits, batch), AXIS)
  rows = task.eval_rows(logits, batch)
  if rows is not None:
    # Gathered in device order, which is the global batch's order: the same on every device.
    out[ROWS] = lax.all_gather(rows, AXIS, tiled=True)
  return out


def fingerprint(params: PyTree, batch_stats: PyTree) -> str:
  """SHA-256 of every parameter and BatchNorm statistic, with its name, in a fixed order."""
  return tree_sha256({'params': params, 'batch_stats': batch_stats})
