"""The markdown tables of benchmark.md: one for the model rows, one for the layers, one for the
cold compile; and the cell formats the progress lines share."""

from collections.abc import Callable
from typing import Any


def ms_of(m: Any) -> float | None:
  return m['median_ms'] if isinstance(m, dict) else None


def fmt_ms(m: Any) -> str:
  return f'{m["median_ms"]:.1f} ms' if isinstance(m, dict) else str(m).split(':')[0]


def fmt_s(v: float | None) -> str:
  return 'n/a' if v is None else f'{v:.1f}'


def fmt_x(v: float | None, digits: int = 2) -> str:
  return 'n/a' if v is None else f'{v:.{digits}f}x'


def fmt_ips(m: Any, digits: int = 1) -> str:
  """images/s of a measurement, or its status ('n/a', 'failed')."""
  if isinstance(m, dict):
    return f'{m["images_per_s"]:.{digits}f}'
  return str(m).split(':')[0]


def fmt_notes(r: dict) -> str:
  failed = [
    f'{k}: {r[k]}'
    for k in ('torch_compile_train', 'torch_compile_infer')
    if str(r.get(k, '')).startswith('failed')
  ]
  return '; '.join([*r.get('warnings', []), *failed])


def fmt_params(r: dict) -> str:
  theirs = 'n/a' if r['params_torch'] is None else f'{r["params_torch"]:,}'
  return f'{r["params_jax"]:,} / {theirs}'


def fmt_ms_cell(m: Any) -> str:
  return f'{m["median_ms"]:.2f}' if isinstance(m, dict) else str(m).split(':')[0]


# (header, right-aligned, cell): the columns of each table. A failed row ('status') fills the
# cells it has the values for and puts its status in the last one.
Column = tuple[str, bool, Callable[[dict], str]]
MODEL_COLUMNS: list[Column] = [
  ('model', False, lambda r: r['model']),
  ('batch', True, lambda r: str(r['batch'])),
  ('px', True, lambda r: str(r['image_size'])),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('ours img/s', True, lambda r: fmt_ips(r['ours'])),
  ('bare img/s', True, lambda r: fmt_ips(r['bare'])),
  ('overhead', True, lambda r: f'{r["overhead_pct"]:+.1f}%'),
  ('torch img/s', True, lambda r: fmt_ips(r['torch_train'])),
  ('torch.compile img/s', True, lambda r: fmt_ips(r['torch_compile_train'])),
  ('ours/torch', True, lambda r: fmt_x(r['train_vs_torch'])),
  ('ours/compile', True, lambda r: fmt_x(r['train_vs_torch_compile'])),
  ('ours infer img/s', True, lambda r: fmt_ips(r['jax_infer'])),
  ('torch infer img/s', True, lambda r: fmt_ips(r['torch_infer'])),
  ('infer ours/torch', True, lambda r: fmt_x(r['infer_vs_torch'])),
  ('pipeline img/s', True, lambda r: fmt_ips(r['pipeline'], 0)),
  ('pipeline/step', True, lambda r: fmt_x(r['pipeline_vs_step'], 1)),
  ('compile s (ours)', True, lambda r: f'{r["ours"]["compile_s"]:.1f}'),
  ('params ours / torch', False, fmt_params),
  ('notes', False, fmt_notes),
]
LAYER_COLUMNS: list[Column] = [
  ('layer', False, lambda r: r['layer']),
  ('input', False, lambda r: 'x'.join(map(str, r['shape']))),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('ours fwd ms', True, lambda r: fmt_ms_cell(r['jax_forward'])),
  ('torch fwd ms', True, lambda r: fmt_ms_cell(r['torch_forward'])),
  ('fwd ours/torch', True, lambda r: fmt_x(r['forward_vs_torch'])),
  ('ours fwd+bwd ms', True, lambda r: fmt_ms_cell(r['jax_forward_backward'])),
  ('torch fwd+bwd ms', True, lambda r: fmt_ms_cell(r['torch_forward_backward'])),
  ('fwd+bwd ours/torch', True, lambda r: fmt_x(r['forward_backward_vs_torch'])),
  ('notes', False, lambda r: ''),
]
COLD_COLUMNS: list[Column] = [
  ('cold compile', False, lambda r: r['model']),
  ('batch', True, lambda r: str(r['batch'])),
  ('px', True, lambda r: str(r['image_size'])),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('trace+lower s', True, lambda r: fmt_s(r['lower_s'])),
  ('XLA compile s', True, lambda r: fmt_s(r['xla_compile_s'])),
  ('train step s', True, lambda r: fmt_s(r['train_step_compile_s'])),
  ('init + step s', True, lambda r: fmt_s(r['build_s'])),
  ('notes', False, lambda r: ''),
]


def table_lines(rows: list[dict], columns: list[Column]) -> list[str]:
  def cell(fn: Callable[[dict], str], r: dict) -> str:
    try:
      return fn(r)
    except (KeyError, TypeError):  # a failed row lacks the measurements
      return ''

  out = [
    '| ' + ' | '.join(c[0] for c in columns) + ' |',
    '|' + '|'.join('---:' if c[1] else '---' for c in columns) + '|',
  ]
  for r in rows:
    cells = [cell(fn, r) for _, _, fn in columns[:-1]]
    notes = cell(columns[-1][2], r)
    if 'status' in r:
      notes = f'{r["status"]}; {notes}' if notes else r['status']
    out.append('| ' + ' | '.join([*cells, notes]) + ' |')
  return out


def tables(rows: list[dict]) -> str:
  out = []
  for kind, columns in (
    ('model', MODEL_COLUMNS),
    ('layer', LAYER_COLUMNS),
    ('cold_compile', COLD_COLUMNS),
  ):
    selected = [r for r in rows if r['kind'] == kind]
    if selected:
      out += [*([''] if out else []), *table_lines(selected, columns)]
  return '\n'.join(out)


def fmt_load(load: tuple[float, float, float]) -> str:
  return '/'.join(f'{v:.1f}' for v in load)
