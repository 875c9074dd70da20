"""Claims 1-4: parameters and output sizes of one conv layer (notes 003 and 004)."""

from collections.abc import Sequence

from jax import lax

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import Conv, MaxPool
from experiments.claims_arithmetic.measure import (
  Claim,
  Shape,
  count_params,
  fmt_shape,
  output_shape,
)


def conv_params(
  in_channels: int,
  features: int,
  kernel: int,
  *,
  use_bias: bool,
  image: int = 32,
  padding: int | str = 1,
  strides: int = 1,
) -> int:
  """Parameters of a `kernel` x `kernel` Conv with `features` filters on image x image x in."""
  pad = padding if isinstance(padding, str) else ((padding, padding), (padding, padding))
  layer = Conv(features, (kernel, kernel), strides=strides, padding=pad, use_bias=use_bias)
  return count_params(layer, (image, image, in_channels))


def claim_conv_params() -> Claim:
  no_bias = conv_params(128, 64, 3, use_bias=False)
  with_bias = conv_params(128, 64, 3, use_bias=True)
  return Claim(
    1,
    'Parameters of a 3x3 conv, 128 -> 64 channels',
    '3 x 3 x 128 x 64 = 73,728 (003, padding 1, stride 1; biases not counted)',
    f'Conv(64, (3, 3)) on 32x32x128: {no_bias:,} without bias, {with_bias:,} with bias (+64)',
    no_bias == 3 * 3 * 128 * 64 == 73_728 and with_bias == no_bias + 64,
    [],
  )


# (padding, stride) pairs of claim 2: explicit p pixels per side, or flax's 'SAME' / 'VALID'.
PAD_STRIDE = (
  (0, 1),
  (1, 1),
  (2, 1),
  (1, 2),
  (0, 2),
  (3, 3),
  ('SAME', 1),
  ('SAME', 2),
  ('VALID', 2),
)


def params_over_padding_stride(
  cases: Sequence[tuple[int | str, int]] = PAD_STRIDE, image: int = 32
) -> list[dict]:
  """Parameters and output shape of the claim-1 layer (no bias) for each (padding, stride)."""
  rows = []
  for pad, stride in cases:
    padding = pad if isinstance(pad, str) else ((pad, pad), (pad, pad))
    layer = Conv(64, (3, 3), strides=stride, padding=padding, use_bias=False)
    rows.append(
      {
        'padding': pad,
        'stride': stride,
        'params': count_params(layer, (image, image, 128)),
        'output_shape': output_shape(layer, (image, image, 128)),
      }
    )
  return rows


def claim_padding_stride() -> Claim:
  rows = params_over_padding_stride()
  counts = {r['params'] for r in rows}
  details = [
    '| padding | stride | output shape (32x32x128 in) | parameters |',
    '|---|---:|---|---:|',
  ]
  details += [
    f'| {r["padding"]} | {r["stride"]} | {fmt_shape(r["output_shape"])} | {r["params"]:,} |'
    for r in rows
  ]
  return Claim(
    2,
    'Padding and stride do not change the parameter count',
    'padding and stride have nothing to do with the number of parameters (003)',
    f'{len(rows)} (padding, stride) settings, {len({r["output_shape"] for r in rows})} different '
    f'output shapes, parameter counts {", ".join(f"{c:,}" for c in sorted(counts))}',
    counts == {73_728},
    details,
  )


def formula_output_size(n: int, f: int, p: int, s: int) -> int:
  """The notes' floor((n + 2p - f) / s) + 1 (004)."""
  if n + 2 * p < f:
    raise UserError(
      f'a {f}x{f} filter does not fit a {n}x{n} input padded by {p}: no output; need n + 2p >= f'
    )
  return (n + 2 * p - f) // s + 1


def layer_output_size(n: int, f: int, p: int, s: int, layer: str = 'conv') -> int:
  """Output height of a real Conv (or MaxPool) with explicit padding p on an n x n input."""
  if layer not in ('conv', 'maxpool'):
    raise UserError(f"layer={layer!r}; expected 'conv' or 'maxpool'")
  if n + 2 * p < f:
    raise UserError(
      f'a {f}x{f} filter does not fit a {n}x{n} input padded by {p}: no output; need n + 2p >= f'
    )
  pads = ((p, p), (p, p))
  if layer == 'conv':
    module = Conv(2, (f, f), strides=s, padding=pads)
  else:
    module = MaxPool((f, f), (s, s), padding=pads)
  return output_shape(module, (n, n, 3))[0]


def output_size_grid(
  ns: Sequence[int] = (5, 6, 7, 8, 13, 32),
  fs: Sequence[int] = (1, 2, 3, 5, 7),
  ps: Sequence[int] = (0, 1, 2, 3),
  ss: Sequence[int] = (1, 2, 3),
) -> list[dict]:
  """Formula vs real Conv and MaxPool output sizes over every (n, f, p, s) with n + 2p >= f."""
  rows = []
  for n in ns:
    for f in fs:
      for p in ps:
        for s in ss:
          if n + 2 * p < f:
            continue
          rows.append(
            {
              'n': n,
              'f': f,
              'p': p,
              's': s,
              'formula': formula_output_size(n, f, p, s),
              'conv': layer_output_size(n, f, p, s, 'conv'),
              'maxpool': layer_output_size(n, f, p, s, 'maxpool'),
            }
          )
  return rows


def same_padding_cases(fs: Sequence[int] = (1, 3, 5, 7, 9), ns: Sequence[int] = (7, 8, 32)):
  """For odd f: p = (f - 1) / 2 at stride 1 keeps n (real Conv); also flax's 'SAME' string."""
  rows = []
  for f in fs:
    if f % 2 == 0:
      raise UserError(f'same padding p = (f - 1) / 2 needs an odd filter size; got f={f}')
    p = (f - 1) // 2
    for n in ns:
      same = Conv(2, (f, f), padding='SAME')
      rows.append(
        {
          'n': n,
          'f': f,
          'p': p,
          'explicit': layer_output_size(n, f, p, 1),
          'same_string': output_shape(same, (n, n, 3))[0],
        }
      )
  return rows


def even_filter_same_pads(fs: Sequence[int] = (2, 4)) -> dict[int, tuple[int, int]]:
  """(before, after) pads that 'SAME' gives an even f at stride 1: asymmetric, as the notes say."""
  return {f: tuple(int(v) for v in lax.padtype_to_pads((8,), (f,), (1,), 'SAME')[0]) for f in fs}


# The notes' worked examples (004): (n, f, p, s, layer, their output size).
NOTES_SIZE_EXAMPLES = (
  (6, 3, 0, 1, 'conv', 4),  # 6x6 image, 3x3 edge filter -> 4x4 (6 - 3 + 1)
  (32, 5, 0, 1, 'conv', 28),  # LeNet-5's CONV1 (f=5, s=1) on 32x32x3 -> 28x28x6
  (10, 2, 0, 2, 'maxpool', 5),  # "Max Pooling f=2, s=2 -> input 10, output 5"
  (5, 3, 0, 1, 'maxpool', 3),  # 5x5x2 input, 3x3 filter, stride 1 -> 3x3x2
)


def claim_output_size(grid: list[dict] | None = None) -> Claim:
  grid = output_size_grid() if grid is None else grid
  bad = [r for r in grid if not r['formula'] == r['conv'] == r['maxpool']]
  same = same_padding_cases()
  same_bad = [r for r in same if not r['n'] == r['explicit'] == r['same_string']]
  examples = [(*e, layer_output_size(*e[:5])) for e in NOTES_SIZE_EXAMPLES]
  ex_bad = [e for e in examples if e[5] != e[6]]
  pads = even_filter_same_pads()
  details = [
    "The notes' examples:",
    '',
    '| n | f | p | s | layer | notes | formula | layer output |',
    '|---:|---:|---:|---:|---|---:|---:|---:|',
  ]
  details += [
    f'| {n} | {f} | {p} | {s} | {layer} | {notes} | {formula_output_size(n, f, p, s)} | {got} |'
    for n, f, p, s, layer, notes, got in examples
  ]
  details += [
    '',
    f'Grid: n in {sorted({r["n"] for r in grid})}, f in {sorted({r["f"] for r in grid})}, '
    f'p in {sorted({r["p"] for r in grid})}, s in {sorted({r["s"] for r in grid})} '
    f'(every case with n + 2p >= f): {len(grid)} cases, {len(grid) - len(bad)} where the formula, '
    f'the Conv and the MaxPool agree' + (f'; differ: {bad}' if bad else '.'),
    '',
    f'"Same" padding p = (f - 1) / 2 at stride 1, odd f in {sorted({r["f"] for r in same})}, '
    f'n in {sorted({r["n"] for r in same})}: {len(same) - len(same_bad)} of {len(same)} keep n '
    "(explicit p and flax's 'SAME' alike). An even f needs asymmetric padding (004): 'SAME' "
    'pads ' + ', '.join(f'f={f} by {a} before and {b} after' for f, (a, b) in pads.items()) + '.',
  ]
  ok = not bad and not same_bad and not ex_bad and all(a != b for a, b in pads.values())
  return Claim(
    3,
    'Output size floor((n + 2p - f) / s) + 1; same padding p = (f - 1) / 2',
    'n + 2p - f + 1, with stride floor((n + 2p - f) / s) + 1; same padding p = (f - 1) / 2 (004)',
    f'{len(grid)} (n, f, p, s) cases of Conv and MaxPool, {len(same)} same-padding cases, '
    f'{len(examples)} worked examples: {len(bad) + len(same_bad) + len(ex_bad)} differ',
    ok,
    details,
  )


def ten_filter_params(images: Sequence[int] = (6, 32, 224, 1000)) -> dict[int, tuple[int, Shape]]:
  """{image size: (parameters, output shape)} of ten 3x3x3 filters with bias ('VALID')."""
  layer = Conv(10, (3, 3), padding='VALID')
  return {n: (count_params(layer, (n, n, 3)), output_shape(layer, (n, n, 3))) for n in images}


def claim_ten_filters() -> Claim:
  counts = ten_filter_params()
  details = ['| image | output shape | parameters |', '|---|---|---:|']
  details += [f'| {n}x{n}x3 | {fmt_shape(s)} | {c:,} |' for n, (c, s) in counts.items()]
  return Claim(
    4,
    'Ten 3x3x3 filters: 280 parameters whatever the image size',
    '(27 + 1) * 10 = 280, fixed whatever the image size (004)',
    f'Conv(10, (3, 3)) with bias on {len(counts)} image sizes from {min(counts)} to '
    f'{max(counts)} pixels: {", ".join(f"{c:,}" for c in sorted({c for c, _ in counts.values()}))}',
    {c for c, _ in counts.values()} == {280},
    details,
  )
