"""The one exception type that reaches users as a single readable line."""

import difflib
from collections.abc import Iterable


class UserError(Exception):
  """A problem with the user's input (config, flags, data, workdir), not a bug.

  `main.py` prints these as one line, without a traceback, and exits non-zero.
  The message names the problem and how to fix it.
  """


def close_matches(name: str, candidates: Iterable[str], n: int = 5) -> str:
  """', '.join of the candidates closest to `name` ('' if none is close)."""
  return ', '.join(difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5))
