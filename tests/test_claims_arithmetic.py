"""The notes' arithmetic claims (experiments.claims_arithmetic), asserted from real layers.

Exact numbers from the notes (../shared/seeds/003, 004): 73,728; 280; the LeNet-5 table; 120,422,400
and 12,443,648 multiply-adds; 1/n_c' + 1/f^2; 5x5 and 7x7 windows of stacked 3x3 convs; FC layers
equal to their conv twins; ResNet receptive fields by recurrence and by gradient support.
"""

import json
from fractions import Fraction

import flax.linen as nn
import jax.numpy as jnp
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import MaxPool
from experiments import claims_arithmetic as ca


def test_conv_params_3x3_128_to_64():
  assert ca.conv_params(128, 64, 3, use_bias=False) == 3 * 3 * 128 * 64 == 73_728
  assert ca.conv_params(128, 64, 3, use_bias=True) == 73_728 + 64
  assert ca.claim_conv_params().ok


def test_padding_and_stride_leave_params_alone():
  rows = ca.params_over_padding_stride()
  assert {r['params'] for r in rows} == {73_728}
  # ... while the outputs they build do change: the claim is not vacuous.
  assert len({r['output_shape'] for r in rows}) >= 5
  assert {r['output_shape'] for r in rows if r['stride'] == 1} >= {(30, 30, 64), (32, 32, 64)}


def test_output_size_formula_matches_layers():
  grid = ca.output_size_grid(ns=(6, 7), fs=(1, 2, 3, 5), ps=(0, 1, 2), ss=(1, 2, 3))
  assert len(grid) == 72
  for r in grid:
    assert r['formula'] == r['conv'] == r['maxpool'], r
  # The notes' worked examples.
  assert ca.layer_output_size(6, 3, 0, 1) == 4
  assert ca.layer_output_size(32, 5, 0, 1) == 28
  assert ca.layer_output_size(10, 2, 0, 2, 'maxpool') == 5
  assert ca.layer_output_size(5, 3, 0, 1, 'maxpool') == 3
  # A stride that does not divide n + 2p - f: the floor.
  assert ca.layer_output_size(8, 3, 0, 2) == ca.formula_output_size(8, 3, 0, 2) == 3


def test_same_padding_keeps_size_for_odd_filters():
  for r in ca.same_padding_cases(fs=(1, 3, 5, 7), ns=(7, 8)):
    assert r['explicit'] == r['same_string'] == r['n'], r
  assert ca.even_filter_same_pads() == {2: (0, 1), 4: (1, 2)}  # even f: asymmetric
  with pytest.raises(UserError, match='odd filter size'):
    ca.same_padding_cases(fs=(4,))


def test_output_size_refuses_a_filter_larger_than_the_input():
  with pytest.raises(UserError, match='a 7x7 filter does not fit a 5x5 input padded by 0'):
    ca.formula_output_size(5, 7, 0, 1)
  with pytest.raises(UserError, match='does not fit'):
    ca.layer_output_size(5, 7, 0, 1)


def test_ten_3x3x3_filters_have_280_params_at_any_size():
  counts = ca.ten_filter_params((6, 32, 1000))
  assert {n: c for n, (c, _) in counts.items()} == {6: 280, 32: 280, 1000: 280}
  assert counts[1000][1] == (998, 998, 10)


def test_lenet5_table():
  rows = {r['layer']: r for r in ca.lenet5_rows()}
  assert all(r['ok'] for r in rows.values()), [r for r in rows.values() if not r['ok']]
  assert {k: rows[k]['measured'][2] for k in ('conv1', 'conv2', 'fc3', 'fc4', 'logits')} == {
    'conv1': 456,
    'conv2': 2_416,
    'fc3': 48_120,
    'fc4': 10_164,
    'logits': 850,
  }
  shapes = [rows[k]['measured'][0] for k in ('conv1', 'pool1', 'conv2', 'pool2')]
  assert shapes == [(28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16)]
  assert [rows[k]['measured'][1] for k in ('conv1', 'pool1', 'conv2', 'pool2')] == [
    4_704,
    1_176,
    1_600,
    400,
  ]
  assert sum(r['measured'][2] for r in rows.values()) == 62_006


def test_bottleneck_example():
  c = ca.bottleneck_costs()
  assert (
    c['direct_macs'] == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400
  )  # the notes: about 120 million
  assert c['bottleneck_macs_per_layer'] == {'reduce': 2_408_448, 'conv': 10_035_200}
  assert c['bottleneck_macs'] == 12_443_648  # the notes: about 12.4 million
  assert c['direct_shape'] == c['bottleneck_shape'] == (28, 28, 32)
  assert c['direct_params'] == 153_600 and c['bottleneck_params'] == 3_072 + 12_800


@pytest.mark.parametrize(
  'case', [(6, 3, 3, 5, 1, 'VALID'), (28, 5, 16, 32, 1, 'VALID'), (16, 3, 8, 24, 2, 'SAME')]
)
def test_depthwise_separable_ratio_is_exact(case):
  r = ca.separable_cost(*case)
  n, f, n_c, n_c_out = case[:4]
  assert r['ratio'] == Fraction(1, n_c_out) + Fraction(1, f * f) == r['formula']
  if case[0] == 6:  # the small example by hand: 4x4x5 outputs
    assert (r['full_macs'], r['depthwise_macs'], r['pointwise_macs']) == (2_160, 432, 240)


@pytest.mark.parametrize('num_convs', [2, 3])
def test_stacked_3x3_convs_see_a_wider_window_with_fewer_weights(num_convs):
  r = ca.stacked_receptive_field(num_convs, channels=4, image=11)
  span = 2 * num_convs + 1
  assert r['stack_support'].size == r['single_support'].size == (span, span)
  assert r['stack_support'].filled and r['single_support'].filled
  assert r['stack_params'] == 9 * num_convs * 16  # 18 C^2 / 27 C^2
  assert r['single_params'] == span * span * 16  # 25 C^2 / 49 C^2


def test_max_pool_gradient_reaches_one_input_until_run_as_average():
  """Why the receptive-field check runs max pools as average pools of the same window."""
  pool = MaxPool((3, 3), (2, 2))
  x = jnp.ones((1, 9, 9, 1))
  variables = pool.init(ca.KEY, x)
  argmax = ca.gradient_support(lambda x: pool.apply(variables, x), x, (2, 2))
  assert argmax.size == (1, 1)  # ties go to the first tap: the window's corner

  def as_average(x):
    with nn.intercept_methods(ca.max_as_average):
      return pool.apply(variables, x)

  window = ca.gradient_support(as_average, x, (2, 2))
  assert window.rows == window.cols == (4, 6) and window.filled


def test_fc_layers_equal_their_conv_twins():
  r = ca.fc_vs_conv()
  assert r['fc_params'] == r['conv_params']
  assert r['fc_params']['fc1'] == 5 * 5 * 16 * 400 + 400
  assert r['conv_output_shape'] == (1, 1, 4) and r['fc_output_shape'] == (4,)
  assert r['max_abs_diff'] < 1e-4
  assert r['sliding_shape'] == (2, 2, 4) and r['sliding_max_abs_diff'] < 1e-4
  assert r['small_fc_params'] == r['small_conv_params'] == 4 * 4 * 16 * 10 == 2_560


def test_resnet_receptive_fields_by_recurrence():
  def stages(name, size):
    rows = ca.receptive_fields(models.create(name), (size, size, 3))
    names = ['stem'] + [
      f'stage{i}' for i in range(1, 5) if any(r.path.startswith(f'stage{i}_') for r in rows)
    ]
    return {f: (ca.feature_rf(rows, f).r, ca.feature_rf(rows, f).j) for f in names}

  # By hand: 3x3 stem; each 3x3 conv adds 2j; a stride-2 conv doubles j after it.
  assert stages('resnet20', 32) == {
    'stem': (3, 1),
    'stage1': (15, 1),
    'stage2': (37, 2),
    'stage3': (81, 4),
  }
  # 7x7/2 conv (7, j 2), 3x3/2 max pool (11, j 4), then 4 convs per stage.
  assert stages('resnet18', 224) == {
    'stem': (11, 4),
    'stage1': (43, 4),
    'stage2': (99, 8),
    'stage3': (211, 16),
    'stage4': (435, 32),
  }
  with pytest.raises(UserError, match="no layer of feature 'stage9'"):
    ca.feature_rf(ca.receptive_fields(models.create('resnet20'), (32, 32, 3)), 'stage9')


def test_resnet_receptive_fields_by_gradient_support():
  # Stage 3 (81 pixels) needs a 96x96 input: experiments.claims_arithmetic checks it there.
  got = ca.empirical_rf(models.create('resnet20'), 48, ('stem', 'stage1', 'stage2'))
  assert {k: v['support'].size for k, v in got.items()} == {
    'stem': (3, 3),
    'stage1': (15, 15),
    'stage2': (37, 37),
  }
  assert got['stage2']['support'].rows == (6, 42)  # the central pixel 12 of 24, at 2 * 12 +- 18
  assert all(v['ok'] for v in got.values()), got
  # ResNet-18's layers (7x7/2 conv, max pool), 4 channels wide: receptive fields need no width.
  narrow = models.create('resnet18', widths=(4, 4, 4, 4))
  got = ca.empirical_rf(narrow, 64, ('stem', 'stage1'))
  assert {k: v['support'].size for k, v in got.items()} == {'stem': (11, 11), 'stage1': (43, 43)}
  assert all(v['ok'] for v in got.values()), got


def test_receptive_field_check_refuses_a_too_small_input():
  with pytest.raises(UserError, match='81-pixel receptive field of stage3 does not fit a 32x32'):
    ca.empirical_rf(models.create('resnet20'), 32, ('stage3',))


def test_main_writes_markdown_and_json(tmp_path, monkeypatch):
  claims = [ca.claim_conv_params(), ca.claim_lenet5(), ca.claim_bottleneck()]
  monkeypatch.setattr(ca, 'all_claims', lambda: claims)
  payload = ca.main(['--out_dir', str(tmp_path)])
  written = json.loads((tmp_path / 'claims_arithmetic.json').read_text())
  assert written == json.loads(json.dumps(payload, ensure_ascii=False))
  assert [c['number'] for c in written['claims']] == [1, 5, 6]
  assert all(c['ok'] for c in written['claims'])
  text = (tmp_path / 'claims_arithmetic.md').read_text()
  assert '| 1 | Parameters of a 3x3 conv, 128 -> 64 channels |' in text
  assert '## 5. The LeNet-5 table' in text and '120,422,400' in text
  assert 'differs' not in text
