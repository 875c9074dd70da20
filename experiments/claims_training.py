"""The notes' training claims, measured with the project's trainer on digits over 3 seeds.

  python -m experiments.claims_training                               # every claim, seeds 0 1 2
  python -m experiments.claims_training --claims degradation knn --seeds 0 1
  python -m experiments.claims_training --claims augmentation --steps 2 --seeds 0   # smoke test

Claims (notes 004; every arm of a claim trains the same config but for the arm's own fields, for
the same number of steps, seeds 0, 1, 2; digits: 1,437 train / 360 test 8x8 images at 32x32):
- degradation (He et al. 2016, figs. 1 and 6): plain20, plain56, resnet20, resnet56 on the
  offline ResNet recipe (configs/resnet.py) at 16 px (every pixel of the 8x8 digits) with lr 0.05
  and two warmup epochs, 110 steps = 10 epochs. The notes: deeper plain nets train worse (higher
  training error), residual nets do not. Training error is measured on the train split without
  augmentation, after training; the loss curves come from metrics.jsonl.
- knn: k-nearest neighbours (k = 1, 3, 5, Euclidean, scikit-learn) on raw pixels of the same
  split, read through the project's pipeline at 8x8 (native) and 32x32 (the nets' input), beside
  the test accuracy of every CNN arm that has run. No randomness: one number per row.
- inception: googlenet_tiny with its 1x1 bottlenecks vs the naive Inception module (Szegedy et
  al. 2015, fig. 2a; `naive=True`) on configs/googlenet.py, 110 steps = its 10 epochs:
  parameters and multiply-adds (cnn_jax.models.summary) and accuracy.
- augmentation: LeNet-5 (configs/lenet5.py, 330 steps = its 30 epochs) with config.augment arms
  none / crop / flip / color / all (crop = the 2-pixel pad-and-crop shift that is digits'
  default; flip = left-right mirror, which turns some digits into other symbols; color = a
  brightness offset in [-0.1, 0.1] of the [0, 1] range, digits being grey).

Every run goes through cnn_jax.recipes.sweep, the trainer's in-process runner of configs with
overrides: runs/claims/<claim>/steps<N><tag>/<arm>_seed<k> is an ordinary trainer workdir; one
that holds summary.json is read, not rerun, and an interrupted one resumes. Each finished run's
checkpoint is then evaluated without augmentation on both splits (claims_eval.json in its
workdir, also reused). Writes claims_training.md and .json, claims_training_degradation.png and
claims_training_augment.png into --out_dir (default experiments/results), keeping the claims of
earlier invocations that were not rerun.

Cost on the 2-core x86-64 CPU machine (2026-11-26): degradation 37.3 min (shared with other
jobs and paused for 8 min of it; resnet20 59 s, resnet56 186 s a run), inception 5.9 min,
augmentation 10.5 min, k-NN 3 s.
"""

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.recipes import sweep
from experiments import common
from experiments.common import mean_std

RUNS = os.path.join(common.ROOT, 'runs', 'claims')
NAME = 'claims_training'
EVAL_FILE = 'claims_eval.json'
COLOR_SHIFT = 0.1  # brightness offsets up to 10% of the range (about 25 of 255)


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim: a config file of configs/, its arms (label, overrides) and their budget."""

  config: str
  steps: int
  arms: tuple[tuple[str, dict[str, Any]], ...]
  base: dict[str, Any] = dataclasses.field(default_factory=dict)  # every arm's overrides
  runs_tag: str = ''  # names the runs folder beside the steps: change it with `base`
  log_every_steps: int = 1
  what: str = ''


def _augment_arm(crop: bool, flip: bool, color: float) -> dict[str, Any]:
  return {'augment.crop': crop, 'augment.flip': flip, 'augment.color_shift': color}


CLAIMS: dict[str, Claim] = {
  'degradation': Claim(
    'resnet',
    110,  # the offline config's 10 epochs of batch 128
    tuple((name, {'model.name': name}) for name in ('plain20', 'plain56', 'resnet20', 'resnet56')),
    # 16 px keeps every pixel of the 8x8 digits at a quarter of 32 px's cost. At the recipe's
    # lr 0.1 with one warmup epoch, both 56-layer nets blew up in warmup (loss 4-10 at 33 steps).
    base={'image_size': 16, 'optimizer.lr': 0.05, 'optimizer.warmup_epochs': 2.0},
    runs_tag='_16px_lr0.05_warmup2',
    what='Deeper plain nets reach a higher training error; residual nets do not degrade '
    '(He et al. 2016; notes 004, ResNet).',
  ),
  'inception': Claim(
    'googlenet',
    110,  # the offline config's 10 epochs
    (('bottleneck', {'model.naive': False}), ('naive', {'model.naive': True})),
    base={'model.name': 'googlenet_tiny'},
    log_every_steps=10,
    what='1x1 bottlenecks before the 3x3/5x5 convs and after the pool make an Inception '
    'module far cheaper (notes 004, Inception: 120 M vs 12.4 M multiplies in their example).',
  ),
  'augmentation': Claim(
    'lenet5',
    330,  # configs/lenet5.py's 30 epochs
    (
      ('none', _augment_arm(False, False, 0.0)),
      ('crop', _augment_arm(True, False, 0.0)),  # digits' default
      ('flip', _augment_arm(False, True, 0.0)),
      ('color', _augment_arm(False, False, COLOR_SHIFT)),
      ('all', _augment_arm(True, True, COLOR_SHIFT)),
    ),
    log_every_steps=10,
    what='Mirroring, random cropping and colour shifting as data augmentation (notes 004, '
    'data augmentation); mirroring is for images whose content survives it.',
  ),
}
KNN = 'knn'
ALL = (*CLAIMS, KNN)
KNN_K = (1, 3, 5)
KNN_SIZES = (8, 32)


# ---------------------------------------------------------------------------------------------
# Training through the sweep runner.


def base_config(claim: Claim, steps: int, data_dir: str):
  """The claim's config file with the budget and cadence every arm shares."""
  module = importlib.import_module(f'configs.{claim.config}')
  config = module.get_config()
  if 'naive' not in config.model and any('model.naive' in o for _, o in claim.arms):
    config.model.naive = False  # GoogLeNet's field; configs/googlenet.py does not list it
  config.num_train_steps = steps
  config.log_every_steps = min(claim.log_every_steps, steps)
  config.eval_every_steps = -1  # the test split once, at the end
  config.checkpoint_every_steps = steps  # one checkpoint: the one evaluated afterwards
  config.data_dir = data_dir
  return sweep.trial_config(config, claim.base)


def steps_per_epoch(config) -> int:
  """The trainer's epoch: whole batches of the train split (digits, batch 128: 11)."""
  data = data_lib.load(config.dataset, config.data_dir or None)
  return max(len(data.train) // config.batch_size, 1)


def trials(claim: Claim, seeds: list[int], arms: list[str] | None) -> list[sweep.Trial]:
  return [
    sweep.Trial(
      overrides={**overrides, 'seed': seed}, name=f'{arm}_seed{seed}', columns={'arm': arm}
    )
    for arm, overrides in claim.arms
    if not arms or arm in arms
    for seed in seeds
  ]


def check_trainer_augments(config, workdir: str) -> None:
  """Fails unless the trainer's first batch follows config.augment: otherwise every arm would
  train on the same batches and the claim would compare nothing."""
  exp = train.build(config, workdir)
  trainer = next(train.train_batches(exp, 0))['image']
  wanted = next(
    data_lib.train_iterator(
      exp.data,
      seed=config.seed,
      global_batch=config.batch_size,
      start_step=0,
      num_steps=1,
      image_size=config.image_size,
      channels=config.image_channels,
      augment=config.augment,
    )
  )['image']
  if not np.array_equal(trainer, wanted):
    raise UserError(
      'cnn_jax.train does not pass config.augment to the input pipeline, so every augmentation '
      'arm would train on the same batches; add augment=config.get("augment") to '
      'train.train_batches'
    )


def run_claim(
  name: str, steps: int, seeds: list[int], arms: list[str] | None, runs_dir: str, data_dir: str
) -> list[dict] | None:
  """Trains the claim's arms x seeds (finished runs are read); its rows, or None on SIGTERM."""
  claim = CLAIMS[name]
  config = base_config(claim, steps, data_dir)
  chosen = trials(claim, seeds, arms)
  workdir = os.path.join(runs_dir, name, f'steps{steps}{claim.runs_tag}')
  planned_by_name = {t.name: t for t in sweep.plan_stage(config, chosen, 0, workdir)}
  for trial in planned_by_name.values():
    if any(k.startswith('augment.') for k in trial.overrides):
      check_trainer_augments(trial.config, trial.workdir)
      break
  rows = sweep.run(config, workdir, sweep.Hooks(get_trials=lambda c: chosen))
  if rows is None:
    return None
  cache: dict[str, Any] = {}
  for row in rows:
    planned = planned_by_name[row['trial']]
    row['seed'] = planned.config.seed
    if row['status'] == 'done':
      row.update(evaluate_run(planned.config, planned.workdir, cache))
      row['logged_train_loss'] = logged_losses(planned.workdir)
  jax.clear_caches()
  return rows


# ---------------------------------------------------------------------------------------------
# Evaluation of a finished run: both splits, no augmentation.


def _predictor(exp: train.Experiment, cache: dict[str, Any]):
  """A jitted logits function of (variables, images) for the run's model, one per model."""
  config = exp.config
  key = json.dumps([config.model.to_dict(), train.input_shape(config)], default=str)
  if key not in cache:
    model = exp.model
    cache[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return cache[key]


def _logits(data, source, config, predict, variables) -> tuple[np.ndarray, np.ndarray]:
  logits, labels = [], []
  for batch in data_lib.eval_iterator(
    data,
    global_batch=config.eval_batch_size,
    image_size=config.image_size,
    channels=config.image_channels,
    source=source,
  ):
    keep = batch['mask'] > 0
    logits.append(np.asarray(predict(variables, batch['image']))[keep])
    labels.append(batch['label'][keep])
  return np.concatenate(logits), np.concatenate(labels)


def evaluate_run(config, workdir: str, cache: dict[str, Any]) -> dict[str, Any]:
  """Error and cross-entropy (no label smoothing) of the run's final checkpoint on the train and
  test splits, and per-class test accuracy; kept in workdir/claims_eval.json."""
  path = os.path.join(workdir, EVAL_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  exp = train.build(config, workdir)  # the data and model the trainer used
  data = exp.data
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=config.keep_checkpoints)
  try:
    saved = ckpt.restore(None)  # the tree as saved: no model init to compile
  finally:
    ckpt.close()
  variables = {'params': saved['params'], 'batch_stats': saved.get('batch_stats', {})}
  predict = _predictor(exp, cache)
  result = {}
  for split, source in (('train', data.train), ('test', data.test)):
    logits, labels = _logits(data, source, config, predict, variables)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    correct = logits.argmax(-1) == labels
    result[f'{split}_error'] = float(1.0 - correct.mean())
    result[f'{split}_ce'] = float(-log_probs[np.arange(len(labels)), labels].mean())
    result[f'{split}_count'] = int(len(labels))
    if split == 'test':
      result['test_class_accuracy'] = [
        float(correct[labels == c].mean()) for c in range(data.num_classes)
      ]
  common.write_json(path, result)
  return result


def logged_losses(workdir: str) -> list[tuple[int, float]]:
  """(step, loss) of every 'train' row of metrics.jsonl: the training objective (label-smoothed
  cross-entropy on augmented batches, the mean over the steps since the previous row)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r['step'], r['loss']) for r in rows if r['split'] == 'train']


# ---------------------------------------------------------------------------------------------
# k-NN on raw pixels.


def knn_claim(data_dir: str) -> dict[str, Any]:
  """Test accuracy of k-NN on the pixels of the digits split, at 8x8 and 32x32.

  The images come through the project's eval pipeline (grey, resized, normalised): one channel,
  since tiling it to the nets' 3 channels scales every distance by sqrt(3), and normalising is
  one affine map of every pixel; neither changes a neighbour.
  """
  from sklearn.neighbors import KNeighborsClassifier

  data = data_lib.load('digits', data_dir or None)

  def pixels(source, size):
    xs, ys = [], []
    for batch in data_lib.eval_iterator(
      data, global_batch=256, image_size=size, channels=1, source=source
    ):
      keep = batch['mask'] > 0
      xs.append(batch['image'][keep].reshape(int(keep.sum()), -1))
      ys.append(batch['label'][keep])
    return np.concatenate(xs), np.concatenate(ys)

  rows = []
  for size in KNN_SIZES:
    x_train, y_train = pixels(data.train, size)
    x_test, y_test = pixels(data.test, size)
    for k in KNN_K:
      t0 = time.perf_counter()
      knn = KNeighborsClassifier(n_neighbors=k).fit(x_train, y_train)
      accuracy = float((knn.predict(x_test) == y_test).mean())
      rows.append(
        {
          'input': f'{size}x{size}',
          'k': k,
          'test_accuracy': accuracy,
          'train_count': len(y_train),
          'test_count': len(y_test),
          'seconds': round(time.perf_counter() - t0, 2),
        }
      )
  return {'rows': rows}


# ---------------------------------------------------------------------------------------------
# Tables and figures.


def _pct(values: list[float]) -> str:
  mean, std = mean_std([100 * v for v in values])
  return f'{mean:.2f} ± {std:.2f}%' if values else 'n/a'


def _num(values: list[float]) -> str:
  mean, std = mean_std(values)
  return f'{mean:.3f} ± {std:.3f}' if values else 'n/a'


def by_arm(rows: list[dict]) -> dict[str, list[dict]]:
  arms: dict[str, list[dict]] = {}
  for r in rows:
    arms.setdefault(r['arm'], []).append(r)
  return arms


def _done(runs: list[dict]) -> list[dict]:
  return [r for r in runs if r['status'] == 'done']


def _seeds_note(runs: list[dict]) -> str:
  other = [f'seed {r["seed"]} {r["status"]}' for r in runs if r['status'] != 'done']
  return f' ({", ".join(other)})' if other else ''


def _difference(arms: dict[str, list[dict]], a: str, b: str, key: str) -> str:
  """'a - b' of `key` in points: the mean over seeds both finished, and per seed."""
  if a not in arms or b not in arms:
    return ''
  first = {r['seed']: r[key] for r in _done(arms[a])}
  second = {r['seed']: r[key] for r in _done(arms[b])}
  seeds = sorted(set(first) & set(second))
  if not seeds:
    return ''
  diffs = [100 * (first[s] - second[s]) for s in seeds]
  mean, std = mean_std(diffs)
  per_seed = ', '.join(f'{d:+.2f}' for d in diffs)
  return f'{a} − {b}: {mean:+.2f} ± {std:.2f} points (seeds {seeds}: {per_seed})'


def degradation_md(claim: dict) -> list[str]:
  arms = by_arm(claim['rows'])
  lines = [
    '| net | parameters | training error | training cross-entropy | last logged train loss '
    '| test error | wall time per run |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for arm, runs in arms.items():
    done = _done(runs)
    last = [r['logged_train_loss'][-1][1] for r in done if r['logged_train_loss']]
    lines.append(
      f'| {arm}{_seeds_note(runs)} | {runs[0]["params"]:,} '
      f'| {_pct([r["train_error"] for r in done])} | {_num([r["train_ce"] for r in done])} '
      f'| {_num(last)} | {_pct([r["test_error"] for r in done])} '
      f'| {mean_std([r["wall_seconds"] for r in done])[0]:.0f} s |'
    )
  lines.append('')
  lines.append('Training error, deeper minus shallower (mean ± std over seeds, and per seed):')
  for a, b in (('plain56', 'plain20'), ('resnet56', 'resnet20'), ('plain56', 'resnet56')):
    diff = _difference(arms, a, b, 'train_error')
    if diff:
      lines.append(f'- {diff}')
  lines += ['', f'![training loss curves and errors]({NAME}_degradation.png)']
  return lines


def inception_md(claim: dict) -> list[str]:
  arms = by_arm(claim['rows'])
  lines = [
    '| Inception modules | parameters | multiply-adds | module output channels '
    '| test accuracy | training error | wall time per run |',
    '|---|---:|---:|---|---:|---:|---:|',
  ]
  for arm, runs in arms.items():
    done = _done(runs)
    widths = claim.get('widths', {}).get(arm, [])
    lines.append(
      f'| {arm}{_seeds_note(runs)} | {runs[0]["params"]:,} | {runs[0]["macs"]:,} '
      f'| {" → ".join(map(str, widths))} | {_pct([r["test_accuracy"] for r in done])} '
      f'| {_pct([r["train_error"] for r in done])} '
      f'| {mean_std([r["wall_seconds"] for r in done])[0]:.0f} s |'
    )
  if {'naive', 'bottleneck'} <= set(arms):
    naive, bottleneck = arms['naive'][0], arms['bottleneck'][0]
    lines += [
      '',
      f'naive / bottleneck: {naive["params"] / bottleneck["params"]:.2f}x the parameters, '
      f'{naive["macs"] / bottleneck["macs"]:.2f}x the multiply-adds at 32x32; the naive '
      "modules' output widths grow by the input's channels each time (the pool branch passes "
      'them through).',
    ]
  return lines


def augmentation_md(claim: dict) -> list[str]:
  arms = by_arm(claim['rows'])
  lines = [
    '| arm | crop | flip | colour shift | test accuracy | training error | wall time per run |',
    '|---|---|---|---:|---:|---:|---:|',
  ]
  for arm, runs in arms.items():
    done = _done(runs)
    o = runs[0]
    lines.append(
      f'| {arm}{_seeds_note(runs)} | {o["augment.crop"]} | {o["augment.flip"]} '
      f'| {o["augment.color_shift"]:g} | {_pct([r["test_accuracy"] for r in done])} '
      f'| {_pct([r["train_error"] for r in done])} '
      f'| {mean_std([r["wall_seconds"] for r in done])[0]:.0f} s |'
    )
  lines += ['', 'Test accuracy by digit (mean over seeds):', '']
  lines.append('| arm | ' + ' | '.join(str(c) for c in range(10)) + ' |')
  lines.append('|---|' + '---:|' * 10)
  for arm, runs in arms.items():
    done = _done(runs)
    if not done:
      continue
    per_class = np.mean([r['test_class_accuracy'] for r in done], axis=0)
    lines.append(f'| {arm} | ' + ' | '.join(f'{100 * a:.1f}' for a in per_class) + ' |')
  lines.append('')
  for arm in ('crop', 'flip', 'color', 'all'):
    diff = _difference(arms, arm, 'none', 'test_accuracy')
    if diff:
      lines.append(f'- test accuracy {diff}')
  lines += ['', f'![the arms on the first training images]({NAME}_augment.png)']
  return lines


def knn_md(knn: dict, claims: dict[str, dict]) -> list[str]:
  lines = ['| input | ' + ' | '.join(f'k = {k}' for k in KNN_K) + ' |', '|---|' + '---:|' * 3]
  for size in KNN_SIZES:
    cells = [
      f'{100 * r["test_accuracy"]:.2f}%' for r in knn['rows'] if r['input'] == f'{size}x{size}'
    ]
    lines.append(f'| {size}x{size} pixels | ' + ' | '.join(cells) + ' |')
  rows = [
    (f'{name}: {arm}', runs)
    for name, claim in claims.items()
    for arm, runs in by_arm(claim['rows']).items()
  ]
  if rows:
    lines += ['', 'Beside the CNNs of the other claims (same test split):', '']
    lines += [
      '| CNN (claim: arm) | steps | test accuracy, mean ± std | seeds |',
      '|---|---:|---:|---:|',
    ]
    for label, runs in rows:
      done = _done(runs)
      lines.append(
        f'| {label} | {runs[0]["steps"] or ""} | {_pct([r["test_accuracy"] for r in done])} '
        f'| {len(done)} |'
      )
  return lines


def markdown(payload: dict) -> str:
  claims = payload['claims']
  machine = payload['machine']
  lines = [
    f'# Training claims of the notes, measured (`python -m experiments.{NAME}`)',
    '',
    f'Machine: {machine["cpus"]}-core {machine["machine"]} CPU, shared with other jobs (load '
    'averages per claim below). Digits: 1,437 train / 360 test images, 32x32. Every arm of a '
    'claim: the same config and number of steps; mean ± sample std over the seeds listed. '
    'Training error: the final checkpoint on the train split, no augmentation; training '
    'cross-entropy likewise (no label smoothing); the last logged train loss is the training '
    'objective (label smoothing 0.1 where the config has it, augmented batches).',
  ]
  for name in (*CLAIMS, KNN):
    if name not in claims:
      continue
    claim = claims[name]
    lines += ['', f'## {name}', '']
    if name == KNN:
      lines += [
        'k-nearest neighbours on raw pixels (scikit-learn, Euclidean), test accuracy; '
        f'{claim["seconds"]:.0f} s for the claim.',
        '',
      ]
      lines += knn_md(claim, {k: v for k, v in claims.items() if k != KNN})
      continue
    spec = CLAIMS[name]
    seeds = sorted({r['seed'] for r in claim['rows']})
    lines += [
      f'Claim: {spec.what}',
      '',
      f'`configs/{spec.config}.py`{_overrides(spec.base)}, {claim["steps"]} steps of batch '
      f'{claim["batch_size"]} ({claim["epochs"]:.3g} epochs) per run, seeds {seeds}; load '
      f'average {claim["load_average_before"][0]} before, {claim["load_average_after"][0]} '
      f'after; {claim["seconds"] / 60:.1f} min for this invocation; the runs trained for '
      f'{sum(r.get("wall_seconds") or 0 for r in claim["rows"]) / 60:.1f} min in all (their own '
      'wall times: finished runs are read back, not rerun).',
      '',
    ]
    lines += {
      'degradation': degradation_md,
      'inception': inception_md,
      'augmentation': augmentation_md,
    }[name](claim)
  return '\n'.join(lines) + '\n'


def _overrides(overrides: dict[str, Any]) -> str:
  return ''.join(f' `--config.{k}={v}`' for k, v in overrides.items())


def plot_degradation(claim: dict, path: str) -> None:
  """Training loss against step (mean ± std band over seeds) and the final errors."""
  plt = common.pyplot()
  arms = by_arm(claim['rows'])
  fig, (ax, bars) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
  for arm, runs in arms.items():
    curves = [r['logged_train_loss'] for r in _done(runs) if r['logged_train_loss']]
    if not curves:
      continue
    length = min(len(c) for c in curves)
    steps = [s for s, _ in curves[0][:length]]
    losses = np.array([[loss for _, loss in c[:length]] for c in curves])
    mean, std = losses.mean(0), losses.std(0)
    style = '--' if arm.startswith('plain') else '-'
    (line,) = ax.plot(steps, mean, style, label=f'{arm} ({len(curves)} seeds)')
    ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
  ax.set_xlabel('step (batch 128)')
  ax.set_ylabel('training loss (logged)')
  ax.set_title('training loss, mean ± std over seeds')
  ax.grid(alpha=0.3)
  ax.legend()
  names = list(arms)
  x = np.arange(len(names))
  for offset, key, label in ((-0.2, 'train_error', 'training error'), (0.2, 'test_error', 'test')):
    stats = [mean_std([100 * r[key] for r in _done(arms[a])]) for a in names]
    bars.bar(x + offset, [m for m, _ in stats], 0.4, yerr=[s for _, s in stats], label=label)
  bars.set_xticks(x, names)
  bars.set_ylabel('error (%)')
  bars.set_title(f'after {claim["steps"]} steps, no augmentation')
  bars.legend(loc='best')
  fig.tight_layout()
  common.save_figure(fig, path)


def plot_augmentation(claim: dict, path: str, data_dir: str, count: int = 8) -> None:
  """The first training images of step 0 (seed 0) as each arm's pipeline makes them."""
  plt = common.pyplot()
  data = data_lib.load('digits', data_dir or None)
  arms = [(arm, o) for arm, o in CLAIMS['augmentation'].arms if arm in by_arm(claim['rows'])]
  fig, axes = plt.subplots(len(arms), count, figsize=(count * 0.9, len(arms) * 1.0), dpi=120)
  axes = np.atleast_2d(axes)
  for i, (arm, overrides) in enumerate(arms):
    augment = {k.split('.', 1)[1]: v for k, v in overrides.items()}
    batch = next(
      data_lib.train_iterator(
        data,
        seed=0,
        global_batch=count,
        start_step=0,
        num_steps=1,
        image_size=32,
        channels=1,
        augment=augment,
      )
    )
    images = batch['image'][..., 0] * data.spec.std[0] + data.spec.mean[0]  # back to [0, 1]
    for j in range(count):
      axes[i, j].imshow(images[j], cmap='gray', vmin=0, vmax=1)
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
      if i == 0:
        axes[i, j].set_title(f'label {batch["label"][j]}', fontsize=7)
    axes[i, 0].set_ylabel(arm, fontsize=8)
  fig.tight_layout()
  common.save_figure(fig, path)


def module_widths(config) -> list[int]:
  """Output channels of each Inception module of config's model (traced, no compute)."""
  from cnn_jax.models.googlenet import Inception

  model = train.create_model(config, 10)
  x = jax.ShapeDtypeStruct((1, *train.input_shape(config)), np.float32)

  def run(x):
    variables = model.init(jax.random.key(0), x)
    _, state = model.apply(
      variables, x, capture_intermediates=lambda m, _: isinstance(m, Inception), mutable=True
    )
    return state['intermediates']

  found = jax.eval_shape(run, x)
  return [v['__call__'][0].shape[-1] for v in found.values()]


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--claims', nargs='+', choices=ALL, default=list(ALL))
  parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
  parser.add_argument('--steps', type=int, default=0, help="every claim's steps (0: its own)")
  parser.add_argument('--arms', nargs='*', help='only these arms (labels), e.g. for a smoke test')
  parser.add_argument('--out_dir', default=common.RESULTS)
  parser.add_argument('--runs_dir', default=RUNS)
  parser.add_argument('--data_dir', default='', help="tfds folder ('': $TFDS_DATA_DIR or ~)")
  args = parser.parse_args(argv)
  known_arms = {arm for c in CLAIMS.values() for arm, _ in c.arms}
  unknown = sorted(set(args.arms or ()) - known_arms)
  if unknown:
    raise UserError(f'unknown arms {unknown}; choose from {sorted(known_arms)}')
  if args.steps < 0 or any(s < 0 for s in args.seeds):
    raise UserError('--steps and --seeds must be >= 0 (--steps 0: each claim its own budget)')

  out = os.path.join(args.out_dir, f'{NAME}.json')
  os.makedirs(args.out_dir, exist_ok=True)
  payload = {'claims': {}}
  if os.path.exists(out):
    with open(out) as f:
      payload = json.load(f)
  payload['machine'] = common.machine(python=common.python_version(), jax=jax.__version__)
  start = time.perf_counter()
  for name in [c for c in ALL if c in args.claims]:
    t0, load_before = time.perf_counter(), common.load_average()
    if name == KNN:
      result = knn_claim(args.data_dir)
    else:
      steps = args.steps or CLAIMS[name].steps
      rows = run_claim(name, steps, args.seeds, args.arms, args.runs_dir, args.data_dir)
      if rows is None:
        print('Stopped (SIGTERM); rerun the same command to resume.', flush=True)
        break
      config = base_config(CLAIMS[name], steps, args.data_dir)
      result = {
        'steps': steps,
        'batch_size': config.batch_size,
        'epochs': steps / steps_per_epoch(config),
        'rows': rows,
      }
      if name == 'inception':
        result['widths'] = {
          arm: module_widths(sweep.trial_config(config, overrides))
          for arm, overrides in CLAIMS[name].arms
        }
    result['seconds'] = round(time.perf_counter() - t0, 1)
    result['load_average_before'] = load_before
    result['load_average_after'] = common.load_average()
    payload['claims'][name] = result
    common.write_json(out, payload, default=str)
    if name == 'degradation':
      plot_degradation(result, os.path.join(args.out_dir, f'{NAME}_degradation.png'))
    if name == 'augmentation':
      plot_augmentation(result, os.path.join(args.out_dir, f'{NAME}_augment.png'), args.data_dir)
    common.write_text(os.path.join(args.out_dir, f'{NAME}.md'), markdown(payload))
  print(markdown(payload), flush=True)
  print(f'{time.perf_counter() - start:.0f} s in all.', flush=True)
  return payload


if __name__ == '__main__':
  try:
    main()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
