"""Compound scaling's grid (cnn_jax/recipes/scaling.py): eq. 3 held on the rounded networks'
measured multiply-adds, not only on the nominal alpha * beta^2 * gamma^2.

Every network here is traced with jax.eval_shape (nothing runs): a 7-block base (B0's table at
width 0.25, depth 0.2) on 16x16 inputs, 0.5-1 s a network on 2 shared cores.
"""

import ml_collections
import pytest

from cnn_jax.core.errors import UserError
from cnn_jax.recipes import scaling, sweep
from configs import efficientnet_sweep


def _small(tolerance: float = 0.1) -> ml_collections.ConfigDict:
  """A grid of {1, 1.1, 1.2}^3 around alpha * beta^2 * gamma^2 = 1.44 on a 7-block base.

  Depth 0.2 rounds to one block a stage for alpha 1.0, 1.1 and 1.2 (ceil(4 * 0.24) = 1), so
  alpha changes the name, not the network. Measured ratios (over the base's MACs): resolution
  1.1 (18 px) 1.528, 1.2 (19 px) 1.599; width 1.1 1.110, 1.2 1.271; width and resolution 1.1
  1.639.
  """
  config = efficientnet_sweep.get_config()
  config.model.depth_mult = 0.2
  config.sweep.target = 1.44
  config.sweep.max_mult = 1.2
  config.sweep.tolerance = tolerance
  return config


def test_candidates_that_round_to_one_net_are_one_trial():
  config = _small()
  by_abg = {(c['alpha'], c['beta'], c['gamma']): c for c in scaling.measured_grid(config)}
  # Nominally 1.331 and 1.452, both within 10% of 1.44; depth 0.22 and 0.24: the same 7 blocks.
  same = by_abg[(1.1, 1.0, 1.1)], by_abg[(1.2, 1.0, 1.1)]
  assert [c['flops_ratio'] for c in same] == [1.331, 1.452]
  assert same[0]['macs'] == same[1]['macs'] and same[0]['blocks'] == same[1]['blocks'] == 7
  trials = [t for t in scaling.grid_trials(config) if t.columns['same_net']]
  assert len(trials) == 1
  (trial,) = trials
  # 1.452 is nearer 1.44 than 1.331: (1.2, 1, 1.1) stands for the net, the other is listed.
  assert (trial.columns['alpha'], trial.columns['beta'], trial.columns['gamma']) == (1.2, 1.0, 1.1)
  assert trial.columns['same_net'] == '1.1/1/1.1'
  assert trial.name == 'd0.24_w0.25_r18'


def test_a_nominal_candidate_off_by_measured_macs_is_dropped():
  config = _small()
  by_abg = {(c['alpha'], c['beta'], c['gamma']): c for c in scaling.measured_grid(config)}
  # Resolution 1.2 alone is exactly on the target nominally (1.2^2 = 1.44); 16 * 1.2 = 19.2
  # rounds to 19 px, whose feature maps after the stem (10, 5, 3, 2, 1 a side against 16 px's 8,
  # 4, 2, 1) cost 1.599x the base's: 11% over.
  dropped = by_abg[(1.0, 1.0, 1.2)]
  assert dropped['flops_ratio'] == 1.44
  assert dropped['macs_ratio'] == pytest.approx(1.5993, abs=1e-4)
  assert not dropped['within']
  assert dropped['net'] == 'd0.2_w0.25_r19'
  # So is width 1.2 alone (1.44 nominally, 1.271 measured): of 5 networks, one is kept.
  assert by_abg[(1.0, 1.2, 1.0)]['flops_ratio'] == 1.44 and not by_abg[(1.0, 1.2, 1.0)]['within']
  assert sorted(c['net'] for c in by_abg.values() if c['within']) == [
    'd0.22_w0.25_r18',
    'd0.24_w0.25_r18',
  ]
  assert [t.name for t in scaling.grid_trials(config)] == ['d0.24_w0.25_r18']
  assert '| 1 | 1 | 1.2 | 1.4400 | d0.2_w0.25_r19 | 7 |' in scaling.grid_table(config)
  assert 'dropped: measured MACs off' in scaling.grid_table(config)


def test_trials_record_the_nominal_and_the_measured_ratio():
  config = _small()
  base = scaling.base_macs(config)
  for trial in scaling.grid_trials(config):
    c = trial.columns
    macs = sweep.model_costs(sweep.trial_config(config, trial.overrides))[1]
    assert c['flops_ratio'] == round(c['alpha'] * c['beta'] ** 2 * c['gamma'] ** 2, 4)
    assert c['macs_ratio'] == round(macs / base, 4)
    assert abs(c['macs_ratio'] / 1.44 - 1) <= 0.1


def test_no_candidate_within_tolerance_by_measured_macs_is_one_line():
  # Within 5% of 1.44 nominally: 5 candidates, 5 networks; measured 1.11-1.64, none within 5%.
  config = _small(tolerance=0.05)
  assert len(scaling.measured_grid(config)) == 5
  with pytest.raises(UserError) as e:
    efficientnet_sweep.get_trials(config)  # planning: the sweep's first call, nothing trains
  assert str(e.value) == (
    "no compound-scaling grid candidate builds a network within 5% of 1.44x the base net's "
    'multiply-adds once rounded (5 distinct networks; closest: alpha, beta, gamma = 1.2, 1, '
    '1.1, measured 1.528x); raise config.sweep.tolerance, or change config.sweep.grid_step, '
    'config.sweep.max_mult or the base net (model.width_mult, model.depth_mult, image_size)'
  )
  assert '\n' not in str(e.value)
