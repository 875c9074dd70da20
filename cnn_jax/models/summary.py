"""Per-layer table of a model: output shape, activation size, parameters, multiply-adds.

Everything is traced with `jax.eval_shape` (no compute, no memory), so summarizing ResNet-152 at
224px is instant. MACs follow torchvision's / fvcore's "conv + linear" convention: only Conv,
ConvTranspose and Dense layers count; BatchNorm, activations, pooling and additions count 0.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.nn.layers import DepthwiseConv


@dataclasses.dataclass(frozen=True)
class Row:
  """One call of a leaf module (a module that calls no other module)."""

  path: str  # '/'-joined submodule names, e.g. 'stage1_block1/conv1'
  type: str  # class name, e.g. 'Conv'
  output_shape: tuple[int, ...]  # without the batch dimension
  activations: int  # elements of the output, without batch
  params: int  # this module's 'params' (not batch_stats); 0 on repeated calls of a shared module
  macs: int  # multiply-adds for batch 1


@dataclasses.dataclass(frozen=True)
class Summary:
  input_shape: tuple[int, ...]  # without batch
  rows: list[Row]
  total_params: int  # all 'params' of the model (BatchNorm statistics excluded)
  total_macs: int
  total_activations: int  # sum over rows: a rough measure of activation memory per example


def _size(x: Any) -> int:
  return math.prod(x.shape)


def _macs(module: nn.Module, inputs: tuple[Any, ...], out: jax.Array, params: dict) -> int:
  """Multiply-adds of one leaf call at batch 1 (conv + linear convention)."""
  kernel = params.get('kernel')
  if kernel is None:
    return 0
  if isinstance(module, nn.ConvTranspose):
    # Every input position scatters into kh*kw*C_out outputs through (C_in/groups) weights each.
    x = inputs[0]
    return _size(x) // x.shape[0] // x.shape[-1] * _size(kernel)
  if isinstance(module, DepthwiseConv):
    # One kh*kw filter per channel at every output position: output elements * kh*kw.
    return _size(out) // out.shape[0] * math.prod(kernel.shape[:2])
  if isinstance(module, nn.Conv | nn.Dense | nn.DenseGeneral):
    # kernel.size = kh*kw*(C_in/groups)*C_out (conv) or in*out (dense), applied at every output
    # position; positions = output elements / output features.
    out_features = math.prod(_tuple(module.features))
    return _size(out) // out.shape[0] // out_features * _size(kernel)
  if kernel.ndim == 4:
    # Any other conv-like layer with an (kh, kw, C_in, C_out) kernel, e.g. DeformableConv:
    # the kernel is applied once at every output position.
    return _size(out) // out.shape[0] // out.shape[-1] * _size(kernel)
  return 0


def _tuple(x: int | tuple[int, ...]) -> tuple[int, ...]:
  return tuple(x) if isinstance(x, tuple | list) else (x,)


def summarize(
  model: nn.Module, input_shape: tuple[int, ...], *, dtype: Any = jnp.float32, **call_kwargs: Any
) -> Summary:
  """Traces `model` on one input of `input_shape` (no batch) and lists its leaf layers.

  `call_kwargs` go to the model's `__call__` (eval mode by default).
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), dtype)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, **call_kwargs), x)
  all_params = variables.get('params', {})

  rows: list[Row] = []
  seen: set[tuple[str, ...]] = set()
  # One frame per active module call: [module, whether it called another module].
  stack: list[list[Any]] = []

  def interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module = context.module
    if context.method_name == 'setup' or any(frame[0] is module for frame in stack):
      # A module calling its own methods (layers.BatchNorm's __call__ runs flax's through
      # super()): one row, for the outermost call.
      return next_fun(*args, **kwargs)
    if stack and stack[-1][0] is not module:
      stack[-1][1] = True
    stack.append([module, False])
    try:
      out = next_fun(*args, **kwargs)
    finally:
      _, has_children = stack.pop()
    if context.method_name != '__call__':
      return out
    path = tuple(module.scope.path)
    params = all_params
    for name in path:
      params = params.get(name, {})
    if has_children:
      # A module with sub-modules gets a row only for weights of its own (DeformableConv's
      # kernel beside its offset conv); its children have rows of their own.
      params = {k: v for k, v in params.items() if not isinstance(v, dict)}
      if not params:
        return out
    leaves = jax.tree.leaves(out)
    first = leaves[0] if leaves else None
    rows.append(
      Row(
        path='/'.join(path) or type(module).__name__,
        type=type(module).__name__,
        output_shape=tuple(first.shape[1:]) if first is not None else (),
        activations=sum(_size(a) // a.shape[0] for a in leaves if a.ndim),
        params=0 if path in seen else sum(_size(p) for p in jax.tree.leaves(params)),
        macs=_macs(module, args, first, params) if first is not None else 0,
      )
    )
    seen.add(path)
    return out

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, **call_kwargs), variables, x)

  return Summary(
    input_shape=tuple(input_shape),
    rows=rows,
    total_params=sum(_size(p) for p in jax.tree.leaves(all_params)),
    total_macs=sum(r.macs for r in rows),
    total_activations=sum(r.activations for r in rows),
  )


def format_table(summary: Summary) -> str:
  """The summary as an aligned text table with thousands separators and a totals row."""
  header = ('layer', 'type', 'output shape', 'activations', 'params', 'MACs')
  body = [
    (r.path, r.type, str(r.output_shape), f'{r.activations:,}', f'{r.params:,}', f'{r.macs:,}')
    for r in summary.rows
  ]
  total = (
    'total',
    '',
    '',
    f'{summary.total_activations:,}',
    f'{summary.total_params:,}',
    f'{summary.total_macs:,}',
  )
  widths = [max(len(line[i]) for line in (header, *body, total)) for i in range(len(header))]
  right = (False, False, False, True, True, True)  # numbers right-aligned

  def fmt(line: tuple[str, ...]) -> str:
    cells = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right, strict=True))
    return '  '.join(cells).rstrip()

  rule = '-' * len(fmt(tuple('-' * w for w in widths)))
  title = f'input {summary.input_shape} (batch 1)'
  return '\n'.join([title, fmt(header), rule, *map(fmt, body), rule, fmt(total)])
