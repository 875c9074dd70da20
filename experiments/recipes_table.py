"""Training recipes against their baselines, over several seeds: mean and std of test accuracy.

  python -m experiments.recipes_table                       # every group, 3 seeds
  python -m experiments.recipes_table --group distill --seeds 0 1 2

Groups:
- distill: LeNet-5 from scratch (configs/lenet5.py) vs LeNet-5 distilled from a ResNet-20
  teacher (configs/distill.py). The teacher is trained once (seed 0, runs/recipes/teacher) and
  shared by every distilled seed, so the seeds vary the student only; its row is one run.
- distill_teacher_without_label_smoothing: the same with a teacher trained without label
  smoothing (the offline ResNet-20 recipe uses 0.1).

Each run is `python main.py --config=... --workdir=runs/recipes/<row>_seed<k> --config.seed=k`
in a fresh process (a workdir holding summary.json is read, not rerun; `--fresh` reruns).
Writes experiments/results/recipes_table.md and .json with the load average around each run.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess

from experiments import common

TEACHER = 'runs/recipes/teacher'  # relative to the repository root, where main.py runs
TEACHER_NO_LS = 'runs/recipes/teacher_no_label_smoothing'

# group -> its teacher (workdir, config file, flags; trained once, seed 0) or None, and rows of
# (label, config file, extra flags)
GROUPS = {
  'distill': (
    (TEACHER, 'configs/resnet.py', []),
    [
      ('lenet5 from scratch', 'configs/lenet5.py', []),
      (
        'lenet5 distilled from resnet20',
        'configs/distill.py',
        [f'--config.distill.teacher_workdir={TEACHER}'],
      ),
    ],
  ),
  # The offline ResNet-20 recipe trains with label smoothing 0.1, which makes a worse teacher
  # (Mueller, Kornblith & Hinton 2019): the same teacher without it.
  'distill_teacher_without_label_smoothing': (
    (TEACHER_NO_LS, 'configs/resnet.py', ['--config.label_smoothing=0.0']),
    [
      (
        'lenet5 distilled from resnet20 without label smoothing',
        'configs/distill.py',
        [
          f'--config.distill.teacher_workdir={TEACHER_NO_LS}',
          '--config.teacher.label_smoothing=0.0',
        ],
      ),
    ],
  ),
}


def run(
  label: str, path: str, flags: list[str], seed: int, fresh: bool, workdir: str | None = None
) -> dict:
  slug = label.replace(' ', '_')
  workdir = workdir or os.path.join(common.ROOT, 'runs', 'recipes', f'{slug}_seed{seed}')
  if fresh and os.path.isdir(workdir):
    shutil.rmtree(workdir)
  summary_path = os.path.join(workdir, 'summary.json')
  load_before = common.load_average()
  seconds = None
  if not os.path.exists(summary_path):
    main_flags = [f'--config={path}', f'--workdir={workdir}', f'--config.seed={seed}', *flags]
    _, seconds = common.run_main_py(main_flags, stdout=subprocess.DEVNULL)
  with open(summary_path) as f:
    result = json.load(f)
  return {
    'seed': seed,
    'test_accuracy': result['test_accuracy'],
    'teacher_test_accuracy': result.get('teacher_test_accuracy'),
    'wall_seconds': seconds or result['wall_seconds'],
    'load_average_before': load_before,
    'load_average_after': common.load_average(),
  }


def run_teacher(teacher: tuple[str, str, list[str]], fresh: bool) -> dict:
  """A group's teacher, seed 0, in its own workdir."""
  workdir, path, flags = teacher
  return run('teacher', path, flags, 0, fresh, workdir=os.path.join(common.ROOT, workdir))


def markdown(groups: dict[str, list[dict]]) -> str:
  lines = [
    '| group | row | config | seeds | test accuracy, mean ± std | per seed | wall time per run |',
    '|---|---|---|---:|---:|---|---:|',
  ]
  for group, rows in groups.items():
    for r in rows:
      accs = [100 * s['test_accuracy'] for s in r['seeds']]
      std = statistics.stdev(accs) if len(accs) > 1 else 0.0
      wall = statistics.mean(s['wall_seconds'] for s in r['seeds']) / 60
      lines.append(
        f'| {group} | {r["label"]} | `{r["config"]}` | {len(accs)} '
        f'| {statistics.mean(accs):.2f} ± {std:.2f}% | {", ".join(f"{a:.2f}" for a in accs)} '
        f'| {wall:.1f} min |'
      )
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--group', nargs='*', choices=sorted(GROUPS), help='default: all')
  parser.add_argument('--seeds', nargs='*', type=int, default=[0, 1, 2])
  parser.add_argument('--fresh', action='store_true', help='rerun runs that already finished')
  args = parser.parse_args()
  out = os.path.join(common.RESULTS, 'recipes_table.json')
  done: dict[str, list[dict]] = {}
  if os.path.exists(out):
    with open(out) as f:
      done = json.load(f)['groups']
  for group in args.group or GROUPS:
    teacher, group_rows = GROUPS[group]
    rows = []
    if teacher is not None:  # trained first, so no student's time includes it
      workdir, path, flags = teacher
      rows.append(
        {
          'label': f'teacher ({os.path.basename(workdir)})',
          'config': ' '.join([path, *flags]),
          'seeds': [run_teacher(teacher, args.fresh)],
        }
      )
    for label, path, flags in group_rows:
      seeds = [run(label, path, flags, s, args.fresh) for s in args.seeds]
      rows.append({'label': label, 'config': ' '.join([path, *flags]), 'seeds': seeds})
    done[group] = rows
    common.write_results(out, {'groups': done}, markdown(done))


if __name__ == '__main__':
  main()
