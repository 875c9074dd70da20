"""python -m experiments.benchmark: see experiments/benchmark/__init__.py."""

import sys

from cnn_jax.core.errors import UserError
from experiments.benchmark import main

if __name__ == '__main__':
  try:
    main()
  except UserError as e:
    sys.exit(f'error: {e}')
