"""What main.py runs: multi-host set-up, then train, eval, predict, export, summary, or a sweep's
trials."""

import difflib
import importlib.util
import json
import logging as py_logging
import os
from collections.abc import Sequence

import jax
import ml_collections
from absl import logging

from cnn_jax.core.errors import UserError, close_matches

__all__ = ['UserError', 'config_file_error', 'config_typo', 'run']


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


def config_file_error(argv: list[str]) -> str | None:
  """What is wrong with --config's file (no such file, not a .py file); None when it is there."""
  spec = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
  if spec is None:
    return None
  path = spec.partition(':')[0]
  folder = os.path.dirname(path) or '.'
  if not os.path.isfile(path):
    near = (
      sorted(n for n in os.listdir(folder) if n.endswith('.py')) if os.path.isdir(folder) else []
    )
    close = ', '.join(difflib.get_close_matches(os.path.basename(path), near, n=3, cutoff=0.75))
    if close:
      hint = f'did you mean: {close}'
    elif near:
      hint = f'the configs in {folder}: {", ".join(near)}'
    else:
      hint = 'the configs are in configs/ (e.g. configs/resnet.py)'
    return f'--config={spec}: there is no file {path}; {hint}'
  if not path.endswith('.py'):
    return f'--config={spec}: a config is a Python file with get_config(); {path} is not a .py file'
  return None


def config_typo(argv: list[str]) -> str | None:
  """The first --config.a.b=... override naming no field of the loaded config, with the closest
  names at the level where it goes wrong; None when every override names a field, or when the
  config itself does not load (then the original error speaks)."""
  try:
    return _config_typo(argv)
  except Exception:
    return None


def _config_typo(argv: list[str]) -> str | None:
  # The config as loaded before any override (absl had not stored it when the override failed).
  spec = next(a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config='))
  path, _, arg = spec.partition(':')
  loader = importlib.util.spec_from_file_location('_config_for_typo', path)
  module = importlib.util.module_from_spec(loader)
  loader.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.') :].split('=', 1)[0]
    node, done = config, []
    for part in path.split('.'):
      if not isinstance(node, ml_collections.ConfigDict):
        return f'--config.{path}: config.{".".join(done)} is a value, not a section of fields'
      if part not in node:
        where = f'config.{".".join(done)}' if done else 'the config'
        hint = close_matches(part, node.keys())
        hint = f'did you mean: {hint}' if hint else f'its fields: {", ".join(node.keys())}'
        return f"--config.{path}: {where} has no field '{part}'; {hint}"
      node, done = node[part], [*done, part]
  return None


# config.recipe -> the module whose run(config, workdir) trains it ('' = one trainer run).
RECIPES = {
  '': 'cnn_jax.train',
  'noisy_student': 'cnn_jax.recipes.noisy_student',
  'style_transfer': 'cnn_jax.recipes.style',
}


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
  export_format: str = 'saved_model',
) -> None:
  """`config_file`: the config's path; a file that defines get_trials is a sweep (sweep.py).
  `config.recipe` ('' = one training run; RECIPES) names a run made of runs.

  predict (cnn_jax/inference/predict.py) reads `inputs`, `top_k` and `output`; export
  (cnn_jax/inference/export.py) `output` and `export_format`.
  """
  quiet_libraries()
  recipe = config.get('recipe', '')
  if recipe not in RECIPES:
    raise UserError(f'config.recipe={recipe!r}; use one of {", ".join(map(repr, RECIPES))}')
  if mode == 'summary':
    # A sweep's base model; a style transfer run's backbone.
    print(summary(config.backbone if recipe == 'style_transfer' else config))
    return
  if recipe == 'style_transfer' and mode != 'train':
    raise UserError(
      f'--mode={mode}: a style transfer run has no checkpoint of its own (it writes stylised.png '
      "and summary.json); its backbone's test accuracy is in summary.json and in "
      '<workdir>/backbone/summary.json, and --mode=train reuses a trained backbone'
    )
  if not workdir:
    raise UserError(f'--mode={mode} needs --workdir (the folder for checkpoints and logs)')
  if recipe and mode in ('eval', 'predict', 'export'):
    # A run made of runs: the recipe names the one these modes read (Noisy Student: its last
    # student).
    final_run = getattr(importlib.import_module(RECIPES[recipe]), 'final_run', None)
    if final_run is not None:
      config, workdir = final_run(config, workdir)
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

    info = export.export(config, workdir, output=output, export_format=export_format)
    print(json.dumps(info, indent=2))
    return
  _initialize_distributed(coordinator_address, num_processes, process_id, distributed)
  if hooks is not None:
    if mode == 'gather':
      sweep.gather(config, workdir, hooks)
    else:
      sweep.run(config, workdir, hooks, shard_index=shard_index, num_shards=num_shards)
    return
  from cnn_jax import train

  if mode == 'train' and recipe:
    result = importlib.import_module(RECIPES[recipe]).run(config, workdir)
  elif mode == 'train':
    result = train.train_and_evaluate(config, workdir)
  else:
    result = train.restore_and_evaluate(config, workdir)
  if result is not None and jax.process_index() == 0:
    print(json.dumps(result, indent=2))
