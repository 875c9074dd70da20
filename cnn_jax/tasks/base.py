"""The task contract: what a run learns, as hooks the one shared trainer calls (cnn_jax/train/).

The trainer runs the same per-device step for every task. A task says how the model's outputs and
a batch become a loss (a mean over this device's share), which train metrics to log (made global
with collectives over AXIS) and which sums to add up over the eval set (psum'd per batch, summed
over batches on the host, turned into metrics by `finalize`). Sums, not per-batch means: an eval
metric is then exact whatever the batch size, padding or device count.

Every hook the trainer may call is declared on `Task` with a default that does nothing, so the
trainer never asks what a task is (no hasattr, no isinstance) and a new task edits neither the
step, the loop nor the data pipeline: it subclasses `Task`, overrides what it needs, and is
registered by name in cnn_jax/tasks/__init__.py (chosen by `config.task`).

Hooks beyond the loss and metrics:
- `prepare(batch)` (host, NumPy, before the batch is put on the devices): detection encodes its
  grid targets from the boxes here.
- `eval_rows(outputs, batch)`: per-example arrays that the eval step gathers over devices and the
  host concatenates over the eval set; `finalize` finds them under totals[ROWS] (with the
  padding's 'mask'), for metrics that need every example at once (mAP after NMS, one-shot
  accuracy of embeddings).
- `step_inputs(runs)` / `with_inputs(batch, *inputs)`: arrays the step takes after the batch,
  replicated and never saved (distillation's teacher variables), and what the step makes of them
  on the device before the loss (the teacher's logits). The step is `train_step(state, batch,
  *inputs)` for every task.
- `train_batches(data, ...)`: the training batches (self-training mixes in pseudo-labelled rows).
- `pictures` / `write_pictures(...)`: PNGs written into the workdir at the end of a run.
- `summary()`: extra summary.json fields (the teacher's test accuracy).
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np

from cnn_jax.core.ranges import Range

Batch = dict[str, jax.Array]
PyTree = Any
ROWS = 'rows'  # the key of the per-example eval arrays in finalize's totals


class Runs(Protocol):
  """What the trainer lends a task whose run depends on other runs (distillation's teacher)."""

  def train(self, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """Trains that run to the end (resuming); None when stopped by SIGTERM."""

  def variables(self, experiment: Any) -> dict[str, PyTree]:
    """{'params', 'batch_stats'} of an Experiment's latest checkpoint (host arrays)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskSetup:
  """What a task's `from_config` may read: the run's config and what the trainer built from it."""

  config: ml_collections.ConfigDict
  data: Any  # cnn_jax.data.Dataset: the training data as the run sees it
  num_classes: int
  model: Any  # the run's flax module
  workdir: str
  # build_run(config, workdir): the checked Experiment of another run (nothing trained, nothing
  # written), built on the same devices as this one.
  build_run: Callable[[ml_collections.ConfigDict, str], Any]
  # The unlabelled part of the train split (config.noisy_student.labeled_fraction), else None.
  pool: Any = None


class Task:
  """Base class of every task: each hook has a default that does nothing.

  Class attributes a task sets:
    data_kind: the DatasetSpec.task it trains on ('classification' | 'segmentation' |
      'detection').
    model_kind: what its model must return (models.output_kind: 'classification' per-image
      logits | 'segmentation' | 'detection' | 'embedding').
    primary_metric: the summary.json and log key a user reads first ('accuracy', 'mean_iou').
    held_out_classes: whether config.held_out_classes means something to it.
    pictures: the PNG files `write_pictures` writes into the workdir.
    config_ranges: the ranges of its numeric config fields.
  """

  data_kind: ClassVar[str] = 'classification'
  model_kind: ClassVar[str] = 'classification'
  primary_metric: ClassVar[str] = 'accuracy'
  held_out_classes: ClassVar[bool] = False
  pictures: ClassVar[tuple[str, ...]] = ()
  # The ranges of the config fields the task reads (cnn_jax/core/ranges.py), checked before
  # anything is built.
  config_ranges: ClassVar[dict[str, Range]] = {'label_smoothing': Range(0, 1, high_open=True)}

  @classmethod
  def from_config(cls, setup: TaskSetup) -> 'Task':
    """The task of a run; checks its own config fields (one-line UserErrors)."""
    raise NotImplementedError(f'{cls.__name__}.from_config')

  # Device side, per device, inside the jitted step.
  def loss(self, outputs: jax.Array, batch: Batch) -> jax.Array:
    raise NotImplementedError(f'{type(self).__name__}.loss')

  def train_metrics(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {}

  def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    return {}

  def eval_rows(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array] | None:
    return None

  def with_inputs(self, batch: Batch, *inputs: PyTree) -> Batch:
    return batch

  # Host side.
  def finalize(self, totals: dict[str, Any]) -> dict[str, float]:
    return {}

  def prepare(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch

  def step_inputs(self, runs: Runs) -> tuple[PyTree, ...] | None:
    return ()

  def train_batches(
    self, data: Any, *, num_local_devices: int, **options: Any
  ) -> Iterator[dict[str, np.ndarray]]:
    from cnn_jax import data as data_lib

    del num_local_devices
    return data_lib.train_iterator(data, **options)

  def write_pictures(
    self,
    workdir: str,
    apply: Callable[[jax.Array], jax.Array],
    batch: dict[str, np.ndarray],
    spec: Any,
  ) -> None:
    """Writes `pictures` into workdir from the first eval images (`batch`) and `apply`, the
    jitted model in eval mode with the final weights."""

  def summary(self) -> dict[str, Any]:
    return {}


def valid_rows(totals: dict[str, Any]) -> dict[str, np.ndarray]:
  """The eval rows of the real examples (padding, mask 0, left out)."""
  rows = totals[ROWS]
  keep = np.asarray(rows['mask']) > 0
  return {k: np.asarray(v)[keep] for k, v in rows.items()}
