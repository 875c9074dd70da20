"""Side by side: our trainer's train step and inference against PyTorch, on the same machine.

The command line of `python -m experiments.benchmark` (its flags: experiments/benchmark/
__init__.py): the rows in turn, the tables, benchmark.json and benchmark.md.
"""

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from cnn_jax import train
from cnn_jax.core.errors import UserError
from experiments import common
from experiments.benchmark.cold_compile import bench_cold_compile, cold_compile_child
from experiments.benchmark.layer_bench import LAYERS, bench_layer
from experiments.benchmark.model_bench import bench_model
from experiments.benchmark.spec import (
  MODELS,
  Bench,
  bench_spec,
  import_torch,
  machine_info,
  make_config,
  one_line,
)
from experiments.benchmark.tables import fmt_load, tables


def _ints(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(',') if v.strip()]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise UserError(
      f'--batch_sizes={text!r}; give positive integers separated by commas, e.g. 32,64'
    )
  return values


def _names(text: str, allowed: list[str], flag: str) -> list[str]:
  if text.strip().lower() == 'none':
    return []
  names = [v.strip() for v in text.split(',') if v.strip()]
  if allowed is not None:
    bad = [n for n in names if n not in allowed]
    if bad:
      raise UserError(f'{flag}: unknown {", ".join(bad)}; use any of {", ".join(allowed)} or none')
  return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog='python -m experiments.benchmark', description=__doc__.split('\n')[0]
  )
  parser.add_argument('--models', default=','.join(MODELS), help="comma-separated, or 'none'")
  parser.add_argument(
    '--batch_sizes', default=None, help='comma-separated (default 32, GPU 256; --quick 4)'
  )
  parser.add_argument('--image_size', type=int, default=0, help="0: each model's own size")
  parser.add_argument(
    '--steps', type=int, default=None, help='timed rounds (default 10; --quick 3)'
  )
  parser.add_argument(
    '--dtype',
    default='auto',
    choices=('auto', 'float32', 'bfloat16'),
    help='auto: bfloat16 on GPU, float32 on CPU',
  )
  parser.add_argument('--layers', default=','.join(LAYERS), help="comma-separated, or 'none'")
  parser.add_argument('--layer_batch', type=int, default=None, help='(default 32; --quick 2)')
  parser.add_argument(
    '--cold_compile',
    default=None,
    help='model whose train step is compiled in a fresh process (default resnet50; --quick '
    "none), or 'none'",
  )
  parser.add_argument(
    '--pipeline_batches',
    type=int,
    default=None,
    help="timed input-pipeline batches (default 20; --quick 3); 0: don't time the pipeline",
  )
  parser.add_argument(
    '--data_dir', default='', help="tfds folder ('': $TFDS_DATA_DIR or ~/tensorflow_datasets)"
  )
  parser.add_argument('--no_torch', action='store_true', help='JAX rows only')
  parser.add_argument('--no_torch_compile', action='store_true')
  parser.add_argument('--torch_threads', type=int, default=0, help="0: torch's default")
  parser.add_argument('--out_dir', default=common.RESULTS)
  parser.add_argument(
    '--quick',
    action='store_true',
    help='smoke test: 3 steps, batch 4, no torch.compile; no cold compile unless named',
  )
  parser.add_argument('--cold_compile_child', default='', help=argparse.SUPPRESS)
  parser.add_argument(
    '--cold_compile_step', default='trainer', choices=['trainer', 'bare'], help=argparse.SUPPRESS
  )
  args = parser.parse_args(argv)

  quick = args.quick
  gpu = jax.default_backend() == 'gpu'
  args.batch_sizes = _ints(args.batch_sizes or ('4' if quick else '256' if gpu else '32'))
  args.steps = args.steps or (3 if quick else 10)
  args.layer_batch = args.layer_batch or (2 if quick else 32)
  if args.pipeline_batches is None:
    args.pipeline_batches = 3 if quick else 20
  args.cold_compile = args.cold_compile or ('none' if quick else 'resnet50')
  if quick:
    args.no_torch_compile = True
  if min(args.steps, args.layer_batch) < 1 or min(args.pipeline_batches, args.image_size) < 0:
    raise UserError(
      '--steps and --layer_batch must be >= 1, --pipeline_batches >= 0 and --image_size >= 0 '
      f'(got {args.steps}, {args.layer_batch}, {args.pipeline_batches}, {args.image_size})'
    )
  if args.dtype == 'auto':
    args.dtype = 'bfloat16' if jax.default_backend() == 'gpu' else 'float32'
  if args.cold_compile_child:
    return args
  args.models = _names(args.models, None, '--models')
  for name in args.models:
    bench_spec(name)
  args.layers = _names(args.layers, list(LAYERS), '--layers')
  cold = _names(args.cold_compile, None, '--cold_compile')
  args.cold_compile = cold[0] if cold else ''
  if args.cold_compile:
    bench_spec(args.cold_compile)
  # Every model takes its input size: checked by tracing (no compute), before anything slow.
  for name in {*args.models, *([args.cold_compile] if args.cold_compile else [])}:
    bench = bench_spec(name)
    config = make_config(bench, 1, image_size_of(bench, args), False, 'digits')
    train.check_input_size(train.create_model(config, bench.num_classes), config)
  return args


def image_size_of(bench: Bench, args: argparse.Namespace) -> int:
  if args.image_size:
    return args.image_size
  return bench.gpu_size if jax.default_backend() == 'gpu' else bench.cpu_size


def _guarded(row: dict, machine: dict, fn: Callable, *args) -> dict:
  """fn(*args), or `row` with status 'failed: ...' (out of memory, say): the run goes on."""
  load_before = os.getloadavg()
  try:
    return fn(*args)
  except (UserError, KeyboardInterrupt):
    raise
  except Exception as e:
    status = f'failed: {one_line(e)}'
    print(f'  {status}', flush=True)
    return dict(
      row,
      device=machine['device'],
      status=status,
      load_average_before=load_before,
      load_average_after=os.getloadavg(),
      machine=machine,
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.cold_compile_child:
    cold_compile_child(args)
    return {}
  torch, torch_device, torch_why = import_torch(args.no_torch, args.torch_threads)
  machine = machine_info(torch, torch_device)
  print(
    f'{machine["cpu"]} ({machine["cpu_count"]} CPUs), JAX {machine["jax"]} on '
    f'{machine["device"]}, torch {machine["torch"] or "n/a"} on {machine["torch_device"] or "n/a"}'
    f' ({machine["torch_threads"] or "n/a"} threads), {args.dtype}',
    flush=True,
  )
  load_before, t0 = os.getloadavg(), time.perf_counter()
  busy = ''
  if load_before[0] > 0.5 * machine['cpu_count']:
    # PyTorch's OpenMP workers wait for CPU time at every parallel region; XLA's pool does not.
    busy = (
      f'warning: load average {load_before[0]:.1f} on {machine["cpu_count"]} CPUs before the run: '
      'another job shares the machine, so the ratios are not reliable'
    )
    print(busy, flush=True)
  bf16 = args.dtype == 'bfloat16'
  rows = []
  for name in args.layers:
    rows.append(
      _guarded(
        dict(
          kind='layer', layer=name, shape=[args.layer_batch, *LAYERS[name].shape], dtype=args.dtype
        ),
        machine,
        bench_layer,
        name,
        args.layer_batch,
        args.steps,
        bf16,
        torch,
        torch_device,
        torch_why,
        machine,
      )
    )
  for name in args.models:
    size = image_size_of(bench_spec(name), args)
    for batch in args.batch_sizes:
      rows.append(
        _guarded(
          dict(kind='model', model=name, batch=batch, image_size=size, dtype=args.dtype),
          machine,
          bench_model,
          name,
          batch,
          size,
          args,
          torch,
          torch_device,
          torch_why,
          machine,
        )
      )
      if torch is not None and torch_device == 'cuda':
        torch.cuda.empty_cache()
  if args.cold_compile:
    size = image_size_of(bench_spec(args.cold_compile), args)
    rows.append(
      bench_cold_compile(args.cold_compile, args.batch_sizes[0], size, args.dtype, machine)
    )
  result = dict(
    machine=dict(
      machine,
      load_average_before=load_before,
      load_average_after=os.getloadavg(),
      wall_s=time.perf_counter() - t0,
      busy=busy,
    ),
    command='python -m experiments.benchmark '
    + ' '.join(argv if argv is not None else sys.argv[1:]),
    args=vars(args),
    rows=rows,
  )
  text = tables(rows)
  m = result['machine']
  header = (
    f'{m["cpu"]}, {m["cpu_count"]} CPUs, {m["platform"]}; JAX {m["jax"]} on {m["device"]}; '
    f'torch {m["torch"] or "n/a"} on {m["torch_device"] or "n/a"} '
    f'({m["torch_threads"] or "n/a"} threads); load average {fmt_load(m["load_average_before"])} '
    f'before, {fmt_load(m["load_average_after"])} after; {m["wall_s"]:.0f} s.'
    + (f'\n\n{busy}' if busy else '')
  )
  print()
  print(text)
  print()
  print(header)
  json_path = os.path.join(args.out_dir, 'benchmark.json')
  common.write_json(json_path, result)
  common.write_text(
    os.path.join(args.out_dir, 'benchmark.md'), f'`{result["command"]}`\n\n{header}\n\n{text}\n'
  )
  print(f'wrote {json_path} and benchmark.md')
  return result
