"""The notes' arithmetic claims, each computed from real layers of this codebase.

  python experiments/claims_arithmetic.py                # writes experiments/results/
                                                         # claims_arithmetic.md and .json
  python experiments/claims_arithmetic.py --out_dir /tmp/x

Ten claims of the course notes in ../shared/seeds/ (003: parameter counts; 004: output sizes, the
LeNet-5 table, the 1x1 bottleneck, depthwise-separable cost, the convolutionalized sliding window;
003/001: stacked 3x3 convs, receptive fields). Every number comes from a Flax layer or net: counts
and multiply-adds from `jax.eval_shape` / `cnn_jax.models.summary`, shapes from the layer's output,
receptive fields from the recurrence r_out = r_in + (k - 1) * j_in, j_out = j_in * s over the
net's own layers and from the gradient of one output pixel w.r.t. the input. Each is set beside
the notes' number and marked OK or differs; tests/test_claims_arithmetic.py asserts them.

Run time: 32-41 s wall, 19-20 s of CPU, on a 2-core x86-64 CPU shared with another job (load
average 7-8, nice 19); claims 8-10 (jitted gradient checks) take about three quarters of it.
"""

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import partial
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from cnn_jax import models
from cnn_jax.core.errors import UserError  # noqa: E402
from cnn_jax.models import summary  # noqa: E402
from cnn_jax.nn.layers import (  # noqa: E402
  AvgPool,
  Conv,
  DepthwiseConv,
  Flatten,
  MaxPool,
  PointwiseConv,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
MACHINE = '2-core x86-64 CPU, shared with other jobs'
KEY = jax.random.key(0)
Shape = tuple[int, ...]


@dataclasses.dataclass
class Claim:
  """One claim of the notes: what they say, what the code measures, and the detail behind it."""

  number: int
  title: str
  notes: str  # the notes' statement and number, with the seed file it comes from
  measured: str  # one line: what the code gave
  ok: bool
  details: list[str]  # markdown lines (tables) shown under the claim


# ---------------------------------------------------------------------------------------------
# Helpers: parameters, shapes, gradient support.


def _init(module: nn.Module, input_shape: Shape) -> tuple[Any, Any]:
  """(output, variables) as shapes, for one example of `input_shape` (no batch); no compute."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: module.init_with_output(KEY, x), x)


def count_params(module: nn.Module, input_shape: Shape) -> int:
  """Trainable parameters ('params' collection) of `module` built for `input_shape`."""
  _, variables = _init(module, input_shape)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get('params', {})))


def output_shape(module: nn.Module, input_shape: Shape) -> Shape:
  """The module's output shape for one example of `input_shape` (batch dimension dropped)."""
  out, _ = _init(module, input_shape)
  return tuple(out.shape[1:])


def positive_variables(module: nn.Module, x: jax.Array, **call_kwargs: Any) -> Any:
  """Variables of `module`'s structure, all non-negative: every kernel entry 1 / fan_in (an
  average over the window and channels), BatchNorm the identity (scale and variance 1, bias and
  mean 0), other biases 0.

  With non-negative weights and a positive input no ReLU is ever off and no two paths cancel,
  so the gradient of an output pixel is nonzero exactly on the inputs that reach it. (No random
  init: flax's, jitted, took 32 s to compile for ResNet-20 on the 2-core CPU shared with another
  job; these constants need no compile.)
  """
  shapes = jax.eval_shape(partial(module.init, **call_kwargs), KEY, x)

  def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      return jnp.full(leaf.shape, 1 / math.prod(leaf.shape[:-1]), leaf.dtype)
    return jnp.full(leaf.shape, 1 if name in ('scale', 'var') else 0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_params(module: nn.Module, x: jax.Array, seed: int = 0) -> Any:
  """'params' of `module`'s structure drawn with numpy: N(0, 1 / fan_in) kernels, N(0, 0.1) biases.

  (numpy, not a jitted `module.init`: claim 9 took 13 s with flax's init and 3 s with this on the
  2-core CPU shared with another job, most of it compiling; the claims need some weights, not
  flax's.)
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, KEY, x)['params']

  def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    fan_in = math.prod(leaf.shape[:-1]) if getattr(path[-1], 'key', '') == 'kernel' else 100
    return jnp.asarray(rng.normal(0, fan_in**-0.5, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _max_as_average(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
  """Runs each MaxPool as an average pool of the same window: max pooling's gradient reaches only
  the window's maximum, average pooling's every input the window reads (the same window)."""
  module = context.module
  if isinstance(module, MaxPool) and context.method_name == '__call__':
    return nn.avg_pool(args[0], module.window, module.strides or module.window, module.padding)
  return next_fun(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Support:
  """Where the gradient of one output pixel is nonzero, as inclusive input row/column ranges."""

  rows: tuple[int, int]
  cols: tuple[int, int]
  filled: bool  # every pixel of the bounding box is reached

  @property
  def size(self) -> tuple[int, int]:
    return (self.rows[1] - self.rows[0] + 1, self.cols[1] - self.cols[0] + 1)


def gradient_supports(
  fn: Callable[[jax.Array], dict[str, jax.Array]], x: jax.Array, pixels: dict[str, tuple[int, int]]
) -> dict[str, Support]:
  """For each name: the input pixels on which d(sum over channels of fn(x)[name][0, i, j]) / dx
  is nonzero, (i, j) = pixels[name]. One jitted function computes every gradient."""

  def grads(x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for name, (i, j) in pixels.items():
      out[name] = jax.grad(lambda x, n=name, i=i, j=j: jnp.sum(fn(x)[n][0, i, j]))(x)
    return out

  supports = {}
  for name, grad in jax.jit(grads)(x).items():
    mask = np.asarray(jnp.abs(grad[0]).sum(-1) > 0)
    if not mask.any():
      raise UserError(f'output pixel {pixels[name]} of {name!r} depends on no input pixel')
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    supports[name] = Support(
      (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), bool(box.all())
    )
  return supports


def gradient_support(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array, pixel: tuple[int, int]
) -> Support:
  """The input pixels on which d(sum over channels of fn(x)[0, i, j]) / dx is nonzero."""
  return gradient_supports(lambda x: {'out': fn(x)}, x, {'out': pixel})['out']


def _fmt_shape(shape: Shape) -> str:
  return '(' + ', '.join(str(d) for d in shape) + ')'


def _ok(ok: bool) -> str:
  return 'OK' if ok else 'differs'


# ---------------------------------------------------------------------------------------------
# 1-4: parameters and output sizes of one conv layer.


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
    f'| {r["padding"]} | {r["stride"]} | {_fmt_shape(r["output_shape"])} | {r["params"]:,} |'
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
  details += [f'| {n}x{n}x3 | {_fmt_shape(s)} | {c:,} |' for n, (c, s) in counts.items()]
  return Claim(
    4,
    'Ten 3x3x3 filters: 280 parameters whatever the image size',
    '(27 + 1) * 10 = 280, fixed whatever the image size (004)',
    f'Conv(10, (3, 3)) with bias on {len(counts)} image sizes from {min(counts)} to '
    f'{max(counts)} pixels: {", ".join(f"{c:,}" for c in sorted({c for c, _ in counts.values()}))}',
    {c for c, _ in counts.values()} == {280},
    details,
  )


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
        _fmt_shape(r['notes'][0]),
        f'{r["notes"][1]:,}',
        f'{r["notes"][2]:,}',
      )
    details.append(
      f'| {r["row"]} | {r["layer"]} | {n_shape} / {_fmt_shape(shape)} | {n_size} / {size:,} '
      f'| {n_params} / {params:,} | {_ok(r["ok"])} |'
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
    f'| 5x5x192x32 conv | {_fmt_shape(c["direct_shape"])} | {c["direct_macs"]:,} '
    f'| {c["direct_params"]:,} |',
    f'| 1x1x192x16 then 5x5x16x32 | {_fmt_shape(c["bottleneck_shape"])} '
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
      f'| {_fmt_shape(r["output_shape"])} | {r["full_macs"]:,} '
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


# ---------------------------------------------------------------------------------------------
# 8: stacked 3x3 convs.


class _Stack(nn.Module):
  """`num_convs` `kernel` x `kernel` 'same' convs with ReLU, `features` channels, no biases."""

  features: int
  num_convs: int
  kernel: int = 3

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel, self.kernel)
    for i in range(self.num_convs):
      x = nn.relu(Conv(self.features, k, padding='SAME', use_bias=False, name=f'conv{i + 1}')(x))
    return x


def stacked_receptive_field(num_convs: int, channels: int = 64, image: int = 15) -> dict:
  """Weights and gradient support of `num_convs` stacked 3x3 convs vs one conv of the same span."""
  span = 2 * num_convs + 1
  if image < span:
    raise UserError(f'image={image} is smaller than the {span}x{span} window; use at least {span}')
  shape = (image, image, channels)
  x = jnp.ones((1, *shape))
  centre = (image // 2, image // 2)
  out = {'num_convs': num_convs, 'span': span, 'channels': channels}
  for name, module in (
    ('stack', _Stack(channels, num_convs)),
    ('single', _Stack(channels, 1, span)),
  ):
    variables = positive_variables(module, x)
    s = gradient_support(lambda x, m=module, v=variables: m.apply(v, x), x, centre)
    out[f'{name}_params'] = count_params(module, shape)
    out[f'{name}_support'] = s
  return out


def claim_stacked() -> Claim:
  rows = [stacked_receptive_field(n) for n in (2, 3)]
  details = [
    '| layers (C = 64 in and out) | weights | in units of C^2 | gradient support of one output '
    'pixel |',
    '|---|---:|---:|---|',
  ]
  ok = True
  for r in rows:
    c2 = r['channels'] ** 2
    for name, label in (
      ('stack', f'{r["num_convs"]} x 3x3'),
      ('single', f'1 x {r["span"]}x{r["span"]}'),
    ):
      s = r[f'{name}_support']
      details.append(
        f'| {label} | {r[f"{name}_params"]:,} | {Fraction(r[f"{name}_params"], c2)} '
        f'| {s.size[0]}x{s.size[1]}{" (filled)" if s.filled else " (holes)"} |'
      )
      ok &= s.size == (r['span'], r['span']) and s.filled
    ok &= r['stack_params'] == 9 * r['num_convs'] * c2 < r['single_params'] == r['span'] ** 2 * c2
  return Claim(
    8,
    'Stacked 3x3 convs see 5x5 (7x7) with fewer weights',
    'two 3x3 convs have a 5x5 receptive field, with fewer parameters (003); '
    '18C^2 vs 25C^2, three: 27C^2 vs 49C^2',
    '; '.join(
      f'{r["num_convs"]} x 3x3: support {r["stack_support"].size[0]}x'
      f'{r["stack_support"].size[1]}, {r["stack_params"]:,} vs {r["single_params"]:,} weights'
      for r in rows
    ),
    ok,
    details,
  )


# ---------------------------------------------------------------------------------------------
# 9: an FC layer and its convolutional twin.


class _SlidingWindowNet(nn.Module):
  """The notes' sliding-window net (004): 14x14x3 -> conv 5x5 (16) -> max pool 2 -> FC 400 ->
  FC 400 -> 4 outputs; `convolutional=True` writes the FCs as a 5x5 conv and 1x1 convs."""

  convolutional: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(Conv(16, (5, 5), padding='VALID', name='conv')(x))  # (B, 10, 10, 16)
    x = MaxPool((2, 2), name='pool')(x)  # (B, 5, 5, 16)
    if self.convolutional:
      x = nn.relu(Conv(400, (5, 5), padding='VALID', name='fc1')(x))  # (B, 1, 1, 400)
      x = nn.relu(PointwiseConv(400, (1, 1), name='fc2')(x))
      return PointwiseConv(4, (1, 1), name='fc3')(x)  # (B, 1, 1, 4) on 14x14
    x = Flatten(name='flatten')(x)  # (B, 400), in (h, w, c) order
    x = nn.relu(nn.Dense(400, name='fc1')(x))
    x = nn.relu(nn.Dense(400, name='fc2')(x))
    return nn.Dense(4, name='fc3')(x)  # (B, 4)


def convolutionalize(fc_params: dict, conv_params: dict) -> dict:
  """The conv twin's parameters from the FC net's: each Dense kernel reshaped to its conv kernel."""
  out = dict(fc_params)
  for name in ('fc1', 'fc2', 'fc3'):
    shape = conv_params[name]['kernel'].shape
    out[name] = {
      'kernel': fc_params[name]['kernel'].reshape(shape),
      'bias': fc_params[name]['bias'],
    }
  return out


def fc_vs_conv(seed: int = 0) -> dict:
  """Parameters and outputs of the FC net and its convolutional twin (weights copied)."""
  fc_net, conv_net = _SlidingWindowNet(False), _SlidingWindowNet(True)
  rng = np.random.default_rng(seed)
  x14 = jnp.asarray(rng.normal(size=(2, 14, 14, 3)), jnp.float32)
  x16 = jnp.asarray(rng.normal(size=(1, 16, 16, 3)), jnp.float32)
  fc_params = random_params(fc_net, x14, seed + 1)
  conv_params = convolutionalize(fc_params, jax.eval_shape(conv_net.init, KEY, x14)['params'])
  fc_apply, conv_apply = jax.jit(fc_net.apply), jax.jit(conv_net.apply)
  # Sliding windows: the twin on 16x16 gives 2x2 outputs, each the FC net on one 14x14 crop
  # (the crops 2 pixels apart: the max pool's stride).
  crops = jnp.stack([x16[0, i : i + 14, j : j + 14] for i in (0, 2) for j in (0, 2)])
  y_fc = fc_apply({'params': fc_params}, jnp.concatenate([x14, crops]))  # (2 + 4, 4)
  y_fc, y_crops = y_fc[:2], y_fc[2:].reshape(2, 2, 4)  # crop (i, j) -> [i // 2, j // 2]
  y_conv = conv_apply({'params': conv_params}, x14)  # (2, 1, 1, 4)
  grid = conv_apply({'params': conv_params}, x16)  # (1, 2, 2, 4)
  leaves = lambda p: {k: sum(math.prod(a.shape) for a in jax.tree.leaves(v)) for k, v in p.items()}
  # The notes' 003 example: 4x4x16 -> 10 outputs as a Dense layer and as a 4x4 conv, no bias.
  small_fc = count_params(nn.Sequential([Flatten(), nn.Dense(10, use_bias=False)]), (4, 4, 16))
  small_conv = count_params(Conv(10, (4, 4), padding='VALID', use_bias=False), (4, 4, 16))
  return {
    'fc_params': leaves(fc_params),
    'conv_params': leaves(conv_params),
    'fc_output_shape': tuple(y_fc.shape[1:]),
    'conv_output_shape': tuple(y_conv.shape[1:]),
    'max_abs_diff': float(jnp.max(jnp.abs(y_fc - y_conv.reshape(y_fc.shape)))),
    'sliding_shape': tuple(grid.shape[1:]),
    'sliding_max_abs_diff': float(jnp.max(jnp.abs(grid[0] - y_crops))),
    'small_fc_params': small_fc,
    'small_conv_params': small_conv,
  }


def claim_fc_conv() -> Claim:
  r = fc_vs_conv()
  details = ['| layer | FC net | conv twin |', '|---|---:|---:|']
  details += [f'| {k} | {r["fc_params"][k]:,} | {r["conv_params"][k]:,} |' for k in r['fc_params']]
  details += [
    f'| total | {sum(r["fc_params"].values()):,} | {sum(r["conv_params"].values()):,} |',
    '',
    f'On 14x14x3 inputs: FC output {_fmt_shape(r["fc_output_shape"])}, conv output '
    f'{_fmt_shape(r["conv_output_shape"])}, largest difference {r["max_abs_diff"]:.1e}. '
    f'On a 16x16x3 input the conv twin gives {_fmt_shape(r["sliding_shape"])} (notes: 2 x 2 x 4), '
    f'each the FC net on one 14x14 crop (2 pixels apart), largest difference '
    f"{r['sliding_max_abs_diff']:.1e}. The notes' 003 example: 4x4x16 -> 10 as a Dense "
    f'{r["small_fc_params"]:,}, as a 4x4 conv {r["small_conv_params"]:,} (notes: 2,560 each).',
  ]
  ok = (
    r['fc_params'] == r['conv_params']
    and r['max_abs_diff'] < 1e-4
    and r['sliding_shape'] == (2, 2, 4)
    and r['sliding_max_abs_diff'] < 1e-4
    and r['small_fc_params'] == r['small_conv_params'] == 2_560
  )
  return Claim(
    9,
    'An FC layer and its convolutionalized twin',
    'FC 400 on 5x5x16 = 400 filters of 5x5x16, FCs as 1x1 convs; same parameters, inputs and '
    'outputs; 16x16x3 gives 2x2x4 in one pass (004); 4x4x16x10 = 2,560 both ways (003)',
    f'{sum(r["fc_params"].values()):,} parameters both ways; outputs differ by at most '
    f'{max(r["max_abs_diff"], r["sliding_max_abs_diff"]):.0e} (float32)',
    ok,
    details,
  )


# ---------------------------------------------------------------------------------------------
# 10: receptive fields of ResNets.

# Layers on a net's main path. A projection shortcut (1x1 'proj_conv') reads a subset of what its
# block's 3x3 branch reads, so it never widens the block's receptive field.
_SHORTCUT_NAMES = ('proj_conv',)


def _pair(v: Any, default: int) -> int:
  """The first (height) entry of an int / tuple field; `default` for None."""
  if v is None:
    return default
  return int(v) if isinstance(v, int) else int(tuple(v)[0])


def _geometry(module: nn.Module, in_height: int) -> tuple[int, int, int, int] | None:
  """(kernel, stride, dilation, padding before) along H of a conv or pooling layer, else None."""
  if isinstance(module, nn.Conv):
    k, s, d, pad = module.kernel_size, module.strides, module.kernel_dilation, module.padding
  elif isinstance(module, DepthwiseConv):
    k, s, d, pad = module.kernel_size, module.strides, module.dilation, module.padding
  elif isinstance(module, MaxPool | AvgPool):
    k, s, d, pad = module.window, module.strides or module.window, 1, module.padding
  else:
    return None
  k, s, d = _pair(k, 1), _pair(s, 1), _pair(d, 1)
  if isinstance(pad, str):
    if pad.upper() not in ('SAME', 'VALID'):
      raise UserError(f'padding {pad!r} has no receptive-field rule; use SAME, VALID or ints')
    before = int(lax.padtype_to_pads((in_height,), ((k - 1) * d + 1,), (s,), pad.upper())[0][0])
  elif isinstance(pad, int):
    before = pad
  else:
    before = int(tuple(pad)[0][0])
  return k, s, d, before


@dataclasses.dataclass(frozen=True)
class RFRow:
  """One layer on the main path and the receptive field of one pixel of its output."""

  path: str
  kernel: int
  stride: int
  output_shape: Shape
  r: int  # receptive field (input pixels, along H and W)
  j: int  # jump: input pixels between neighbouring output pixels
  start: float  # input coordinate of the centre of output pixel 0


def receptive_fields(model: nn.Module, input_shape: Shape) -> list[RFRow]:
  """The recurrence r += (k_eff - 1) * j, start += ((k_eff - 1) / 2 - pad) * j, j *= s over every
  conv and pooling layer of `model`'s main path in call order (traced, no compute)."""
  rows: list[RFRow] = []
  active: list[nn.Module] = []
  state = {'r': 1, 'j': 1, 'start': 0.0}

  def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module = context.module
    if context.method_name != '__call__' or any(m is module for m in active):
      return next_fun(*args, **kwargs)  # setup, or super().__call__ of a module already seen
    active.append(module)
    try:
      out = next_fun(*args, **kwargs)
    finally:
      active.pop()
    path = tuple(module.scope.path)
    geometry = _geometry(module, args[0].shape[1])
    if geometry is None or not path or path[-1] in _SHORTCUT_NAMES:
      return out
    k, s, d, before = geometry
    k_eff = (k - 1) * d + 1
    state['start'] += ((k_eff - 1) / 2 - before) * state['j']
    state['r'] += (k_eff - 1) * state['j']
    state['j'] *= s
    rows.append(
      RFRow('/'.join(path), k, s, tuple(out.shape[1:]), state['r'], state['j'], state['start'])
    )
    return out

  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda x: model.init_with_output(KEY, x), x)
  return rows


def feature_rf(rows: list[RFRow], feature: str) -> RFRow:
  """The last main-path layer of feature 'stem' or 'stageN' (the layer that produces it)."""
  prefix = 'stem' if feature == 'stem' else f'{feature}_'
  match = [r for r in rows if r.path.startswith(prefix)]
  if not match:
    raise UserError(f"no layer of feature {feature!r}; expected 'stem' or 'stage1', 'stage2', ...")
  return match[-1]


def empirical_rf(model: nn.Module, image: int, features: Sequence[str]) -> dict[str, dict]:
  """Gradient support of the central pixel of each feature map (eval mode, positive weights,
  max pools run as average pools of the same window), beside the analytic interval."""
  rows = receptive_fields(model, (image, image, 3))
  x = jnp.ones((1, image, image, 3))
  variables = positive_variables(model, x)

  def feats(x: jax.Array) -> dict[str, jax.Array]:
    with nn.intercept_methods(_max_as_average):
      return model.apply(variables, x, features=True)

  pixels, intervals = {}, {}
  for name in features:
    rf = feature_rf(rows, name)
    h = rf.output_shape[0]
    pixels[name] = (h // 2, h // 2)
    centre = rf.start + pixels[name][0] * rf.j
    lo, hi = centre - (rf.r - 1) / 2, centre + (rf.r - 1) / 2
    if lo < 0 or hi > image - 1:
      raise UserError(
        f'the {rf.r}-pixel receptive field of {name} does not fit a {image}x{image} input; '
        f'use at least {rf.r + 2 * rf.j} pixels'
      )
    intervals[name] = (rf.r, (int(lo), int(hi)))
  supports = gradient_supports(feats, x, pixels)
  out = {}
  for name, s in supports.items():
    r, interval = intervals[name]
    out[name] = {
      'pixel': pixels[name],
      'analytic': interval,
      'analytic_r': r,
      'support': s,
      'ok': s.rows == s.cols == interval and s.filled,
    }
  return out


# (registry name, input size for the analytic table, input size of the empirical check, keyword
# overrides for the empirical net, features checked). ResNet-18's check keeps its layers and
# narrows its widths to 4 channels: receptive fields depend on the layers' geometry only.
RF_NETS = (
  ('resnet20', 32, 96, {}, ('stem', 'stage1', 'stage2', 'stage3')),
  (
    'resnet18',
    224,
    448,
    {'widths': (4, 4, 4, 4)},
    ('stem', 'stage1', 'stage2', 'stage3', 'stage4'),
  ),
)


def claim_receptive_fields(nets: Sequence[tuple] = RF_NETS) -> tuple[Claim, dict]:
  details: list[str] = []
  checks = []
  results = {}
  for name, size, check_size, overrides, feature_names in nets:
    rows = receptive_fields(models.create(name), (size, size, 3))
    empirical = empirical_rf(models.create(name, **overrides), check_size, feature_names)
    results[name] = {'rows': rows, 'empirical': empirical}
    details += [
      f'**{name}** ({size}x{size} input; the last column: gradient support of the central pixel '
      f'on a {check_size}x{check_size} input'
      + (f', widths {overrides["widths"]}' if 'widths' in overrides else '')
      + ')',
      '',
      '| stage | layer | k / s | output shape | jump j | receptive field r | gradient support |',
      '|---|---|---|---|---:|---:|---|',
    ]
    ends = {feature_rf(rows, f).path: f for f in feature_names}
    for r in rows:
      stage = r.path.split('_')[0]
      check = ''
      if r.path in ends:
        e = empirical[ends[r.path]]
        s = e['support']
        check = (
          f'{ends[r.path]}: rows {s.rows[0]}-{s.rows[1]} ({s.size[0]}x{s.size[1]}'
          f'{", filled" if s.filled else ", holes"}); analytic {e["analytic"][0]}-'
          f'{e["analytic"][1]} {_ok(e["ok"])}'
        )
        # The check net (other input size, maybe narrower) has the registered net's field.
        checks.append(e['ok'] and e['analytic_r'] == r.r)
      details.append(
        f'| {stage} | {r.path} | {r.kernel} / {r.stride} | {_fmt_shape(r.output_shape)} | {r.j} '
        f'| {r.r} | {check} |'
      )
    details.append('')
  details.append(
    'The empirical check runs in eval mode with every kernel entry 1 / fan_in, BatchNorm the '
    'identity and a constant input of ones (no ReLU off, no cancellation), max pools as average '
    'pools of the same '
    "window (max pooling's gradient reaches only the window's maximum)."
  )
  finals = {name: res['rows'][-1].r for name, res in results.items()}
  claim = Claim(
    10,
    'Receptive fields of ResNets, per layer',
    'deeper networks have larger receptive fields (001); no numbers',
    ', '.join(f'{n}: {r} pixels after the last stage' for n, r in finals.items())
    + f'; {sum(checks)} of {len(checks)} gradient checks equal the recurrence',
    all(checks),
    details,
  )
  return claim, results


# ---------------------------------------------------------------------------------------------


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
    f'`python experiments/claims_arithmetic.py` ({seconds:.0f} s on a {MACHINE}). Each number '
    'comes from a real Flax layer or net of cnn_jax (parameter counts and multiply-adds from '
    '`jax.eval_shape` / `cnn_jax.models.summary`, shapes from layer outputs, receptive fields from the '
    'recurrence and from gradients); tests/test_claims_arithmetic.py asserts them.',
    '',
    '| # | claim | notes say | measured | |',
    '|---:|---|---|---|---|',
  ]
  lines += [f'| {c.number} | {c.title} | {c.notes} | {c.measured} | {_ok(c.ok)} |' for c in claims]
  for c in claims:
    lines += ['', f'## {c.number}. {c.title}', '', f'- notes say: {c.notes}']
    lines += [f'- measured: {c.measured}', f'- {_ok(c.ok)}']
    if c.details:
      lines += ['', *c.details]
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default=RESULTS, help='where the .md and .json go')
  args = parser.parse_args(argv)
  t0 = time.perf_counter()
  claims = all_claims()
  seconds = time.perf_counter() - t0
  os.makedirs(args.out_dir, exist_ok=True)
  payload = {
    'machine': {'description': MACHINE, 'machine': platform.machine(), 'cpus': os.cpu_count()},
    'seconds': round(seconds, 1),
    'claims': [
      {'number': c.number, 'title': c.title, 'notes': c.notes, 'measured': c.measured, 'ok': c.ok}
      for c in claims
    ],
  }
  with open(os.path.join(args.out_dir, 'claims_arithmetic.json'), 'w') as f:
    json.dump(payload, f, indent=1, ensure_ascii=False)
  text = markdown(claims, seconds)
  with open(os.path.join(args.out_dir, 'claims_arithmetic.md'), 'w') as f:
    f.write(text)
  print(text, flush=True)
  return payload


if __name__ == '__main__':
  main()
