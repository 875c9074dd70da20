"""Faults: kill -9 at each place of the training loop or SIGTERM, rerun the same command, and get
the uninterrupted run back (the same parameters and the same loss at every step).

Each kill is exact, not a race against a timer: CNN_JAX_FAULT=<point>@<step>
(cnn_jax/core/faults.py)
makes the run SIGKILL itself there. Subprocesses of main.py, the tiny config on 4 simulated
devices; slow (about 15 runs of main.py), so they run in CI's second step: pytest -m slow.
"""

import os
import re
import shutil
import signal
import time

import helpers
import pytest

pytestmark = pytest.mark.slow

ARGS = helpers.TINY  # 12 steps, logged every step, checkpoints every 4 steps (the last 2 kept)

# Where the run is killed -> the checkpoint steps the rerun may resume from.
KILLS = {
  'at_step_1': ('end@1', {0}),  # nothing saved yet: the rerun starts over
  'at_a_checkpoint_step': ('before_save@4', {0}),  # step 4 done, its save not started
  'just_after_a_checkpoint': ('saved@4', {4}),  # its save completely written
  'during_an_async_save': ('saving@8', {4}),  # the save of step 8 is still being written
  'at_the_last_step': ('end@12', {8, 12}),  # the final save was handed over, maybe not written
}


def _losses(workdir: str) -> dict[int, float]:
  rows = [r for r in helpers.metric_rows(workdir) if r['split'] == 'train']
  steps = [r['step'] for r in rows]
  assert steps == list(range(1, 13)), steps  # metrics.jsonl reads as one run: each step once
  return {r['step']: r['loss'] for r in rows}


def _files(directory: str) -> dict[str, float]:
  return {
    os.path.relpath(os.path.join(r, f), directory): os.stat(os.path.join(r, f)).st_mtime_ns
    for r, _, fs in os.walk(directory)
    for f in fs
  }


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """(workdir, summary, per-step losses) of an uninterrupted run."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  code, _, err = helpers.run([*ARGS, f'--workdir={workdir}'], data_dir)
  assert code == 0, err[-2000:]
  return workdir, helpers.summary(workdir), _losses(workdir)


@pytest.mark.parametrize('where', list(KILLS))
def test_kill_9_then_rerun_is_the_uninterrupted_run(reference, tmp_path, data_dir, where):
  fault, resumable = KILLS[where]
  workdir = str(tmp_path / 'run')
  args = [*ARGS, f'--workdir={workdir}']
  code, _, err = helpers.run(args, data_dir, extra_env={'CNN_JAX_FAULT': fault})
  assert code == -signal.SIGKILL, err[-2000:]
  killed = re.search(r'CNN_JAX_FAULT: SIGKILL at (\S+?)(;.*)?$', err, re.MULTILINE)
  assert killed and killed[1] == fault, err[-2000:]
  held = killed[0].partition(' holds ')[2]  # the checkpoint folder's entries at the kill
  if where == 'during_an_async_save':  # it was in flight: only its temporary folder existed
    assert held.startswith("['4', '8.orbax-checkpoint-tmp") and "'8'" not in held, held
  if where == 'just_after_a_checkpoint':
    assert held == "['4']", held
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))

  code, _, err = helpers.run(args, data_dir)
  assert code == 0, err[-2000:]
  summary = helpers.summary(workdir)
  assert summary['resumed_from_step'] in resumable
  assert summary['params_sha256'] == reference[1]['params_sha256']
  assert _losses(workdir) == reference[2]  # bit for bit, every step
  checkpoints = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  assert checkpoints == ['12', '8'], checkpoints  # no temporary folder left


def test_sigterm_saves_the_current_step_and_the_rerun_continues(reference, tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  args = [*ARGS, f'--workdir={workdir}']
  proc = helpers.start(args, data_dir)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    rows = helpers.metric_rows(workdir)
    if rows and rows[-1]['step'] >= 5:  # between the checkpoints of steps 4 and 8
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert 'SIGTERM: saved step' in err
  directory = os.path.join(workdir, 'checkpoints')
  saved = sorted(int(s) for s in os.listdir(directory) if s.isdigit())
  assert saved[-1] >= 5  # a checkpoint of the step it stopped at, not only of step 4
  assert not [s for s in os.listdir(directory) if not s.isdigit()]  # no temporary folders
  code, _, err = helpers.run(args, data_dir)
  assert code == 0, err[-2000:]
  summary = helpers.summary(workdir)
  assert summary['resumed_from_step'] == saved[-1]
  assert summary['params_sha256'] == reference[1]['params_sha256']
  assert _losses(workdir) == reference[2]


def test_relaunching_a_finished_run_trains_and_writes_nothing(reference, data_dir):
  workdir = reference[0]
  before = _files(workdir)
  code, _, err = helpers.run([*ARGS, f'--workdir={workdir}'], data_dir)
  assert code == 0, err[-2000:]
  assert 'already finished its 12 steps: nothing to train' in err
  assert _files(workdir) == before  # not one file written, touched or removed


def test_a_longer_run_continues_a_finished_one(reference, tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference[0], workdir)
  args = [*ARGS, f'--workdir={workdir}', '--config.num_train_steps=16']
  code, _, err = helpers.run(args, data_dir)
  assert code == 0, err[-2000:]
  summary = helpers.summary(workdir)
  assert summary['steps'] == 16 and summary['resumed_from_step'] == 12
