"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a student learns from a teacher's softened
logits and the hard labels; the teacher is a run of its own that this task owns."""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging
from jax import lax

from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.core.parallel import AXIS
from cnn_jax.tasks.base import Batch, PyTree, Runs, TaskSetup
from cnn_jax.tasks.classification import Classification, cross_entropy


def teacher_workdir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Where a distillation teacher is trained / read: config.distill.teacher_workdir or
  <workdir>/teacher."""
  return config.distill.teacher_workdir or os.path.join(workdir, 'teacher')


def _input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  return (config.image_size, config.image_size, config.image_channels)


def distillation_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  labels: jax.Array,
  *,
  num_classes: int,
  alpha: float,
  temperature: float,
  label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Per-example knowledge-distillation loss (Hinton, Vinyals & Dean 2015) and its KL term.

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

  The T^2 keeps the soft term's gradients at the scale of the hard term's as T changes (the
  gradient of the tempered KL shrinks as 1 / T^2). alpha = 0 is plain cross-entropy.

  Args:
    student_logits, teacher_logits: (B, K); the teacher's are treated as constants.
    labels: (B,) int class indices for the hard term.
    num_classes, label_smoothing: of the hard term (`cross_entropy`).
    alpha: weight of the soft term, in [0, 1].
    temperature: T > 0.

  Returns:
    (loss, kl), both (B,) float32; kl is the untempered-scale KL(p_t^T || p_s^T) (no T^2).
  """
  t = temperature
  z_s = student_logits.astype(jnp.float32)
  z_t = lax.stop_gradient(teacher_logits.astype(jnp.float32))
  kl = optax.losses.kl_divergence_with_log_targets(
    jax.nn.log_softmax(z_s / t), jax.nn.log_softmax(z_t / t)
  )
  ce = cross_entropy(z_s, labels, num_classes, label_smoothing)
  return alpha * t * t * kl + (1.0 - alpha) * ce, kl


@dataclasses.dataclass(frozen=True)
class Distillation(Classification):
  """Classification learned from a teacher's logits and the labels: `distillation_loss`.

  The task owns its teacher: `from_config` builds the teacher's run (config.teacher, a whole
  config, in `teacher_workdir`) and checks it against the student's; `step_inputs` trains it
  first when config.distill.train_teacher asks and there is no finished teacher, then hands the
  step its variables; `with_inputs` runs it in eval mode (running BatchNorm statistics, no
  dropout) on the step's augmented images, outside the differentiated function, and adds its
  logits to the batch as 'teacher_logits'. The teacher is never updated and never saved with the
  student's checkpoints. Evaluation is the student's alone.
  """

  alpha: float = 0.9
  temperature: float = 4.0
  teacher: Any = dataclasses.field(default=None, compare=False)  # the teacher's Experiment
  train_teacher: bool = False

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Distillation':
    config, workdir = setup.config, setup.workdir
    distill = config.get('distill')
    if distill is None:
      raise UserError(
        "config.task='distillation' needs config.distill and config.teacher; see configs/distill.py"
      )
    if not 0 <= distill.alpha <= 1 or not distill.temperature > 0:
      raise UserError(
        f'config.distill.alpha={distill.alpha}, temperature={distill.temperature}; expected '
        'alpha in [0, 1] and temperature > 0'
      )
    if 'teacher' not in config:
      raise UserError('config.distill is set but config.teacher is missing; see configs/distill.py')
    tconfig = config.teacher
    if tconfig.dataset != config.dataset:
      raise UserError(
        f"the teacher's dataset '{tconfig.dataset}' differs from the student's "
        f"'{config.dataset}'; set --config.teacher.dataset={config.dataset}"
      )
    if _input_shape(tconfig) != _input_shape(config):
      raise UserError(
        f"the teacher sees the student's images, but its input is {_input_shape(tconfig)} and "
        f"the student's {_input_shape(config)}; set config.teacher.image_size / image_channels "
        'to match'
      )
    if 'distill' in tconfig or tconfig.get('task') == 'distillation':
      raise UserError('config.teacher has a distill section of its own; chains are not supported')
    twork = teacher_workdir(config, workdir)
    # A teacher_workdir given in the config is a workdir of its own, like --workdir: the teacher
    # is trained there (train_teacher) or read from there, and may lie outside the student's
    # workdir (one teacher shared by several students, experiments/recipes_table.py). It must not
    # be the student's own folder: their checkpoints would overwrite each other.
    if os.path.realpath(twork) == os.path.realpath(workdir):
      raise UserError(
        f"config.distill.teacher_workdir={twork} is the student's --workdir; give the teacher a "
        "folder of its own (or '' for <workdir>/teacher)"
      )
    if not distill.train_teacher and Checkpointer.find_latest(twork) is None:
      raise UserError(
        f'no teacher checkpoint in {twork}/checkpoints; train it there first, point '
        '--config.distill.teacher_workdir at one, or set --config.distill.train_teacher=True'
      )
    texp = setup.build_run(tconfig, twork)
    if texp.num_classes != setup.num_classes:
      raise UserError(
        f'the teacher has {texp.num_classes} classes and the student {setup.num_classes}; '
        'set config.teacher.model.num_classes=-1'
      )
    return cls(
      setup.num_classes,
      config.label_smoothing,
      alpha=distill.alpha,
      temperature=distill.temperature,
      teacher=texp,
      train_teacher=bool(distill.train_teacher),
    )

  def _summary_path(self) -> str:
    return os.path.join(self.teacher.workdir, 'summary.json')

  def step_inputs(self, runs: Runs) -> tuple[PyTree, ...] | None:
    """(teacher variables,), after training the teacher first if asked and not yet done."""
    if self.train_teacher and not os.path.exists(self._summary_path()):
      logging.info('Training the teacher first, in %s.', self.teacher.workdir)
      if runs.train(self.teacher.config, self.teacher.workdir) is None:
        return None  # stopped by SIGTERM while training the teacher: rerun to resume
    return (runs.variables(self.teacher),)

  def with_inputs(self, batch: Batch, *inputs: PyTree) -> Batch:
    (teacher_variables,) = inputs
    teacher_logits = self.teacher.model.apply(teacher_variables, batch['image'], train=False)
    return {**batch, 'teacher_logits': jnp.asarray(teacher_logits, jnp.float32)}

  def summary(self) -> dict[str, Any]:
    if self.teacher is None or not os.path.exists(self._summary_path()):
      return {}
    with open(self._summary_path()) as f:
      return {'teacher_test_accuracy': json.load(f).get('test_accuracy')}

  def loss(self, logits: jax.Array, batch: Batch) -> jax.Array:
    loss, _ = distillation_loss(
      logits,
      batch['teacher_logits'],
      batch['label'],
      num_classes=self.num_classes,
      alpha=self.alpha,
      temperature=self.temperature,
      label_smoothing=self.label_smoothing,
    )
    return loss.mean()

  def train_metrics(self, logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    teacher, labels = batch['teacher_logits'], batch['label']
    _, kl = distillation_loss(
      logits,
      teacher,
      labels,
      num_classes=self.num_classes,
      alpha=self.alpha,
      temperature=self.temperature,
    )
    student_class, teacher_class = jnp.argmax(logits, -1), jnp.argmax(teacher, -1)
    count = lax.psum(labels.shape[0], AXIS)
    return {
      **super().train_metrics(logits, batch),  # 'accuracy': the student's
      'teacher_accuracy': lax.psum(jnp.sum(teacher_class == labels), AXIS) / count,
      'agreement': lax.psum(jnp.sum(student_class == teacher_class), AXIS) / count,
      'kl': lax.psum(jnp.sum(kl), AXIS) / count,
    }
