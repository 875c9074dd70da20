"""A sweep's tables (cnn_jax/recipes/sweep.py): workdir/sweep.json, .csv, .md and sweep.png.

Rows are dicts, one per trial and stage (sweep.py builds them); the columns come in the order the
rows first name them. Every file is replaced atomically: another shard reading it never sees half
a file.
"""

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

TABLE = 'sweep'  # workdir/sweep.{csv,json,md,png}


def format_value(value: Any) -> str:
  """A value as a table cell or a trial's folder name: 0.05 -> '0.05', (3, 4) -> '3-4'."""
  if isinstance(value, float):
    return f'{value:.6g}'
  if isinstance(value, tuple | list):
    return '-'.join(format_value(v) for v in value) or 'none'
  return str(value)


def write_json(path: str, payload: Any) -> None:
  """Atomically: a reader (another shard) never sees half a file."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=1, default=str)
  os.replace(tmp, path)


def _columns(rows: Sequence[dict]) -> list[str]:
  columns = []
  for row in rows:
    columns.extend(k for k in row if k not in columns)
  return columns


def _cell(key: str, value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, bool):
    return str(value)
  if isinstance(value, float) and 'accuracy' in key:
    return f'{100 * value:.2f}%'
  if isinstance(value, int):
    return f'{value:,}'
  if isinstance(value, float):
    return f'{value:.4g}'
  return format_value(value)


CHOOSE_BY = 'validation_accuracy'  # a sweep chooses on the validation split, never on test


def chosen_rows(rows: Sequence[dict], key: str = CHOOSE_BY) -> dict[int, dict]:
  """Each stage's finished row with the highest `key` (ties: the first), by stage."""
  best: dict[int, dict] = {}
  for row in rows:
    if row.get('status') != 'done' or row.get(key) is None:
      continue
    stage = row['stage']
    if stage not in best or row[key] > best[stage][key]:
      best[stage] = row
  return best


def markdown(rows: Sequence[dict]) -> str:
  """The rows as a markdown table (accuracies in %, integers with thousands separators), then
  each stage's choice: its best row by validation accuracy, with the test accuracy it reports."""
  columns = [c for c in _columns(rows) if c != 'error']
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(c, row.get(c)) for c in columns) + ' |')
  chosen = chosen_rows(rows)
  if chosen:
    lines.append('')
  for stage, row in sorted(chosen.items()):
    test = row.get('test_accuracy')
    lines.append(
      f'Stage {stage}: chosen on the validation split, {row["trial"]} '
      f'({_cell(CHOOSE_BY, row[CHOOSE_BY])} validation accuracy); its test accuracy, read once '
      f'for the report: {_cell("test_accuracy", test) or "n/a"}.'
    )
  return '\n'.join(lines)


def write_tables(config: ml_collections.ConfigDict, workdir: str, rows: Sequence[dict]) -> str:
  """workdir/sweep.json, .csv, .md and, when config.sweep.plot_x is set, sweep.png.

  The plot: plot_y (default validation_accuracy, what a sweep chooses on) against plot_x, one
  line per value of plot_group (all rows one line when ''), from the rows of stage plot_stage
  (-1: the last stage), each line sorted by x; plot_logx for a log x axis. Returns the markdown
  table.
  """
  os.makedirs(workdir, exist_ok=True)
  base = os.path.join(workdir, TABLE)
  write_json(base + '.json', {'rows': list(rows)})
  columns = _columns(rows)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, columns, lineterminator='\n')
  writer.writeheader()
  for row in rows:
    writer.writerow(
      {k: (format_value(v) if isinstance(v, tuple | list) else v) for k, v in row.items()}
    )
  table = markdown(rows)
  for ext, text in (('.csv', buffer.getvalue()), ('.md', table + '\n')):
    tmp = f'{base}{ext}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, base + ext)
  settings = config.get('sweep') or {}
  if settings.get('plot_x'):
    plot(rows, base + '.png', settings)
  return table


def plot(rows: Sequence[dict], path: str, settings: Mapping[str, Any]) -> None:
  """One line per group of plot_y against plot_x (see write_tables), as a PNG at `path`."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  x_key, y_key = settings['plot_x'], settings.get('plot_y') or CHOOSE_BY
  group_key = settings.get('plot_group') or ''
  stages = sorted({r['stage'] for r in rows})
  stage = settings.get('plot_stage', -1)
  stage = stages[stage] if stages and -len(stages) <= stage < len(stages) else stage
  groups: dict[str, list[tuple[float, float]]] = {}
  for r in rows:
    if r['stage'] != stage or r.get('status') != 'done' or r.get(x_key) is None:
      continue
    groups.setdefault(str(r.get(group_key, '')), []).append((r[x_key], r.get(y_key)))
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for label, points in groups.items():
    points.sort()
    ax.plot(*zip(*points, strict=True), marker='o', label=label or None)
  if settings.get('plot_logx'):
    ax.set_xscale('log')
  ax.set_xlabel(x_key)
  ax.set_ylabel(y_key)
  ax.grid(alpha=0.3)
  if any(groups):  # a label per group
    ax.legend(title=group_key)
  fig.tight_layout()
  tmp = f'{path}.tmp{os.getpid()}.png'
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, path)
