"""Exact resume: kill -9 or SIGTERM mid-run, rerun the same command, get the same parameters."""

import os
import signal
import time

import helpers
import pytest


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted run of the tiny config on 4 devices."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  code, out, err = helpers.run([*helpers.TINY, f'--workdir={workdir}'], data_dir)
  assert code == 0, err[-2000:]
  return helpers.summary(workdir)


def _interrupt_at(args, data_dir, workdir, step, sig, after_checkpoint=None):
  """Sends `sig` once the run logged `step` (and finished saving `after_checkpoint`)."""
  proc = helpers.start(args, data_dir)
  saved = os.path.join(workdir, 'checkpoints', str(after_checkpoint))
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    rows = helpers.metric_rows(workdir)
    if rows and rows[-1]['step'] >= step and (after_checkpoint is None or os.path.isdir(saved)):
      proc.send_signal(sig)
      break
    time.sleep(0.05)
  out, err = proc.communicate(timeout=120)
  return proc.returncode, out, err


@pytest.mark.parametrize('step', [6])  # between the checkpoints of steps 4 and 8
def test_kill_9_then_rerun_matches(reference, tmp_path, data_dir, step):
  workdir = str(tmp_path / 'run')
  args = [*helpers.TINY, f'--workdir={workdir}']
  # After the checkpoint of step 4 is complete (orbax renames it into place when done), so that
  # the rerun has something to resume from; a kill during that save is issue-7 territory.
  code, _, _ = _interrupt_at(args, data_dir, workdir, step, signal.SIGKILL, after_checkpoint=4)
  assert code == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  code, out, err = helpers.run(args, data_dir)
  assert code == 0, err[-2000:]
  summary = helpers.summary(workdir)
  assert 0 < summary['resumed_from_step'] < 12
  assert summary['params_sha256'] == reference['params_sha256']
  # metrics.jsonl reads as one run: every train step once.
  steps = [r['step'] for r in helpers.metric_rows(workdir) if r['split'] == 'train']
  assert steps == list(range(1, 13))


def test_sigterm_saves_and_resumes(reference, tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  args = [*helpers.TINY, f'--workdir={workdir}']
  code, out, err = _interrupt_at(args, data_dir, workdir, 5, signal.SIGTERM)
  assert code == 0, err[-2000:]
  assert 'SIGTERM: saved step' in err
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert saved[-1] >= 5  # a checkpoint of the step it stopped at, not only of step 4
  assert not [s for s in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in s]
  code, out, err = helpers.run(args, data_dir)
  assert code == 0, err[-2000:]
  summary = helpers.summary(workdir)
  assert summary['resumed_from_step'] == saved[-1]
  assert summary['params_sha256'] == reference['params_sha256']
