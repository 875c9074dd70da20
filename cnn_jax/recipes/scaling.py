"""EfficientNet compound scaling (Tan & Le 2019, sec. 3.3) as a two-stage sweep
(cnn_jax/recipes/sweep.py).

Stage 0, `grid_trials`: at phi = 1, every (alpha, beta, gamma) on a grid with all three >= 1 and
alpha * beta^2 * gamma^2 within a tolerance of the target (2: each phi doubles the multiply-adds,
eq. 3) is a nominal candidate: the base net scaled to depth alpha, width beta and resolution gamma,
then rounded to whole blocks (`round_repeats`), channels in multiples of 8 (`round_filters`) and
whole pixels (`round_resolution`). Eq. 3 is about what the trained network costs, so a candidate
is kept only when its rounded network's measured multiply-adds (`costs`: jax.eval_shape, nothing
runs) over the base net's are within the same tolerance of the target too; its row records both,
flops_ratio (nominal) and macs_ratio (measured). Candidates that round to the same network are one
trial: the one closest to the target, the others in its 'same_net'. When none is left, planning
stops with a UserError before anything trains. `grid_table(config)` prints the grid after rounding
(every candidate, its network, its measured ratio, kept or not).

On the offline base of configs/efficientnet_sweep.py (10 blocks, width 0.25, 16 px: 268,320
multiply-adds), the 0.1 grid up to 1.3 within 5% of 2 has 10 nominal candidates, 8 distinct
networks and 2 within 5% of 2 by measured MACs: (1.0, 1.1, 1.3) at 1.9602 and (1.0, 1.2, 1.2) at
2.0181. Depth 1.1, 1.2 and 1.3 all round its 10 blocks to 13, so the candidates with alpha > 1
measure 2.3069-2.4466 (6 candidates, 4 networks), except (1.2, 1.3, 1.0) at 1.8983; (1.0, 1.3,
1.1) measures 2.3109. Printed by
  python -c 'from configs import efficientnet_sweep; from cnn_jax.recipes import scaling;
             print(scaling.grid_table(efficientnet_sweep.get_config()))'

Stage 1, `phi_trials`: the best candidate's (alpha, beta, gamma) for phi = 0..K against scaling
one dimension alone. Each one-dimension net is matched to the compound net of the same phi in
multiply-adds (measured with cnn_jax.models.summary, rounding included), not in phi: its multiplier
m is the one whose net comes closest, searched from the power law (MACs ~ depth, ~ width^2,
~ resolution^2: m = r, sqrt(r), sqrt(r) for a compound net with r times the base's MACs). With
the paper's alpha' = 2^phi (depth) or 2^(phi/2) the rounded nets miss by up to 30% on the small
offline base. Its columns give alpha (or beta, gamma) = m^(1/phi), so that m = alpha^phi (eq. 3),
and macs_ratio, the measured MACs over the base's. This follows the rule of stage 0: the compound
phi = 1 net is stage 0's winner (measured within the tolerance), and every net is compared by
measured MACs; a compound net of phi >= 2 is not held to target^phi (offline, the phi = 2 net of
(1.0, 1.1, 1.3) measures 2.6061x the base, nominally 2.0449^2 = 4.18).

The base net (phi = 0) is the config's own model (model.width_mult, model.depth_mult) at
config.image_size; trials override those three fields. Settings: config.sweep (see
configs/efficientnet_sweep.py).
"""

from typing import Any

import ml_collections
from absl import logging

from cnn_jax.core.errors import UserError
from cnn_jax.models.efficientnet import compound_multipliers, round_resolution, scaled_layout
from cnn_jax.recipes import sweep

STRATEGIES = ('compound', 'depth', 'width', 'resolution')
# Power of each dimension in a conv net's multiply-adds (the paper's FLOPS ~ d * w^2 * r^2).
_POWER = {'depth': 1.0, 'width': 2.0, 'resolution': 2.0}
_MAX_MULT = 64  # one dimension alone is never scaled further than this while matching


def grid_candidates(
  target: float = 2.0, step: float = 0.1, max_mult: float = 1.3, tolerance: float = 0.05
) -> list[tuple[float, float, float]]:
  """(alpha, beta, gamma) from {1, 1 + step, ..., max_mult}^3 with every value >= 1 and
  |alpha * beta^2 * gamma^2 / target - 1| <= tolerance, in grid order."""
  if not step > 0 or not max_mult >= 1 or not tolerance >= 0 or not target >= 1:
    raise UserError(
      f'sweep grid step={step}, max_mult={max_mult}, tolerance={tolerance}, target={target}; '
      'expected step > 0, max_mult >= 1, tolerance >= 0, target >= 1'
    )
  values = [round(1 + i * step, 6) for i in range(int((max_mult - 1) / step + 1e-9) + 1)]
  found = [
    (a, b, g)
    for a in values
    for b in values
    for g in values
    if abs(a * b * b * g * g / target - 1) <= tolerance + 1e-12
  ]
  if not found:
    raise UserError(
      f'no (alpha, beta, gamma) in [1, {max_mult}] on a {step} grid has alpha * beta^2 * '
      f'gamma^2 within {tolerance:.0%} of {target}; raise sweep.max_mult or sweep.tolerance'
    )
  return found


def scaled_overrides(
  config: ml_collections.ConfigDict, depth: float, width: float, resolution: float
) -> dict[str, Any]:
  """The overrides that scale config's base net by these multipliers (1 = the base)."""
  return {
    'model.depth_mult': round(config.model.depth_mult * depth, 6),
    'model.width_mult': round(config.model.width_mult * width, 6),
    'image_size': round_resolution(config.image_size, resolution),
  }


def _name(overrides: dict[str, Any]) -> str:
  """'d0.6_w0.275_r18': the same net always gets the same folder, whichever stage lists it."""
  return (
    f'd{overrides["model.depth_mult"]:g}_w{overrides["model.width_mult"]:g}'
    f'_r{overrides["image_size"]}'
  )


def _layout(overrides: dict[str, Any]) -> tuple:
  repeats, channels = scaled_layout(overrides['model.width_mult'], overrides['model.depth_mult'])
  return repeats, channels, overrides['image_size']


_NET_COSTS: dict[str, tuple[int, int]] = {}


def costs(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> tuple[int, int]:
  """(params, MACs) of the base net with `overrides`; cached by the network it rounds to."""
  others = {k: v for k, v in config.model.items() if k not in ('width_mult', 'depth_mult')}
  key = repr((sorted(others.items()), config.dataset, _layout(overrides)))
  if key not in _NET_COSTS:
    _NET_COSTS[key] = sweep.model_costs(sweep.trial_config(config, overrides))
  return _NET_COSTS[key]


def _check_model(config: ml_collections.ConfigDict) -> None:
  if config.model.name != 'efficientnet_scaled' or 'stages' in config.model:
    raise UserError(
      f"compound scaling sweeps scale B0's stage table: set config.model.name="
      f"'efficientnet_scaled' (it is '{config.model.name}') and leave model.stages unset"
    )


def _nominal(alpha: float, beta: float, gamma: float) -> float:
  return alpha * beta**2 * gamma**2  # eq. 3's FLOPS factor per phi, before rounding


def _within(ratio: float, target: float, tolerance: float) -> bool:
  return abs(ratio / target - 1) <= tolerance + 1e-12


def base_macs(config: ml_collections.ConfigDict) -> int:
  """Multiply-adds of the base net (phi = 0): config's own model at config.image_size."""
  return costs(config, scaled_overrides(config, 1, 1, 1))[1]


def measured_grid(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Every nominal grid candidate (`grid_candidates`) with the network it rounds to, measured.

  One dict per candidate, in grid order: alpha, beta, gamma, flops_ratio (the nominal alpha *
  beta^2 * gamma^2), overrides, net (its folder name), blocks, macs, macs_ratio (macs over the
  base net's; both traced with jax.eval_shape, nothing runs) and within (macs_ratio within
  config.sweep.tolerance of config.sweep.target).
  """
  _check_model(config)
  s = config.sweep
  base = base_macs(config)
  found = []
  for alpha, beta, gamma in grid_candidates(s.target, s.grid_step, s.max_mult, s.tolerance):
    overrides = scaled_overrides(config, alpha, beta, gamma)
    macs = costs(config, overrides)[1]
    found.append(
      {
        'alpha': alpha,
        'beta': beta,
        'gamma': gamma,
        'flops_ratio': round(_nominal(alpha, beta, gamma), 4),
        'overrides': overrides,
        'net': _name(overrides),
        'blocks': sum(_layout(overrides)[0]),
        'macs': macs,
        'macs_ratio': round(macs / base, 4),
        'within': _within(macs / base, s.target, s.tolerance),
      }
    )
  return found


def _grid_groups(config: ml_collections.ConfigDict) -> list[tuple[dict, list[dict]]]:
  """(the candidate that stands for a network, all candidates building it), one per network.

  The one closest to the target in nominal product stands for its network (then the smallest
  alpha, beta, gamma): rounding maps several candidates to one net, which trains once.
  """
  groups: dict[tuple, list[dict]] = {}
  for c in measured_grid(config):
    groups.setdefault(_layout(c['overrides']), []).append(c)
  target = config.sweep.target
  return [
    (
      min(
        members,
        key=lambda c: (
          abs(_nominal(c['alpha'], c['beta'], c['gamma']) - target),
          (c['alpha'], c['beta'], c['gamma']),
        ),
      ),
      members,
    )
    for members in groups.values()
  ]


def grid_table(config: ml_collections.ConfigDict) -> str:
  """The grid after rounding, as markdown: every nominal candidate, its network and what stage 0
  does with it. Traces each network once (jax.eval_shape) and trains nothing."""
  return _table(config, _grid_groups(config))


def _table(config: ml_collections.ConfigDict, groups: list[tuple[dict, list[dict]]]) -> str:
  s = config.sweep
  lines = [
    '| alpha | beta | gamma | nominal | net | blocks | MACs | measured | stage 0 |',
    '|---|---|---|---|---|---|---|---|---|',
  ]
  for chosen, members in groups:
    for c in members:
      if c is not chosen:
        verdict = f'same net as {chosen["alpha"]:g}/{chosen["beta"]:g}/{chosen["gamma"]:g}'
      else:
        verdict = 'trial' if c['within'] else 'dropped: measured MACs off'
      lines.append(
        f'| {c["alpha"]:g} | {c["beta"]:g} | {c["gamma"]:g} | {c["flops_ratio"]:.4f} | '
        f'{c["net"]} | {c["blocks"]} | {c["macs"]:,} | {c["macs_ratio"]:.4f} | {verdict} |'
      )
  kept = sum(c['within'] for c, _ in groups)
  lines.append(
    f'\n{sum(len(m) for _, m in groups)} nominal candidates, {len(groups)} distinct networks, '
    f"{kept} within {100 * s.tolerance:g}% of {s.target:g}x the base net's "
    f'{base_macs(config):,} multiply-adds by measured MACs.'
  )
  return '\n'.join(lines)


def grid_trials(config: ml_collections.ConfigDict) -> list[sweep.Trial]:
  """Stage 0: the grid of (alpha, beta, gamma) at phi = 1, one trial per distinct network whose
  measured multiply-adds are within the tolerance of the target; a UserError when none is."""
  s = config.sweep
  groups = _grid_groups(config)
  logging.info('Compound-scaling grid after rounding:\n%s', _table(config, groups))
  trials = []
  for c, members in groups:
    if not c['within']:  # every member builds the same net: the same measured MACs
      continue
    columns = _columns(config, 'grid', 1, c['alpha'], c['beta'], c['gamma'], c['overrides'])
    columns['same_net'] = ' '.join(
      f'{m["alpha"]:g}/{m["beta"]:g}/{m["gamma"]:g}' for m in members if m is not c
    )
    trials.append(sweep.Trial(c['overrides'], c['net'], columns))
  if not trials:
    closest = min((c for c, _ in groups), key=lambda c: abs(c['macs_ratio'] / s.target - 1))
    raise UserError(
      f'no compound-scaling grid candidate builds a network within {100 * s.tolerance:g}% of '
      f"{s.target:g}x the base net's multiply-adds once rounded ({len(groups)} distinct "
      f'networks; closest: alpha, beta, gamma = {closest["alpha"]:g}, {closest["beta"]:g}, '
      f'{closest["gamma"]:g}, measured {closest["macs_ratio"]:.4g}x); raise '
      'config.sweep.tolerance, or change config.sweep.grid_step, config.sweep.max_mult or the '
      'base net (model.width_mult, model.depth_mult, image_size)'
    )
  return trials


def _columns(
  config: ml_collections.ConfigDict,
  strategy: str,
  phi: int,
  alpha: float,
  beta: float,
  gamma: float,
  overrides: dict[str, Any],
) -> dict[str, Any]:
  repeats, _, _ = _layout(overrides)
  return {
    'strategy': strategy,
    'phi': phi,
    'alpha': alpha,
    'beta': beta,
    'gamma': gamma,
    'flops_ratio': round(_nominal(alpha, beta, gamma), 4),  # nominal, before rounding
    'macs_ratio': round(costs(config, overrides)[1] / base_macs(config), 4),  # measured
    'blocks': sum(repeats),
  }


def best_candidate(rows: list[dict]) -> tuple[float, float, float]:
  """The grid row with the highest validation accuracy (then fewer MACs): its (alpha, beta,
  gamma). The test split is never looked at here: it reports, it does not choose."""
  grid = [r for r in rows if r.get('strategy') == 'grid' and r['status'] in ('done', 'planned')]
  if not grid:
    raise UserError('every grid candidate diverged; lower config.optimizer.lr and rerun')
  best = max(grid, key=lambda r: (r['validation_accuracy'], -r['macs']))
  return best['alpha'], best['beta'], best['gamma']


def _one_dimension(strategy: str, m: float) -> tuple[float, float, float]:
  """(depth, width, resolution) multipliers of scaling `strategy` alone by m."""
  return (
    m if strategy == 'depth' else 1.0,
    m if strategy == 'width' else 1.0,
    m if strategy == 'resolution' else 1.0,
  )


def match_macs(
  config: ml_collections.ConfigDict, strategy: str, target: int
) -> tuple[float, dict[str, Any]]:
  """The multiplier m >= 1 of one dimension whose net has MACs closest to `target`, and its
  overrides (ties: the smaller m).

  MACs grow with m in steps (rounding), so this bisects over m = 1 + i * step (step 0.01, one
  pixel for resolution) from a bracket around the power-law guess: about 6 nets traced.
  """
  step = 1 / config.image_size if strategy == 'resolution' else 0.01

  def overrides(i: int) -> dict[str, Any]:
    return scaled_overrides(config, *_one_dimension(strategy, 1 + i * step))

  def macs(i: int) -> int:
    return costs(config, overrides(i))[1]

  base = macs(0)
  guess = round(((target / base) ** (1 / _POWER[strategy]) - 1) / step) if target > base else 0
  # A bracket lo < hi with macs(lo) < target <= macs(hi), widened by doubling from the guess.
  lo, hi, width = guess, guess, 2
  while lo > 0 and macs(lo) >= target:
    lo, width = max(0, lo - width), 2 * width
  while macs(hi) < target:
    if hi * step > _MAX_MULT:
      raise UserError(
        f'scaling {strategy} alone by {_MAX_MULT}x does not reach {target:,} multiply-adds; '
        'lower config.sweep.max_phi'
      )
    hi, width = hi + width, 2 * width
  while hi - lo > 1:
    mid = (lo + hi) // 2
    lo, hi = (lo, mid) if macs(mid) >= target else (mid, hi)
  best = lo if abs(macs(lo) - target) <= abs(macs(hi) - target) else hi
  return round(1 + best * step, 6), overrides(best)


def phi_trials(config: ml_collections.ConfigDict, rows: list[dict]) -> list[sweep.Trial]:
  """Stage 1: the best (alpha, beta, gamma) for phi = 0..K, and each dimension alone at the
  compound net's MACs of the same phi."""
  _check_model(config)
  alpha, beta, gamma = best_candidate(rows)
  trials = []
  targets = {}
  for phi in range(config.sweep.max_phi + 1):
    overrides = scaled_overrides(config, *compound_multipliers(alpha, beta, gamma, phi))
    targets[phi] = costs(config, overrides)[1]
    columns = _columns(config, 'compound', phi, alpha, beta, gamma, overrides)
    trials.append(sweep.Trial(overrides, _name(overrides), columns))
  for strategy in STRATEGIES[1:]:
    for phi in range(config.sweep.max_phi + 1):
      m, overrides = (1.0, scaled_overrides(config, 1, 1, 1))
      if phi:
        m, overrides = match_macs(config, strategy, targets[phi])
      per_phi = round(m ** (1 / phi), 4) if phi else 1.0  # alpha' with alpha'^phi = m
      columns = _columns(config, strategy, phi, *_one_dimension(strategy, per_phi), overrides)
      trials.append(sweep.Trial(overrides, _name(overrides), columns))
  return trials


def get_next_trials(config: ml_collections.ConfigDict, stage: int, rows: list[dict]):
  """The sweep hook: stage 1 is `phi_trials`; there is no stage 2."""
  return phi_trials(config, rows) if stage == 1 else []
