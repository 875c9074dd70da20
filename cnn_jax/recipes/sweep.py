"""Sweeps: a config's trials, each through the normal trainer in its own workdir, then one table.

A config file is a sweep when its module defines (big_vision's configs return their sweeps from
the config file the same way, with `get_hyper`):

  get_trials(config) -> list[Trial | dict]
      The trials of the first stage. A dict is a trial's overrides, dotted fields of `config`
      (the config main.py built, --config.x=y flags included): {'optimizer.lr': 0.05}.
  get_next_trials(config, stage, rows) -> list[Trial | dict]           (optional)
      The trials of stage `stage` (1, 2, ...), computed from `rows`, the gathered table of the
      stages before it (one dict per trial: its columns, overrides, params, macs, status and
      summary.json's validation_* and test_* metrics, steps and wall_seconds; choose on
      validation_*, the test split reports). [] ends the sweep. It is first
      called once with placeholder rows (every metric 0, status 'planned'), before anything
      trains, so that the overrides of every stage are checked up front.

and the config may hold a `sweep` section: the sweep's own settings (read by the hooks) and the
plot's (`plot_x`, `plot_y`, `plot_group`, `plot_stage`, `plot_logx`; see
sweep_tables.write_tables). The section is removed from each trial's config: a trial's
config.json is a plain trainer config.

  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/lr            # every trial
  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/lr \\
      --shard_index=1 --num_shards=2                                              # every 2nd one
  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/lr --mode=gather

  workdir/<trial>/        an ordinary trainer workdir (checkpoints, metrics, summary.json) and
                          trial.json (the trial's overrides and full config)
  workdir/sweep.csv .json .md     one row per trial and stage; sweep.png when plot_x is set

Rules:
- Before any trial trains, every trial of the first stage gets its overrides applied (an unknown
  field is a UserError naming the closest fields) and its model traced at its input size
  (jax.eval_shape: the params and MACs columns); later stages are planned from placeholder rows.
- A trial with a summary.json is never rerun; an interrupted one resumes from its checkpoint. A
  trial whose loss went non-finite is recorded (diverged.json, status 'diverged') and not rerun:
  it would diverge again at the same step.
- A trial's workdir holding another config (the sweep or a --config flag changed between runs)
  is refused rather than mixed into the table.
- Shards: trial i of a stage belongs to shard i % num_shards; each process runs its own, then
  waits until every trial of the stage has finished (it polls the workdir, so shards must share
  a filesystem) and computes the next stage itself: every shard gets the same list. Every shard
  writes the tables at the end (the same content; each file replaced atomically), `--mode=gather`
  writes them from whatever has finished. Trials with equal names and overrides are one trial,
  run once even when several stages list them (e.g. the base net of every scaling strategy).

Trials run in this process, one after another, not as subprocesses: a fresh process spends ~10 s
importing TensorFlow and JAX before any work (9.3 s measured on the shared 2-core CPU machine),
and on a TPU pod slice every process of a shard runs every trial together, which needs
`jax.distributed` initialised once per process (it cannot be redone per trial). The trainer keeps
no state between runs except compiled functions, dropped after each trial (`jax.clear_caches`).
The cost: an exception that is not a UserError ends the sweep (a bug: fix it and rerun; finished
trials stay finished). Do not run two processes with the same shard on one workdir.
"""

import copy
import dataclasses
import importlib.util
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from cnn_jax.core.config_fields import set_field
from cnn_jax.core.errors import UserError
from cnn_jax.recipes.sweep_tables import format_value, write_json, write_tables

POLL_SECONDS = 2.0  # how often a shard that is done looks for the other shards' summaries
TRIAL_FILE = 'trial.json'
DIVERGED_FILE = 'diverged.json'
MAX_STAGES = 100  # a get_next_trials that never returns [] is a bug


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of the trainer: `overrides` of the sweep's config, in workdir/`name`.

  `name`: '' derives one from the overrides ('lr=0.05'). `columns`: extra table columns (e.g.
  alpha, phi, strategy) that describe the trial without being config fields.
  """

  overrides: Mapping[str, Any]
  name: str = ''
  columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Hooks:
  """The trial functions of a sweep config file."""

  get_trials: Callable[[ml_collections.ConfigDict], Sequence[Trial | dict]]
  get_next_trials: Callable[..., Sequence[Trial | dict]] | None = None


@dataclasses.dataclass(frozen=True)
class Planned:
  """A trial resolved against the config: its trainer config and its folder."""

  name: str
  stage: int
  overrides: dict[str, Any]
  columns: dict[str, Any]
  config: ml_collections.ConfigDict
  workdir: str


def load_hooks(config_file: str | None) -> Hooks | None:
  """The sweep hooks of the config file at `config_file` ('path.py' or 'path.py:arg', the way
  --config names a variant), or None."""
  if config_file and '.py:' in config_file:  # the variant's argument is not part of the path
    config_file = config_file[: config_file.index('.py:') + 3]
  if not config_file or not config_file.endswith('.py') or not os.path.isfile(config_file):
    return None
  name = '_sweep_config_' + re.sub(r'\W', '_', os.path.abspath(config_file))
  spec = importlib.util.spec_from_file_location(name, config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_trials'):
    return None
  return Hooks(module.get_trials, getattr(module, 'get_next_trials', None))


# ---------------------------------------------------------------------------------------------
# Overrides and names.


def trial_config(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` without its `sweep` section, with `overrides` applied.

  Raises UserError for a field that does not exist (with the closest names), a whole section,
  the sweep section itself, or a value of the wrong type.
  """
  c = copy.deepcopy(config)
  if 'sweep' in c:
    with c.unlocked():
      del c['sweep']
  for key, value in overrides.items():
    if key == 'sweep' or key.startswith('sweep.'):
      raise UserError(
        f"a trial overrides '{key}', but the sweep section is not part of a trial's config; "
        'set the trial fields themselves'
      )
    try:
      set_field(c, key, value)
    except UserError as e:
      raise UserError(f"a sweep trial's overrides: {e}") from e
  return c


def trial_name(overrides: Mapping[str, Any]) -> str:
  """A folder name from the overrides: {'optimizer.lr': 0.05, 'seed': 1} -> 'lr=0.05,seed=1'.

  Each field by its last part, unless two overrides share it; characters other than letters,
  digits and '._=,+-' become '_'.
  """
  lasts = [k.split('.')[-1] for k in overrides]
  parts = []
  for key, last in zip(overrides, lasts, strict=True):
    label = last if lasts.count(last) == 1 else key
    parts.append(f'{label}={format_value(overrides[key])}')
  return re.sub(r'[^A-Za-z0-9._=,+-]', '_', ','.join(parts)) or 'base'


def _as_trial(item: Trial | Mapping[str, Any]) -> Trial:
  if isinstance(item, Trial):
    return item
  if isinstance(item, Mapping):
    return Trial(overrides=dict(item))
  raise UserError(f'a sweep trial must be a dict of overrides or a sweep.Trial, not {item!r}')


def plan_stage(
  config: ml_collections.ConfigDict,
  items: Sequence[Trial | Mapping[str, Any]],
  stage: int,
  workdir: str,
  known: dict[str, dict[str, Any]] | None = None,
) -> list[Planned]:
  """The trials of one stage resolved against `config`: configs built, names checked.

  `known`: name -> overrides of earlier stages' trials (updated); a name reused with other
  overrides is a UserError, the same name with the same overrides is the same trial.
  """
  known = {} if known is None else known
  planned = []
  for item in items:
    trial = _as_trial(item)
    overrides = dict(trial.overrides)
    name = trial.name or trial_name(overrides)
    if name in ('.', '..') or '/' in name or not name:
      raise UserError(f'a sweep trial is named {name!r}; use a plain folder name')
    if name in known and known[name] != overrides:
      raise UserError(
        f"two sweep trials are named '{name}' but override different fields ({known[name]} and "
        f'{overrides}); give them distinct names'
      )
    known[name] = overrides
    planned.append(
      Planned(
        name=name,
        stage=stage,
        overrides=overrides,
        columns=dict(trial.columns),
        config=trial_config(config, overrides),
        workdir=os.path.join(workdir, name),
      )
    )
  return planned


# ---------------------------------------------------------------------------------------------
# Costs (params, multiply-adds) and status.

_COSTS: dict[str, tuple[int, int]] = {}


def model_costs(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(parameters, multiply-adds at batch 1) of config's model at config's input size.

  Traced with jax.eval_shape (cnn_jax.models.summary): no compute; a model that cannot take the
  input size, or would not train on it (train.check_total_stride), is a UserError. Cached by
  model fields and input shape.
  """
  from cnn_jax import train

  key = json.dumps([config.model.to_dict(), train.input_shape(config), config.dataset], default=str)
  if key not in _COSTS:
    s = train.model_summary(config)
    # The trainer's own size check, now rather than when the trial starts (the head's width does
    # not change how much the model downsamples).
    train.check_total_stride(train.create_model(config, 10), config)
    _COSTS[key] = (s.total_params, s.total_macs)
  return _COSTS[key]


def status(trial: Planned) -> str:
  """'done' (summary.json), 'diverged' (diverged.json) or 'pending'."""
  if os.path.exists(os.path.join(trial.workdir, 'summary.json')):
    return 'done'
  if os.path.exists(os.path.join(trial.workdir, DIVERGED_FILE)):
    return 'diverged'
  return 'pending'


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _first_difference(a: Any, b: Any, prefix: str = '') -> str:
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        return _first_difference(a.get(key), b.get(key), f'{prefix}{key}.')
  return f'{prefix.rstrip(".")}: {a!r} then, {b!r} now'


def _check_trial_file(trial: Planned) -> None:
  """Refuses a trial folder that holds a run of another config."""
  path = os.path.join(trial.workdir, TRIAL_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)['config']
  now = _config_json(trial.config)
  if saved != now:
    raise UserError(
      f'{trial.workdir} holds a run of another config ({_first_difference(saved, now)}); '
      'use another --workdir, or delete that folder to rerun the trial'
    )


# ---------------------------------------------------------------------------------------------
# Rows (the tables: sweep_tables.py).

PLACEHOLDER = {
  'validation_accuracy': 0.0,
  'validation_loss': 0.0,
  'test_accuracy': 0.0,
  'test_loss': 0.0,
  'steps': 0,
  'wall_seconds': 0.0,
}


def _row(trial: Planned, costs: tuple[int, int] | None, placeholder: bool = False) -> dict:
  row = {'stage': trial.stage, 'trial': trial.name, **trial.columns, **trial.overrides}
  row['params'], row['macs'] = costs if costs is not None else (0, 0)
  if placeholder:
    return {**row, 'status': 'planned', **PLACEHOLDER}
  _check_trial_file(trial)  # never a result of another config in the table
  row['status'] = status(trial)
  if row['status'] == 'done':
    with open(os.path.join(trial.workdir, 'summary.json')) as f:
      summary = json.load(f)
    row.update({k: v for k, v in summary.items() if k.startswith(('validation_', 'test_'))})
    row['steps'] = summary.get('steps')
    row['wall_seconds'] = summary.get('wall_seconds')
  elif row['status'] == 'diverged':
    with open(os.path.join(trial.workdir, DIVERGED_FILE)) as f:
      row['error'] = json.load(f)['error']
  return row


# ---------------------------------------------------------------------------------------------
# Running.


def _run_trial(trial: Planned) -> bool:
  """Trains one trial unless it is finished; False when stopped by SIGTERM."""
  from cnn_jax import train

  state = status(trial)
  if state != 'pending':
    logging.info('Trial %s: %s already.', trial.name, state)
    return True
  _check_trial_file(trial)
  primary = jax.process_index() == 0
  if primary:
    os.makedirs(trial.workdir, exist_ok=True)
    write_json(
      os.path.join(trial.workdir, TRIAL_FILE),
      {'name': trial.name, 'overrides': trial.overrides, 'config': _config_json(trial.config)},
    )
  logging.info('Trial %s: %s', trial.name, trial.overrides)
  try:
    result = train.train_and_evaluate(trial.config, trial.workdir)
  except train.NonFiniteError as e:
    logging.warning('Trial %s diverged: %s', trial.name, e)
    if primary:
      write_json(os.path.join(trial.workdir, DIVERGED_FILE), {'error': str(e)})
    result = {}
  finally:
    jax.clear_caches()  # this trial's compiled steps: no other trial reuses them
  return result is not None


def _wait_for(trials: Sequence[Planned], poll_seconds: float) -> None:
  """Returns once every trial has finished (the other shards' trials included)."""
  last_log = 0.0
  while True:
    pending = [t.name for t in trials if status(t) == 'pending']
    if not pending:
      return
    if time.time() - last_log > 60:
      logging.info('Waiting for %d trial(s) of other shards: %s', len(pending), ', '.join(pending))
      last_log = time.time()
    time.sleep(poll_seconds)


def _unique(trials: Sequence[Planned]) -> list[Planned]:
  seen, out = set(), []
  for t in trials:
    if t.name not in seen:
      seen.add(t.name)
      out.append(t)
  return out


def _next_items(hooks: Hooks, config: ml_collections.ConfigDict, stage: int, rows: list[dict]):
  if hooks.get_next_trials is None:
    return []
  if stage >= MAX_STAGES:
    raise UserError(
      f'the sweep has {MAX_STAGES} stages; get_next_trials should return [] at the end'
    )
  return list(hooks.get_next_trials(config, stage, rows))


def check_shard(shard_index: int, num_shards: int) -> None:
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise UserError(
      f'--shard_index={shard_index} --num_shards={num_shards}; expected num_shards >= 1 and '
      '0 <= shard_index < num_shards'
    )


def plan_all(config: ml_collections.ConfigDict, workdir: str, hooks: Hooks) -> list[Planned]:
  """The first stage (overrides applied, models traced) and a dry run of the later stages.

  Everything that can be checked before any trial trains; returns the first stage.
  """
  start = time.time()
  items = list(hooks.get_trials(config))
  if not items:
    raise UserError('the sweep has no trials: get_trials returned an empty list')
  known: dict[str, dict[str, Any]] = {}
  first = plan_stage(config, items, 0, workdir, known)
  rows = []
  for t in first:
    _check_trial_file(t)
    rows.append(_row(t, model_costs(t.config), placeholder=True))
  stage = 1
  while items := _next_items(hooks, config, stage, rows):
    later = plan_stage(config, items, stage, workdir, dict(known))
    rows += [_row(t, None, placeholder=True) for t in later]
    stage += 1
  logging.info('Planned and checked %d stage(s) in %.1f s.', stage, time.time() - start)
  return first


def run(
  config: ml_collections.ConfigDict,
  workdir: str,
  hooks: Hooks,
  *,
  shard_index: int = 0,
  num_shards: int = 1,
  poll_seconds: float = POLL_SECONDS,
) -> list[dict] | None:
  """Runs this shard's trials stage by stage, waits for the others', writes the tables.

  Returns the rows, or None when a trial was stopped by SIGTERM (rerun to resume).
  """
  check_shard(shard_index, num_shards)
  trials = plan_all(config, workdir, hooks)
  known = {t.name: t.overrides for t in trials}
  rows: list[dict] = []
  stage = 0
  while trials:
    mine = _unique(trials)[shard_index::num_shards]
    logging.info(
      'Sweep stage %d: %d trial(s), %d for shard %d of %d.',
      stage,
      len(_unique(trials)),
      len(mine),
      shard_index,
      num_shards,
    )
    for trial in mine:
      if not _run_trial(trial):
        return None
    _wait_for(trials, poll_seconds)
    rows += [_row(t, model_costs(t.config)) for t in trials]
    if jax.process_index() == 0:
      write_tables(config, workdir, rows)
    stage += 1
    trials = plan_stage(config, _next_items(hooks, config, stage, rows), stage, workdir, known)
  if jax.process_index() == 0:
    print(write_tables(config, workdir, rows), flush=True)
  return rows


def gather(config: ml_collections.ConfigDict, workdir: str, hooks: Hooks) -> list[dict]:
  """The tables of what has finished, without training or waiting.

  Later stages are listed once every trial of the stages before them has finished.
  """
  known: dict[str, dict[str, Any]] = {}
  trials = plan_stage(config, list(hooks.get_trials(config)), 0, workdir, known)
  rows: list[dict] = []
  stage = 0
  while trials:
    rows += [_row(t, model_costs(t.config)) for t in trials]
    if any(status(t) == 'pending' for t in trials):
      break
    stage += 1
    trials = plan_stage(config, _next_items(hooks, config, stage, rows), stage, workdir, known)
  if all(r['status'] == 'pending' for r in rows):
    raise UserError(f'no trial of this sweep has run in {workdir} yet; run it without --mode')
  if jax.process_index() == 0:
    print(write_tables(config, workdir, rows), flush=True)
  return rows
