"""experiments/accelerator_check.py (the CLI on an accelerator) and what it relies on: the XLA
flags that ask for deterministic GPU kernels (cnn_jax/core/determinism.py) and the max-pool
backward that avoids select-and-scatter under them."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.core import determinism
from cnn_jax.nn import pooling
from experiments import accelerator_check as check


@pytest.mark.parametrize(
  'flags, wanted',
  [
    ('', False),
    ('--xla_gpu_deterministic_ops=true', True),
    ('--xla_force_host_platform_device_count=4 --xla_gpu_deterministic_ops', True),
    ('--xla_gpu_exclude_nondeterministic_ops=1', True),
    ('--xla_gpu_deterministic_ops=false', False),
    ('--xla_gpu_deterministic_ops=true --xla_gpu_deterministic_ops=false', False),
    ('--xla_gpu_deterministic_ops_extra=true', False),
  ],
)
def test_deterministic_flags_are_read_from_xla_flags(flags, wanted):
  assert determinism.requested(flags) is wanted


def _max_pool_grad_hlo(monkeypatch, backend: str, flags: str) -> str:
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  monkeypatch.setenv('XLA_FLAGS', flags)

  def loss(x):
    return pooling.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()

  return jax.jit(jax.grad(loss)).lower(jnp.ones((2, 9, 9, 3))).as_text()


def test_max_pool_has_no_select_and_scatter_when_determinism_is_asked(monkeypatch):
  # As the GPU backend would lower it: flax's max pool, whose gradient is select-and-scatter
  # (which XLA refuses under the deterministic flags) unless they are set.
  assert 'select_and_scatter' in _max_pool_grad_hlo(monkeypatch, 'gpu', '')
  hlo = _max_pool_grad_hlo(monkeypatch, 'gpu', '--xla_gpu_deterministic_ops=true')
  assert 'select_and_scatter' not in hlo
  assert 'select_and_scatter' not in _max_pool_grad_hlo(monkeypatch, 'cpu', '')


def test_steady_rate_leaves_out_the_first_row_and_losses_compare_step_by_step():
  rows = [
    {'split': 'train', 'step': 10, 'images_per_sec': 5.0, 'loss': 2.0},
    {'split': 'train', 'step': 20, 'images_per_sec': 100.0, 'loss': 1.5},
    {'split': 'validation', 'step': 20, 'accuracy': 0.1},
    {'split': 'train', 'step': 30, 'images_per_sec': 120.0, 'loss': 1.25},
  ]
  assert check.steady_images_per_sec(rows) == 110.0
  assert check.steady_images_per_sec(rows[:1]) is None
  a = check.train_losses(rows)
  assert check.compare_losses(a, dict(a))['identical_steps'] == 3
  b = {**a, 20: 1.5000001}
  got = check.compare_losses(a, b)
  assert got['identical_steps'] == 2 and got['first_different_step'] == 20
  assert got['max_abs_diff'] == pytest.approx(1e-7)


def test_a_failed_row_is_a_line_of_the_table_not_a_crash():
  payload = {
    'device': {'backend': 'gpu', 'device_kind': 'NVIDIA H100 80GB HBM3', 'device_count': 1},
    'date': '2026-12-08',
    'cpu': 'Xeon',
    'packages': {'jax': '0.11.2'},
    'rows': [{'row': 'compile', 'error': 'cold compile (bare) failed: OOM'}],
  }
  text = check.table(payload)
  assert text.startswith('# Accelerator check: NVIDIA H100 80GB HBM3 (gpu, 1 device(s))')
  assert '2026-12-08; host Xeon; jax 0.11.2.' in text
  assert text.endswith('compile: FAILED: cold compile (bare) failed: OOM')


def test_unknown_rows_and_too_few_steps_are_refused():
  with pytest.raises(SystemExit):
    check.parse_args(['--rows', 'resnet50,bogus'])
  with pytest.raises(SystemExit):
    check.parse_args(['--steps', '3', '--log_every', '2'])


@pytest.mark.slow
def test_the_check_runs_end_to_end_on_the_cpu_with_tiny_models(tmp_path):
  payload = check.main(
    ['--tiny', '--out_dir', str(tmp_path / 'out'), '--workdirs', str(tmp_path / 'runs')]
  )
  rows = {r['row']: r for r in payload['rows']}
  assert not [r for r in payload['rows'] if 'error' in r], payload['rows']
  assert set(rows) == {
    'resnet50',
    'resnet50 (deterministic)',
    'determinism',
    'efficientnet',
    'unet',
    'export',
    'compile',
  }
  for key in ('resnet50', 'efficientnet', 'unet'):
    assert rows[key]['images_per_sec'] > 0 and rows[key]['compile_seconds'] > 0
    assert rows[key]['host_peak_rss_mib'] > 0
  d = rows['determinism']
  assert d['resumed_from_step'] == d['killed_after_step'] == 4
  assert d['fingerprints_equal'] and d['losses_identical']
  e = rows['export']
  assert e['format'] == 'stablehlo' and e['platforms'] == ['cpu', 'cuda']
  assert max(e['max_abs_diff'].values()) < 1e-2
  assert rows['compile']['trainer_seconds'] > 0 and rows['compile']['bare_seconds'] > 0
  saved = json.loads((tmp_path / 'out' / 'accelerator_check.json').read_text())
  assert saved['rows'] == json.loads(json.dumps(payload['rows']))
  text = (tmp_path / 'out' / 'accelerator_check.md').read_text()
  assert 'fingerprints equal' in text and 'losses identical at 6 of 6 steps' in text
  assert np.isfinite(rows['resnet50']['images_per_sec'])
