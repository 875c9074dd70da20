"""The timing loops of the benchmarks (experiments.benchmark, experiments.depthwise_benchmark)."""

import time
from collections.abc import Callable
from typing import Any

import jax


def time_calls(fn: Callable[[], Any], reps: int, warmup: int) -> list[float]:
  """Wall-clock seconds of `reps` calls of `fn` (which blocks until done), after `warmup` calls."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def compile_jit(fn: Callable, *args: Any) -> tuple[Callable, float]:
  """`jax.jit(fn)` compiled ahead of time for `args`, and the seconds that took."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  return compiled, time.perf_counter() - t0


def interleaved(fns: dict[Any, Callable[[], Any]], reps: int) -> dict[Any, list[float]]:
  """Seconds per call of each fn, one call of each per round, after one warm-up call each.

  Round r starts at the r-th fn (a rotation), so that no fn always follows the same one: what a
  call leaves behind (threads still spinning, memory being returned) falls on each in turn."""
  for fn in fns.values():
    fn()
  names = list(fns)
  times: dict[Any, list[float]] = {name: [] for name in fns}
  for r in range(reps):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0 = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t0)
  return times
