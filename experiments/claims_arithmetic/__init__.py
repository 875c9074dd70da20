"""The notes' arithmetic claims, each computed from real layers of this codebase.

  python -m experiments.claims_arithmetic                # writes experiments/results/
                                                         # claims_arithmetic.md and .json
  python -m experiments.claims_arithmetic --out_dir /tmp/x

Ten claims of the course notes in ../shared/seeds/ (003: parameter counts; 004: output sizes, the
LeNet-5 table, the 1x1 bottleneck, depthwise-separable cost, the convolutionalized sliding window;
003/001: stacked 3x3 convs, receptive fields). Every number comes from a Flax layer or net: counts
and multiply-adds from `jax.eval_shape` / `cnn_jax.models.summary`, shapes from the layer's output,
receptive fields from the recurrence r_out = r_in + (k - 1) * j_in, j_out = j_in * s over the
net's own layers and from the gradient of one output pixel w.r.t. the input. Each is set beside
the notes' number and marked OK or differs; tests/test_claims_arithmetic.py asserts them.

By what they measure: conv_layer (1-4: one conv layer's parameters and output sizes), costs (5-7:
the LeNet-5 table, the 1x1 bottleneck, depthwise-separable cost), receptive_fields (8 and 10),
fc_conv (9: an FC layer as a conv), on the tools of measure. This module runs them all and writes
the table.

Run time: 32-41 s wall, 19-20 s of CPU, on a 2-core x86-64 CPU shared with another job (load
average 7-8, nice 19); claims 8-10 (jitted gradient checks) take about three quarters of it.
"""

import argparse
import os
import time

from experiments import common
from experiments.claims_arithmetic.conv_layer import (
  NOTES_SIZE_EXAMPLES,
  PAD_STRIDE,
  claim_conv_params,
  claim_output_size,
  claim_padding_stride,
  claim_ten_filters,
  conv_params,
  even_filter_same_pads,
  formula_output_size,
  layer_output_size,
  output_size_grid,
  params_over_padding_stride,
  same_padding_cases,
  ten_filter_params,
)
from experiments.claims_arithmetic.costs import (
  NOTES_LENET5,
  SEPARABLE_CASES,
  bottleneck_costs,
  claim_bottleneck,
  claim_lenet5,
  claim_separable,
  lenet5_rows,
  separable_cost,
)
from experiments.claims_arithmetic.fc_conv import claim_fc_conv, convolutionalize, fc_vs_conv
from experiments.claims_arithmetic.measure import (
  KEY,
  Claim,
  Support,
  count_params,
  gradient_support,
  gradient_supports,
  max_as_average,
  output_shape,
  positive_variables,
  random_params,
  verdict,
)
from experiments.claims_arithmetic.receptive_fields import (
  RF_NETS,
  RFRow,
  claim_receptive_fields,
  claim_stacked,
  empirical_rf,
  feature_rf,
  receptive_fields,
  stacked_receptive_field,
)

__all__ = [
  'KEY',
  'NOTES_LENET5',
  'NOTES_SIZE_EXAMPLES',
  'PAD_STRIDE',
  'RF_NETS',
  'SEPARABLE_CASES',
  'Claim',
  'RFRow',
  'Support',
  'all_claims',
  'bottleneck_costs',
  'claim_bottleneck',
  'claim_conv_params',
  'claim_fc_conv',
  'claim_lenet5',
  'claim_output_size',
  'claim_padding_stride',
  'claim_receptive_fields',
  'claim_separable',
  'claim_stacked',
  'claim_ten_filters',
  'conv_params',
  'convolutionalize',
  'count_params',
  'empirical_rf',
  'even_filter_same_pads',
  'fc_vs_conv',
  'feature_rf',
  'formula_output_size',
  'gradient_support',
  'gradient_supports',
  'layer_output_size',
  'lenet5_rows',
  'main',
  'markdown',
  'max_as_average',
  'output_shape',
  'output_size_grid',
  'params_over_padding_stride',
  'positive_variables',
  'random_params',
  'receptive_fields',
  'same_padding_cases',
  'separable_cost',
  'stacked_receptive_field',
  'ten_filter_params',
]


def all_claims() -> list[Claim]:
  return [
    claim_conv_params(),
    claim_padding_stride(),
    claim_output_size(),
    claim_ten_filters(),
    claim_lenet5(),
    claim_bottleneck(),
    claim_separable(),
    claim_stacked(),
    claim_fc_conv(),
    claim_receptive_fields()[0],
  ]


def markdown(claims: list[Claim], seconds: float) -> str:
  lines = [
    '# Arithmetic claims of the notes, computed from the code',
    '',
    f'`python -m experiments.claims_arithmetic` ({seconds:.0f} s on a {common.SHARED_MACHINE}). '
    'Each number comes from a real Flax layer or net of cnn_jax (parameter counts and '
    'multiply-adds from `jax.eval_shape` / `cnn_jax.models.summary`, shapes from layer outputs, '
    'receptive fields from the recurrence and from gradients); tests/test_claims_arithmetic.py '
    'asserts them.',
    '',
    '| # | claim | notes say | measured | |',
    '|---:|---|---|---|---|',
  ]
  lines += [
    f'| {c.number} | {c.title} | {c.notes} | {c.measured} | {verdict(c.ok)} |' for c in claims
  ]
  for c in claims:
    lines += ['', f'## {c.number}. {c.title}', '', f'- notes say: {c.notes}']
    lines += [f'- measured: {c.measured}', f'- {verdict(c.ok)}']
    if c.details:
      lines += ['', *c.details]
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.claims_arithmetic', description=__doc__.splitlines()[0]
  )
  parser.add_argument('--out_dir', default=common.RESULTS, help='where the .md and .json go')
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  claims = all_claims()
  seconds = time.perf_counter() - t0
  payload = {
    'machine': {'description': common.SHARED_MACHINE, **common.machine()},
    'seconds': round(seconds, 1),
    'claims': [
      {'number': c.number, 'title': c.title, 'notes': c.notes, 'measured': c.measured, 'ok': c.ok}
      for c in claims
    ],
  }
  out = os.path.join(args.out_dir, 'claims_arithmetic.json')
  common.write_json(out, payload, ensure_ascii=False)
  text = markdown(claims, seconds)
  common.write_text(os.path.join(args.out_dir, 'claims_arithmetic.md'), text)
  print(text, flush=True)
  return payload
