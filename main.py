"""Train, evaluate or summarise a model described by an ml_collections config file.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20
  python main.py --config=configs/resnet.py:cifar10 --workdir=runs/r20 --config.optimizer.lr=0.05
  python main.py --config=configs/lenet5.py --mode=summary
  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/lr    # a sweep
  python main.py --config=configs/resnet.py --workdir=runs/r20 --mode=predict --inputs=photos/
  python main.py --config=configs/resnet.py --workdir=runs/r20 --mode=export   # -> runs/r20/export

This file only reads flags; cnn_jax/cli.py runs the modes (and sweeps, multi-host set-up).
"""

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
MODES = ['train', 'eval', 'predict', 'export', 'summary', 'gather']
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_list('inputs', [], 'predict: image files, globs and folders, comma-separated.')
flags.DEFINE_integer('top_k', 5, 'predict: the classes listed per image.')
flags.DEFINE_string('output', None, 'predict / export: the output folder (default in --workdir).')
flags.DEFINE_enum('export_format', 'saved_model', ['saved_model', 'stablehlo'], 'export: format.')
flags.DEFINE_integer('shard_index', 0, 'Sweeps: run trials i with i % num_shards == shard_index.')
flags.DEFINE_integer('num_shards', 1, 'Sweeps: the number of processes (or hosts) sharing it.')
flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', None, 'Multi-host: index of this process.')
flags.DEFINE_bool('distributed', False, 'Multi-host with the cluster detected by JAX (TPU, SLURM).')
flags.mark_flags_as_required(['config'])
RUN_FLAGS = ['coordinator_address', 'num_processes', 'process_id', 'distributed', 'inputs']
RUN_FLAGS += ['shard_index', 'num_shards', 'top_k', 'output', 'export_format']


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; a missing config file or a mistyped --config.field: one line, exit 2."""
  from cnn_jax import cli

  message = cli.config_file_error(argv)
  if message is None:
    try:
      return FLAGS(argv)
    except flags.IllegalFlagValueError as e:  # --mode=bogus, --export_format=onnx
      message = str(e)
    except (KeyError, AttributeError):  # what ml_collections raises for an unknown field
      message = cli.config_typo(argv)
      if message is None:
        raise
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from cnn_jax import cli

  try:
    config_file = config_flags.get_config_filename(FLAGS['config'])
    options = {name: FLAGS[name].value for name in RUN_FLAGS}
    cli.run(FLAGS.config, FLAGS.workdir, FLAGS.mode, config_file=config_file, **options)
  except cli.UserError as e:
    logging.flush()
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
