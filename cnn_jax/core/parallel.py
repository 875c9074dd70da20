"""Run a per-device step data-parallel: `jax.jit` + `jax.shard_map` over a mesh, or `jax.pmap`.

The step is written once, for one device, with collectives over AXIS ('data'): gradients and
BatchNorm statistics are averaged with `lax.pmean`. Both runners take the same function; state is
replicated, the batch is split over devices along its leading axis, and each host passes only its
own share of the batch (multi-host: `jax.distributed.initialize()` first).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.jax_utils
import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from cnn_jax.core.errors import UserError

AXIS = 'data'
PyTree = Any


class ShardMapRunner:
  """jit(shard_map(step)) over a 1-D mesh of every device of every host."""

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    devices = list(devices or jax.devices())
    self.num_devices = len(devices)
    # put_batch splits this host's rows over its own devices, in order, along axis 0.
    self.num_local_devices = sum(d.process_index == jax.process_index() for d in devices)
    self.mesh = jax.make_mesh(
      (len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
    )
    self._replicated = NamedSharding(self.mesh, P())
    self._split = NamedSharding(self.mesh, P(AXIS))

  def compile(self, step: Callable, *, donate_state: bool = True, num_consts: int = 0) -> Callable:
    """step(state, batch, *consts) -> (state', out) per device; `out` must be replicated
    (psum/pmean'd). `consts`: replicated inputs (put with `put_state`) that the step reads and
    never returns, e.g. a distillation teacher's variables; they are not donated."""
    # check_vma=False: the step averages gradients itself with an explicit pmean. (With the
    # default check, gradients of replicated parameters come back already summed over the axis
    # and a further pmean would leave them N times too large.)
    mapped = jax.shard_map(
      step,
      mesh=self.mesh,
      in_specs=(P(), P(AXIS), *[P()] * num_consts),
      out_specs=(P(), P()),
      check_vma=False,
    )
    return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())

  def compile_eval(self, step: Callable) -> Callable:
    """step(state, batch) -> out per device, `out` replicated."""
    mapped = jax.shard_map(
      step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False
    )
    return jax.jit(mapped)

  def put_state(self, state: PyTree) -> PyTree:
    # Every host holds the same full value; the array is replicated over the whole mesh.
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(self._replicated, np.asarray(x)), state
    )

  def get_state(self, state: PyTree) -> PyTree:
    """A replicated copy that checkpointing and fingerprints can read (here: the state itself)."""
    return state

  def put_batch(self, batch: dict[str, np.ndarray]) -> PyTree:
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._split, x), batch)

  def get_output(self, out: PyTree) -> PyTree:
    return jax.device_get(out)


class PmapRunner:
  """pmap(step) over this host's devices (all hosts' devices take part in the collectives)."""

  def __init__(self, devices: Sequence[jax.Device] | None = None):
    # Single host: any subset of devices. Multi-host: every device (pmap's own rule).
    self._devices = list(devices) if devices else None
    self.local_devices = self._devices or jax.local_devices()
    self.num_devices = len(self._devices) if devices else jax.device_count()
    self.num_local_devices = len(self.local_devices)

  def compile(self, step: Callable, *, donate_state: bool = True, num_consts: int = 0) -> Callable:
    del num_consts  # consts are put replicated (`put_state`), like the state: in_axes 0 fits
    donate = (0,) if donate_state else ()
    return jax.pmap(step, axis_name=AXIS, donate_argnums=donate, devices=self._devices)

  def compile_eval(self, step: Callable) -> Callable:
    return jax.pmap(step, axis_name=AXIS, devices=self._devices)

  def put_state(self, state: PyTree) -> PyTree:
    return flax.jax_utils.replicate(state, self.local_devices)

  def get_state(self, state: PyTree) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x[0]), state)

  def put_batch(self, batch: dict[str, np.ndarray]) -> PyTree:
    n = len(self.local_devices)
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)

  def get_output(self, out: PyTree) -> PyTree:
    return jax.tree.map(lambda x: np.asarray(x[0]), jax.device_get(out))


RUNNERS = {'shard_map': ShardMapRunner, 'pmap': PmapRunner}


def create_runner(
  kind: str, devices: Sequence[jax.Device] | None = None
) -> ShardMapRunner | PmapRunner:
  if kind not in RUNNERS:
    raise UserError(f"unknown config.parallel '{kind}'; use one of: {', '.join(RUNNERS)}")
  return RUNNERS[kind](devices)


def check_batch_size(name: str, batch_size: int, num_devices: int) -> None:
  """The global batch must split evenly over hosts and devices."""
  n = num_devices
  if batch_size <= 0 or batch_size % n:
    lo = max(n, batch_size // n * n)
    raise UserError(
      f'{name}={batch_size} does not divide over {n} devices '
      f'({jax.process_count()} host(s)); use a multiple of {n}, e.g. {lo} or {lo + n}'
    )
