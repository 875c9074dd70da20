"""EfficientNet compound scaling (Tan & Le 2019, sec. 3.3) as a two-stage sweep
(cnn_jax/recipes/sweep.py).

Stage 0, `grid_trials`: at phi = 1, every (alpha, beta, gamma) on a grid with all three >= 1 and
alpha * beta^2 * gamma^2 within a tolerance of the target (2: each phi doubles the multiply-adds),
each the base net scaled to depth alpha, width beta and resolution gamma and trained the same way.
Candidates that round to the same network (`round_repeats` makes depth 1.1 and 1.2 of a stage of
1-4 blocks equal) are one trial: the one closest to the target, the others in its 'same_net'.

Stage 1, `phi_trials`: the best candidate's (alpha, beta, gamma) for phi = 0..K against scaling
one dimension alone. Each one-dimension net is matched to the compound net of the same phi in
multiply-adds (measured with cnn_jax.models.summary, rounding included), not in phi: its multiplier
m
is the one whose net comes closest, searched from the power law (MACs ~ depth, ~ width^2,
~ resolution^2: m = r, sqrt(r), sqrt(r) for a compound net with r times the base's MACs). With
the paper's alpha' = 2^phi (depth) or 2^(phi/2) the rounded nets miss by up to 30% on the small
offline base. Its columns give alpha (or beta, gamma) = m^(1/phi), so that m = alpha^phi (eq. 3).

The base net (phi = 0) is the config's own model (model.width_mult, model.depth_mult) at
config.image_size; trials override those three fields. Settings: config.sweep (see
configs/efficientnet_sweep.py).
"""

from typing import Any

import ml_collections

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


def grid_trials(config: ml_collections.ConfigDict) -> list[sweep.Trial]:
  """Stage 0: the grid of (alpha, beta, gamma) at phi = 1, one trial per distinct network."""
  _check_model(config)
  s = config.sweep
  groups: dict[tuple, list[tuple[float, float, float]]] = {}
  for abg in grid_candidates(s.target, s.grid_step, s.max_mult, s.tolerance):
    groups.setdefault(_layout(scaled_overrides(config, *abg)), []).append(abg)
  trials = []
  for members in groups.values():
    # The candidate closest to the target stands for its network (then the smallest alpha, beta).
    alpha, beta, gamma = min(
      members, key=lambda m: (abs(m[0] * m[1] ** 2 * m[2] ** 2 - s.target), m)
    )
    overrides = scaled_overrides(config, alpha, beta, gamma)
    others = [m for m in members if m != (alpha, beta, gamma)]
    columns = _columns('grid', 1, alpha, beta, gamma, overrides)
    columns['same_net'] = ' '.join('/'.join(f'{v:g}' for v in m) for m in others)
    trials.append(sweep.Trial(overrides, _name(overrides), columns))
  return trials


def _columns(
  strategy: str, phi: int, alpha: float, beta: float, gamma: float, overrides: dict[str, Any]
) -> dict[str, Any]:
  repeats, _, _ = _layout(overrides)
  return {
    'strategy': strategy,
    'phi': phi,
    'alpha': alpha,
    'beta': beta,
    'gamma': gamma,
    'flops_ratio': round(alpha * beta**2 * gamma**2, 4),  # alpha * beta^2 * gamma^2
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
    columns = _columns('compound', phi, alpha, beta, gamma, overrides)
    trials.append(sweep.Trial(overrides, _name(overrides), columns))
  for strategy in STRATEGIES[1:]:
    for phi in range(config.sweep.max_phi + 1):
      m, overrides = (1.0, scaled_overrides(config, 1, 1, 1))
      if phi:
        m, overrides = match_macs(config, strategy, targets[phi])
      per_phi = round(m ** (1 / phi), 4) if phi else 1.0  # alpha' with alpha'^phi = m
      columns = _columns(strategy, phi, *_one_dimension(strategy, per_phi), overrides)
      trials.append(sweep.Trial(overrides, _name(overrides), columns))
  return trials


def get_next_trials(config: ml_collections.ConfigDict, stage: int, rows: list[dict]):
  """The sweep hook: stage 1 is `phi_trials`; there is no stage 2."""
  return phi_trials(config, rows) if stage == 1 else []
