"""Orbax checkpoints of the train state: atomic, the last few kept, resumable."""

import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from cnn_jax.errors import UserError

PyTree = Any


class Checkpointer:
  """Saves and restores the train state under `directory/<step>/`."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=True,
        # A save cut short (kill -9, preemption) leaves a temporary folder; drop it on start.
        cleanup_tmp_directories=True,
      ),
    )

  @staticmethod
  def find_latest(workdir: str) -> int | None:
    """The latest step saved under workdir/checkpoints, without creating anything."""
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
      return None
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
    return max(steps, default=None)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree) -> None:
    """Starts saving in the background; the next save or `wait()` finishes it."""
    self._manager.save(
      step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)), force=True
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore(self, template: PyTree, step: int | None = None) -> PyTree:
    """The state at `step` (default: latest) as host arrays, shaped like `template`."""
    step = self.latest_step() if step is None else step
    target = jax.tree.map(np.asarray, flax.serialization.to_state_dict(template))
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(
        f'the checkpoint at {self.directory}/{step} does not fit this model and optimizer '
        f'({_first_line(e)}); use another --workdir, or the config that wrote it'
      ) from e
    return flax.serialization.from_state_dict(template, restored)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:300] if text else type(e).__name__
