"""Declared ranges of numeric config fields, checked before anything slow starts.

The part of the code that owns a field declares its range next to the code that reads it
(train/optim.py the optimizer's, data/fields.py the data's, tasks/ each task's, train/ the run's):
a mapping from the field's dotted path to a `Range`. `check(config, ranges)` then gives one line
naming the field, its value and what is valid, e.g.

  config.optimizer.lr=-0.1 is out of range; use a number > 0

Fields a config does not have are skipped (a family config may lack a section); sequences
(decay_epochs, data_classes) are checked element by element.
"""

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any

import ml_collections

from cnn_jax.core import config_fields
from cnn_jax.core.errors import UserError


@dataclasses.dataclass(frozen=True)
class Range:
  """low <= value <= high (bounds None: open-ended; *_open: strict); `integer`: whole numbers
  only; `also`: further values that mean something special, said in `meaning` (-1: 'from the
  dataset')."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  also: tuple[Any, ...] = ()
  meaning: str = ''
  only: tuple[Any, ...] = ()  # when set: these values and no others
  note: str = ''  # said after the range: what the values do

  def contains(self, value: Any) -> bool:
    if self.only:
      return not isinstance(value, bool) and value in self.only
    if value in self.also and not isinstance(value, bool):
      return True
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
      return False
    if self.integer and value != int(value):
      return False
    if self.low is not None and (value <= self.low if self.low_open else value < self.low):
      return False
    if self.high is not None and (value >= self.high if self.high_open else value > self.high):
      return False
    return True

  def describe(self) -> str:
    if self.only:
      text = ' or '.join(repr(v) for v in self.only)
      return text + (f' ({self.note})' if self.note else '')
    kind = 'a whole number' if self.integer else 'a number'
    parts = []
    if self.low is not None:
      parts.append(f'{">" if self.low_open else ">="} {_number(self.low)}')
    if self.high is not None:
      parts.append(f'{"<" if self.high_open else "<="} {_number(self.high)}')
    text = f'{kind} {" and ".join(parts)}' if parts else kind
    if self.also:
      extra = ' or '.join(repr(v) for v in self.also)
      text += f', or {extra}' + (f' ({self.meaning})' if self.meaning else '')
    return text + (f' ({self.note})' if self.note else '')


def _number(x: float) -> str:
  return str(int(x)) if float(x).is_integer() else repr(x)


def check(config: ml_collections.ConfigDict, ranges: Mapping[str, Range]) -> None:
  """A UserError for the first field of `ranges` whose value in `config` is out of its range."""
  for path, allowed in ranges.items():
    try:
      value = config_fields.get_field(config, path)
    except UserError:  # a config without this field or section: nothing to check
      continue
    if value is None:  # a placeholder left unset: the default applies
      continue
    values = value if isinstance(value, tuple | list) else (value,)
    for v in values:
      if not allowed.contains(v):
        shown = f'{value!r}' if isinstance(value, tuple | list) else f'{v!r}'
        raise UserError(f'config.{path}={shown} is out of range; use {allowed.describe()}')


__all__ = ['Range', 'check']
