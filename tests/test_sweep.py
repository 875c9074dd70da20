"""Sweeps (cnn_jax/recipes/sweep.py) and its user, compound scaling (cnn_jax/recipes/scaling.py)."""

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time

import helpers
import jax
import jax.numpy as jnp
import pytest

from cnn_jax import cli, models
from cnn_jax.core.errors import UserError
from cnn_jax.models.efficientnet import (
  B0_STAGES,
  EFFICIENTNET_PARAMS,
  compound_multipliers,
  efficientnet_variant,
  round_filters,
  round_repeats,
  scaled_layout,
)
from cnn_jax.recipes import scaling, sweep
from configs import efficientnet_sweep, resnet_lr_sweep

# The LR sweep of configs/resnet.py on resnet_tiny, 16x16 digits, one device, XLA at -O0 (~3 s
# less compile a trial): about 8 s a trial on 2 CPU cores, nearly all of it compiling, and about
# 17 s for a process to start, plan and write its tables.
TINY_SWEEP = ['--config=configs/resnet_lr_sweep.py', *helpers.TINY[1:]]


def _env(data_dir: str) -> dict[str, str]:
  env = helpers.env(data_dir, devices=1)
  env['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
  return env


def _start(args: list[str], data_dir: str) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, 'main.py', *args],
    cwd=helpers.ROOT,
    env=_env(data_dir),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _trained(err: str, trials: list[str]) -> list[str]:
  """The trials a process's log says it trained (not found finished)."""
  return [t for t in trials if f'Trial {t}: ' in err and f'Trial {t}: done' not in err]


def _csv_rows(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'sweep.csv')) as f:
    return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Compound scaling: the grid, the powers of phi and the rounding rules.


def test_grid_candidates_obey_the_constraint():
  found = scaling.grid_candidates(target=2.0, step=0.1, max_mult=1.3, tolerance=0.05)
  assert len(found) == len(set(found)) == 10
  for a, b, g in found:
    assert min(a, b, g) >= 1 and max(a, b, g) <= 1.3
    assert abs(a * b**2 * g**2 - 2) <= 0.1 + 1e-9
  assert (1.2, 1.1, 1.2) in found  # 1.9166
  assert (1.0, 1.0, 1.3) not in found  # 1.69: 15% short
  assert (1.2, 1.2, 1.2) not in found  # 2.49
  # The paper's grid step finds the paper's answer among its candidates.
  fine = scaling.grid_candidates(target=2.0, step=0.05, max_mult=2.0, tolerance=0.05)
  assert (1.2, 1.1, 1.15) in fine  # 1.2 * 1.21 * 1.3225 = 1.92
  assert all(min(c) >= 1 and abs(c[0] * c[1] ** 2 * c[2] ** 2 / 2 - 1) <= 0.05 + 1e-9 for c in fine)
  with pytest.raises(UserError, match=r'no \(alpha, beta, gamma\) in \[1, 1.1\]'):
    scaling.grid_candidates(target=2.0, step=0.1, max_mult=1.1, tolerance=0.05)


def test_grid_trials_are_distinct_networks():
  config = efficientnet_sweep.get_config()
  trials = scaling.grid_trials(config)
  layouts = set()
  for t in trials:
    c = t.columns
    assert t.overrides == {
      'model.depth_mult': round(0.5 * c['alpha'], 6),
      'model.width_mult': round(0.25 * c['beta'], 6),
      'image_size': int(16 * c['gamma'] + 0.5),
    }
    layouts.add(
      (scaled_layout(t.overrides['model.width_mult'], t.overrides['model.depth_mult']),)
      + (t.overrides['image_size'],)
    )
  assert len(layouts) == len(trials)  # one trial per network
  # The offline grid after rounding (docs/recipes.md): 10 nominal candidates, 8 networks, 2 of
  # them within 5% of 2x the base's multiply-adds by measured MACs.
  measured = scaling.measured_grid(config)
  assert [(c['alpha'], c['beta'], c['gamma']) for c in measured] == scaling.grid_candidates(
    2.0, 0.1, 1.3, 0.05
  )
  assert len({c['macs'] for c in measured}) == 8
  assert [(t.name, t.columns['macs_ratio']) for t in trials] == [
    ('d0.5_w0.275_r21', 1.9602),
    ('d0.5_w0.3_r19', 2.0181),
  ]


@pytest.mark.parametrize('phi', [0, 1, 2, 3])
def test_scaled_nets_follow_powers_of_phi_with_the_rounding_rules(phi):
  alpha, beta, gamma = 1.2, 1.1, 1.15
  assert compound_multipliers(alpha, beta, gamma, phi) == (alpha**phi, beta**phi, gamma**phi)
  config = efficientnet_sweep.get_config()  # base: width 0.25, depth 0.5, 16 pixels
  overrides = scaling.scaled_overrides(config, *compound_multipliers(alpha, beta, gamma, phi))
  depth, width = 0.5 * 1.2**phi, 0.25 * 1.1**phi
  assert overrides['model.depth_mult'] == pytest.approx(depth)
  assert overrides['model.width_mult'] == pytest.approx(width)
  # 16 * 1.15^phi = 16, 18.4, 21.16, 24.33 to the nearest pixel.
  assert overrides['image_size'] == [16, 18, 21, 24][phi]
  # Blocks: ceil(repeats * depth) over B0's (1, 2, 2, 3, 3, 4, 1); by hand for phi = 0 and 2.
  repeats = [round_repeats(s.repeats, depth) for s in B0_STAGES]
  assert (
    repeats
    == {
      0: [1, 1, 1, 2, 2, 2, 1],  # depth 0.5
      1: [1, 2, 2, 2, 2, 3, 1],  # 0.6
      2: [1, 2, 2, 3, 3, 3, 1],  # 0.72
      3: [1, 2, 2, 3, 3, 4, 1],  # 0.864
    }[phi]
  )
  # The model the sweep trains has exactly these blocks and round_filters widths.
  model = models.create('efficientnet_scaled', width_mult=width, depth_mult=depth, num_classes=10)
  x = jax.ShapeDtypeStruct((1, overrides['image_size'], overrides['image_size'], 3), jnp.float32)
  params = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  params = params['params']
  for i, n in enumerate(repeats):
    blocks = [k for k in params if k.startswith(f'mbconv{i + 1}_block')]
    assert len(blocks) == n
    project = params[f'mbconv{i + 1}_block{n}']['project_conv']['kernel']
    assert project.shape[-1] == round_filters(B0_STAGES[i].out_features, width)
  assert params['stem_conv']['kernel'].shape[-1] == round_filters(32, width)
  assert params['last_conv']['kernel'].shape[-1] == round_filters(1280, width)
  layout = scaled_layout(width, depth)
  assert layout[0] == tuple(repeats)
  assert layout[1][0] == params['stem_conv']['kernel'].shape[-1]


def test_named_variants_come_from_the_pinned_table():
  pinned = {  # DESIGN.md: width, depth, resolution, dropout
    'b0': (1.0, 1.0, 224, 0.2),
    'b1': (1.0, 1.1, 240, 0.2),
    'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3),
    'b4': (1.4, 1.8, 380, 0.4),
    'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5),
    'b7': (2.0, 3.1, 600, 0.5),
  }
  assert EFFICIENTNET_PARAMS == pinned
  for i in range(8):
    m = models.create(f'efficientnet_b{i}')
    assert (m.width_mult, m.depth_mult, m.dropout) == (pinned[f'b{i}'][0], *pinned[f'b{i}'][1::2])
  # ... and are not the compound rule: B3 would be depth 1.2^3 = 1.73, width 1.1^3 = 1.33.
  depth, width, _ = compound_multipliers(1.2, 1.1, 1.15, 3)
  assert (efficientnet_variant('b3').depth_mult, efficientnet_variant('b3').width_mult) != (
    pytest.approx(depth),
    pytest.approx(width),
  )
  # The scaled path at multipliers 1 is B0's layout.
  assert scaled_layout(1.0, 1.0) == (
    (1, 2, 2, 3, 3, 4, 1),
    (32, 16, 24, 40, 80, 112, 192, 320, 1280),
  )


def test_matched_macs_is_the_closest_net():
  config = efficientnet_sweep.get_config()
  config.model.depth_mult = 0.25  # 7 blocks: faster to trace
  target = scaling.costs(config, scaling.scaled_overrides(config, 1.0, 1.2, 1.0))[1]
  m, overrides = scaling.match_macs(config, 'resolution', target)
  assert overrides == scaling.scaled_overrides(config, 1.0, 1.0, m)
  macs = scaling.costs(config, overrides)[1]
  for pixels in (overrides['image_size'] - 1, overrides['image_size'] + 1):
    other = {**overrides, 'image_size': pixels}
    assert abs(macs - target) <= abs(scaling.costs(config, other)[1] - target)


# ---------------------------------------------------------------------------------------------
# The runner: overrides, stages, gathering.


def test_unknown_or_mistyped_overrides_are_user_errors(tmp_path):
  config = resnet_lr_sweep.get_config()
  with pytest.raises(UserError) as e:
    sweep.trial_config(config, {'optimizer.learning_rate': 0.1})
  assert str(e.value).startswith(
    "a sweep trial's overrides: the config has no field 'optimizer.learning_rate'; closest fields:"
  )
  assert 'optimizer.lr' in str(e.value)
  with pytest.raises(
    UserError, match=r"'optimizer.lr' holds float values like .*, not 'fast' \(str\)"
  ):
    sweep.trial_config(config, {'optimizer.lr': 'fast'})
  with pytest.raises(UserError, match=r"'optimizer' is a section of the config, not a field"):
    sweep.trial_config(config, {'optimizer': {}})
  with pytest.raises(UserError, match=r"a trial overrides 'sweep.lr_factors', but the sweep"):
    sweep.trial_config(config, {'sweep.lr_factors': (1.0,)})
  # A bad field in a later stage stops the sweep before anything trains or is written.
  hooks = sweep.Hooks(
    lambda c: [{'optimizer.lr': 0.1}],
    lambda c, stage, rows: [{'optimizer.momentun': 0.5}] if stage == 1 else [],
  )
  with pytest.raises(UserError, match=r"'optimizer.momentun'.*closest fields: optimizer.momentum"):
    sweep.run(config, str(tmp_path / 'w'), hooks)
  assert not (tmp_path / 'w').exists()
  twins = sweep.Hooks(lambda c: [sweep.Trial({'seed': 1}, 'a'), sweep.Trial({'seed': 2}, 'a')])
  with pytest.raises(UserError, match=r"two sweep trials are named 'a' but override different"):
    sweep.run(config, str(tmp_path / 'w'), twins)


def test_shard_flags_are_for_sweeps(tmp_path):
  config = resnet_lr_sweep.get_config()
  with pytest.raises(UserError, match=r'--shard_index/--num_shards is for sweep configs'):
    cli.run(config, str(tmp_path), 'train', config_file='configs/resnet.py', num_shards=2)
  with pytest.raises(UserError, match=r'--shard_index=2 --num_shards=2; expected'):
    cli.run(
      config,
      str(tmp_path),
      'train',
      config_file='configs/resnet_lr_sweep.py',
      shard_index=2,
      num_shards=2,
    )
  with pytest.raises(UserError, match=r'no trial of this sweep has run in'):
    cli.run(config, str(tmp_path), 'gather', config_file='configs/resnet_lr_sweep.py')


def _fake_summary(workdir: str, accuracy: float) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump({'test_accuracy': accuracy, 'steps': 3, 'wall_seconds': 1.0}, f)


def test_stages_are_planned_from_gathered_rows(tmp_path):
  """Stage 1 is computed from stage 0's table; finished trials (here written by the test, as
  another shard would) are read, not rerun; a trial listed twice runs once."""
  config = resnet_lr_sweep.get_config()
  config.model.name = 'resnet_tiny'
  config.image_size = 16
  workdir = str(tmp_path)
  _fake_summary(os.path.join(workdir, 'lr=0.1'), 0.5)
  _fake_summary(os.path.join(workdir, 'lr=0.2'), 0.9)
  _fake_summary(os.path.join(workdir, 'lr=0.4'), 0.7)
  calls = []

  def next_trials(c, stage, rows):
    calls.append([(r['trial'], r['status'], r['test_accuracy']) for r in rows])
    if stage > 1:
      return []
    best = max(rows, key=lambda r: r['test_accuracy'])['optimizer.lr']
    return [sweep.Trial({'optimizer.lr': best}, columns={'factor': 1}), {'optimizer.lr': 2 * best}]

  hooks = sweep.Hooks(lambda c: [{'optimizer.lr': 0.1}, {'optimizer.lr': 0.2}], next_trials)
  rows = sweep.run(config, workdir, hooks)
  # The dry run saw placeholders (ties: the first row wins), the real run the summaries.
  assert calls[0] == [('lr=0.1', 'planned', 0.0), ('lr=0.2', 'planned', 0.0)]
  assert calls[2] == [('lr=0.1', 'done', 0.5), ('lr=0.2', 'done', 0.9)]
  assert [(r['stage'], r['trial'], r['test_accuracy']) for r in rows] == [
    (0, 'lr=0.1', 0.5),
    (0, 'lr=0.2', 0.9),
    (1, 'lr=0.2', 0.9),
    (1, 'lr=0.4', 0.7),
  ]
  assert rows[2]['factor'] == 1 and rows[0]['params'] == rows[3]['params'] > 0
  table = _csv_rows(workdir)
  assert [r['trial'] for r in table] == ['lr=0.1', 'lr=0.2', 'lr=0.2', 'lr=0.4']
  assert os.path.getsize(os.path.join(workdir, 'sweep.png')) > 0
  assert '| 1 | lr=0.4 |' in open(os.path.join(workdir, 'sweep.md')).read()
  assert not os.path.exists(os.path.join(workdir, 'lr=0.1', 'checkpoints'))  # nothing trained
  # A trial folder that holds a run of another config is refused, not tabled.
  other = sweep.trial_config(config, {'optimizer.lr': 0.1, 'batch_size': 32})
  with open(os.path.join(workdir, 'lr=0.1', 'trial.json'), 'w') as f:
    json.dump({'config': json.loads(other.to_json_best_effort(sort_keys=True))}, f)
  with pytest.raises(UserError, match=r'lr=0.1 holds a run of another config \(batch_size: 32 '):
    sweep.gather(config, workdir, hooks)


def test_diverged_trials_are_recorded_and_sigterm_stops_the_sweep(tmp_path, monkeypatch):
  """With a stand-in trainer: lr 0.4 diverges, lr 0.8 is stopped by SIGTERM (returns None)."""
  from cnn_jax import train

  config = resnet_lr_sweep.get_config()
  config.model.name = 'resnet_tiny'
  config.image_size = 16
  calls = []

  def fake_train(c, workdir):
    calls.append(os.path.basename(workdir))
    if c.optimizer.lr == 0.4:
      raise train.NonFiniteError('non-finite loss at step 3; the last checkpoint is kept intact.')
    if c.optimizer.lr == 0.8 and calls.count('lr=0.8') == 1:
      return None
    _fake_summary(workdir, 0.5)
    return {}

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  hooks = sweep.Hooks(lambda c: [{'optimizer.lr': lr} for lr in (0.1, 0.4, 0.8, 1.6)])
  workdir = str(tmp_path)
  assert sweep.run(config, workdir, hooks) is None  # stopped at lr=0.8: rerun to resume
  assert calls == ['lr=0.1', 'lr=0.4', 'lr=0.8']
  rows = sweep.run(config, workdir, hooks)
  assert calls[3:] == ['lr=0.8', 'lr=1.6']  # neither the finished nor the diverged one again
  assert [(r['trial'], r['status']) for r in rows] == [
    ('lr=0.1', 'done'),
    ('lr=0.4', 'diverged'),
    ('lr=0.8', 'done'),
    ('lr=1.6', 'done'),
  ]
  assert rows[1]['error'].startswith('non-finite loss at step 3')
  assert 'test_accuracy' not in rows[1]


# ---------------------------------------------------------------------------------------------
# Processes: kill and rerun, two shards at once.


@pytest.mark.slow  # end to end, about a minute on 2 cores: CI runs it in its second step
def test_two_shards_one_killed_and_rerun_gather_one_table(tmp_path, data_dir):
  """An LR sweep over 2 concurrent processes; shard 0 is killed after its first trial and rerun:
  it continues with its unfinished trial only (resumed from its checkpoint), shard 1 waits for
  it, and both write one table with every trial."""
  workdir = str(tmp_path / 'sweep')
  trials = ['lr=0.05', 'lr=0.1', 'lr=0.2']  # shards 0, 1, 0
  # 12 steps, checkpoints every 4 steps (helpers.TINY).
  args = [*TINY_SWEEP, '--config.sweep.lr_factors=(0.5,1.0,2.0)', f'--workdir={workdir}']
  shard = [[*args, f'--shard_index={i}', '--num_shards=2'] for i in range(2)]
  first, third = os.path.join(workdir, trials[0]), os.path.join(workdir, trials[2])
  procs = [_start(shard[0], data_dir), _start(shard[1], data_dir)]
  deadline = time.time() + 240
  # SIGKILL shard 0 once its first trial has finished and its second saved its step-4 checkpoint.
  while time.time() < deadline and procs[0].poll() is None:
    if os.path.exists(os.path.join(first, 'summary.json')) and os.path.isdir(
      os.path.join(third, 'checkpoints', '4')
    ):
      procs[0].send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  _, killed_err = procs[0].communicate(timeout=60)
  assert procs[0].returncode == -signal.SIGKILL, killed_err[-2000:]
  assert not os.path.exists(os.path.join(third, 'summary.json'))
  finished = {
    name: os.stat(os.path.join(first, name)).st_mtime_ns
    for name in ('summary.json', 'metrics.jsonl', 'trial.json')
  }
  procs[0] = _start(shard[0], data_dir)  # the same command again
  results = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, results, strict=True):
    assert p.returncode == 0, err[-2000:]
  # Trial i belongs to shard i % 2; the rerun trained only the unfinished one, resuming it.
  assert _trained(killed_err, trials) == ['lr=0.05', 'lr=0.2']
  assert 'Trial lr=0.05: done already.' in results[0][1]
  assert _trained(results[0][1], trials) == ['lr=0.2']
  assert _trained(results[1][1], trials) == ['lr=0.1']
  for name, mtime in finished.items():
    assert os.stat(os.path.join(first, name)).st_mtime_ns == mtime, name
  assert 4 <= helpers.summary(third)['resumed_from_step'] < 12
  table = _csv_rows(workdir)
  assert [(r['trial'], r['optimizer.lr'], r['status'], r['steps']) for r in table] == [
    (t, t.split('=')[1], 'done', '12') for t in trials
  ]
  for row, trial in zip(table, trials, strict=True):
    summary = helpers.summary(os.path.join(workdir, trial))
    assert float(row['test_accuracy']) == summary['test_accuracy']
  # Both processes printed the same markdown table at the end.
  # Header, rule, 3 rows, a blank line, the stage's choice (on validation).
  tables = [out.strip().splitlines()[-7:] for out, _ in results]
  assert tables[0] == tables[1] and tables[0][4].startswith('| 0 | lr=0.2 | 0.2 |')
  assert tables[0][-1].startswith('Stage 0: chosen on the validation split, ')
  assert os.path.getsize(os.path.join(workdir, 'sweep.png')) > 0


def test_a_sweep_chooses_on_validation_never_on_test():
  """The table's choice and EfficientNet's grid winner follow validation accuracy; a row with a
  higher test accuracy does not win (the test split reports, it does not choose)."""
  from cnn_jax.recipes import scaling, sweep_tables

  def row(trial, stage, validation, test, **columns):
    return dict(
      trial=trial,
      stage=stage,
      status='done',
      validation_accuracy=validation,
      test_accuracy=test,
      **columns,
    )

  rows = [
    row('lr=0.1', 0, 0.80, 0.95),
    row('lr=0.2', 0, 0.90, 0.85),
    row('lr=0.4', 1, 0.70, 0.99),
    {**row('lr=0.8', 1, 0.99, 0.99), 'status': 'diverged'},
  ]
  chosen = sweep_tables.chosen_rows(rows)
  assert {s: r['trial'] for s, r in chosen.items()} == {0: 'lr=0.2', 1: 'lr=0.4'}
  table = sweep_tables.markdown(rows)
  assert (
    'Stage 0: chosen on the validation split, lr=0.2 (90.00% validation accuracy); its test '
    'accuracy, read once for the report: 85.00%.'
  ) in table
  grid = [
    row('a', 0, 0.80, 0.99, strategy='grid', alpha=1.2, beta=1.1, gamma=1.15, macs=10),
    row('b', 0, 0.90, 0.50, strategy='grid', alpha=1.0, beta=1.1, gamma=1.3, macs=12),
  ]
  assert scaling.best_candidate(grid) == (1.0, 1.1, 1.3)


def test_a_sweep_config_with_a_variant_is_still_a_sweep():
  """--config=configs/resnet_lr_sweep.py:cifar10 names the file with ':cifar10' after it; read as
  a path, no file matched and the sweep ran as one plain training run of its base config."""
  for config_file in ('configs/resnet_lr_sweep.py', 'configs/resnet_lr_sweep.py:cifar10'):
    hooks = sweep.load_hooks(config_file)
    assert hooks is not None and hooks.get_trials.__name__ == 'get_trials'
  assert sweep.load_hooks('configs/resnet.py:cifar10') is None
