"""Fault injection for the reliability tests: the trainer kills itself at a chosen point.

`CNN_JAX_FAULT=<point>@<step>` in the environment makes the training loop SIGKILL its own process
when it reaches `<point>` of train step `<step>`: the way an OOM kill, a preemption without notice
or a power cut ends a run, but at a chosen place, so a test tries each place every time instead
of racing a timer against the loop. The points, in the order a step meets them:

  before_save  the step is done and logged, its checkpoint not started (checkpoint steps only)
  saving       its checkpoint was just handed to orbax and is being written in the background
  saved        its checkpoint is completely written (only with this setting does the loop wait
               for it here; otherwise the save may still be in flight steps later)
  end          everything of the step is done; the next step not started

Unset (always, outside the tests) it costs one comparison per step.
"""

import functools
import os
import signal
import sys
from collections.abc import Callable

from cnn_jax.core.errors import UserError

POINTS = ('before_save', 'saving', 'saved', 'end')


@functools.cache
def _target() -> tuple[str, int] | None:
  spec = os.environ.get('CNN_JAX_FAULT', '')
  if not spec:
    return None
  point, _, step = spec.partition('@')
  if point not in POINTS or not step.isdigit():
    raise UserError(
      f'CNN_JAX_FAULT={spec!r}: expected <point>@<step> with point one of {", ".join(POINTS)} '
      '(a test-only setting: unset it to train normally)'
    )
  return point, int(step)


def reached(
  point: str, step: int, directory: str | None = None, before: Callable[[], None] | None = None
) -> None:
  """Kills this process with SIGKILL if CNN_JAX_FAULT names (point, step).

  Only then, `before()` runs first (e.g. waiting for a save). Before dying it prints one line to
  stderr, with `directory`'s entries when given (what a checkpoint folder held at that moment,
  e.g. the temporary folder of a save in flight).
  """
  if _target() != (point, step):
    return
  if before is not None:
    before()
  seen = f'; {directory} holds {sorted(os.listdir(directory))}' if directory else ''
  print(f'CNN_JAX_FAULT: SIGKILL at {point}@{step}{seen}', file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)
