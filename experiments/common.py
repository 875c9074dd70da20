"""What the experiments share: where results go, the machine they stamp on them, and one writer
for their JSON, markdown and figures; also the `python main.py` runner of the table scripts.

Formats (tests and the README read them): JSON with one-space indents; markdown as the script
built it; PNG through matplotlib's Agg backend. Standard library only at import (matplotlib and
absl load when a figure or a config is asked for), so a launcher like run_all stays light.
"""

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')
# Where the committed numbers of the claims scripts were measured (their markdown says so).
SHARED_MACHINE = '2-core x86-64 CPU, shared with other jobs'


# ---------------------------------------------------------------------------------------------
# The machine


def cpu_name() -> str:
  """The processor's name as lscpu gives it ('Model name': /proc/cpuinfo's 'model name'); the
  architecture where there is none (not Linux, say)."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def python_version() -> str:
  return sys.version.split()[0]


def machine(**extra: Any) -> dict[str, Any]:
  """The results JSONs' stamp: {'machine': the architecture, 'cpus': the core count, **extra}."""
  return {'machine': platform.machine(), 'cpus': os.cpu_count(), **extra}


def load_average() -> list[float]:
  """The load average (1, 5, 15 min), rounded to 0.01: the machine may be shared."""
  return [round(v, 2) for v in os.getloadavg()]


# ---------------------------------------------------------------------------------------------
# Writers


def write_json(path: str, payload: Any, *, ensure_ascii: bool = True, default=None) -> None:
  """`payload` as JSON (indent 1) at `path`, its folder made if need be."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(payload, f, indent=1, ensure_ascii=ensure_ascii, default=default)


def write_text(path: str, text: str) -> None:
  """`text` as it is (markdown: the caller ends it with its newline) at `path`."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)


def write_results(out: str, payload: dict, table: str) -> None:
  """The table scripts' pair: `payload` after the machine as `out` (.json), `table` as the .md
  beside it; prints the table."""
  write_json(out, {'machine': machine(python=python_version()), **payload})
  write_text(os.path.splitext(out)[0] + '.md', table + '\n')
  print(table, flush=True)


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  return plt


def save_figure(fig, path: str, dpi: float | None = None) -> None:
  """Writes `fig` as a PNG at `path` (matplotlib's dpi unless given) and closes it."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, **({} if dpi is None else {'dpi': dpi}))
  pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
# Numbers and runs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample std (n - 1; 0.0 for one value) of `values`; (nan, nan) for none."""
  if not values:
    return math.nan, math.nan
  return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_main_py(flags: list[str], **kwargs: Any) -> tuple[subprocess.CompletedProcess, float]:
  """`python main.py <flags>` in a fresh process at the repository root (a failure raises),
  printed first as `$ main.py ...`; (what it returned, its wall seconds to 0.1 s)."""
  print('$', 'main.py', *flags, flush=True)
  t0 = time.perf_counter()
  done = subprocess.run([sys.executable, 'main.py', *flags], cwd=ROOT, check=True, **kwargs)
  return done, round(time.perf_counter() - t0, 1)


def config_of(path: str, flags: list[str]):
  """The config main.py would build (file + --config.x=y overrides), for the size columns."""
  from absl import flags as absl_flags
  from ml_collections import config_flags

  fv = absl_flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=fv, lock_config=True)
  argv, sys.argv = sys.argv, [sys.argv[0], f'--config={path}', *flags]  # config_flags reads it
  try:
    fv(sys.argv)
  finally:
    sys.argv = argv
  return fv.config
