"""The cold compile of a train step: the trainer's step (or the bare `jax.jit` step it is compared
with, `--cold_compile_step=bare`) built and compiled in a fresh Python process (nothing cached;
persistent cache off), trace + lower and XLA's compile timed apart."""

import argparse
import json
import os
import subprocess
import sys
import time

import jax

from cnn_jax import models
from experiments import common
from experiments.benchmark.jax_steps import JaxSteps
from experiments.benchmark.spec import bench_spec, make_config, synthetic_batch
from experiments.benchmark.tables import fmt_s


def cold_compile_child(args: argparse.Namespace) -> None:
  """In a fresh process: build the trainer's (or the bare) step of one model and time its first
  compile."""
  jax.config.update('jax_enable_compilation_cache', False)
  t0 = time.perf_counter()
  bench = bench_spec(args.cold_compile_child)
  batch, size = args.batch_sizes[0], args.image_size
  segmentation = models.is_segmentation(bench.registry)
  dataset = 'digit_scenes' if segmentation else 'digits'
  config = make_config(bench, batch, size, args.dtype == 'bfloat16', dataset)
  steps = JaxSteps(
    config,
    bench.num_classes,
    synthetic_batch(batch, size, bench.num_classes, segmentation),
    only=args.cold_compile_step,
  )
  result = dict(
    step=args.cold_compile_step,
    init_s=steps.timings['init']['seconds'],
    lower_s=steps.timings[args.cold_compile_step]['lower_s'],
    xla_compile_s=steps.timings[args.cold_compile_step]['compile_s'],
    build_s=time.perf_counter() - t0,
  )
  print('COLD_COMPILE ' + json.dumps(result), flush=True)


def bench_cold_compile(
  name: str, batch: int, image_size: int, dtype: str, machine: dict, step: str = 'trainer'
) -> dict:
  """Runs cold_compile_child in a fresh Python process (so nothing is cached) and reads it."""
  load_before = os.getloadavg()
  cmd = [
    sys.executable,
    '-m',
    'experiments.benchmark',
    f'--cold_compile_child={name}',
    f'--batch_sizes={batch}',
    f'--image_size={image_size}',
    f'--dtype={dtype}',
    f'--cold_compile_step={step}',
  ]
  t0 = time.perf_counter()
  # On a GPU this process and PyTorch hold memory already; compiling needs little.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=common.ROOT)
  wall = time.perf_counter() - t0
  row = dict(
    kind='cold_compile',
    step=step,
    model=name,
    batch=batch,
    image_size=image_size,
    dtype=dtype,
    device=machine['device'],
    process_wall_s=wall,
  )
  lines = [s for s in proc.stdout.splitlines() if s.startswith('COLD_COMPILE ')]
  if proc.returncode or not lines:
    tail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
    row['status'] = f'failed: {tail[:200]}'
  else:
    row.update(json.loads(lines[-1].split(' ', 1)[1]))
    row['train_step_compile_s'] = row['lower_s'] + row['xla_compile_s']
  row['load_average_before'], row['load_average_after'] = load_before, os.getloadavg()
  row['machine'] = machine
  seconds = fmt_s(row.get('train_step_compile_s'))
  print(f'cold compile {name} ({step}): {seconds} s {row.get("status", "")}')
  return row
