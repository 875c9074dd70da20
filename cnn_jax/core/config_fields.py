"""Dotted paths into an ml_collections ConfigDict: 'optimizer.lr' names config.optimizer.lr.

  get_field(config, 'optimizer.lr')          -> 0.1
  set_field(config, 'optimizer.lr', 0.05)    # in place
  field_names(config)                        -> ['batch_size', ..., 'optimizer.lr', ...]

A path that names nothing in the config is a UserError naming the path and the closest field
names: `set_field` never adds a field (a misspelt one would otherwise leave the real one at its
default). It also refuses to replace a whole section (set its fields one by one), turns a list
into a tuple where the field holds a tuple (JSON has no tuples), and reports a value of the
wrong type (ml_collections' type check) as a UserError.
"""

from typing import Any

import ml_collections

from cnn_jax.core.errors import UserError, close_matches


def field_names(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every leaf field of `config` as a dotted name ('optimizer.lr', 'model.name', ...)."""
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(field_names(value, f'{prefix}{key}.'))
    else:
      names.append(f'{prefix}{key}')
  return names


def _section_names(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  names = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      names.append(f'{prefix}{key}')
      names.extend(_section_names(value, f'{prefix}{key}.'))
  return names


def _missing(path: str, candidates: list[str]) -> UserError:
  return UserError(
    f"the config has no field '{path}'; closest fields: {close_matches(path, candidates) or 'none'}"
  )


def get_field(config: ml_collections.ConfigDict, path: str) -> Any:
  """The value at dotted `path`: a leaf's value, or a section (a ConfigDict)."""
  node = config
  for part in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise _missing(path, field_names(config) + _section_names(config))
    node = node[part]
  return node


def set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets the existing leaf field at dotted `path` of `config` to `value`, in place."""
  *parents, leaf = path.split('.')
  node = config
  for part in parents:
    node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise _missing(path, field_names(config))
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise UserError(f"'{path}' is a section of the config, not a field; set its fields one by one")
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise UserError(
      f"'{path}' holds {type(current).__name__} values like {current!r}, not {value!r} "
      f'({type(value).__name__})'
    ) from e
