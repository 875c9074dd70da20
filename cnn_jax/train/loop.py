"""The loop: train from the latest checkpoint (or a fresh state), log, evaluate, save, summarise.

Task-specific work happens in the task's hooks (cnn_jax/tasks/base.py): the loop calls each of
them the same way for every task.
"""

import functools
import json
import math
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import data as data_lib
from cnn_jax import tasks
from cnn_jax.core import faults
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.core.logs import MetricWriter, write_atomically
from cnn_jax.train import optim, resume
from cnn_jax.train.experiment import Experiment, build
from cnn_jax.train.guards import NumericsGuard, Preemption
from cnn_jax.train.state import TrainState, eval_step, fingerprint, train_step

PyTree = Any


class _Runs:
  """tasks.Runs: other runs a task depends on, trained and read on this run's devices."""

  def __init__(self, devices: list[jax.Device] | None):
    self.devices = devices

  def train(self, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    return train_and_evaluate(config, workdir, self.devices)

  def variables(self, experiment: Experiment) -> dict[str, PyTree]:
    return resume.restore_variables(experiment)


def train_batches(exp: Experiment, start_step: int) -> Iterator[dict[str, np.ndarray]]:
  """The training batches from start_step on, as the task draws them (a pure function of
  (config.seed, step))."""
  config = exp.config
  return exp.task.train_batches(
    exp.data,
    num_local_devices=exp.runner.num_local_devices,
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


def _eval_batches(exp: Experiment, global_batch: int, **kwargs: Any):
  config = exp.config
  return data_lib.eval_iterator(
    exp.data,
    global_batch=global_batch,
    image_size=config.image_size,
    channels=config.image_channels,
    **kwargs,
  )


def eval_split(config: ml_collections.ConfigDict) -> str:
  """The split evaluated during training and chosen on (config.eval_split)."""
  return config.get('eval_split', 'validation')


def evaluate(exp: Experiment, state: TrainState, eval_fn, split: str) -> dict[str, float]:
  """The task's metrics over the whole of `split` (each example counted once)."""
  totals, rows = None, []
  for batch in _eval_batches(
    exp,
    exp.config.eval_batch_size,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    split=split,
  ):
    sums = eval_fn(state, exp.runner.put_batch(exp.task.prepare(batch)))
    if tasks.ROWS in sums:  # per-example rows: to the host, concatenated after the loop
      rows.append(exp.runner.get_output(sums.pop(tasks.ROWS)))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = exp.runner.get_output(totals)
  if rows:
    totals[tasks.ROWS] = jax.tree.map(lambda *r: np.concatenate(r), *rows)
  return exp.task.finalize(totals)


def peak_memory() -> dict[str, float]:
  """This process's peak memory in MiB: host RSS, and the accelerators' peak bytes in use where
  the backend counts them (GPU, TPU; not the CPU backend)."""
  import resource

  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  out = {'host_peak_rss_mib': round(rss / 1024, 1)}
  stats = [d.memory_stats() for d in jax.local_devices()]
  peaks = [s['peak_bytes_in_use'] for s in stats if s and 'peak_bytes_in_use' in s]
  if peaks:
    out['device_peak_mib'] = round(max(peaks) / 2**20, 1)
  return out


def _write_pictures(exp: Experiment, state: TrainState, count: int = 8) -> None:
  """The task's pictures of the first `count` eval images, with the final weights."""
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  apply = jax.jit(lambda images: exp.model.apply(variables, images, train=False))
  batch = next(_eval_batches(exp, count, split=eval_split(exp.config)))
  exp.task.write_pictures(exp.workdir, apply, batch, exp.data.spec)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, devices: list[jax.Device] | None = None
) -> dict[str, Any] | None:
  """Trains (resuming from workdir's latest checkpoint), evaluates, writes summary.json.

  Returns the summary, or None when stopped by SIGTERM (after saving a checkpoint).
  """
  exp = build(config, workdir, devices)
  finished = resume.finished_summary(exp)
  if finished is not None:
    return finished
  start_time = time.time()
  inputs = exp.task.step_inputs(_Runs(devices))
  if inputs is None:
    return None  # stopped by SIGTERM while preparing them (training a teacher): rerun
  # Replicated like the state, passed to every step, never donated, never saved.
  inputs = tuple(exp.runner.put_state(x) for x in inputs)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  try:
    return _train(exp, ckpt, inputs, start_time)
  finally:
    ckpt.close()  # a save in flight completes, also when the run stops with an error


def _train(
  exp: Experiment, ckpt: Checkpointer, inputs: tuple[PyTree, ...], start_time: float
) -> dict[str, Any] | None:
  """train_and_evaluate's loop, from the latest checkpoint in `ckpt` (or a fresh state) on."""
  from tqdm import tqdm

  config, workdir, runner = exp.config, exp.workdir, exp.runner
  chosen_on = eval_split(config)
  primary = jax.process_index() == 0
  start_step = ckpt.latest_step() or 0
  if start_step:
    state = resume.restore_checkpoint(exp, ckpt, start_step)
    logging.info('Resuming from the checkpoint of step %d.', start_step)
  else:
    state = resume.starting_state(exp)
  if primary:
    write_atomically(
      os.path.join(workdir, resume.CONFIG_FILE), config.to_json_best_effort(indent=2)
    )
  guard = NumericsGuard(
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
      skip_nonfinite=guard.limit > 0,
      freeze=config.get('freeze', ''),
    ),
    num_consts=len(inputs),
  )
  eval_fn = runner.compile_eval(functools.partial(eval_step, model=exp.model, task=exp.task))
  batches = train_batches(exp, start_step)
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
  last_eval = None  # (step, metrics) of the latest scheduled evaluation
  compile_seconds = None
  bar = tqdm(
    total=exp.num_steps, initial=start_step, unit='step', disable=not primary, dynamic_ncols=True
  )
  with bar, Preemption() as preemption:  # the bar closes before an error is printed
    for step in range(start_step + 1, exp.num_steps + 1):
      batch = runner.put_batch(exp.task.prepare(next(batches)))
      called = time.perf_counter()
      state, metrics = step_fn(state, batch, *inputs)
      if compile_seconds is None:  # the first call traces and compiles, then queues the step
        compile_seconds = time.perf_counter() - called
        logging.info('Train step traced and compiled in %.1f s.', compile_seconds)
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
        summed['lr'] = optim.applied_learning_rate(exp.schedule, state.opt_state)
        writer.write(step, 'train', summed)
        bar.set_postfix(
          loss=f'{summed.get("loss", math.nan):.3f}', img_s=f'{summed["images_per_sec"]:.0f}'
        )
        history, last_log, log_time = [], step, now
      if evaluating:
        last_eval = step, evaluate(exp, state, eval_fn, chosen_on)
        writer.write(step, chosen_on, last_eval[1])
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
  # The chosen-on split (unless the last scheduled evaluation was of the last step), then, once,
  # for the report, the test split.
  final = {}
  if last_eval is not None and last_eval[0] == exp.num_steps:
    final[chosen_on] = last_eval[1]
  else:
    final[chosen_on] = evaluate(exp, state, eval_fn, chosen_on)
    writer.write(exp.num_steps, chosen_on, final[chosen_on])
  if chosen_on != 'test':
    final['test'] = evaluate(exp, state, eval_fn, 'test')
    writer.write(exp.num_steps, 'test', final['test'])
  if primary and exp.task.pictures:
    _write_pictures(exp, host_state)
  writer.close()
  ckpt.close()
  summary = {
    'model': config.model.name,
    'dataset': config.dataset,
    'steps': exp.num_steps,
    'resumed_from_step': start_step,
    # validation_accuracy, test_accuracy, test_loss / test_mean_iou...
    **{f'{split}_{k}': v for split, metrics in final.items() for k, v in metrics.items()},
    **exp.task.summary(),
    'wall_seconds': round(time.time() - start_time, 1),
    'compile_seconds': round(compile_seconds or 0.0, 2),  # this process's first train step
    **peak_memory(),
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
  """Evaluates the latest checkpoint in workdir on config.eval_split."""
  exp = build(config, workdir)
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f'no checkpoint in {workdir}/checkpoints; train first (--mode=train)')
    state = exp.runner.put_state(resume.restore_checkpoint(exp, ckpt, step))
  finally:
    ckpt.close()
  eval_fn = exp.runner.compile_eval(functools.partial(eval_step, model=exp.model, task=exp.task))
  split = eval_split(config)
  return {'step': step, 'split': split, **evaluate(exp, state, eval_fn, split)}
