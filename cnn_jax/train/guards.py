"""What guards a run while it trains: SIGTERM turned into a checkpoint and a clean exit, and the
per-step metrics checked for NaN and Inf before anything is logged or saved."""

import math
import signal

import jax
import numpy as np

from cnn_jax.core.errors import UserError


class Preemption:
  """Turns SIGTERM into a flag that the loop checks between steps."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    signal.signal(signal.SIGTERM, self._previous)

  def agreed(self) -> bool:
    """True on every host if any host was asked to stop."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


class NonFiniteError(UserError):
  """The loss, gradients or parameters became NaN or Inf (or too many steps were skipped)."""


class NumericsGuard:
  """Checks the per-step metrics on the host before they are logged and before every save.

  limit = config.skip_nonfinite_steps. 0: the first non-finite metric stops the run. N > 0: the
  step already skipped such updates on the device (metrics['skipped']); this counts them, over
  restarts too (the count travels with the checkpoint), and stops the run at the N+1st.
  """

  def __init__(self, limit: int, skipped: int = 0, last_saved: int | None = None):
    self.limit = limit
    self.skipped = skipped
    self.last_saved = last_saved  # the step of the newest checkpoint, for the error message
    self._checked_through = 0

  def check(self, first_step: int, rows: list[dict[str, float]], now: int) -> None:
    """rows[i]: the metrics of step first_step + i; `now`: the step being checked at."""
    first_bad: dict[str, int] = {}
    for i, row in enumerate(rows):
      step = first_step + i
      if step <= self._checked_through:
        continue  # seen at a checkpoint step already
      self._checked_through = step
      if row.get('skipped'):
        self.skipped += 1
        if self.skipped > self.limit:
          raise NonFiniteError(
            f'{self.skipped} steps with a non-finite loss, gradient or update were skipped, the '
            f'last at step {step}: more than config.skip_nonfinite_steps={self.limit}. '
            f'{self._kept()} Lower optimizer.lr or check the input data.'
          )
        continue
      for name, value in row.items():
        if name not in first_bad and not math.isfinite(value):
          first_bad[name] = step
    if first_bad:
      by_step: dict[int, list[str]] = {}
      for name, step in first_bad.items():
        by_step.setdefault(step, []).append(name)
      found = '; '.join(f'{", ".join(names)} from step {s}' for s, names in sorted(by_step.items()))
      raise NonFiniteError(
        f'non-finite {found} (checked at step {now}). {self._kept()} Lower optimizer.lr, '
        'check the input data, or set config.skip_nonfinite_steps=N to skip up to N such steps.'
      )

  def _kept(self) -> str:
    if self.last_saved is None:
      return 'No checkpoint was written: a rerun starts over.'
    return f'Nothing after step {self.last_saved} was saved: a rerun resumes from its checkpoint.'

  def summarize(self, rows: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the steps that were not skipped, and the skip count."""
    kept = [r for r in rows if not r.get('skipped')]
    means = {k: float(np.mean([r[k] for r in kept])) for k in (kept[0] if kept else {})}
    means.pop('skipped', None)
    if self.limit:
      means['skipped_steps'] = self.skipped
    return means
