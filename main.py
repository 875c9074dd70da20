"""Train, evaluate or summarise a model described by an ml_collections config file.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20
  python main.py --config=configs/resnet.py:cifar10 --workdir=runs/r20 --config.optimizer.lr=0.05
  python main.py --config=configs/lenet5.py --mode=summary
  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/lr    # a sweep
  python main.py --config=configs/resnet.py --workdir=runs/r20 --mode=predict --inputs=photos/
  python main.py --config=configs/resnet.py --workdir=runs/r20 --mode=export   # -> runs/r20/export

A config file that defines get_trials is a sweep: its trials run one after another, each in its
own folder of --workdir, or split over processes with --shard_index=i --num_shards=n; a last
step tables them all (cnn_jax/recipes/sweep.py). --mode=gather tables what has finished so far.

The logic lives in the cnn_jax package; this file only reads flags.
"""

import importlib.util
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow serves tf.data only: keep it quiet
os.environ.setdefault('NO_GCE_CHECK', 'true')  # no cloud-metadata lookups from TensorFlow

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file; file.py:arg picks a variant.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, logs and summary.json.')
flags.DEFINE_enum(
  'mode',
  'train',
  ['train', 'eval', 'predict', 'export', 'summary', 'gather'],
  'What to do; predict: classes or masks for --inputs (cnn_jax/inference/predict.py); export: '
  'a SavedModel '
  "and .npz weights in <workdir>/export (cnn_jax/inference/export.py); gather: a sweep's table.",
)
flags.DEFINE_list(
  'inputs', [], 'predict: image files, globs and folders, comma-separated (e.g. a.png,photos/).'
)
flags.DEFINE_integer('top_k', 5, 'predict: the classes listed per image.')
flags.DEFINE_string(
  'output',
  None,
  'predict: folder for masks and predictions.json (default <workdir>/predictions); '
  'export: the export folder (default <workdir>/export).',
)
flags.DEFINE_integer('shard_index', 0, 'Sweeps: run trials i with i % num_shards == shard_index.')
flags.DEFINE_integer('num_shards', 1, 'Sweeps: the number of processes (or hosts) sharing it.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('distributed', False, 'Multi-host with the cluster detected by JAX (TPU, SLURM).')
flags.mark_flags_as_required(['config'])


def _config_typo(argv: list[str]) -> str | None:
  """The first --config.a.b=... override naming no field of the loaded config, with the closest
  names at the level where it goes wrong; None when every override names a field."""
  import ml_collections

  from cnn_jax.core.errors import close_matches

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


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a mistyped --config.field is one line and exit 2, not a traceback."""
  try:
    return FLAGS(argv)
  except (KeyError, AttributeError):  # what ml_collections raises for an unknown field
    try:
      message = _config_typo(argv)
    except Exception:  # the config itself did not load: let the original error speak
      message = None
    if message is None:
      raise
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from cnn_jax import cli

  try:
    cli.run(
      FLAGS.config,
      FLAGS.workdir,
      FLAGS.mode,
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      distributed=FLAGS.distributed,
      config_file=config_flags.get_config_filename(FLAGS['config']),
      shard_index=FLAGS.shard_index,
      num_shards=FLAGS.num_shards,
      inputs=FLAGS.inputs,
      top_k=FLAGS.top_k,
      output=FLAGS.output,
    )
  except cli.UserError as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
