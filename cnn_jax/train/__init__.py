"""The trainer, one for every task: state and per-device steps (state.py), the experiment builder
(experiment.py), resume policy (resume.py), guards against NaNs and preemption (guards.py), the
loop (loop.py), optimizers and schedules (optim.py).

What is learned comes from the task (cnn_jax/tasks/); runs made of runs (Noisy Student, style
transfer, sweeps) sit above this package in cnn_jax/recipes/.
"""

from cnn_jax.core.errors import UserError
from cnn_jax.train.experiment import (
  RANGES,
  Experiment,
  build,
  check_input_size,
  check_ranges,
  check_total_stride,
  create_model,
  input_shape,
  load_data,
  model_summary,
  total_stride,
)
from cnn_jax.train.guards import NonFiniteError, NumericsGuard, Preemption
from cnn_jax.train.loop import evaluate, restore_and_evaluate, train_and_evaluate, train_batches
from cnn_jax.train.resume import (
  CONFIG_FILE,
  MODEL_FIELDS,
  RESUMABLE_FIELDS,
  config_changes,
  finished_summary,
  initial_state,
  restore_checkpoint,
  restore_variables,
  starting_state,
)
from cnn_jax.train.state import Metrics, TrainState, eval_step, fingerprint, train_step

__all__ = [
  'CONFIG_FILE',
  'MODEL_FIELDS',
  'RANGES',
  'RESUMABLE_FIELDS',
  'Experiment',
  'Metrics',
  'NonFiniteError',
  'NumericsGuard',
  'Preemption',
  'TrainState',
  'UserError',
  'build',
  'check_input_size',
  'check_total_stride',
  'check_ranges',
  'config_changes',
  'create_model',
  'eval_step',
  'evaluate',
  'finished_summary',
  'fingerprint',
  'initial_state',
  'input_shape',
  'load_data',
  'model_summary',
  'restore_and_evaluate',
  'restore_checkpoint',
  'restore_variables',
  'starting_state',
  'total_stride',
  'train_and_evaluate',
  'train_batches',
  'train_step',
]
