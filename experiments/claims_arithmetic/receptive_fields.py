"""Claims 8 and 10, receptive fields: stacked 3x3 convs against one wide conv (notes 003), and a
ResNet's per layer, by the recurrence and by gradient support (notes 001)."""

import dataclasses
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import AvgPool, Conv, DepthwiseConv, MaxPool
from experiments.claims_arithmetic.measure import (
  KEY,
  Claim,
  Shape,
  count_params,
  fmt_shape,
  gradient_support,
  gradient_supports,
  max_as_average,
  positive_variables,
  verdict,
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
    with nn.intercept_methods(max_as_average):
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
          f'{e["analytic"][1]} {verdict(e["ok"])}'
        )
        # The check net (other input size, maybe narrower) has the registered net's field.
        checks.append(e['ok'] and e['analytic_r'] == r.r)
      details.append(
        f'| {stage} | {r.path} | {r.kernel} / {r.stride} | {fmt_shape(r.output_shape)} | {r.j} '
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
