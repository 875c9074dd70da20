"""The claims' tools: a Claim record, parameter counts and output shapes from `jax.eval_shape`,
weights that make gradients show what a pixel depends on, and that gradient support."""

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import MaxPool

KEY = jax.random.key(0)
Shape = tuple[int, ...]


@dataclasses.dataclass
class Claim:
  """One claim of the notes: what they say, what the code measures, and the detail behind it."""

  number: int
  title: str
  notes: str  # the notes' statement and number, with the seed file it comes from
  measured: str  # one line: what the code gave
  ok: bool
  details: list[str]  # markdown lines (tables) shown under the claim


def _init(module: nn.Module, input_shape: Shape) -> tuple[Any, Any]:
  """(output, variables) as shapes, for one example of `input_shape` (no batch); no compute."""
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  return jax.eval_shape(lambda x: module.init_with_output(KEY, x), x)


def count_params(module: nn.Module, input_shape: Shape) -> int:
  """Trainable parameters ('params' collection) of `module` built for `input_shape`."""
  _, variables = _init(module, input_shape)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get('params', {})))


def output_shape(module: nn.Module, input_shape: Shape) -> Shape:
  """The module's output shape for one example of `input_shape` (batch dimension dropped)."""
  out, _ = _init(module, input_shape)
  return tuple(out.shape[1:])


def positive_variables(module: nn.Module, x: jax.Array, **call_kwargs: Any) -> Any:
  """Variables of `module`'s structure, all non-negative: every kernel entry 1 / fan_in (an
  average over the window and channels), BatchNorm the identity (scale and variance 1, bias and
  mean 0), other biases 0.

  With non-negative weights and a positive input no ReLU is ever off and no two paths cancel,
  so the gradient of an output pixel is nonzero exactly on the inputs that reach it. (No random
  init: flax's, jitted, took 32 s to compile for ResNet-20 on the 2-core CPU shared with another
  job; these constants need no compile.)
  """
  shapes = jax.eval_shape(partial(module.init, **call_kwargs), KEY, x)

  def fill(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    name = getattr(path[-1], 'key', '')
    if name == 'kernel':
      return jnp.full(leaf.shape, 1 / math.prod(leaf.shape[:-1]), leaf.dtype)
    return jnp.full(leaf.shape, 1 if name in ('scale', 'var') else 0, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def random_params(module: nn.Module, x: jax.Array, seed: int = 0) -> Any:
  """'params' of `module`'s structure drawn with numpy: N(0, 1 / fan_in) kernels, N(0, 0.1) biases.

  (numpy, not a jitted `module.init`: claim 9 took 13 s with flax's init and 3 s with this on the
  2-core CPU shared with another job, most of it compiling; the claims need some weights, not
  flax's.)
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(module.init, KEY, x)['params']

  def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    fan_in = math.prod(leaf.shape[:-1]) if getattr(path[-1], 'key', '') == 'kernel' else 100
    return jnp.asarray(rng.normal(0, fan_in**-0.5, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def max_as_average(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
  """Runs each MaxPool as an average pool of the same window: max pooling's gradient reaches only
  the window's maximum, average pooling's every input the window reads (the same window)."""
  module = context.module
  if isinstance(module, MaxPool) and context.method_name == '__call__':
    return nn.avg_pool(args[0], module.window, module.strides or module.window, module.padding)
  return next_fun(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Support:
  """Where the gradient of one output pixel is nonzero, as inclusive input row/column ranges."""

  rows: tuple[int, int]
  cols: tuple[int, int]
  filled: bool  # every pixel of the bounding box is reached

  @property
  def size(self) -> tuple[int, int]:
    return (self.rows[1] - self.rows[0] + 1, self.cols[1] - self.cols[0] + 1)


def gradient_supports(
  fn: Callable[[jax.Array], dict[str, jax.Array]], x: jax.Array, pixels: dict[str, tuple[int, int]]
) -> dict[str, Support]:
  """For each name: the input pixels on which d(sum over channels of fn(x)[name][0, i, j]) / dx
  is nonzero, (i, j) = pixels[name]. One jitted function computes every gradient."""

  def grads(x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    for name, (i, j) in pixels.items():
      out[name] = jax.grad(lambda x, n=name, i=i, j=j: jnp.sum(fn(x)[n][0, i, j]))(x)
    return out

  supports = {}
  for name, grad in jax.jit(grads)(x).items():
    mask = np.asarray(jnp.abs(grad[0]).sum(-1) > 0)
    if not mask.any():
      raise UserError(f'output pixel {pixels[name]} of {name!r} depends on no input pixel')
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    supports[name] = Support(
      (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1])), bool(box.all())
    )
  return supports


def gradient_support(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array, pixel: tuple[int, int]
) -> Support:
  """The input pixels on which d(sum over channels of fn(x)[0, i, j]) / dx is nonzero."""
  return gradient_supports(lambda x: {'out': fn(x)}, x, {'out': pixel})['out']


def fmt_shape(shape: Shape) -> str:
  return '(' + ', '.join(str(d) for d in shape) + ')'


def verdict(ok: bool) -> str:
  return 'OK' if ok else 'differs'
