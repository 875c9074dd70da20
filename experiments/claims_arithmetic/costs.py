"""Claims 5-7, what layers cost: the LeNet-5 table, the 1x1 bottleneck, the depthwise-separable
cost ratio (notes 004)."""

from fractions import Fraction

import flax.linen as nn
import jax

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models import summary
from cnn_jax.nn.layers import Conv, DepthwiseConv, PointwiseConv
from experiments.claims_arithmetic.measure import Claim, fmt_shape, verdict

# ---------------------------------------------------------------------------------------------
# 5: the LeNet-5 table.

# The notes' table (004): row, activation shape, activation size, parameters; and the model's
# layer for each row (None: the input).
NOTES_LENET5 = (
  ('Input', (32, 32, 3), 3_072, 0, None),
  ('CONV1 (f=5, s=1)', (28, 28, 6), 4_704, 456, 'conv1'),
  ('POOL1', (14, 14, 6), 1_176, 0, 'pool1'),
  ('CONV2 (f=5, s=1)', (10, 10, 16), 1_600, 2_416, 'conv2'),
  ('POOL2', (5, 5, 16), 400, 0, 'pool2'),
  ('FC3', (120, 1), 120, 48_120, 'fc3'),
  ('FC4', (84, 1), 84, 10_164, 'fc4'),
  ('Softmax', (10, 1), 10, 850, 'logits'),
)


def lenet5_rows() -> list[dict]:
  """The notes' LeNet-5 rows beside the 'lenet5' model's summary rows (32x32x3 input)."""
  s = summary.summarize(models.create('lenet5'), (32, 32, 3))
  by_path = {r.path: r for r in s.rows}
  rows = []
  for name, shape, size, params, path in NOTES_LENET5:
    if path is None:
      got = ((32, 32, 3), 32 * 32 * 3, 0)
    else:
      r = by_path[path]
      got = (r.output_shape, r.activations, r.params)
    rows.append(
      {
        'row': name,
        'layer': path or 'input',
        'notes': (shape, size, params),
        'measured': got,
        # The notes write FC activations as column vectors (120, 1); the model's are (120,).
        'ok': (tuple(d for d in shape if d != 1) or (1,), size, params) == got,
      }
    )
  extra = [r for r in s.rows if r.path not in {row['layer'] for row in rows}]
  for r in extra:  # layers the notes leave out of their table (flatten)
    rows.append(
      {
        'row': '(not in the notes)',
        'layer': r.path,
        'notes': None,
        'measured': (r.output_shape, r.activations, r.params),
        'ok': r.params == 0,
      }
    )
  return rows


def claim_lenet5() -> Claim:
  rows = lenet5_rows()
  total = sum(r['measured'][2] for r in rows)
  details = [
    '| notes row | model layer | activation shape (notes / model) | activation size (notes / model)'
    ' | parameters (notes / model) | |',
    '|---|---|---|---:|---:|---|',
  ]
  for r in rows:
    shape, size, params = r['measured']
    if r['notes'] is None:
      n_shape, n_size, n_params = '-', '-', '-'
    else:
      n_shape, n_size, n_params = (
        fmt_shape(r['notes'][0]),
        f'{r["notes"][1]:,}',
        f'{r["notes"][2]:,}',
      )
    details.append(
      f'| {r["row"]} | {r["layer"]} | {n_shape} / {fmt_shape(shape)} | {n_size} / {size:,} '
      f'| {n_params} / {params:,} | {verdict(r["ok"])} |'
    )
  details += [
    '',
    f'Total: {total:,} parameters (notes: "LeNet-5, 60,000 parameters"; the sum of their rows is '
    f"{sum(row[3] for row in NOTES_LENET5):,}). The notes' formula (f * f * n_C_prev + 1) * n_C: "
    f'conv1 (5*5*3 + 1) * 6 = {(5 * 5 * 3 + 1) * 6}, conv2 (5*5*6 + 1) * 16 = '
    f'{(5 * 5 * 6 + 1) * 16}, FC3 (5*5*16) * 120 + 120 = {5 * 5 * 16 * 120 + 120:,}.',
  ]
  return Claim(
    5,
    'The LeNet-5 table',
    'CONV1 456, CONV2 2,416, FC3 48,120, FC4 10,164, Softmax 850; activations (28,28,6) '
    '(14,14,6) (10,10,16) (5,5,16) (120) (84) (10) for a (32,32,3) input (004)',
    f"'lenet5': {sum(r['ok'] for r in rows)} of {len(rows)} rows agree, {total:,} parameters",
    all(r['ok'] for r in rows) and total == sum(row[3] for row in NOTES_LENET5),
    details,
  )


# ---------------------------------------------------------------------------------------------
# 6: the 1x1 bottleneck example.


class _Bottleneck(nn.Module):
  """1x1 conv to `reduced` channels, then the `kernel` x `kernel` 'same' conv (no biases)."""

  reduced: int
  features: int
  kernel: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = PointwiseConv(self.reduced, (1, 1), use_bias=False, name='reduce')(x)  # (B, H, W, 16)
    k = (self.kernel, self.kernel)
    return Conv(self.features, k, padding='SAME', use_bias=False, name='conv')(x)


def bottleneck_costs(
  size: int = 28, channels: int = 192, features: int = 32, kernel: int = 5, reduced: int = 16
) -> dict:
  """Multiply-adds and weights of the direct 5x5 conv and of the 1x1-bottleneck path."""
  shape = (size, size, channels)
  direct = summary.summarize(
    Conv(features, (kernel, kernel), padding='SAME', use_bias=False), shape
  )
  neck = summary.summarize(_Bottleneck(reduced, features, kernel), shape)
  return {
    'direct_macs': direct.total_macs,
    'direct_params': direct.total_params,
    'direct_shape': direct.rows[-1].output_shape,
    'bottleneck_macs_per_layer': {r.path: r.macs for r in neck.rows},
    'bottleneck_macs': neck.total_macs,
    'bottleneck_params': neck.total_params,
    'bottleneck_shape': neck.rows[-1].output_shape,
  }


def claim_bottleneck() -> Claim:
  c = bottleneck_costs()
  notes_direct = (28 * 28 * 32) * (5 * 5 * 192)  # the notes' product: 120 million
  notes_neck = (28 * 28 * 16) * (1 * 1 * 192) + (28 * 28 * 32) * (5 * 5 * 16)  # 12.4 million
  per_layer = c['bottleneck_macs_per_layer']
  details = [
    '| path | output | multiply-adds | weights |',
    '|---|---|---:|---:|',
    f'| 5x5x192x32 conv | {fmt_shape(c["direct_shape"])} | {c["direct_macs"]:,} '
    f'| {c["direct_params"]:,} |',
    f'| 1x1x192x16 then 5x5x16x32 | {fmt_shape(c["bottleneck_shape"])} '
    f'| {per_layer["reduce"]:,} + {per_layer["conv"]:,} = {c["bottleneck_macs"]:,} '
    f'| {c["bottleneck_params"]:,} |',
    '',
    f"The notes' products: (28*28*32) * (5*5*192) = {notes_direct:,}; (28*28*16) * (1*1*192) + "
    f'(28*28*32) * (5*5*16) = {notes_neck:,}. The bottleneck costs '
    f'{c["direct_macs"] / c["bottleneck_macs"]:.2f}x fewer multiply-adds.',
  ]
  ok = (
    c['direct_macs'] == notes_direct
    and c['bottleneck_macs'] == notes_neck
    and round(c['direct_macs'], -7) == 120_000_000
    and round(c['bottleneck_macs'], -5) == 12_400_000
    and c['direct_shape'] == c['bottleneck_shape'] == (28, 28, 32)
  )
  return Claim(
    6,
    '1x1 bottleneck: 28x28x192 -> 28x28x32 with 5x5 convs',
    'about 120 million multiplies directly, about 12.4 million through a 16-channel 1x1 '
    'bottleneck (004)',
    f'summary MACs: {c["direct_macs"]:,} directly, {c["bottleneck_macs"]:,} with the bottleneck',
    ok,
    details,
  )


# ---------------------------------------------------------------------------------------------
# 7: depthwise-separable cost ratio.


class _Separable(nn.Module):
  """Depthwise `kernel` x `kernel` conv, then a 1x1 conv to `features` channels (no biases)."""

  features: int
  kernel: int
  strides: int = 1
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel, self.kernel)
    x = DepthwiseConv(k, strides=self.strides, padding=self.padding, name='depthwise')(x)
    return PointwiseConv(self.features, (1, 1), use_bias=False, name='pointwise')(x)


def separable_cost(
  n: int, f: int, n_c: int, n_c_out: int, strides: int = 1, padding: str = 'VALID'
) -> dict:
  """Summary MACs of depthwise + pointwise vs one full f x f conv, and their ratio (exact)."""
  shape = (n, n, n_c)
  full = summary.summarize(
    Conv(n_c_out, (f, f), strides=strides, padding=padding, use_bias=False), shape
  )
  sep = summary.summarize(_Separable(n_c_out, f, strides, padding), shape)
  if full.rows[-1].output_shape != sep.rows[-1].output_shape:
    raise UserError(
      f'full conv gives {full.rows[-1].output_shape}, separable {sep.rows[-1].output_shape}: '
      'the cost ratio compares equal outputs; use the same padding for both'
    )
  macs = {r.path: r.macs for r in sep.rows}
  return {
    'n': n,
    'f': f,
    'n_c': n_c,
    'n_c_out': n_c_out,
    'strides': strides,
    'output_shape': full.rows[-1].output_shape,
    'full_macs': full.total_macs,
    'depthwise_macs': macs['depthwise'],
    'pointwise_macs': macs['pointwise'],
    'ratio': Fraction(sep.total_macs, full.total_macs),
    'formula': Fraction(1, n_c_out) + Fraction(1, f * f),
  }


# (n, f, n_c, n_c', stride, padding): a 6x6x3 example, MobileNet-v1-like layers, a 5x5 case.
SEPARABLE_CASES = (
  (6, 3, 3, 5, 1, 'VALID'),
  (112, 3, 32, 64, 1, 'SAME'),
  (112, 3, 64, 128, 2, 'SAME'),
  (14, 3, 512, 512, 1, 'SAME'),
  (28, 5, 16, 32, 1, 'VALID'),
)


def claim_separable() -> Claim:
  rows = [separable_cost(*case) for case in SEPARABLE_CASES]
  details = [
    "| input | f | stride | n_c' | output | full conv | depthwise + pointwise | ratio "
    "| 1/n_c' + 1/f^2 |",
    '|---|---:|---:|---:|---|---:|---:|---:|---:|',
  ]
  for r in rows:
    details.append(
      f'| {r["n"]}x{r["n"]}x{r["n_c"]} | {r["f"]} | {r["strides"]} | {r["n_c_out"]} '
      f'| {fmt_shape(r["output_shape"])} | {r["full_macs"]:,} '
      f'| {r["depthwise_macs"]:,} + {r["pointwise_macs"]:,} | {r["ratio"]} = '
      f'{float(r["ratio"]):.4f} | {r["formula"]} |'
    )
  details += [
    '',
    'The notes give the formula only; the 6x6x3 -> 4x4x5 row is a small example of the same '
    'shape as their 6x6 edge-detection input.',
  ]
  return Claim(
    7,
    "Depthwise-separable cost ratio 1/n_c' + 1/f^2",
    "(depthwise + pointwise cost) / full conv cost = 1/n_c' + 1/f^2 (004)",
    f'{len(rows)} layers (f 3 and 5, stride 1 and 2): ratio of summary MACs equal to the formula '
    f'exactly in {sum(r["ratio"] == r["formula"] for r in rows)}',
    all(r['ratio'] == r['formula'] for r in rows),
    details,
  )
