"""Trains every family's offline default as a user would, and tabulates what it costs and reaches.

  python -m experiments.offline_table                  # every row, about an hour on 2 CPU cores
  python -m experiments.offline_table --only vgg senet # some rows (by label)

Each row is `python main.py --config=configs/<family>.py --workdir=runs/offline/<label>` in a
fresh process (the README's first command with another config): digits, no download. A row whose
workdir already holds a summary.json is read, not rerun (`--fresh` reruns it). Parameters and
multiply-adds come from cnn_jax.models.summary at the config's input size and 10 classes. Writes
experiments/results/offline_table.md and .json, with the machine's load average around each run
(the 2 cores are shared: a busy machine makes the wall times longer, not the accuracies different).
"""

import argparse
import json
import os
import shutil
import subprocess

from cnn_jax import train
from cnn_jax.models import summary
from experiments import common

# (label, config file, extra flags): one row per family's offline default.
ROWS = [
  ('lenet5', 'configs/lenet5.py', []),
  ('resnet20', 'configs/resnet.py', []),
  ('resnet20_deformable', 'configs/resnet.py', ['--config.model.deformable_stages=(3,)']),
  ('seresnet20', 'configs/senet.py', []),
  ('alexnet', 'configs/alexnet.py', []),
  ('vgg11_bn', 'configs/vgg.py', []),
  ('googlenet', 'configs/googlenet.py', []),
  ('densenet121', 'configs/densenet.py', []),
  ('squeezenet1_1', 'configs/squeezenet.py', []),
  ('mobilenet_v1', 'configs/mobilenet.py', ['--config.model.name=mobilenet_v1']),
  ('mobilenet_v2', 'configs/mobilenet.py', []),
  ('efficientnet_b0', 'configs/efficientnet.py', []),
]


def run_row(label: str, path: str, flags: list[str], fresh: bool) -> dict:
  workdir = os.path.join(common.ROOT, 'runs', 'offline', label)
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  summary_path = os.path.join(workdir, 'summary.json')
  load_before = common.load_average()
  command_seconds = None
  if not os.path.exists(summary_path):
    main_flags = [f'--config={path}', f'--workdir={workdir}', *flags]
    _, command_seconds = common.run_main_py(main_flags, stdout=subprocess.DEVNULL)
  with open(summary_path) as f:
    result = json.load(f)
  config = common.config_of(path, flags)
  model = train.create_model(config, num_classes=10)
  s = summary.summarize(model, train.input_shape(config))
  return {
    'label': label,
    'config': ' '.join([path, *flags]),
    'model': config.model.name,
    'image_size': config.image_size,
    'epochs': config.num_epochs,
    'params': s.total_params,
    'macs': s.total_macs,
    'test_accuracy': result['test_accuracy'],
    'steps': result['steps'],
    'train_wall_seconds': result['wall_seconds'],
    'command_seconds': command_seconds,
    'load_average_before': load_before,
    'load_average_after': common.load_average(),
  }


def markdown(rows: list[dict]) -> str:
  lines = [
    '| model | config | input | epochs | parameters | multiply-adds | test accuracy '
    '| wall time | load avg (1 min) before / after |',
    '|---|---|---|---:|---:|---:|---:|---:|---|',
  ]
  for r in rows:
    wall = r['command_seconds'] or r['train_wall_seconds']
    lines.append(
      f'| {r["label"]} | `{r["config"]}` | {r["image_size"]}x{r["image_size"]} '
      f'| {r["epochs"]:g} | {r["params"]:,} | {r["macs"]:,} | {100 * r["test_accuracy"]:.2f}% '
      f'| {wall / 60:.1f} min | {r["load_average_before"][0]} / {r["load_average_after"][0]} |'
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', nargs='*', help='labels of the rows to run (default: all)')
  parser.add_argument('--fresh', action='store_true', help='rerun rows that already finished')
  args = parser.parse_args()
  labels = [r[0] for r in ROWS]
  unknown = sorted(set(args.only or ()) - set(labels))
  if unknown:
    parser.error(f'unknown rows {unknown}; choose from {labels}')
  out = os.path.join(common.RESULTS, 'offline_table.json')
  done = {}
  if os.path.exists(out):
    with open(out) as f:
      done = {r['label']: r for r in json.load(f)['rows']}
  for label, path, flags in ROWS:
    if args.only and label not in args.only:
      continue
    done[label] = run_row(label, path, flags, args.fresh)
    rows = [done[lb] for lb in labels if lb in done]
    common.write_results(out, {'rows': rows}, markdown(rows))


if __name__ == '__main__':
  main()
