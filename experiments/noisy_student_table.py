"""Noisy Student on the offline digits split, over several seeds: teacher vs its students.

  python -m experiments.noisy_student_table                  # both tables, 3 seeds
  python -m experiments.noisy_student_table --table main --seeds 0

Tables:
- main: `python main.py --config=configs/noisy_student.py` as shipped (2 iterations): test
  accuracy of the clean teacher (iteration 0, 145 labelled digits), the iteration-1 student and
  the iteration-2 student, each seed a whole run (runs/noisy_student/main_seed<k>).
- ablation: iteration 1 again with one thing changed: no noise (no RandAugment, dropout or
  stochastic depth), hard pseudo-labels, stronger noise (RandAugment M=9, dropout 0.5,
  stochastic depth 0.2: the shipped default before it was measured), hard labels without noise.
  Each ablation run starts from a copy of the main run's iteration 0 for the same seed, so its
  teacher and pseudo-labelled pool are the same and only the student differs; the "as shipped"
  row is the main run's iteration 1.

A workdir holding summary.json is read, not rerun (`--fresh` reruns). Writes
experiments/results/noisy_student_table.md and .json, with the load average around each run.
"""

import argparse
import json
import os
import shutil
import statistics

from experiments import common
from experiments.recipes_table import run

CONFIG = 'configs/noisy_student.py'
RUNS = os.path.join(common.ROOT, 'runs', 'noisy_student')
NO_NOISE = [
  '--config.randaugment=()',
  '--config.model.dropout_rate=0',
  '--config.model.stochastic_depth_prob=0',
]
# (slug, label, flags) of the iteration-1 ablations
ABLATIONS = [
  ('no_noise', 'student without noise (soft pseudo-labels)', NO_NOISE),
  ('hard', 'student with noise, hard pseudo-labels', ['--config.noisy_student.mode=hard']),
  (
    'strong_noise',
    'student with stronger noise: RandAugment M=9, dropout 0.5, stochastic depth 0.2',
    [
      '--config.randaugment=(2,9.0)',
      '--config.model.dropout_rate=0.5',
      '--config.model.stochastic_depth_prob=0.2',
    ],
  ),
  (
    'hard_no_noise',
    'student without noise, hard pseudo-labels',
    [*NO_NOISE, '--config.noisy_student.mode=hard'],
  ),
]


def run_main(seed: int, fresh: bool) -> dict:
  workdir = os.path.join(RUNS, f'main_seed{seed}')
  record = run('main', CONFIG, [], seed, fresh, workdir=workdir)
  with open(os.path.join(workdir, 'summary.json')) as f:
    record['iterations'] = json.load(f)['iterations']
  return record


def run_ablation(slug: str, flags: list[str], seed: int, fresh: bool) -> dict:
  workdir = os.path.join(RUNS, f'{slug}_seed{seed}')
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  teacher = os.path.join(workdir, 'iter0')
  if not os.path.isdir(teacher):  # the main run's teacher, copied: the same iteration 0
    shutil.copytree(os.path.join(RUNS, f'main_seed{seed}', 'iter0'), teacher)
  record = run(slug, CONFIG, ['--config.noisy_student.iterations=1', *flags], seed, False, workdir)
  with open(os.path.join(workdir, 'summary.json')) as f:
    record['iterations'] = json.load(f)['iterations']
  return record


def mean_std(values: list[float]) -> str:
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):.2f} ± {std:.2f}%'


def pseudo_stats(records: list[dict], k: int) -> str:
  stats = [r['iterations'][k]['pseudo_labels'] for r in records]
  pool = statistics.mean(100 * s['teacher_pool_accuracy'] for s in stats)
  rows = statistics.mean(s['num_selected'] for s in stats)
  return f'{pool:.2f}% ({rows:.0f} rows after balancing)'


def markdown(main: list[dict], ablations: dict[str, list[dict]]) -> str:
  lines = []
  if main:
    lines += [
      '| model | seeds | test accuracy, mean ± std | per seed | its teacher on the pool |',
      '|---|---:|---:|---|---:|',
    ]
    roles = ['teacher (iteration 0)', 'iteration-1 student', 'iteration-2 student']
    for k, role in enumerate(roles):
      if k >= len(main[0]['iterations']):
        break
      accs = [100 * r['iterations'][k]['test_accuracy'] for r in main]
      pool = pseudo_stats(main, k) if k else '—'
      lines.append(
        f'| {role} | {len(accs)} | {mean_std(accs)} | {", ".join(f"{a:.2f}" for a in accs)} '
        f'| {pool} |'
      )
    wall = statistics.mean(r['wall_seconds'] for r in main) / 60
    lines += ['', f'Wall time of a whole run (3 trainings): {wall:.1f} min.', '']
  if ablations and main:
    lines += [
      '| iteration 1 (same teacher) | seeds | test accuracy, mean ± std | per seed '
      '| gain over the teacher |',
      '|---|---:|---:|---|---:|',
    ]
    seeds = [r['seed'] for r in main]
    teacher = {r['seed']: 100 * r['iterations'][0]['test_accuracy'] for r in main}
    rows = [('student with noise, soft pseudo-labels (as shipped)', main)]
    rows += [(label, ablations[slug]) for slug, label, _ in ABLATIONS if slug in ablations]
    for label, records in rows:
      records = [r for r in records if r['seed'] in seeds]
      accs = [100 * r['iterations'][1]['test_accuracy'] for r in records]
      gains = [a - teacher[r['seed']] for a, r in zip(accs, records, strict=True)]
      lines.append(
        f'| {label} | {len(accs)} | {mean_std(accs)} | {", ".join(f"{a:.2f}" for a in accs)} '
        f'| {statistics.mean(gains):+.2f} points |'
      )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--table', nargs='*', choices=['main', 'ablation'], help='default: both')
  parser.add_argument('--seeds', nargs='*', type=int, default=[0, 1, 2])
  parser.add_argument('--fresh', action='store_true', help='rerun runs that already finished')
  args = parser.parse_args()
  tables = args.table or ['main', 'ablation']
  out = os.path.join(common.RESULTS, 'noisy_student_table.json')
  done = {'main': [], 'ablations': {}}
  if os.path.exists(out):
    with open(out) as f:
      done = json.load(f)

  def save():
    common.write_results(out, done, markdown(done['main'], done['ablations']))

  # Every seed's main run first: the ablations copy its teacher.
  main_runs = {r['seed']: r for r in done['main']}
  for seed in args.seeds:
    main_runs[seed] = run_main(seed, args.fresh and 'main' in tables)
    done['main'] = [main_runs[s] for s in sorted(main_runs)]
    save()
  if 'ablation' in tables:
    for slug, _, flags in ABLATIONS:
      records = {r['seed']: r for r in done['ablations'].get(slug, [])}
      for seed in args.seeds:
        records[seed] = run_ablation(slug, flags, seed, args.fresh)
        done['ablations'][slug] = [records[s] for s in sorted(records)]
        save()


if __name__ == '__main__':
  main()
