"""What a run learns: the Task contract (base.py) and one module per task, chosen by config.task.

  classification   one label per image (every classifier config)
  distillation     a student learning from a teacher's logits (configs/distill.py)
  self_training    Noisy Student's student on labelled + pseudo-labelled rows (cnn_jax/recipes/)
  segmentation     one label per pixel (configs/unet.py, fcn.py, deeplab.py)
  detection        YOLO-style boxes, VOC mAP (configs/yolo.py)
  triplet          metric learning, one-shot evaluation (configs/triplet.py)

A new task: a module with a `Task` subclass (every hook it does not override does nothing), one
line in TASKS; nothing in the trainer changes.
"""

from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.tasks.base import ROWS, Batch, Runs, Task, TaskSetup, valid_rows
from cnn_jax.tasks.classification import Classification, cross_entropy
from cnn_jax.tasks.detection import Detection
from cnn_jax.tasks.distillation import Distillation, distillation_loss, teacher_workdir
from cnn_jax.tasks.segmentation import CRFOptions, Segmentation
from cnn_jax.tasks.self_training import SelfTraining
from cnn_jax.tasks.triplet import Triplet

TASKS: dict[str, type[Task]] = {
  'classification': Classification,
  'distillation': Distillation,
  'self_training': SelfTraining,
  'segmentation': Segmentation,
  'detection': Detection,
  'triplet': Triplet,
}


def get(name: str) -> type[Task]:
  """The Task class registered as `name` (config.task); a UserError names the valid ones."""
  if name not in TASKS:
    hint = close_matches(name, TASKS)
    hint = f'did you mean: {hint}' if hint else f'the tasks: {", ".join(TASKS)}'
    raise UserError(f'config.task={name!r} is not a task; {hint}')
  return TASKS[name]


def create(setup: TaskSetup) -> Task:
  """The task config.task names, built from the run's config (checked by the task itself)."""
  return get(setup.config.get('task', 'classification')).from_config(setup)


__all__ = [
  'ROWS',
  'TASKS',
  'Batch',
  'CRFOptions',
  'Classification',
  'Detection',
  'Distillation',
  'Runs',
  'Segmentation',
  'SelfTraining',
  'Task',
  'TaskSetup',
  'Triplet',
  'create',
  'cross_entropy',
  'distillation_loss',
  'get',
  'teacher_workdir',
  'valid_rows',
]
