"""The seeds' segmentation claims, measured on the offline digit scenes with one training budget.

  python -m experiments.segmentation_table                  # every row, about 1.5 h on 2 CPU cores
  python -m experiments.segmentation_table --only unet fcn8s --no-crf

Claims (Long et al. 2015; Odena et al. 2016; Chen et al. 2015):
- FCN-8s vs FCN-16s vs FCN-32s: fusing the finer pool4 / pool3 scores gives finer masks;
- transposed conv vs resize + conv upsampling (checkerboard artifacts);
- a dense CRF after the net sharpens boundaries.

Each row trains `python main.py --config=configs/<net>.py --workdir=runs/segmentation/<label>`
(the offline default: digit_scenes, 300 steps of batch 32, cross-entropy + Dice) in a fresh
process, so every row gets the same data, steps and schedule. Then, unless --no-crf, the same
checkpoint is evaluated again with the dense CRF (`--mode=eval --config.segmentation.crf=True`,
DeepLab's settings), on the same 500 test scenes. A row whose workdir already holds a
summary.json (and crf.json) is read, not rerun (`--fresh` reruns it). Writes
experiments/results/segmentation_table.md and .json with the machine's load average around each
run (the 2 cores may be shared: that changes wall times, not the metrics).
"""

import argparse
import json
import os
import shutil
import subprocess

from cnn_jax import train
from cnn_jax.models import summary
from experiments import common

# (label, config file, extra flags): the claim a row is part of is in its label.
ROWS = [
  ('unet', 'configs/unet.py', []),
  ('unet_bilinear', 'configs/unet.py', ['--config.model.upsample=bilinear']),
  ('fcn32s', 'configs/fcn.py', ['--config.model.name=fcn32s']),
  ('fcn16s', 'configs/fcn.py', ['--config.model.name=fcn16s']),
  ('fcn8s', 'configs/fcn.py', []),
  ('fcn8s_bilinear', 'configs/fcn.py', ['--config.model.upsample=bilinear']),
]
NUM_CLASSES = 11  # digit_scenes: background + 10 digits


def run_row(label: str, path: str, flags: list[str], fresh: bool, crf: bool) -> dict:
  workdir = os.path.join(common.ROOT, 'runs', 'segmentation', label)
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  summary_path = os.path.join(workdir, 'summary.json')
  crf_path = os.path.join(workdir, 'crf.json')
  load_before = common.load_average()
  train_command = eval_command = None
  base = [f'--config={path}', f'--workdir={workdir}', *flags]
  if not os.path.exists(summary_path):
    _, train_command = common.run_main_py(base, stdout=subprocess.DEVNULL)
  with open(summary_path) as f:
    result = json.load(f)
  crf_result = None
  if crf and not os.path.exists(crf_path):
    done, eval_command = common.run_main_py(
      [*base, '--mode=eval', '--config.segmentation.crf=True'], stdout=subprocess.PIPE, text=True
    )
    crf_result = json.loads(done.stdout[done.stdout.index('{') :])
    crf_result['command_seconds'] = eval_command
    with open(crf_path, 'w') as f:
      json.dump(crf_result, f, indent=2)
  elif os.path.exists(crf_path):
    with open(crf_path) as f:
      crf_result = json.load(f)
  config = common.config_of(path, flags)
  s = summary.summarize(train.create_model(config, NUM_CLASSES), train.input_shape(config))
  return {
    'label': label,
    'config': ' '.join([path, *flags]),
    'model': config.model.name,
    'upsample': config.model.upsample,
    'image_size': config.image_size,
    'steps': result['steps'],
    'params': s.total_params,
    'macs': s.total_macs,
    'mean_iou': result['test_mean_iou'],
    'pixel_accuracy': result['test_pixel_accuracy'],
    'crf_mean_iou': crf_result and crf_result['mean_iou'],
    'crf_pixel_accuracy': crf_result and crf_result['pixel_accuracy'],
    'crf_eval_seconds': crf_result and crf_result.get('command_seconds'),
    'train_wall_seconds': result['wall_seconds'],
    'train_command_seconds': train_command,
    'load_average_before': load_before,
    'load_average_after': common.load_average(),
  }


def markdown(rows: list[dict]) -> str:
  lines = [
    '| row | net | upsampling | parameters | multiply-adds | test mIoU | pixel acc. '
    '| mIoU + CRF | pixel acc. + CRF | CRF eval time | train time | load avg before / after |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ]
  for r in rows:
    wall = r['train_command_seconds'] or r['train_wall_seconds']
    if r['crf_mean_iou'] is None:
      crf = '- | - | -'
    else:
      crf = (
        f'{r["crf_mean_iou"]:.4f} | {100 * r["crf_pixel_accuracy"]:.2f}% '
        f'| {r["crf_eval_seconds"] / 60:.1f} min'
      )
    lines.append(
      f'| {r["label"]} | {r["model"]} | {r["upsample"]} | {r["params"]:,} | {r["macs"]:,} '
      f'| {r["mean_iou"]:.4f} | {100 * r["pixel_accuracy"]:.2f}% | {crf} | {wall / 60:.1f} min '
      f'| {r["load_average_before"][0]} / {r["load_average_after"][0]} |'
    )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', nargs='*', help='labels of the rows to run (default: all)')
  parser.add_argument('--fresh', action='store_true', help='rerun rows that already finished')
  parser.add_argument('--no-crf', dest='crf', action='store_false', help='skip the CRF evals')
  args = parser.parse_args()
  labels = [r[0] for r in ROWS]
  unknown = sorted(set(args.only or ()) - set(labels))
  if unknown:
    parser.error(f'unknown rows {unknown}; choose from {labels}')
  out = os.path.join(common.RESULTS, 'segmentation_table.json')
  done = {}
  if os.path.exists(out):
    with open(out) as f:
      done = {r['label']: r for r in json.load(f)['rows']}
  for label, path, flags in ROWS:
    if args.only and label not in args.only:
      continue
    done[label] = run_row(label, path, flags, args.fresh, args.crf)
    rows = [done[lb] for lb in labels if lb in done]
    common.write_results(out, {'rows': rows}, markdown(rows))


if __name__ == '__main__':
  main()
