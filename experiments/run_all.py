"""Reproduces the claims of the source notes: the tables and figures experiments/results/claims_*.

  python -m experiments.run_all                       # everything (about an hour on 2 CPU cores)
  python -m experiments.run_all --only arithmetic pictures   # the quick ones (about 2 minutes)
  python -m experiments.run_all --list                # what there is, and what each writes

Each experiment runs as `python -m experiments.<module>` in a fresh process, one after the other;
a failure is reported and the others still run (the exit status is 1 if any failed). The training
experiments keep their runs under runs/claims/ and read a finished run back instead of training
it again, so a second call (or one after an interruption) only does what is left.
"""

import argparse
import subprocess
import sys
import time

from experiments.common import ROOT

# name: (module of experiments/, extra arguments, what it writes and shows)
EXPERIMENTS = {
  'arithmetic': (
    'claims_arithmetic',
    [],
    'claims_arithmetic.md/.json: parameter counts, output sizes, the LeNet-5 table, the 1x1 '
    'bottleneck, depthwise-separable cost, stacked 3x3 convs, FC as conv, receptive fields',
  ),
  'param_counts': (
    'param_counts',
    [],
    'param_counts.md: parameters and multiply-adds of every registered model against the '
    'published numbers',
  ),
  'pictures': (
    'claims_pictures',
    [],
    'claims_edge_filters.png, claims_checkerboard.png, claims_feature_maps.png: edge filters, '
    'checkerboard artifacts of transposed convs, feature maps of a trained LeNet-5',
  ),
  'training': (
    'claims_training',
    [],
    'claims_training.md/.json/.png: degradation of deep plain nets, k-NN baseline, naive vs '
    '1x1-bottleneck Inception, augmentation ablation (3 seeds each)',
  ),
  'transfer': (
    'claims_transfer',
    [],
    'claims_transfer.md/.json: frozen backbone + new head vs fine-tuning vs from scratch, by '
    'number of labelled examples (3 seeds)',
  ),
}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', nargs='+', choices=list(EXPERIMENTS), help='default: all')
  parser.add_argument('--list', action='store_true', help='list the experiments and stop')
  args = parser.parse_args(argv)
  if args.list:
    for name, (module, _, writes) in EXPERIMENTS.items():
      print(f'{name:12s} python -m experiments.{module}: {writes}')
    return 0
  failed, times = [], {}
  for name in args.only or list(EXPERIMENTS):
    module, extra, _ = EXPERIMENTS[name]
    cmd = [sys.executable, '-m', f'experiments.{module}', *extra]
    print(f'=== {name}: python {" ".join(cmd[1:])}', flush=True)
    t0 = time.perf_counter()
    code = subprocess.call(cmd, cwd=ROOT)
    times[name] = time.perf_counter() - t0
    if code:
      failed.append(f'{name} (exit {code})')
  for name, seconds in times.items():
    print(f'{name:12s} {seconds:7.1f} s')
  if failed:
    print('failed: ' + ', '.join(failed), file=sys.stderr)
    return 1
  print('results in experiments/results/ (README: "Claims of the notes")')
  return 0


if __name__ == '__main__':
  sys.exit(main())
