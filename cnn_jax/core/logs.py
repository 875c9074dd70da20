"""Metrics to TensorBoard event files and to `metrics.jsonl`, from the primary host only."""

import json
import math
import os
from typing import Any

from absl import logging


def _summary_writer(path: str):
  """flax's TensorBoard writer; it imports TensorFlow, which comes from quiet_tf first (no
  start-up log on stderr). None where TensorFlow is not installed (the GPU machines of
  experiments/accelerator runs): metrics.jsonl alone then, said once in the log."""
  try:
    from cnn_jax.core.quiet_tf import tf
  except ImportError:
    logging.log_first_n(
      logging.WARNING, 'TensorFlow is not installed: no TensorBoard events, metrics.jsonl only.', 1
    )
    return None

  del tf  # imported quietly first: flax's writer imports TensorFlow
  from flax.metrics import tensorboard

  return tensorboard.SummaryWriter(path)


def write_atomically(path: str, text: str) -> None:
  """A reader (a rerun after kill -9) sees the old file or the new one, never half of one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _step(line: str) -> float:
  """The step of a metrics.jsonl line; infinity (dropped) for a line a kill cut short."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf


class MetricWriter:
  """One row per (step, split): {'step': ..., 'split': 'train'|'validation'|'test', name: value,
  ...}; TensorBoard's runs tensorboard/train, tensorboard/validation and tensorboard/test."""

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if not enabled:
      return
    # Rows written after the checkpoint we resume from belong to a run that never finished:
    # drop them so the file reads as one uninterrupted run.
    if os.path.exists(self.path):
      with open(self.path) as f:
        rows = [line for line in f if _step(line) <= resume_step]
      write_atomically(self.path, ''.join(rows))  # a kill now loses no row
    self._tb = {
      split: _summary_writer(os.path.join(workdir, 'tensorboard', split))
      for split in ('train', 'validation', 'test')
    }

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')
    writer = self._tb[split]
    if writer is None:
      return
    for name, value in metrics.items():
      writer.scalar(name, float(value), int(step))
    writer.flush()

  def close(self) -> None:
    if self.enabled:
      for w in self._tb.values():
        if w is not None:
          w.close()
