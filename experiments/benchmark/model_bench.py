"""One model row: ours, bare, JAX inference, PyTorch eager and compiled, timed in interleaved
rounds, beside the input pipeline (experiments.benchmark.pipeline)."""

import argparse
import os
from typing import Any

from cnn_jax import models
from experiments.benchmark import pipeline
from experiments.benchmark.jax_steps import JaxSteps
from experiments.benchmark.spec import (
  bench_spec,
  ips,
  make_config,
  measurement,
  one_line,
  ratio,
  synthetic_batch,
)
from experiments.benchmark.tables import fmt_ips, fmt_ms, fmt_params
from experiments.benchmark.torch_steps import TorchSteps, torch_twin
from experiments.timing import interleaved


def bench_model(
  name: str,
  batch: int,
  image_size: int,
  args: argparse.Namespace,
  torch: Any,
  torch_device: str,
  torch_why: str,
  machine: dict,
) -> dict[str, Any]:
  """One row: ours, bare, JAX inference, PyTorch eager / compiled, the pipeline, for a model."""
  bench = bench_spec(name)
  bf16 = args.dtype == 'bfloat16'
  segmentation = models.is_segmentation(bench.registry)
  dataset = 'digit_scenes' if segmentation else 'digits'
  load_before = os.getloadavg()
  row: dict[str, Any] = dict(
    kind='model',
    model=name,
    batch=batch,
    image_size=image_size,
    dtype=args.dtype,
    device=machine['device'],
    torch_device=machine['torch_device'],
  )
  print(f'{name}, batch {batch}, {image_size} px, {args.dtype}:', flush=True)
  if not args.pipeline_batches:
    row['pipeline'] = 'n/a: --pipeline_batches 0'
  else:
    try:
      row['pipeline'] = pipeline.bench_pipeline(
        dataset, args.data_dir, batch, image_size, args.pipeline_batches
      )
    except Exception as e:  # no TensorFlow here, say: the step columns still count
      row['pipeline'] = f'failed: {one_line(e)}'
  print(f'  pipeline {fmt_ips(row["pipeline"])} images/s', flush=True)

  config = make_config(bench, batch, image_size, bf16, dataset)
  host_batch = synthetic_batch(batch, image_size, bench.num_classes, segmentation)
  jax_steps = JaxSteps(config, bench.num_classes, host_batch)
  compile_s = {
    k: v['lower_s'] + v['compile_s'] for k, v in jax_steps.timings.items() if k != 'init'
  }
  print('  compiled ' + ', '.join(f'{k} {v:.1f} s' for k, v in compile_s.items()), flush=True)
  # The first step of each from the same state and batch: the losses must agree.
  row['loss_ours'], row['loss_bare'] = jax_steps.trainer_step(), jax_steps.bare_step()
  row['params_jax'] = jax_steps.params
  fns = jax_steps.callables()

  torch_steps = None
  for key in ('torch_train', 'torch_infer', 'torch_compile_train', 'torch_compile_infer'):
    row[key] = torch_why
  if torch is not None:
    try:
      module = torch_twin(bench, jax_steps.bare_model)
    except ImportError as e:
      module, why = None, f'n/a: {e.name} not importable'
    else:
      why = 'n/a: no PyTorch twin'
    if module is None:
      for key in ('torch_train', 'torch_infer', 'torch_compile_train', 'torch_compile_infer'):
        row[key] = why
    else:
      torch.manual_seed(0)
      try:
        torch_steps = TorchSteps(
          torch, module, host_batch, torch_device, bf16, not args.no_torch_compile
        )
        row['params_torch'] = torch_steps.params
        fns.update(torch_steps.callables())
        row.update(torch_steps.status)
      except Exception as e:  # out of memory, say: the JAX columns still count
        torch_steps = None
        for key in ('torch_train', 'torch_infer', 'torch_compile_train', 'torch_compile_infer'):
          row[key] = f'failed: {one_line(e)}'
        print(f'  torch: {row["torch_train"]}', flush=True)
  row.setdefault('params_torch', None)

  times = interleaved(fns, args.steps)
  for key, t in times.items():
    extra = {}
    if key in ('ours', 'bare', 'jax_infer'):
      extra['compile_s'] = compile_s[{'ours': 'trainer', 'bare': 'bare', 'jax_infer': 'infer'}[key]]
    elif key.startswith('torch_compile'):
      extra['compile_s'] = torch_steps.compile_s[key]
    row[key] = measurement(t, batch, **extra)
  row['trainer_lower_s'] = jax_steps.timings['trainer']['lower_s']
  row['trainer_xla_compile_s'] = jax_steps.timings['trainer']['compile_s']

  ours = ips(row['ours'])
  row['overhead_pct'] = 100 * (row['ours']['median_ms'] / row['bare']['median_ms'] - 1)
  row['train_vs_torch'] = ratio(ours, ips(row['torch_train']))
  row['train_vs_torch_compile'] = ratio(ours, ips(row['torch_compile_train']))
  row['infer_vs_torch'] = ratio(ips(row['jax_infer']), ips(row['torch_infer']))
  row['infer_vs_torch_compile'] = ratio(ips(row['jax_infer']), ips(row['torch_compile_infer']))
  row['pipeline_vs_step'] = ratio(ips(row['pipeline']), ours)

  warnings = []
  if row['params_torch'] is not None and row['params_torch'] != row['params_jax']:
    warnings.append(f'params differ: ours {row["params_jax"]:,}, torch {row["params_torch"]:,}')
  tol = 1e-2 if bf16 else 1e-4
  if abs(row['loss_ours'] - row['loss_bare']) > tol * max(1.0, abs(row['loss_bare'])):
    warnings.append(f'first-step losses differ: ours {row["loss_ours"]}, bare {row["loss_bare"]}')
  row['warnings'] = warnings
  row['load_average_before'], row['load_average_after'] = load_before, os.getloadavg()
  row['machine'] = machine
  print(
    f'  ours {fmt_ms(row["ours"])}, bare {fmt_ms(row["bare"])}, '
    f'torch {fmt_ms(row["torch_train"])}, torch.compile {fmt_ms(row["torch_compile_train"])}; '
    f'params {fmt_params(row)}' + ''.join(f'; {w}' for w in warnings),
    flush=True,
  )
  del jax_steps, torch_steps
  return row
