"""Prepares a tfds dataset in the array_record format runs read (random access). Needs network
access (ImageNet: its tars in the manual folder); runs themselves never download.

  python -m cnn_jax.data.prepare cifar10                 # $TFDS_DATA_DIR or ~/tensorflow_datasets
  python -m cnn_jax.data.prepare voc --data_dir=/data    # a config.dataset name or a tfds name
  python -m cnn_jax.data.prepare imagenet2012            # ILSVRC2012_img_train.tar and _val.tar
                                                         # in <data_dir>/downloads/manual first

This is `tfds build <name> --file_format=array_record --data_dir=<data_dir>` through tfds's Python
API: the `tfds` command imports apache_beam, which this project does not install (tfds 4.9.10:
`tfds build` stops with "No module named 'apache_beam'" in the project's virtualenv).
"""

import argparse
import sys

from cnn_jax.core.errors import UserError
from cnn_jax.data.specs import DATASETS


def tfds_name(name: str) -> str:
  """The tfds name of `name`: a config.dataset name ('voc' -> 'voc/2007') or a tfds name."""
  return DATASETS[name].tfds_name if name in DATASETS else name


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
  """Downloads and prepares dataset `name` in array_record format; returns its folder."""
  from cnn_jax.core.quiet_tf import tfds
  from cnn_jax.data.datasets import default_data_dir

  data_dir = data_dir or default_data_dir()
  try:
    builder = tfds.builder(tfds_name(name), data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
      f"no tfds dataset '{name}'; the datasets configs name: "
      f'{", ".join(k for k, s in DATASETS.items() if s.how_to_prepare)}'
    ) from e
  builder.download_and_prepare(
    file_format='array_record',
    download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
  )
  return builder.data_dir


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('name', help='a config.dataset name (cifar10, voc, ...) or a tfds name')
  parser.add_argument(
    '--data_dir', default='', help='default: $TFDS_DATA_DIR or ~/tensorflow_datasets'
  )
  parser.add_argument(
    '--manual_dir', default='', help="default: <data_dir>/downloads/manual (ImageNet's tars)"
  )
  args = parser.parse_args(argv)
  try:
    path = prepare(args.name, args.data_dir or None, args.manual_dir or None)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'prepared {tfds_name(args.name)} in {path}')


if __name__ == '__main__':
  main()
