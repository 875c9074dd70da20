"""Transfer learning on digits: a new head on a frozen backbone, fine-tuning all, or from scratch.

  python -m experiments.claims_transfer                         # n = 5, 20, all; seeds 0 1 2
  python -m experiments.claims_transfer --sizes 5 --seeds 0 --source_steps 2 --steps 2  # smoke

The claim (notes 004, transfer learning): with a small labelled set, keep the earlier layers of a
net trained on another task fixed and train only a new softmax layer; with more data, freeze
fewer layers or fine-tune them all; the more data, the more layers can train.

Source task: ResNet-20 on digit classes 0-4 (all their 648 training images), configs/resnet.py's
offline recipe unchanged (batch 128, SGD + Nesterov 0.1, 1 warmup epoch then cosine, weight decay
5e-4, label smoothing 0.1, random 2-pixel shifts) for --source_steps (50 = its 10 epochs), seed 0,
once: its checkpoint is the pretrained backbone. Target task: classes 5-9 (relabelled 0-4) with n
labelled training images per class (config.train_examples_per_class: 5, 20, or all of them:
644 in all), a stratified draw that changes with the seed; tested on every test image of
classes 5-9 (180). Arms, each --steps steps of batch --batch_size with the same recipe and one
learning rate (--lr, the recipe's 0.1 unless set; not tuned for any arm), warmup 10% of the steps:
  scratch   a fresh ResNet-20, every layer trained
  head      the source's weights but a fresh head (init_from.skip='^head/'), everything but the
            head frozen (config.freeze='^(?!head/)': no update, BatchNorm running statistics as
            loaded; in training the frozen layers normalise with the batch's own, transfer.py)
  finetune  the source's weights, a fresh head, every layer trained
Seeds 0, 1, 2 (the labelled draw, the head's initialisation and the batch order); the table
gives mean ± sample std (n - 1) of the test accuracy, and each seed's.

Every run goes through cnn_jax.recipes.sweep (the trainer, in this process): runs/claims/transfer/
<model>_<size>px_src<S>/source/ holds the source run, .../tgt<steps>_b<batch>_lr<lr>/ the target
runs, each an ordinary trainer workdir; a run with summary.json is read, not rerun, and an
interrupted one resumes. Writes claims_transfer.md, .json and .png into --out_dir (default
experiments/results).

Cost, measured at nice 19 on the 2-core x86-64 CPU machine while another training job kept its
load average at 3-4: the source run 109 s (50 steps of batch 128, compilation included), a target
run 38-44 s (60 steps of batch 32, about 9 s of it the first step's compilation). The default
end to end (2026-11-26, sharing the cores with another training job and, for its last runs, test
runs): 28.4 min; the source 94 s, target runs 32-122 s.
"""

import argparse
import math
import os
import sys
import time
from typing import Any

import jax
import ml_collections

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.errors import UserError
from cnn_jax.data import datasets
from cnn_jax.recipes import sweep
from cnn_jax.weights import transfer
from configs import resnet
from experiments import common
from experiments.common import mean_std

RUNS = os.path.join(common.ROOT, 'runs', 'claims')
NAME = 'claims_transfer'
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
ALL = -1  # train_examples_per_class: every training image of the class
BACKBONE = '^(?!head/)'  # every parameter but the classifier's
ARMS: dict[str, str] = {
  'scratch': 'from scratch (every layer trained)',
  'head': 'frozen backbone + new head',
  'finetune': 'fine-tune all (new head)',
}


def source_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """configs/resnet.py's offline default on classes 0-4, for --source_steps steps, seed 0."""
  config = resnet.get_config()
  config.model.name = args.model
  config.image_size = args.image_size
  config.data_dir = args.data_dir
  config.data_classes = SOURCE_CLASSES
  config.num_train_steps = args.source_steps
  config.log_every_steps = min(10, args.source_steps)
  config.eval_every_steps = -1  # the test split once, at the end
  config.checkpoint_every_steps = args.source_steps  # the checkpoint the targets start from
  config.seed = 0
  return config


def target_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
  """Every target run's config before its arm, n and seed: the same recipe and budget."""
  config = resnet.get_config()
  config.model.name = args.model
  config.image_size = args.image_size
  config.data_dir = args.data_dir
  config.data_classes = TARGET_CLASSES
  config.num_train_steps = args.steps
  config.batch_size = args.batch_size
  config.optimizer.lr = args.lr
  # Warmup in steps, not epochs: an epoch of 25 images (n = 5) is shorter than one batch.
  config.optimizer.warmup_steps = args.steps // 10
  config.log_every_steps = min(10, args.steps)
  config.eval_every_steps = -1
  config.checkpoint_every_steps = args.steps
  return config


def arm_overrides(arm: str, source_workdir: str) -> dict[str, Any]:
  if arm == 'scratch':
    return {}
  overrides = {'init_from.path': source_workdir, 'init_from.skip': '^head/'}
  if arm == 'head':
    overrides['freeze'] = BACKBONE
  return overrides


def _size_label(n: int) -> str:
  return 'all' if n == ALL else str(n)


def target_trials(args: argparse.Namespace, source_workdir: str) -> list[sweep.Trial]:
  """Seed by seed (an interrupted script has whole seeds first), then n, then arm."""
  return [
    sweep.Trial(
      overrides={
        **arm_overrides(arm, source_workdir),
        'train_examples_per_class': n,
        'seed': seed,
      },
      name=f'{arm}_n{_size_label(n)}_seed{seed}',
      columns={'arm': arm, 'n': n},
    )
    for seed in args.seeds
    for n in args.sizes
    for arm in args.arms
  ]


def _folder_float(value: float) -> str:
  return f'{value:g}'.replace('.', 'p')


def run_dirs(args: argparse.Namespace) -> tuple[str, str]:
  """(the source sweep's folder, the target sweep's folder): every setting that changes a run's
  config is in a folder name, so another setting never meets the runs of this one."""
  base = os.path.join(
    args.runs_dir, 'transfer', f'{args.model}_{args.image_size}px_src{args.source_steps}'
  )
  target = f'tgt{args.steps}_b{args.batch_size}_lr{_folder_float(args.lr)}'
  return os.path.join(base, 'source'), os.path.join(base, target)


def split_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(training, test) images of config's data: its classes, n per class drawn from its seed."""
  data = data_lib.load(config.dataset, config.data_dir or None)
  data = datasets.class_subset(
    data, config.data_classes, config.train_examples_per_class, seed=config.seed
  )
  return len(data.train), len(data.test)


def trained_parameters(config: ml_collections.ConfigDict, freeze: str) -> tuple[int, int]:
  """(parameters training updates, all parameters) of config's model with 5 classes."""
  model = train.create_model(config, len(TARGET_CLASSES))
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, *train.input_shape(config))))
  )['params']
  sizes = [math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes)]
  if not freeze:
    return sum(sizes), sum(sizes)
  labels = jax.tree.leaves(transfer.frozen_labels(shapes, transfer.compile_regex(freeze, 'freeze')))
  trained = sum(s for s, label in zip(sizes, labels, strict=True) if label == 'trained')
  return trained, sum(sizes)


# ---------------------------------------------------------------------------------------------
# Tables and figure.


def aggregate(rows: list[dict]) -> list[dict]:
  """One entry per (n, arm): test accuracies of the finished seeds, their mean and std."""
  groups: dict[tuple[int, str], list[dict]] = {}
  for r in rows:
    groups.setdefault((r['n'], r['arm']), []).append(r)
  out = []
  for (n, arm), runs in groups.items():
    done = sorted((r for r in runs if r['status'] == 'done'), key=lambda r: r['seed'])
    accuracies = [r['test_accuracy'] for r in done]
    mean, std = mean_std(accuracies)
    # What the best arm is chosen on (runs from before the validation split have none).
    validation = [r['validation_accuracy'] for r in done if 'validation_accuracy' in r]
    out.append(
      {
        'n': n,
        'arm': arm,
        'seeds': [r['seed'] for r in done],
        'test_accuracy': accuracies,
        'mean': mean,
        'std': std,
        'validation_mean': mean_std(validation)[0] if len(validation) == len(done) else None,
        'not_done': [f'seed {r["seed"]} {r["status"]}' for r in runs if r['status'] != 'done'],
        'wall_seconds': mean_std([r['wall_seconds'] for r in done])[0],
      }
    )
  return out


def _cell(entry: dict | None) -> str:
  if entry is None or not entry['seeds']:
    return 'n/a'
  per_seed = ', '.join(f'{100 * a:.1f}' for a in entry['test_accuracy'])
  note = f'; {", ".join(entry["not_done"])}' if entry['not_done'] else ''
  return f'{100 * entry["mean"]:.2f} ± {100 * entry["std"]:.2f}% ({per_seed}{note})'


def markdown(payload: dict) -> str:
  s, t = payload['source'], payload['target']
  arms, sizes = t['arms'], t['sizes']
  table = {(e['n'], e['arm']): e for e in payload['aggregate']}
  m = payload['machine']
  command = ' '.join(['python -m experiments.claims_transfer', *payload['argv']])
  lines = [
    '# Transfer learning: frozen backbone + new head vs fine-tuning vs from scratch',
    '',
    f'Machine: {m["machine"]}, {m["cpus"]} CPU cores, jax {m["jax"]}; load average (1 min) '
    f'{payload["load_average_before"][0]} before, {payload["load_average_after"][0]} after. '
    f'`{command}`: {payload["seconds"] / 60:.1f} min for this invocation (runs that had '
    'finished before are read, not rerun); '
    f'{sum(r["wall_seconds"] or 0 for r in payload["rows"]) / 60:.1f} min of target training '
    f'and {s["wall_seconds"] / 60:.1f} min for the source run, as the trainer measured them.',
    '',
    f'Source: {s["model"]} on digit classes 0-4 ({s["train_count"]} training images) at '
    f"{s['image_size']}x{s['image_size']}, configs/resnet.py's offline recipe, "
    f'{s["steps"]} steps of batch {s["batch_size"]}, seed 0: '
    f'{100 * s["test_accuracy"]:.2f}% on the {s["test_count"]} test images of classes 0-4.',
    '',
    f'Target: classes 5-9, n labelled training images per class (a stratified draw per seed), '
    f'{t["steps"]} steps of batch {t["batch_size"]}, learning rate {t["lr"]:g} for every arm '
    f'(not tuned), 10% warmup then cosine; test accuracy on the {t["test_count"]} test images of '
    f'classes 5-9, mean ± std over seeds {t["seeds"]} (each seed in brackets).',
    '',
    '| n per class (images) | ' + ' | '.join(ARMS[a] for a in arms) + ' |',
    '|---|' + '---:|' * len(arms),
  ]
  for n in sizes:
    count = t['train_counts'].get(_size_label(n))
    label = f'{_size_label(n)} ({count})' if count else _size_label(n)
    lines.append(f'| {label} | ' + ' | '.join(_cell(table.get((n, a))) for a in arms) + ' |')
  lines += [
    '',
    'Parameters trained: '
    + ', '.join(f'{a} {t["trained_parameters"][a][0]:,}' for a in arms)
    + f' of {t["trained_parameters"][arms[0]][1]:,}.',
    '',
    'Best arm by mean validation accuracy (chosen on validation, reported on test): '
    + '; '.join(f'n = {_size_label(n)}: {best}' for n, best in payload['best'].items())
    + '.',
    '',
    f'![test accuracy against n]({NAME}.png)',
  ]
  return '\n'.join(lines)


def best_arms(entries: list[dict], sizes: list[int]) -> dict[int, str]:
  """Each n's arm with the highest mean validation accuracy, and the test accuracy it reports."""
  best = {}
  for n in sizes:
    done = [e for e in entries if e['n'] == n and e['seeds'] and e['validation_mean'] is not None]
    if done:
      top = max(done, key=lambda e: e['validation_mean'])
      best[n] = (
        f'{top["arm"]} ({100 * top["validation_mean"]:.2f}% validation, '
        f'{100 * top["mean"]:.2f}% test)'
      )
  return best


def plot(payload: dict, path: str) -> None:
  plt = common.pyplot()
  t = payload['target']
  counts = t['train_counts']
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for arm in t['arms']:
    points = sorted(
      (counts[_size_label(e['n'])] / len(TARGET_CLASSES), 100 * e['mean'], 100 * e['std'])
      for e in payload['aggregate']
      if e['arm'] == arm and e['seeds']
    )
    if points:
      x, y, err = zip(*points, strict=True)
      ax.errorbar(x, y, yerr=err, marker='o', capsize=3, label=ARMS[arm])
  ax.set_xscale('log')
  ax.set_xlabel('labelled training images per class (log)')
  ax.set_ylabel('test accuracy, classes 5-9 (%)')
  ax.set_title(f'{payload["source"]["model"]}: pretrained on digits 0-4, trained on 5-9')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> None:
  if min(args.source_steps, args.steps, args.batch_size) < 1:
    raise UserError('--source_steps, --steps and --batch_size must be >= 1')
  if any(s < 0 for s in args.seeds):
    raise UserError(f'--seeds {args.seeds}: seeds are whole numbers >= 0')
  if any(n != ALL and n < 1 for n in args.sizes):
    raise UserError(f'--sizes {args.sizes}: give images per class >= 1, or -1 for all of them')
  if not args.lr > 0:
    raise UserError(f'--lr {args.lr}: give a learning rate > 0')


def main(argv: list[str] | None = None) -> dict | None:
  """Runs (or reads) the source and target runs and writes the table; None on SIGTERM."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', nargs='+', type=int, default=[5, 20, ALL], help='n; -1: all')
  parser.add_argument('--arms', nargs='+', choices=list(ARMS), default=list(ARMS))
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=60, help="each target run's steps")
  parser.add_argument('--batch_size', type=int, default=32, help="each target run's batch")
  parser.add_argument('--lr', type=float, default=0.1, help="every arm's learning rate")
  parser.add_argument('--source_steps', type=int, default=50, help="50: the recipe's 10 epochs")
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--out_dir', default=common.RESULTS)
  parser.add_argument('--runs_dir', default=RUNS)
  parser.add_argument('--data_dir', default='', help="tfds folder ('': $TFDS_DATA_DIR or ~)")
  args = parser.parse_args(argv)
  _check_args(args)
  for name in ('sizes', 'seeds', 'arms'):  # each once, in the order given
    setattr(args, name, list(dict.fromkeys(getattr(args, name))))
  start, load_before = time.perf_counter(), common.load_average()
  source_dir, target_dir = run_dirs(args)
  config, base = source_config(args), target_config(args)
  # The splits first: a class with fewer than n training images is a UserError before training.
  source_counts, test_count = split_sizes(config), split_sizes(base)[1]
  counts = {
    _size_label(n): split_sizes(sweep.trial_config(base, {'train_examples_per_class': n}))[0]
    for n in args.sizes
  }

  source_trial = sweep.Trial(overrides={}, name='seed0')
  source_rows = sweep.run(config, source_dir, sweep.Hooks(get_trials=lambda c: [source_trial]))
  if source_rows is None:
    print('Stopped (SIGTERM); rerun the same command to resume.', flush=True)
    return None
  if source_rows[0]['status'] != 'done':
    raise UserError(
      f'the source run diverged ({source_rows[0].get("error")}); change --source_steps or the '
      f'recipe (its folder: {source_dir})'
    )
  source_workdir = os.path.join(source_dir, source_trial.name)

  trials = target_trials(args, source_workdir)
  rows = sweep.run(base, target_dir, sweep.Hooks(get_trials=lambda c: trials))
  if rows is None:
    print('Stopped (SIGTERM); rerun the same command to resume.', flush=True)
    return None
  entries = aggregate(rows)
  payload = {
    'machine': common.machine(python=common.python_version(), jax=jax.__version__),
    'argv': list(argv if argv is not None else sys.argv[1:]),
    'source': {
      'model': args.model,
      'image_size': args.image_size,
      'steps': args.source_steps,
      'batch_size': config.batch_size,
      'train_count': source_counts[0],
      'test_count': source_counts[1],
      'test_accuracy': source_rows[0]['test_accuracy'],
      'wall_seconds': source_rows[0]['wall_seconds'],
      'workdir': source_workdir,
    },
    'target': {
      'steps': args.steps,
      'batch_size': args.batch_size,
      'lr': args.lr,
      'seeds': args.seeds,
      'sizes': args.sizes,
      'arms': args.arms,
      'train_counts': counts,
      'test_count': test_count,
      'trained_parameters': {
        a: trained_parameters(base, arm_overrides(a, source_workdir).get('freeze', ''))
        for a in args.arms
      },
      'workdir': target_dir,
    },
    'rows': rows,
    'aggregate': entries,
    'best': best_arms(entries, args.sizes),
  }
  payload['seconds'] = round(time.perf_counter() - start, 1)
  payload['load_average_before'] = load_before
  payload['load_average_after'] = common.load_average()
  common.write_json(os.path.join(args.out_dir, f'{NAME}.json'), payload, default=str)
  table = markdown(payload)
  common.write_text(os.path.join(args.out_dir, f'{NAME}.md'), table + '\n')
  plot(payload, os.path.join(args.out_dir, f'{NAME}.png'))
  print(table, flush=True)
  return payload


if __name__ == '__main__':
  main()
