"""JAX's side of a model row: our trainer's train step (`cnn_jax.train.train_step`, compiled by
the runner of cnn_jax.core.parallel), the bare jitted step it is compared with, and inference."""

import functools
import time
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cnn_jax import data as data_lib
from cnn_jax import tasks, train
from cnn_jax.core import parallel
from cnn_jax.train import optim


def bare_train_step(state: train.TrainState, batch, *, model: nn.Module, tx, segmentation: bool):
  """What one writes without the trainer: forward, softmax cross-entropy, optax update."""
  # The trainer's dropout key on device 0 of a 1-device mesh, so that both draw the same masks.
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  labels = batch['segmentation' if segmentation else 'label']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      batch['image'],
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': rng},
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), updates.get('batch_stats', {})

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return new, loss


def aot(jitted: Callable, *args) -> tuple[Callable, float, float]:
  """(compiled, trace + lower seconds, XLA compile seconds) of a `jax.jit` object."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


class JaxSteps:
  """Our trainer's step, the bare step and inference of one model, each on its own state."""

  def __init__(
    self, config: ml_collections.ConfigDict, num_classes: int, batch: dict, *, only: str = ''
  ):
    """`only`: 'trainer' or 'bare' builds that step alone (a cold compile), '' all three."""
    self.timings: dict[str, dict[str, float]] = {}
    spec = data_lib.DATASETS[config.dataset]
    model = train.create_model(config, num_classes)
    schedule = optim.create_schedule(config.optimizer, 10_000, 100)
    tx = optim.create_optimizer(config.optimizer, schedule)
    # The batches are synthetic, so no data is read: the tasks benchmarked here (classification,
    # segmentation) take only the dataset's spec from `data`, and build no other run.
    setup = tasks.TaskSetup(
      config=config,
      data=types.SimpleNamespace(spec=spec),
      num_classes=num_classes,
      model=model,
      workdir='',
      build_run=functools.partial(train.build, devices=jax.devices()[:1]),
    )
    task = tasks.create(setup)
    runner = parallel.create_runner(config.parallel, jax.devices()[:1])
    exp = train.Experiment(
      config=config,
      workdir='',
      data=None,
      model=model,
      num_classes=num_classes,
      task=task,
      steps_per_epoch=100,
      num_steps=10_000,
      schedule=schedule,
      tx=tx,
      runner=runner,
    )
    t0 = time.perf_counter()
    host = train.initial_state(exp)
    self.timings['init'] = {'seconds': time.perf_counter() - t0}
    self.params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host.params))
    self.segmentation = spec.segmentation

    self._state = {}
    if only != 'bare':
      step = runner.compile(functools.partial(train.train_step, model=model, tx=tx, task=task))
      self._state['trainer'] = runner.put_state(host)
      self._trainer_batch = runner.put_batch(batch)
      self._trainer, lower_s, compile_s = aot(step, self._state['trainer'], self._trainer_batch)
      self.timings['trainer'] = {'lower_s': lower_s, 'compile_s': compile_s}
      if only == 'trainer':
        return

    # The same module without the mesh axis: BatchNorm statistics of this device alone.
    self.bare_model = model.clone(norm_axis_name=None)
    device = jax.devices()[0]
    self._state['bare'] = jax.device_put(host, device)
    self._batch = jax.device_put(batch, device)
    bare = jax.jit(
      functools.partial(
        bare_train_step, model=self.bare_model, tx=tx, segmentation=self.segmentation
      ),
      donate_argnums=(0,),
    )
    self._bare, lower_s, compile_s = aot(bare, self._state['bare'], self._batch)
    self.timings['bare'] = {'lower_s': lower_s, 'compile_s': compile_s}
    if only == 'bare':
      return

    def forward(variables, images):
      return self.bare_model.apply(variables, images, train=False)

    self._infer, lower_s, compile_s = aot(jax.jit(forward), self._variables(), self._batch['image'])
    self.timings['infer'] = {'lower_s': lower_s, 'compile_s': compile_s}

  def _variables(self) -> dict:
    state = self._state['bare']
    return {'params': state.params, 'batch_stats': state.batch_stats}

  def trainer_step(self) -> float:
    """One step of ours, waited for; returns its loss (the loss before the update)."""
    state, metrics = self._trainer(self._state['trainer'], self._trainer_batch)
    self._state['trainer'] = jax.block_until_ready(state)
    return float(metrics['loss'])

  def bare_step(self) -> float:
    state, loss = self._bare(self._state['bare'], self._batch)
    self._state['bare'] = jax.block_until_ready(state)
    return float(loss)

  def infer(self) -> None:
    jax.block_until_ready(self._infer(self._variables(), self._batch['image']))

  def callables(self) -> dict[str, Callable[[], Any]]:
    return {'ours': self.trainer_step, 'bare': self.bare_step, 'jax_infer': self.infer}
