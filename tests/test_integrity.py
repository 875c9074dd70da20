"""Checkpoint integrity: a content hash verified on restore, config changes named, crashed saves.

One tiny run (resnet_tiny, 16x16 digits, 4 devices) is trained once; each test damages a copy.
"""

import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import helpers
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnn_jax import train
from cnn_jax.core.checkpoint import Checkpointer, tree_sha256
from cnn_jax.core.errors import UserError

# Keyword defaults of helpers.tiny_config; a call's own keywords win.
_tiny = functools.partial(
  helpers.tiny_config,
  num_train_steps=4,
  log_every_steps=2,
  eval_every_steps=-1,
  checkpoint_every_steps=2,
  keep_checkpoints=3,
)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir):
  """(workdir, summary) of the tiny run: checkpoints of steps 2 and 4."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  summary = train.train_and_evaluate(_tiny(data_dir), workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  return workdir, summary


@pytest.fixture
def workdir(trained, tmp_path):
  """A copy of the trained workdir to damage."""
  copy = str(tmp_path / 'run')
  shutil.copytree(trained[0], copy)
  return copy


@pytest.fixture(scope='module')
def template(trained, data_dir):
  return train.initial_state(train.build(_tiny(data_dir), trained[0]))


def _flip(path: str, position: int) -> None:
  with open(path, 'r+b') as f:
    f.seek(position)
    byte = f.read(1)[0]
    f.seek(position)
    f.write(bytes([byte ^ 0x10]))


def _files(step_dir: str) -> list[str]:
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs)


def _restore(directory: str, template, step=None):
  ckpt = Checkpointer(directory)
  try:
    return ckpt.restore(template, step)
  finally:
    ckpt.close()


def _same(a, b) -> bool:
  return all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


# A restore that tensorstore fails leaves an orbax future unretrieved on a closed event loop:
# noise from orbax's internals, not from this code, printed once per failed read.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_a_flipped_byte_anywhere_is_an_error_or_harmless(tmp_path):
  """Flips bytes all over every file of a checkpoint: each restore either raises the damaged
  error or returns exactly the saved arrays; never different weights."""
  rng = np.random.default_rng(0)
  state = {
    'params': {'w': rng.normal(size=(64, 10)).astype(np.float32), 'b': np.zeros(10, np.float32)},
    'step': np.array(7, np.int32),
  }
  base = str(tmp_path / 'base')
  ckpt = Checkpointer(base)
  ckpt.save(7, state)
  ckpt.close()
  outcomes = {'identical': 0, 'hash': 0, 'other damage': 0}
  for path in _files(os.path.join(base, '7')):
    size = os.path.getsize(path)
    for position in sorted(set(np.linspace(0, size - 1, 6).astype(int))):
      work = str(tmp_path / 'work')
      shutil.rmtree(work, ignore_errors=True)
      shutil.copytree(base, work)
      _flip(path.replace(base, work), position)
      try:
        restored = _restore(work, state)
      except UserError as e:
        assert 'the checkpoint of step 7 in' in str(e) and 'is damaged' in str(e), str(e)
        assert f'delete {work}/7 (there is no earlier checkpoint' in str(e)
        assert '\n' not in str(e)
        outcomes['hash' if 'SHA-256 saved with them' in str(e) else 'other damage'] += 1
      else:
        assert _same(restored, state), f'{path} byte {position}: silently wrong arrays'
        outcomes['identical'] += 1
  # Flips inside the compressed array chunks decode to other numbers without complaint from
  # tensorstore: only the hash catches those.
  assert outcomes['hash'] > 0 and outcomes['other damage'] > 0, outcomes


def _detected(directory: str, template) -> bool:
  try:
    _restore(directory, template)
  except UserError:
    return True
  return False


def test_flipped_byte_in_a_trained_checkpoint(workdir, data_dir, template):
  directory = os.path.join(workdir, 'checkpoints')
  # The arrays' chunks live in ocdbt.process_0/d/, next to files that nothing reads any more
  # (superseded writes): find one that is read (zeroing it is detected), then a byte of it
  # whose flip is.
  chunks = _files(os.path.join(directory, '4', 'default', 'ocdbt.process_0', 'd'))
  found = None
  for path in sorted(chunks, key=os.path.getsize)[::-1]:
    with open(path, 'rb') as f:
      original = f.read()
    with open(path, 'wb') as f:
      f.write(bytes(len(original)))
    live = _detected(directory, template)
    with open(path, 'wb') as f:
      f.write(original)
    if not live:
      continue
    for position in range(0, len(original), 97):
      _flip(path, position)
      if _detected(directory, template):
        found = path, position
        break
      _flip(path, position)  # a byte that is not read back: undo, try the next
    break
  assert found, 'no flipped byte in the checkpoint was detected'
  with pytest.raises(UserError) as e:
    train.restore_and_evaluate(_tiny(data_dir), workdir)
  message = str(e.value)
  assert f'the checkpoint of step 4 in {directory} is damaged' in message
  assert f'delete {directory}/4 to fall back to the checkpoint of step 2' in message
  assert '\n' not in message
  # Following the fix: the previous checkpoint is used, verified.
  shutil.rmtree(os.path.join(directory, '4'))
  ckpt = Checkpointer(directory)
  assert ckpt.latest_step() == 2 and int(ckpt.restore(template).step) == 2
  ckpt.close()


def test_flipped_byte_in_meta_is_damage_not_another_model(workdir, template):
  directory = os.path.join(workdir, 'checkpoints')
  meta = os.path.join(directory, '4', 'meta', 'metadata')
  _flip(meta, os.path.getsize(meta) // 2)  # inside the list of leaves
  with pytest.raises(UserError, match=r'step 4 .* is damaged \(meta/ cannot be read'):
    _restore(directory, template)


def test_checkpoint_without_hash_restores_with_a_warning(trained, tmp_path, template, caplog):
  """A checkpoint as written before this change: orbax's single unnamed item, no meta/."""
  state = _restore(os.path.join(trained[0], 'checkpoints'), template, 4)
  import flax.serialization

  old = str(tmp_path / 'old')
  manager = ocp.CheckpointManager(old, options=ocp.CheckpointManagerOptions(create=True))
  manager.save(4, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
  manager.wait_until_finished()
  manager.close()
  assert sorted(os.listdir(os.path.join(old, '4'))) == [
    '_CHECKPOINT_METADATA',
    'commit_success.txt',
    'default',
  ]
  with caplog.at_level(logging.WARNING):
    restored = _restore(old, template)
  assert 'has no content hash' in caplog.text and f'{old}/4' in caplog.text
  assert _same(restored, state)


def test_model_fields_that_differ_are_named_before_compiling(workdir, data_dir, monkeypatch):
  def no_compiling(exp):
    raise AssertionError('compiled before the config was checked')

  monkeypatch.setattr(train.resume, 'initial_state', no_compiling)
  config = _tiny(data_dir, image_size=20)
  config.model.name = 'resnet20'
  for run in (train.train_and_evaluate, train.restore_and_evaluate):
    with pytest.raises(UserError) as e:
      run(config, workdir)
    message = str(e.value)
    assert 'does not fit this model and optimizer: it was trained with another config' in message
    assert "(trained -> now: image_size: 16 -> 20, model.name: 'resnet_tiny' -> 'resnet20')" in (
      message
    )
    assert f'its config is in {workdir}/config.json' in message and '\n' not in message


def test_other_changes_are_a_warning_and_a_structure_change_names_them(
  workdir, data_dir, template, caplog
):
  directory = os.path.join(workdir, 'checkpoints')
  # Run length and cadence may change silently; the learning rate with a warning.
  config = _tiny(data_dir, num_train_steps=6, log_every_steps=3)
  config.optimizer.lr = 0.05
  exp = train.build(config, workdir)
  ckpt = Checkpointer(directory)
  with caplog.at_level(logging.WARNING):
    state = train.restore_checkpoint(exp, ckpt, 4)
  ckpt.close()
  assert 'restoring with config changes since: optimizer.lr: 0.1 -> 0.05.' in caplog.text
  assert 'num_train_steps' not in caplog.text and 'log_every_steps' not in caplog.text
  assert _same(state, _restore(directory, template, 4))
  # SGD without momentum has no momentum buffer: the checkpoint does not fit its state.
  config = _tiny(data_dir)
  config.optimizer.momentum = 0.0
  exp = train.build(config, workdir)
  ckpt = Checkpointer(directory)
  with pytest.raises(UserError) as e:
    train.restore_checkpoint(exp, ckpt, 4)
  ckpt.close()
  message = str(e.value)
  assert f'the checkpoint {directory}/4 does not fit this model and optimizer' in message
  assert "(saved -> now: ['opt_state']['1']" in message and '-> absent' in message
  assert 'config changes since: optimizer.momentum: 0.9 -> 0.0)' in message


def test_crash_during_a_save_reruns_from_the_previous_checkpoint(trained, workdir, data_dir):
  """What a kill mid-save leaves: the step's temporary folder, part written."""
  directory = os.path.join(workdir, 'checkpoints')
  partial = os.path.join(directory, '4.orbax-checkpoint-tmp')
  os.rename(os.path.join(directory, '4'), partial)
  shutil.rmtree(os.path.join(partial, 'meta'))
  summary = train.train_and_evaluate(_tiny(data_dir), workdir)
  assert summary['resumed_from_step'] == 2
  assert summary['params_sha256'] == trained[1]['params_sha256']
  assert sorted(os.listdir(directory)) == ['2', '4']


# The writer of the next test: one small checkpoint, then a 128 MiB one (incompressible floats)
# whose background save is killed as soon as it has started.
_WRITER = """
import sys
import numpy as np
from cnn_jax.core.checkpoint import Checkpointer
ckpt = Checkpointer(sys.argv[1])
w = np.random.default_rng(0).normal(size=(1 << 25,)).astype(np.float32)
ckpt.save(1, {'w': w[:1000]})
ckpt.wait()
ckpt.save(2, {'w': w})
print('saving', flush=True)
ckpt.wait()
print('saved', flush=True)
"""


def test_kill_9_during_an_async_save_keeps_the_previous_checkpoint(tmp_path):
  directory = str(tmp_path / 'checkpoints')
  stderr_path = tmp_path / 'writer_stderr.txt'
  with open(stderr_path, 'w') as stderr:  # a file: a pipe nobody reads could fill and block it
    proc = subprocess.Popen(
      [sys.executable, '-c', _WRITER, directory],
      cwd=helpers.ROOT,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
      stdout=subprocess.PIPE,
      stderr=stderr,
      text=True,
    )
  deadline = time.time() + 120
  while (line := proc.stdout.readline()).strip() != 'saving':
    # '' is the end of its output: the writer has exited (or closed stdout) without saving.
    if not line or time.time() > deadline:
      proc.kill()
      proc.wait(timeout=60)
      pytest.fail(
        f'the writer stopped before its second save (exit code {proc.returncode}); its stderr:\n'
        f'{stderr_path.read_text()[-4000:]}'
      )
  in_flight = sorted(os.listdir(directory))
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  # The save had started and not finished: only its temporary folder existed.
  assert in_flight == ['1', '2.orbax-checkpoint-tmp'], in_flight
  assert sorted(os.listdir(directory)) == ['1', '2.orbax-checkpoint-tmp']
  ckpt = Checkpointer(directory)  # a rerun: step 1 is the latest, and it restores verified
  try:
    assert ckpt.latest_step() == 1
    expected = np.random.default_rng(0).normal(size=(1000,)).astype(np.float32)
    restored = ckpt.restore({'w': np.zeros(1000, np.float32)})
    assert tree_sha256(restored) == tree_sha256({'w': expected})
    ckpt.save(2, {'w': expected + 1})  # the rerun's own save of step 2 replaces the debris
  finally:
    ckpt.close()
  assert sorted(os.listdir(directory)) == ['1', '2']
