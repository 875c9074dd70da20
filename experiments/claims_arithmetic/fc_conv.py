"""Claim 9: an FC layer and its convolutionalized twin, the sliding window in one pass (notes 003
and 004)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.nn.layers import Conv, Flatten, MaxPool, PointwiseConv
from experiments.claims_arithmetic.measure import KEY, Claim, count_params, fmt_shape, random_params


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
    f'On 14x14x3 inputs: FC output {fmt_shape(r["fc_output_shape"])}, conv output '
    f'{fmt_shape(r["conv_output_shape"])}, largest difference {r["max_abs_diff"]:.1e}. '
    f'On a 16x16x3 input the conv twin gives {fmt_shape(r["sliding_shape"])} (notes: 2 x 2 x 4), '
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
