"""What main.py runs: multi-host set-up, then train, eval, predict, export, summary, or a sweep's
trials."""

import json
import logging as py_logging
import os
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from cnn_jax.core.errors import UserError

__all__ = ['UserError', 'run']


class _OwnInfoOnly(py_logging.Filter):
  """Keeps INFO lines of this project and every library's warnings and errors.

  Orbax, JAX and tfds log dozens of INFO lines per checkpoint or compile; they drown the run.
  """

  _package = os.path.dirname(os.path.abspath(__file__))

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      return True
    return record.pathname.startswith(self._package) or record.pathname.endswith('main.py')


def quiet_libraries() -> None:
  logging.get_absl_handler().addFilter(_OwnInfoOnly())


def _initialize_distributed(
  coordinator_address: str | None,
  num_processes: int | None,
  process_id: int | None,
  distributed: bool,
) -> None:
  if coordinator_address is None and not distributed:
    return
  # CPU hosts (and tests standing in for hosts) need a collectives backend; GPU/TPU ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address is None:
    jax.distributed.initialize()  # TPU pods, SLURM, ...: JAX reads the cluster
  else:
    if num_processes is None or process_id is None:
      raise UserError('--coordinator_address needs --num_processes and --process_id too')
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  logging.info('Process %d of %d.', jax.process_index(), jax.process_count())


def summary(config: ml_collections.ConfigDict) -> str:
  """The per-layer table of config's model at config's input size."""
  from cnn_jax import train
  from cnn_jax.models import summary

  return summary.format_table(train.model_summary(config))


def run(
  config: ml_collections.ConfigDict,
  workdir: str | None,
  mode: str,
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  distributed: bool = False,
  config_file: str | None = None,
  shard_index: int = 0,
  num_shards: int = 1,
  inputs: Sequence[str] = (),
  top_k: int = 5,
  output: str | None = None,
) -> None:
  """`config_file`: the config's path; a file that defines get_trials is a sweep (sweep.py).

  predict (cnn_jax/inference/predict.py) reads `inputs`, `top_k` and `output`; export
  (cnn_jax/inference/export.py)
  `output`.
  """
  quiet_libraries()
  if mode == 'summary':
    # A sweep's base model; a style transfer run's backbone.
    print(summary(config.backbone if 'style' in config else config))
    return
  if 'style' in config and mode != 'train':
    raise UserError(
      f'--mode={mode}: a style transfer run has no checkpoint of its own (it writes stylised.png '
      "and summary.json); its backbone's test accuracy is in summary.json and in "
      '<workdir>/backbone/summary.json, and --mode=train reuses a trained backbone'
    )
  if not workdir:
    raise UserError(f'--mode={mode} needs --workdir (the folder for checkpoints and logs)')
  from cnn_jax.recipes import sweep

  hooks = sweep.load_hooks(config_file)
  if hooks is None and (mode == 'gather' or (shard_index, num_shards) != (0, 1)):
    flag = '--mode=gather' if mode == 'gather' else '--shard_index/--num_shards'
    raise UserError(
      f'{flag} is for sweep configs (files that define get_trials, see cnn_jax/recipes/sweep.py)'
    )
  if hooks is not None and mode in ('eval', 'predict', 'export'):
    raise UserError(
      f'a sweep has no single checkpoint for --mode={mode}: --mode=gather tables its trials, and '
      'each trial folder holds its own config.json and summary.json'
    )
  sweep.check_shard(shard_index, num_shards)
  if mode == 'predict':  # one process, one device: no multi-host set-up
    from cnn_jax.inference import predict

    print(
      predict.format_result(predict.predict(config, workdir, inputs, top_k=top_k, output=output))
    )
    return
  if mode == 'export':
    from cnn_jax.inference import export

    print(json.dumps(export.export(config, workdir, output=output), indent=2))
    return
  _initialize_distributed(coordinator_address, num_processes, process_id, distributed)
  if hooks is not None:
    if mode == 'gather':
      sweep.gather(config, workdir, hooks)
    else:
      sweep.run(config, workdir, hooks, shard_index=shard_index, num_shards=num_shards)
    return
  from cnn_jax import train

  if mode == 'train' and 'noisy_student' in config:
    from cnn_jax.recipes import noisy_student

    result = noisy_student.run(config, workdir)
  elif mode == 'train' and 'style' in config:
    from cnn_jax.recipes import style as style_recipe

    result = style_recipe.run(config, workdir)
  elif mode == 'train':
    result = train.train_and_evaluate(config, workdir)
  else:
    result = train.restore_and_evaluate(config, workdir)
  if result is not None and jax.process_index() == 0:
    print(json.dumps(result, indent=2))
