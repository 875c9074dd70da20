"""Start from trained weights and train only some of them: config.init_from and config.freeze.

  config.init_from.path  another run's workdir (its latest checkpoint), one step folder of it
                         (.../checkpoints/<step>), the variables.npz of --mode=export, or
                         torchvision weights (.pth, or the .npz written by
                         `python -m cnn_jax.weights.torchvision convert`)
  config.init_from.load  regex: the weights to take from there ('' = all of them)
  config.init_from.skip  regex: weights that keep their fresh initialisation, e.g. '^head/' for a
                         classifier with another number of classes
  config.freeze          regex: parameters that training leaves as they are

Names are the '/'-joined module path of a leaf without its collection, the same for a layer's
parameters and its BatchNorm statistics: 'stage1_block1/conv1/kernel', 'stage1_block1/bn1/scale'
and 'stage1_block1/bn1/mean' (`python main.py --config=... --mode=summary` lists the layers).
Regexes are searched (`re.search`), so '^head/' or 'stage[12]_' work.

This is the transfer-learning recipe of the notes: with little data, freeze everything but the
softmax layer (`freeze='^(?!head/)'`) and train the new head; with more data, freeze fewer layers
or none (fine-tuning). Frozen parameters get no update at all (optax.multi_transform with
set_to_zero: no weight decay and no momentum either), and frozen BatchNorm layers run as in
evaluation even in training: they normalise with their loaded running statistics and keep them
(layers.frozen_norms; Keras's rule for non-trainable BatchNorm). A frozen backbone therefore
computes in training exactly the features it computes at test time, and the new head learns on
those. (torch's `requires_grad=False` alone would leave them normalising with each batch's
statistics and updating the running ones.)

init_from applies to a fresh start only: a run that resumes takes its own checkpoint.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from cnn_jax.weights import npz

PyTree = Any
COLLECTIONS = npz.COLLECTIONS
TORCH_SUFFIXES = ('.pth', '.pt', '.npz')


def leaf_name(path: tuple[Any, ...]) -> str:
  """'stage1_block1/conv1/kernel' for a key path (of strings or jax path entries)."""
  keys = [getattr(k, 'key', k) for k in path]
  return '/'.join(str(k) for k in keys)


def compile_regex(value: str, field: str) -> re.Pattern | None:
  """re.compile(value), None for ''; a bad pattern is one clear line naming the config field."""
  if not value:
    return None
  try:
    return re.compile(value)
  except re.error as e:
    raise UserError(f'{field}={value!r} is not a regular expression ({e})') from e


def _examples(names: list[str], n: int = 3) -> str:
  more = f' and {len(names) - n} more' if len(names) > n else ''
  return ', '.join(names[:n]) + more


# ---------------------------------------------------------------------------------------------
# Freezing


def frozen_labels(params: PyTree, pattern: re.Pattern) -> PyTree:
  """'frozen' / 'trained' for each parameter leaf (optax.multi_transform's labels)."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: 'frozen' if pattern.search(leaf_name(path)) else 'trained', params
  )


def freeze(tx: optax.GradientTransformation, freeze_regex: str) -> optax.GradientTransformation:
  """`tx` for the parameters that do not match `freeze_regex`; no update for those that do."""
  pattern = compile_regex(freeze_regex, 'config.freeze')
  if pattern is None:
    return tx
  return optax.multi_transform(
    {'trained': tx, 'frozen': optax.set_to_zero()}, lambda params: frozen_labels(params, pattern)
  )


def check_freeze(params: PyTree, freeze_regex: str) -> None:
  """A freeze pattern that matches no parameter, or all of them, is a mistake: say so."""
  pattern = compile_regex(freeze_regex, 'config.freeze')
  if pattern is None:
    return
  names = [leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  frozen = [n for n in names if pattern.search(n)]
  if not frozen:
    raise UserError(
      f"config.freeze={freeze_regex!r} matches none of the model's {len(names)} parameters "
      f'(names look like {_examples(names)}); fix the pattern or leave config.freeze empty'
    )
  if len(frozen) == len(names):
    raise UserError(
      f'config.freeze={freeze_regex!r} matches every parameter of the model: nothing would '
      "train; leave some out, e.g. the classifier with '^(?!head/)'"
    )


def keep_frozen_stats(new: PyTree, old: PyTree, freeze_regex: str) -> PyTree:
  """BatchNorm statistics: the old values for the layers that config.freeze matches (frozen
  layers.BatchNorm layers leave them as they are already; this also holds any other norm)."""
  pattern = compile_regex(freeze_regex, 'config.freeze')
  if pattern is None:
    return new
  return jax.tree_util.tree_map_with_path(
    lambda path, n, o: o if pattern.search(leaf_name(path)) else n, new, old
  )


# ---------------------------------------------------------------------------------------------
# Loading


def _checkpoint_location(path: str) -> tuple[str, int | None]:
  """(checkpoints directory, step or None for the latest) of a workdir or a step folder."""
  path = os.path.abspath(os.path.expanduser(path))
  name = os.path.basename(path.rstrip('/'))
  if name.isdigit() and os.path.basename(os.path.dirname(path)) == 'checkpoints':
    return os.path.dirname(path), int(name)
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return os.path.join(path, 'checkpoints'), None
  if os.path.basename(path) == 'checkpoints' and os.path.isdir(path):
    return path, None
  raise UserError(
    f'config.init_from.path={path!r} is not a workdir with checkpoints, a step folder '
    f'(.../checkpoints/<step>) or torchvision weights ({", ".join(TORCH_SUFFIXES)})'
  )


def check_source(init_from: ml_collections.ConfigDict) -> None:
  """Before anything slow: the path exists and holds weights; the regexes compile."""
  compile_regex(init_from.load, 'config.init_from.load')
  compile_regex(init_from.skip, 'config.init_from.skip')
  path = init_from.path
  if path.endswith(TORCH_SUFFIXES):
    if not os.path.isfile(path):
      raise UserError(f'config.init_from.path={path!r}: no such file')
    return
  if not os.path.exists(path):
    raise UserError(f'config.init_from.path={path!r}: no such workdir or checkpoint')
  directory, step = _checkpoint_location(path)
  steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
  if not steps or (step is not None and step not in steps):
    raise UserError(
      f'config.init_from.path={path!r} holds no finished checkpoint; train that run first'
    )


def _is_export_npz(path: str) -> bool:
  """True for the variables.npz of --mode=export (names 'params/...', 'batch_stats/...'), False
  for torchvision weights converted to .npz (torch's names, 'layer1.0.conv1.weight')."""
  with np.load(path, allow_pickle=False) as f:
    return any(k.startswith(tuple(f'{c}/' for c in COLLECTIONS)) for k in f.files)


def _source_variables(
  path: str, model: Any, fresh: Mapping[str, PyTree], input_shape: tuple[int, ...], skip: str
) -> dict[str, PyTree]:
  """{'params', 'batch_stats'} read from a checkpoint, an export's variables.npz or torchvision
  weights."""
  if path.endswith('.npz') and _is_export_npz(path):
    return npz.load_npz(path)
  if path.endswith(TORCH_SUFFIXES):
    from cnn_jax.weights import torchvision as torchvision_weights

    make_backbone = getattr(model, 'make_backbone', None)
    if make_backbone is not None:
      # A segmentation net on a classifier (DeepLab on a ResNet or MobileNet): the classifier's
      # torchvision weights, less its head (fc / classifier), under 'backbone/'.
      backbone = torchvision_weights.load(
        make_backbone(), path, skip=r'^(fc|classifier)\.', input_shape=input_shape
      )
      return {c: {'backbone': tree} for c, tree in backbone.items()}
    return torchvision_weights.load(
      model, path, skip=skip or None, init_variables=dict(fresh), input_shape=input_shape
    )
  directory, step = _checkpoint_location(path)
  ckpt = Checkpointer(directory)
  try:
    saved = ckpt.restore(None, step)
  finally:
    ckpt.close()
  return {c: saved.get(c, {}) for c in COLLECTIONS}


def load_variables(
  fresh: Mapping[str, PyTree],
  source: Mapping[str, PyTree],
  *,
  load: str = '',
  skip: str = '',
  origin: str = 'the source',
) -> tuple[dict[str, PyTree], dict[str, list[str]]]:
  """`fresh` ({'params', 'batch_stats'}) with the leaves that `load` matches and `skip` does not
  replaced by `source`'s leaves of the same name; returns (variables, report).

  A leaf that should load but is missing from the source or has another shape is an error that
  names it (the fix: add it to config.init_from.skip). report: 'loaded', 'kept' (fresh) and
  'unused' (source leaves nothing took) names.
  """
  load_re = compile_regex(load, 'config.init_from.load')
  skip_re = compile_regex(skip, 'config.init_from.skip')
  out, report = {}, {'loaded': [], 'kept': [], 'unused': []}
  missing, wrong = [], []
  for collection in COLLECTIONS:
    target = traverse_util.flatten_dict(dict(fresh.get(collection, {})), sep='/')
    have = traverse_util.flatten_dict(dict(source.get(collection, {})), sep='/')
    taken = set()
    for name, value in target.items():
      wanted = (load_re is None or load_re.search(name)) and not (
        skip_re is not None and skip_re.search(name)
      )
      if not wanted:
        report['kept'].append(name)
        continue
      if name not in have:
        missing.append(name)
        continue
      if tuple(np.shape(have[name])) != tuple(np.shape(value)):
        wrong.append(f'{name} {tuple(np.shape(have[name]))} -> {tuple(np.shape(value))}')
        continue
      target[name] = np.asarray(have[name], dtype=np.asarray(value).dtype)
      taken.add(name)
      report['loaded'].append(name)
    report['unused'] += [n for n in have if n not in taken]
    out[collection] = traverse_util.unflatten_dict(target, sep='/') if target else {}
  if missing or wrong:
    problems = []
    if wrong:
      problems.append(f'{len(wrong)} of another shape ({_examples(wrong)})')
    if missing:
      problems.append(f'{len(missing)} missing there ({_examples(missing)})')
    raise UserError(
      f'cannot initialise from {origin}: of the weights to load, {"; ".join(problems)}; leave '
      "them out with config.init_from.skip (e.g. '^head/' for a new classifier) or narrow "
      'config.init_from.load'
    )
  if not report['loaded']:
    raise UserError(
      f'config.init_from.load={load!r} / skip={skip!r} take no weight from {origin}; '
      'fix the patterns or leave config.init_from.path empty'
    )
  return out, report


def initialise(
  config: ml_collections.ConfigDict,
  model: Any,
  fresh: Mapping[str, PyTree],
  input_shape: tuple[int, ...],
) -> dict[str, PyTree]:
  """{'params', 'batch_stats'}: `fresh` with the weights config.init_from asks for."""
  init_from = config.init_from
  source = _source_variables(init_from.path, model, fresh, input_shape, init_from.skip)
  variables, report = load_variables(
    fresh, source, load=init_from.load, skip=init_from.skip, origin=init_from.path
  )
  logging.info(
    'init_from %s: loaded %d weights, kept %d freshly initialised (%s), %d of the source unused.',
    init_from.path,
    len(report['loaded']),
    len(report['kept']),
    _examples(report['kept']) or 'none',
    len(report['unused']),
  )
  return variables
