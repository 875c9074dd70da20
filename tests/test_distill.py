"""Knowledge distillation: the loss, the step with a frozen teacher, the recipe end to end."""

import copy
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import data as data_lib
from cnn_jax import tasks, train
from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from configs import distill


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_kd_loss_equals_its_formula():
  rng = np.random.default_rng(0)
  z_s, z_t = rng.normal(size=(2, 6, 5)) * 3
  y = rng.integers(0, 5, 6)
  alpha, t = 0.7, 3.0
  p_t, p_s = _softmax(z_t / t), _softmax(z_s / t)
  kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), -1)
  ce = -np.log(_softmax(z_s)[np.arange(6), y])
  loss, got_kl = tasks.distillation_loss(
    jnp.asarray(z_s), jnp.asarray(z_t), jnp.asarray(y), num_classes=5, alpha=alpha, temperature=t
  )
  np.testing.assert_allclose(got_kl, kl, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loss, alpha * t * t * kl + (1 - alpha) * ce, rtol=1e-5)
  # alpha = 0: plain cross-entropy, whatever the teacher says.
  loss0, _ = tasks.distillation_loss(
    jnp.asarray(z_s), jnp.asarray(z_t), jnp.asarray(y), num_classes=5, alpha=0.0, temperature=t
  )
  np.testing.assert_allclose(loss0, ce, rtol=1e-5)
  # A student equal to its teacher has zero KL.
  _, same = tasks.distillation_loss(
    jnp.asarray(z_t), jnp.asarray(z_t), jnp.asarray(y), num_classes=5, alpha=1.0, temperature=t
  )
  np.testing.assert_allclose(same, 0.0, atol=1e-6)


def _config(data_dir, **distill_overrides):
  config = distill.get_config()
  config.data_dir = config.teacher.data_dir = data_dir
  # resnet_tiny for both at 16x16: compile time is what these tests spend.
  config.model = copy.deepcopy(config.teacher.model)
  config.model.name = config.teacher.model.name = 'resnet_tiny'
  for c in (config, config.teacher):
    c.image_size = 16
    c.batch_size, c.eval_batch_size = 16, 360
    c.num_train_steps, c.log_every_steps = 2, 1
    c.eval_every_steps, c.checkpoint_every_steps = -1, 2
    c.optimizer.warmup_steps = 0
  for k, v in distill_overrides.items():
    config.distill[k] = v
  return config


def test_step_on_four_devices_leaves_the_teacher_bit_identical(tmp_path, data_dir):
  exp = train.build(_config(data_dir), str(tmp_path / 'student'))
  assert exp.runner.num_devices == 4 and exp.task.teacher is not None
  student = train.initial_state(exp)
  teacher = train.initial_state(exp.task.teacher)  # the task owns its teacher
  teacher_vars = {'params': teacher.params, 'batch_stats': teacher.batch_stats}
  before = copy.deepcopy(jax.device_get(teacher_vars))
  step = exp.runner.compile(
    functools.partial(train.train_step, model=exp.model, tx=exp.tx, task=exp.task),
    num_consts=1,
  )
  batch = next(
    data_lib.train_iterator(
      exp.data, seed=0, global_batch=16, start_step=0, num_steps=1, image_size=16, channels=3
    )
  )
  placed = exp.runner.put_state(teacher_vars)
  new, metrics = step(exp.runner.put_state(student), exp.runner.put_batch(batch), placed)
  new, metrics, after = jax.device_get((new, metrics, placed))
  assert {'loss', 'accuracy', 'teacher_accuracy', 'agreement', 'kl'} <= set(metrics)
  assert all(np.isfinite(float(v)) for v in metrics.values()) and float(metrics['kl']) > 0
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), before, after)
  assert all(jax.tree.leaves(same))  # the teacher's parameters and statistics, bit for bit
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), student.params, new.params)
  assert all(jax.tree.leaves(moved))


@pytest.mark.slow  # end to end, about a minute on 2 cores: CI runs it in its second step
def test_recipe_trains_the_teacher_first_and_keeps_it_out_of_the_student(tmp_path, data_dir):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(_config(data_dir), workdir)
  teacher_dir = os.path.join(workdir, 'teacher')
  with open(os.path.join(teacher_dir, 'summary.json')) as f:
    teacher = json.load(f)
  assert result['teacher_test_accuracy'] == teacher['test_accuracy']
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {'teacher_accuracy', 'agreement', 'kl'} <= set(rows[0])
  # The student's checkpoint holds the student's state only: restored into the student's
  # template it is the trained student, bit for bit.
  exp = train.build(_config(data_dir), workdir)
  state = Checkpointer(os.path.join(workdir, 'checkpoints')).restore(train.initial_state(exp))
  assert train.fingerprint(state.params, state.batch_stats) == result['params_sha256']
  assert teacher['params_sha256'] != result['params_sha256']


def test_bad_teacher_settings_are_clear_errors(tmp_path, data_dir):
  config = _config(data_dir, train_teacher=False)
  with pytest.raises(UserError, match='no teacher checkpoint'):
    train.build(config, str(tmp_path / 'a'))
  config = _config(data_dir)
  config.teacher.image_size = 32
  with pytest.raises(UserError, match="the teacher sees the student's images"):
    train.build(config, str(tmp_path / 'b'))
  config = _config(data_dir, alpha=1.5)
  with pytest.raises(UserError, match='alpha in'):
    train.build(config, str(tmp_path / 'c'))
