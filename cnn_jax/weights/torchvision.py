"""torchvision ImageNet weights in our Flax models: convert once (with torch), load without torch.

  python -m cnn_jax.weights.torchvision convert resnet50.pth resnet50.npz   # needs torch
  python -m cnn_jax.weights.torchvision check resnet50 resnet50.npz         # no torch

  from cnn_jax import models
  from cnn_jax.weights import torchvision as tvw
  model = models.create('efficientnet_b0', **tvw.torchvision_kwargs('efficientnet_b0'))
  variables = tvw.load(model, 'efficientnet_b0.npz')      # {'params': ..., 'batch_stats': ...}
  # Another number of classes: keep a fresh head from `init_variables`.
  model = models.create('resnet50', num_classes=37)
  fresh = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  variables = tvw.load(model, 'resnet50.npz', skip=r'^fc\\.', init_variables=fresh)

The .npz holds the state dict's keys and arrays unchanged (floats as float32) and is read with
`allow_pickle=False`; torch is needed only by `convert`, to read the .pth (torchvision is no project
requirement). `load` maps names with one small table of templates per family
(cnn_jax/weights/torchvision_names.py) and layouts with `kernel_from_torch`; `export` is its
inverse (a torchvision-named state dict of numpy arrays, which torch's `load_state_dict` accepts
after `torch.from_numpy`).

Supported: TORCHVISION_MODELS (resnet18-152, vgg11-19 with and without BN, alexnet, densenet121-201,
googlenet, squeezenet1_0/1_1, mobilenet_v2, efficientnet_b0-b7). mobilenet_v1 and seresnet50 have
no torchvision counterpart. experiments/torchvision_parity.py checks the logits against torchvision.

Inputs: torchvision's weights expect RGB in [0, 1] normalised with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), NHWC here. googlenet's pretrained model is
the exception: torchvision builds it with transform_input=True, which maps those inputs to
(x - 0.5) / 0.5 inside the model; ours has no such step, so feed its imported weights
(x - 0.5) / 0.5 of the [0, 1] image directly.
"""

import argparse
import functools
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from cnn_jax import models
from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.weights.torchvision_names import TORCHVISION_MODELS, Family, LeafKey, Mapper

PyTree = Any
StateDict = dict[str, np.ndarray]


def torchvision_kwargs(name: str) -> dict[str, Any]:
  """Model fields that make `models.create(name, **kw)` compute what torchvision's `name` does.

  Only EfficientNet B0-B4 need any: torchvision builds their BatchNorm with torch's defaults,
  epsilon 1e-5 and momentum 0.1 (flax 0.9), where ours follows the paper's code (1e-3, 0.99).
  The epsilon changes the outputs (experiments/torchvision_parity.py measures how much); the
  momentum only matters when fine-tuning. B5-B7 (weights ported from TF) use 1e-3 like ours.
  """
  if name not in TORCHVISION_MODELS:
    raise UserError(
      f"'{name}' has no torchvision counterpart; closest: "
      f'{close_matches(name, TORCHVISION_MODELS) or "none"} (see TORCHVISION_MODELS)'
    )
  if name in {f'efficientnet_b{i}' for i in range(5)}:
    return {'bn_epsilon': 1e-5, 'bn_momentum': 0.9}
  return {}


# ----------------------------------------------------------------------------------------------
# Layouts (the names: torchvision_names.py).


def kernel_from_torch(weight: np.ndarray, flatten_hw: tuple[int, int] | None = None) -> np.ndarray:
  """A torch Conv2d / Linear weight in flax's kernel layout.

  Conv (O, I, kh, kw) -> (kh, kw, I, O); a depthwise conv's (C, 1, kh, kw) becomes (kh, kw, 1, C),
  the layout of `cnn_jax.nn.layers.DepthwiseConv`. Linear (out, in) -> (in, out). `flatten_hw`:
  the linear reads a flattened (C, H, W) map in torch and an (H, W, C) one here, so its input
  rows are reordered too.
  """
  weight = np.asarray(weight)
  if weight.ndim == 4:
    return weight.transpose(2, 3, 1, 0)
  if weight.ndim != 2:
    raise UserError(f'expected a conv (4-d) or linear (2-d) weight, got shape {weight.shape}')
  if flatten_hw is None:
    return weight.T
  (h, w), (out, n) = flatten_hw, weight.shape
  return weight.reshape(out, n // (h * w), h, w).transpose(2, 3, 1, 0).reshape(n, out)


def kernel_to_torch(kernel: np.ndarray, flatten_hw: tuple[int, int] | None = None) -> np.ndarray:
  """The inverse of `kernel_from_torch`."""
  kernel = np.asarray(kernel)
  if kernel.ndim == 4:
    return kernel.transpose(3, 2, 0, 1)
  if kernel.ndim != 2:
    raise UserError(f'expected a conv (4-d) or dense (2-d) kernel, got shape {kernel.shape}')
  if flatten_hw is None:
    return kernel.T
  (h, w), (n, out) = flatten_hw, kernel.shape
  return kernel.reshape(h, w, n // (h * w), out).transpose(3, 2, 0, 1).reshape(out, n)


def _torch_shape(key: LeafKey, shape: tuple[int, ...]) -> tuple[int, ...]:
  if key[-1] != 'kernel':
    return tuple(shape)
  return tuple(shape[::-1]) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])


def _as_module(model: str | nn.Module) -> nn.Module:
  return models.create(model) if isinstance(model, str) else model


def _target(module: nn.Module, input_shape: Sequence[int]) -> dict[LeafKey, jax.ShapeDtypeStruct]:
  """Our leaves and their shapes, from `jax.eval_shape` of `init` (no compute); do not mutate."""
  try:
    return _cached_target(module, tuple(input_shape))
  except TypeError:  # a module with unhashable fields (e.g. lists)
    return _cached_target.__wrapped__(module, tuple(input_shape))


# Tracing init takes 1-2 s for densenet121 on a 2-core CPU; `export` then `load` of one model, or
# a few `load`s while choosing `skip`, trace it once. Modules hash by their fields.
@functools.lru_cache(maxsize=4)
def _cached_target(module: nn.Module, input_shape: tuple[int, ...]) -> dict:
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x), x)
  return traverse_util.flatten_dict(shapes)


def _read(weights: str | os.PathLike | Mapping[str, Any]) -> StateDict:
  if isinstance(weights, Mapping):
    return {k: np.asarray(v) for k, v in weights.items()}
  path = os.fspath(weights)
  if path.endswith(('.pth', '.pt')):
    raise UserError(
      f'{path} is a torch checkpoint; convert it first (needs torch): '
      f'python -m cnn_jax.weights.torchvision convert {path} {os.path.splitext(path)[0]}.npz'
    )
  try:
    with np.load(path, allow_pickle=False) as npz:
      return {k: npz[k] for k in npz.files}
  except FileNotFoundError as e:
    raise UserError(f'no weights file at {path}') from e
  except (ValueError, OSError) as e:
    raise UserError(f'{path} is not an .npz of arrays ({e}); write it with `convert`') from e


def _list(names: Sequence[str], n: int = 5) -> str:
  """'a, b, c' or 'a, b, c, d, e and 7 more'."""
  names = list(names)
  more = f' and {len(names) - n} more' if len(names) > n else ''
  return ', '.join(names[:n]) + more


def _mismatch_error(
  module: nn.Module,
  family: Family,
  extra: list[str],
  missing: list[str],
  mismatched: list[tuple[str, tuple, tuple]],
) -> UserError:
  problems = []
  if mismatched:
    shapes = [f'{k} {a} (model: {b})' for k, a, b in mismatched]
    problems.append(f'{len(mismatched)} checkpoint keys of another shape: {_list(shapes, 3)}')
  if extra:
    problems.append(f'{len(extra)} checkpoint keys the model lacks (extra): {_list(extra)}')
  if missing:
    problems.append(
      f'{len(missing)} model weights the checkpoint lacks (missing): {_list(missing)}'
    )
  head = re.compile(family.head)
  all_names = [k for k, _, _ in mismatched] + extra + missing
  if mismatched and not extra and not missing and all(head.search(k) for k in all_names):
    classes = mismatched[0][1][0]
    fix = (
      f"num_classes differs from the checkpoint's {classes}: create the model with "
      f"num_classes={classes}, or pass skip=r'{family.head}' and init_variables=model.init(...) "
      'to keep a fresh head'
    )
  elif all(k.startswith('aux') for k in all_names):
    fix = (
      "torchvision's googlenet state dict has aux1/aux2 only when built with aux_logits=True: "
      "match ours (aux_logits=True/False) to it, or pass skip=r'^aux' (and init_variables when "
      'ours has aux heads)'
    )
  else:
    fix = (
      f'load the state dict of the torchvision model that matches this {type(module).__name__} '
      '(same depth, variant and width), or leave keys out on purpose with skip=REGEX'
    )
  return UserError(
    f'torchvision weights do not fit {type(module).__name__}: {"; ".join(problems)}. Fix: {fix}'
  )


def load(
  model: str | nn.Module,
  weights: str | os.PathLike | Mapping[str, Any],
  *,
  skip: str | None = None,
  init_variables: PyTree | None = None,
  input_shape: Sequence[int] = (224, 224, 3),
) -> dict[str, Any]:
  """Variables ({'params': ..., 'batch_stats': ...}, numpy) of `model` from torchvision weights.

  Args:
    model: a registered name or a module (its fields must match the checkpoint's model).
    weights: an .npz written by `convert`, or a state dict (name -> array or CPU tensor).
    skip: regex; matching torchvision keys (e.g. r'^fc\\.') or our leaves ('head/kernel') are
      left out and keep their values from `init_variables` (e.g. a head of another num_classes).
    init_variables: `model.init(...)` output; needed only when `skip` leaves out model weights.
    input_shape: (H, W, C) of the traced init; any size the model accepts.

  Returns:
    Nested dicts shaped exactly like `model.init`'s. num_batches_tracked is ignored. Raises one
    UserError naming extra, missing and mismatched keys (first few and their count).
  """
  module = _as_module(model)
  target = _target(module, input_shape)
  mapper = Mapper(module, target)
  state = _read(weights)
  try:
    pattern = re.compile(skip) if skip else None
  except re.error as e:
    raise UserError(f'skip={skip!r} is not a regular expression ({e})') from e

  skipped = set()
  if pattern is not None:
    for key in target:
      name = mapper.torch(key)
      if pattern.search('/'.join(key[1:])) or (name and pattern.search(name)):
        skipped.add(key)
  values, extra, mismatched, wrong_shape = {}, [], [], set()
  for name, value in state.items():
    if name.endswith('num_batches_tracked'):  # BN's step counter; flax's BatchNorm has none
      continue
    key = mapper.ours(name)
    if key in skipped or (pattern is not None and pattern.search(name)):
      continue
    if key is None or key not in target:
      extra.append(name)
      continue
    expected = _torch_shape(key, target[key].shape)
    if value.shape != expected:
      mismatched.append((name, tuple(value.shape), expected))
      wrong_shape.add(key)
      continue
    if key[-1] == 'kernel':
      value = kernel_from_torch(value, mapper.flatten_hw(key))
    values[key] = np.asarray(value, dtype=target[key].dtype)
  unfilled = [k for k in target if k not in values and k not in skipped and k not in wrong_shape]
  unfilled.sort(key=lambda k: k[0] != 'params')  # weights before BN statistics
  missing = [mapper.torch(k) or '/'.join(k) for k in unfilled]
  if extra or missing or mismatched:
    raise _mismatch_error(module, mapper.family, extra, missing, mismatched)

  if skipped:
    if init_variables is None:
      raise UserError(
        f'skip={skip!r} leaves out {len(skipped)} model weights ('
        f'{_list(["/".join(k) for k in sorted(skipped)])}); pass init_variables=model.init(...) '
        'to supply them'
      )
    fresh = traverse_util.flatten_dict(init_variables)
    for key in skipped:
      if key not in fresh or tuple(np.shape(fresh[key])) != tuple(target[key].shape):
        raise UserError(
          f'init_variables lacks {"/".join(key)} of shape {target[key].shape}; pass the output '
          'of model.init for this same model'
        )
      values[key] = np.asarray(fresh[key])
  return traverse_util.unflatten_dict(values)


def export(model: str | nn.Module, variables: PyTree) -> StateDict:
  """A torchvision-named state dict (numpy arrays, torch layouts) of our `variables`.

  The inverse of `load`: `load(model, export(model, v))` gives `v` back. BatchNorm layers get a
  num_batches_tracked of 0, as torch's `load_state_dict(strict=True)` expects.
  """
  module = _as_module(model)
  flat = traverse_util.flatten_dict(variables)
  mapper = Mapper(module, flat)
  state = {}
  for key, value in flat.items():
    name = mapper.torch(key)
    if name is None:
      raise UserError(f'{"/".join(key)} has no torchvision counterpart in {type(module).__name__}')
    value = np.asarray(value)
    state[name] = kernel_to_torch(value, mapper.flatten_hw(key)) if key[-1] == 'kernel' else value
    if key[0] == 'batch_stats' and key[-1] == 'mean':
      state[f'{name.rpartition(".")[0]}.num_batches_tracked'] = np.array(0, np.int64)
  return state


def convert(pth_path: str | os.PathLike, npz_path: str | os.PathLike) -> int:
  """Writes the state dict in a torchvision .pth as an .npz (floats as float32); returns its size.

  Needs torch (read with `weights_only=True`: tensors only, no arbitrary pickled code). numpy adds
  '.npz' to `npz_path` if it lacks it.
  """
  try:
    import torch
  except ImportError as e:
    raise UserError(
      'convert needs PyTorch to read a .pth (pip install torch; it is no project requirement), '
      'or save the state dict as .npz where torch is installed: '
      'np.savez(path, **{k: v.numpy() for k, v in model.state_dict().items()})'
    ) from e
  pth_path = os.fspath(pth_path)
  if not os.path.exists(pth_path):
    raise UserError(f'no torch checkpoint at {pth_path}')
  try:
    state = torch.load(pth_path, weights_only=True, map_location='cpu')
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for bad files
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    raise UserError(f'torch could not read {pth_path} as weights ({first})') from e
  if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
    keys = _list([str(k) for k in state]) if isinstance(state, Mapping) else ''
    raise UserError(
      f'{pth_path} holds a {type(state).__name__} ({keys}), not a state dict of tensors; save '
      "model.state_dict() (or pick the entry that holds it, e.g. checkpoint['state_dict'])"
    )
  arrays = {}
  for name, tensor in state.items():
    tensor = tensor.detach().cpu()
    arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
  np.savez(os.fspath(npz_path), **arrays)
  return len(arrays)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m cnn_jax.weights.torchvision',
    description='Convert torchvision weights to .npz (needs torch) and check them against a model.',
  )
  commands = parser.add_subparsers(dest='command', required=True)
  c = commands.add_parser('convert', help='torchvision .pth state dict -> .npz')
  c.add_argument('pth')
  c.add_argument('npz')
  c = commands.add_parser('check', help='load an .npz into a registered model')
  c.add_argument('model')
  c.add_argument('npz')
  args = parser.parse_args(argv)
  try:
    if args.command == 'convert':
      print(f'wrote {convert(args.pth, args.npz)} arrays to {args.npz}')
    else:
      kwargs = torchvision_kwargs(args.model)
      variables = load(models.create(args.model, **kwargs), args.npz)
      count = sum(np.size(v) for v in jax.tree.leaves(variables.get('params', {})))
      print(f'{args.npz} fits {args.model}: {count:,} parameters; model kwargs: {kwargs}')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
