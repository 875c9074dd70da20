"""experiments.benchmark: its quick JAX-only run writes well-formed rows, and the trainer's
step and the bare jitted step it compares against compute the same losses.

40-50 s on 2 cores shared with another job (nice 19); the cold-compile test (a child process,
marked slow) 25-30 s more."""

import json
import math

import helpers
import jax
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from experiments import benchmark

MEASURED = ('median_ms', 'min_ms', 'steps', 'images_per_s')


def _positive(measurement: dict, steps: int) -> None:
  assert measurement['steps'] == steps
  for key in ('median_ms', 'min_ms', 'images_per_s'):
    assert math.isfinite(measurement[key]) and measurement[key] > 0, (key, measurement)
  assert measurement['min_ms'] <= measurement['median_ms']


def test_quick_run_writes_rows(tmp_path, data_dir):
  out = tmp_path / 'results'
  result = benchmark.main(
    [
      '--quick',
      '--no_torch',
      '--models=resnet_tiny',
      '--image_size=16',
      '--steps=2',
      '--layers=batchnorm,maxpool2x2',
      f'--data_dir={data_dir}',
      f'--out_dir={out}',
    ]
  )
  written = json.loads((out / 'benchmark.json').read_text())
  assert written == json.loads(json.dumps(result))
  rows = {r['kind']: [] for r in written['rows']}
  for r in written['rows']:
    rows[r['kind']].append(r)
  assert {k: len(v) for k, v in rows.items()} == {'layer': 2, 'model': 1}
  for r in written['rows']:
    assert 'status' not in r, r['status']
    assert r['machine']['cpu_count'] >= 1 and r['machine']['jax'] == jax.__version__
    assert r['device'] == jax.devices()[0].device_kind
    assert len(r['load_average_before']) == len(r['load_average_after']) == 3

  (model,) = rows['model']
  assert (model['model'], model['batch'], model['image_size'], model['dtype']) == (
    'resnet_tiny',
    4,
    16,
    'float32',
  )
  for key in ('ours', 'bare', 'jax_infer'):
    _positive(model[key], 2)
    assert model[key]['compile_s'] > 0
  for key in ('torch_train', 'torch_infer', 'torch_compile_train', 'torch_compile_infer'):
    assert model[key] == 'n/a: --no_torch'
  assert model['train_vs_torch'] is None and model['params_torch'] is None
  assert model['params_jax'] == helpers.param_count(models.create('resnet_tiny'), (1, 16, 16, 3))
  assert model['pipeline']['dataset'] == 'digits' and model['pipeline']['images_per_s'] > 0
  assert model['pipeline_vs_step'] == pytest.approx(
    model['pipeline']['images_per_s'] / model['ours']['images_per_s']
  )
  assert model['overhead_pct'] == pytest.approx(
    100 * (model['ours']['median_ms'] / model['bare']['median_ms'] - 1)
  )
  assert model['loss_ours'] == pytest.approx(model['loss_bare'], rel=1e-5)
  assert model['warnings'] == []

  for layer in rows['layer']:
    _positive(layer['jax_forward'], 2)
    _positive(layer['jax_forward_backward'], 2)
    assert layer['torch_forward_backward'] == 'n/a: --no_torch'
  assert [r['layer'] for r in rows['layer']] == ['batchnorm', 'maxpool2x2']
  assert rows['layer'][0]['shape'] == [2, 56, 56, 64]

  table = (out / 'benchmark.md').read_text()
  assert '| resnet_tiny | 4 | 16 | float32 |' in table
  assert '| batchnorm | 2x56x56x64 |' in table


def test_trainer_and_bare_steps_agree():
  """Same state, same batch: the trainer's train_step and the bare step give the same losses,
  and after one update each (the second step's loss) still do. A U-Net with dropout: the
  per-pixel loss, and both steps must draw the same dropout mask."""
  spec = benchmark.Bench('unet_tiny', {'depth': 1, 'dropout_rate': 0.5}, 11, 16, 16, '')
  config = benchmark.make_config(spec, 4, 16, False, 'digit_scenes')
  batch = benchmark.synthetic_batch(4, 16, spec.num_classes, segmentation=True)
  steps = benchmark.JaxSteps(config, spec.num_classes, batch)
  losses = [(steps.trainer_step(), steps.bare_step()) for _ in range(2)]
  for ours, bare in losses:
    assert ours == pytest.approx(bare, rel=1e-5)
  assert losses[1][0] != losses[0][0]  # the step updated the state
  steps.infer()


@pytest.mark.parametrize(
  'argv,message',
  [
    (['--batch_sizes=0'], '--batch_sizes'),
    (['--models=resnet5000'], "unknown model 'resnet5000'"),
    (['--layers=conv9x9'], '--layers: unknown conv9x9'),
    (['--models=unet', '--image_size=24'], 'cannot take 24x24 inputs'),
    (['--pipeline_batches=-1'], '--pipeline_batches >= 0'),
  ],
)
def test_bad_input(argv, message):
  with pytest.raises(UserError, match=message):
    benchmark.parse_args([*argv, '--cold_compile=none'])


def test_a_pipeline_that_cannot_run_leaves_the_step_columns(tmp_path, monkeypatch):
  """No TensorFlow on the machine, say: the row records why, its step timings still count
  (--pipeline_batches 0 leaves the pipeline out: the row's pipeline is then 'n/a')."""

  def no_tensorflow(*args):
    raise ModuleNotFoundError("No module named 'tensorflow'")

  monkeypatch.setattr(benchmark.pipeline, 'bench_pipeline', no_tensorflow)
  argv = ['--quick', '--no_torch', '--models=resnet_tiny', '--image_size=16', '--layers=none']
  (row,) = benchmark.main([*argv, f'--out_dir={tmp_path}'])['rows']
  assert 'status' not in row and row['pipeline_vs_step'] is None
  assert row['pipeline'] == "failed: ModuleNotFoundError: No module named 'tensorflow'"
  _positive(row['ours'], 3)
  assert '| failed | n/a |' in (tmp_path / 'benchmark.md').read_text()
  assert benchmark.parse_args([*argv, '--pipeline_batches=0']).pipeline_batches == 0


@pytest.mark.slow
def test_cold_compile_in_a_fresh_process():
  """The cold-compile row comes from a child process (imports and all: about 15 s)."""
  machine = benchmark.machine_info(None, '')
  row = benchmark.bench_cold_compile('resnet_tiny', 4, 16, 'float32', machine)
  assert 'status' not in row, row['status']
  assert row['lower_s'] > 0 and row['xla_compile_s'] > 0 and row['init_s'] > 0
  assert row['train_step_compile_s'] == pytest.approx(row['lower_s'] + row['xla_compile_s'])
  assert row['build_s'] >= row['init_s'] + row['train_step_compile_s']
  assert row['process_wall_s'] > row['build_s']
  assert '| resnet_tiny | 4 | 16 | float32 |' in benchmark.tables([row])


def test_interleaved_rounds_rotate():
  """Each round starts one fn later, so no fn always runs right after the same one."""
  from experiments.timing import interleaved

  calls = []
  fns = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
  times = interleaved(fns, 3)
  assert calls == [*'abc', *'abc', *'bca', *'cab']
  assert {name: len(t) for name, t in times.items()} == {'a': 3, 'b': 3, 'c': 3}
