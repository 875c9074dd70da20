"""Noisy Student end to end: iterations, pseudo-labels, the student's loss, kill and resume."""

import json
import os
import shutil
import signal
import time

import helpers
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import tasks
from cnn_jax.core.errors import UserError
from configs import noisy_student

# resnet_tiny at 16x16, 1 iteration (teacher + one student), 6 steps each, 2 labelled digits per
# class and the rest as the pool.
TINY = [
  '--config=configs/noisy_student.py',
  '--config.model.name=resnet_tiny',
  '--config.image_size=16',
  '--config.batch_size=16',
  '--config.noisy_student.unlabeled_batch_size=32',
  '--config.noisy_student.iterations=1',
  '--config.noisy_student.labeled_fraction=0.015',
  '--config.eval_batch_size=360',
  '--config.num_train_steps=6',
  '--config.optimizer.warmup_steps=0',
  '--config.log_every_steps=1',
  '--config.checkpoint_every_steps=2',
  '--config.eval_every_steps=-1',
]


def test_self_training_loss_weights_the_two_parts():
  # unlabel_ratio 2: two pseudo-labelled rows per labelled one in the reference's batches.
  task = tasks.SelfTraining(num_classes=3, unlabel_ratio=2.0)
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
  target = jnp.array([[1.0, 0, 0], [0, 1.0, 0], [0.2, 0.3, 0.5], [0, 0, 1.0]])
  pseudo = jnp.array([0.0, 0.0, 1.0, 1.0])
  z = logits - jnp.log(jnp.sum(jnp.exp(logits), -1, keepdims=True))
  ce = -jnp.sum(target * z, -1)
  expected = (ce[0] + ce[1]) / 2 + 2.0 * (ce[2] + ce[3]) / 2
  batch = {'target': target, 'pseudo': pseudo}
  np.testing.assert_allclose(task.loss(logits, batch), expected, rtol=1e-6)


def test_each_image_counts_alike_as_in_the_reference():
  # google-research/noisystudent, main.py: data_loss = (lab_loss * lab_bsz + unl_loss * unl_bsz)
  # / lab_bsz with both losses means: with 1 labelled and 3 pseudo rows, the loss is the sum of
  # the four rows' cross-entropies over the labelled count.
  from configs import noisy_student

  config = noisy_student.get_config('cifar10')
  assert config.noisy_student.unlabeled_batch_size / config.batch_size == 7
  task = tasks.SelfTraining(num_classes=2, unlabel_ratio=3.0)
  logits = jnp.array([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5], [3.0, 1.0]])
  target = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.3, 0.7]])
  batch = {'target': target, 'pseudo': jnp.array([0.0, 1.0, 1.0, 1.0])}
  z = logits - jnp.log(jnp.sum(jnp.exp(logits), -1, keepdims=True))
  ce = -jnp.sum(target * z, -1)
  np.testing.assert_allclose(task.loss(logits, batch), jnp.sum(ce) / 1, rtol=1e-6)


def test_label_smoothing_reaches_hard_pseudo_labels_not_soft_ones():
  logits = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
  target = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  batch = {'target': target, 'pseudo': jnp.array([0.0, 1.0])}
  z = logits - jnp.log(jnp.sum(jnp.exp(logits), -1, keepdims=True))
  smooth = target * 0.9 + 0.1 / 3
  ce = lambda t: -jnp.sum(t * z, -1)  # noqa: E731
  soft = tasks.SelfTraining(num_classes=3, label_smoothing=0.1)
  hard = tasks.SelfTraining(num_classes=3, label_smoothing=0.1, hard_pseudo_labels=True)
  np.testing.assert_allclose(soft.loss(logits, batch), ce(smooth)[0] + ce(target)[1], rtol=1e-6)
  np.testing.assert_allclose(hard.loss(logits, batch), ce(smooth)[0] + ce(smooth)[1], rtol=1e-6)


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
  """An uninterrupted run on 4 simulated devices."""
  workdir = str(tmp_path_factory.mktemp('ns'))
  code, _, err = helpers.run([*TINY, f'--workdir={workdir}'], data_dir)
  assert code == 0, err[-3000:]
  return workdir, helpers.summary(workdir)


@pytest.mark.slow  # end to end, about a minute on 2 cores: CI runs it in its second step
def test_iterations_write_pseudo_labels_and_a_summary(reference):
  workdir, summary = reference
  assert [it['role'] for it in summary['iterations']] == ['teacher', 'student']
  with np.load(os.path.join(workdir, 'iter1', 'pseudo_labels.npz')) as f:
    indices, targets = f['indices'], f['targets']
    stats = json.loads(str(f['stats']))
  assert len(indices) == len(targets) and targets.shape[1] == 10
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-5)  # soft labels
  counts = stats['counts_after']
  assert len(set(c for c in counts if c)) == 1  # balanced by duplication
  assert 0 <= stats['pseudo_label_accuracy'] <= 1
  rows = helpers.metric_rows(os.path.join(workdir, 'iter1'))
  assert {'accuracy', 'pseudo_agreement'} <= set(rows[0])
  assert summary['iterations'][1]['pseudo_labels'] == stats


@pytest.mark.slow  # end to end, about a minute on 2 cores: CI runs it in its second step
def test_kill_mid_iteration_then_rerun_matches(reference, tmp_path, data_dir):
  _, expected = reference
  workdir = str(tmp_path / 'run')
  # The finished teacher iteration is reused, as a rerun would (it is skipped): this run starts
  # with the pseudo-labelling and the student.
  shutil.copytree(os.path.join(reference[0], 'iter0'), os.path.join(workdir, 'iter0'))
  args = [*TINY, f'--workdir={workdir}']
  proc = helpers.start(args, data_dir)
  saved = os.path.join(workdir, 'iter1', 'checkpoints', '2')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not os.path.isdir(saved):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)  # in the student's iteration, after its step-2 checkpoint
  proc.communicate(timeout=60)
  assert not os.path.exists(os.path.join(workdir, 'iter1', 'summary.json'))
  code, _, err = helpers.run(args, data_dir)
  assert code == 0, err[-3000:]
  summary = helpers.summary(workdir)
  assert summary['params_sha256'] == expected['params_sha256']
  assert summary['iterations'][0]['params_sha256'] == expected['iterations'][0]['params_sha256']


def test_bad_settings_are_clear_errors():
  config = noisy_student.get_config()
  config.noisy_student.labeled_fraction = 1.5
  from cnn_jax.recipes import noisy_student as ns

  with pytest.raises(UserError, match='fraction'):
    ns.run(config, '/tmp/unused')
  config = noisy_student.get_config()
  config.noisy_student.iterations = 0
  with pytest.raises(UserError, match='iterations=0'):
    ns.run(config, '/tmp/unused')
