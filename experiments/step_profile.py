"""Where a train step's time goes: forward, data gradients, weight gradients; ours and PyTorch's.

  python -m experiments.step_profile                        # ResNet-18 (CIFAR stem), batch 32
  python -m experiments.step_profile --model resnet50 --image_size 128

Two views, each timed in one process with JAX and PyTorch calls interleaved round by round
(medians; PyTorch eager, channels_last, `pip install -r requirements-bench.txt`):

- the whole model in training mode: the forward pass; forward + backward to the input only (every
  layer's data gradient, no weight gradient); forward + backward to the parameters only (weight
  gradients, and data gradients for all but the first layer); both. The difference between the
  last two and the input-only pass is what the weight gradients cost.
- each distinct 3x3 convolution of the model (its input shape): forward, data gradient and weight
  gradient apart, ours (`cnn_jax.nn.layers.Conv`, the layer every model uses) against torch's
  `Conv2d`.

Writes experiments/results/step_profile_<model>.md and .json. Explains the gap that
`python -m experiments.benchmark` reports for the train step (issue 8).
"""

# First: the benchmark's models and torch twins, and its preload (triton before TensorFlow).
from experiments import benchmark

# isort: split
import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax import train
from cnn_jax.nn import layers
from experiments import common


def _median_ms(fns: dict, rounds: int) -> dict[str, float]:
  """Each callable once for warm-up, then `rounds` rounds of one call each; medians in ms."""
  for fn in fns.values():
    fn()
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(1e3 * (time.perf_counter() - t0))
  return {k: statistics.median(v) for k, v in times.items()}


def jax_model_calls(model, variables, x, labels) -> dict:
  params, stats = variables['params'], variables.get('batch_stats', {})

  def loss(p, xx):
    logits, _ = model.apply(
      {'params': p, 'batch_stats': stats}, xx, train=True, mutable=['batch_stats']
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  fwd = jax.jit(loss)
  d_input = jax.jit(jax.grad(loss, argnums=1))
  d_params = jax.jit(jax.grad(loss, argnums=0))
  both = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return {
    'forward': lambda: jax.block_until_ready(fwd(params, x)),
    'fwd + input grads': lambda: jax.block_until_ready(d_input(params, x)),
    'fwd + param grads': lambda: jax.block_until_ready(d_params(params, x)),
    'fwd + both': lambda: jax.block_until_ready(both(params, x)),
  }


def torch_model_calls(torch, module, x_np, labels_np) -> dict:
  module = module.to(memory_format=torch.channels_last).train()
  x = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).contiguous(
    memory_format=torch.channels_last
  )
  labels = torch.from_numpy(labels_np.astype(np.int64))
  params = list(module.parameters())

  def run(need_params: bool, need_input: bool, backward: bool = True):
    for p in params:
      p.requires_grad_(need_params)
      p.grad = None
    xx = x.detach().requires_grad_(need_input)
    with torch.set_grad_enabled(backward):
      loss = torch.nn.functional.cross_entropy(module(xx), labels)
      if backward:
        loss.backward()

  return {
    'forward': lambda: run(False, False, backward=False),
    'fwd + input grads': lambda: run(False, True),
    'fwd + param grads': lambda: run(True, False),
    'fwd + both': lambda: run(True, True),
  }


def conv_shapes(model, input_shape) -> list[tuple[tuple[int, ...], int, int]]:
  """(input shape without batch, out channels, stride) of each distinct 3x3 conv of `model`."""
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if (
      isinstance(m, layers.Conv)
      and tuple(m.kernel_size) == (3, 3)
      and context.method_name == ('__call__')
    ):
      strides = m.strides if isinstance(m.strides, int) else (m.strides or (1, 1))[0]
      key = (tuple(args[0].shape[1:]), m.features, int(strides))
      seen[key] = seen.get(key, 0) + 1
    return next_fun(*args, **kwargs)

  import flax.linen as nn

  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
  return [(*k, n) for k, n in seen.items()]


def conv_calls(torch, shape, features, stride, batch) -> tuple[dict, dict]:
  """ours / torch callables for forward, data gradient, weight gradient of one 3x3 conv."""
  rng = np.random.default_rng(0)
  h, w, c = shape
  x_np = rng.normal(size=(batch, h, w, c)).astype(np.float32)
  conv = layers.Conv(features, (3, 3), strides=stride, padding=1, use_bias=False)
  variables = conv.init(jax.random.key(0), jnp.asarray(x_np))
  kernel = variables['params']['kernel']
  x = jnp.asarray(x_np)
  y_shape = jax.eval_shape(lambda: conv.apply(variables, x)).shape
  g = jnp.asarray(rng.normal(size=y_shape).astype(np.float32))

  def out(k, xx):
    return conv.apply({'params': {'kernel': k}}, xx)

  fwd = jax.jit(out)
  dgrad = jax.jit(lambda k, xx: jax.vjp(lambda xx: out(k, xx), xx)[1](g)[0])
  wgrad = jax.jit(lambda k, xx: jax.vjp(lambda k: out(k, xx), k)[1](g)[0])
  ours = {
    'forward': lambda: jax.block_until_ready(fwd(kernel, x)),
    'data grad': lambda: jax.block_until_ready(dgrad(kernel, x)),
    'weight grad': lambda: jax.block_until_ready(wgrad(kernel, x)),
  }
  if torch is None:
    return ours, {}
  tconv = torch.nn.Conv2d(c, features, 3, stride, 1, bias=False).to(
    memory_format=torch.channels_last
  )
  tx = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).contiguous(
    memory_format=torch.channels_last
  )
  tg = torch.from_numpy(np.asarray(g).transpose(0, 3, 1, 2).copy()).contiguous(
    memory_format=torch.channels_last
  )
  weight = tconv.weight.detach()
  grads = torch.ops.aten.convolution_backward

  def backward(mask):
    grads(tg, tx, weight, None, (stride, stride), (1, 1), (1, 1), False, (0, 0), 1, mask)

  theirs = {
    'forward': lambda: torch.nn.functional.conv2d(tx, weight, None, stride, 1),
    'data grad': lambda: backward((True, False, False)),
    'weight grad': lambda: backward((False, True, False)),
  }
  return ours, theirs


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--model', default='resnet18_cifar', help='a benchmark.MODELS name')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=0, help='0: the benchmark CPU size')
  parser.add_argument('--rounds', type=int, default=10)
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--out_dir', default=common.RESULTS)
  args = parser.parse_args(argv)

  torch, _, why = benchmark.import_torch(args.no_torch, threads=os.cpu_count() or 1)
  bench = benchmark.bench_spec(args.model)
  size = args.image_size or bench.cpu_size
  config = benchmark.make_config(bench, args.batch, size, False, 'digits')
  model = train.create_model(config, bench.num_classes).clone(norm_axis_name=None)
  batch = benchmark.synthetic_batch(args.batch, size, bench.num_classes, False)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))()
  t0 = time.perf_counter()
  calls = {
    f'ours {k}': v
    for k, v in jax_model_calls(
      model, variables, jnp.asarray(batch['image']), jnp.asarray(batch['label'])
    ).items()
  }
  if torch is not None:
    module = benchmark.torch_twin(bench, model)
    for k, v in torch_model_calls(torch, module, batch['image'], batch['label']).items():
      calls[f'torch {k}'] = v
  whole = _median_ms(calls, args.rounds)
  print(json.dumps({k: round(v, 1) for k, v in whole.items()}), flush=True)

  convs = []
  for shape, features, stride, count in conv_shapes(model, (size, size, 3)):
    ours, theirs = conv_calls(torch, shape, features, stride, args.batch)
    timed = _median_ms(
      {**{f'ours {k}': v for k, v in ours.items()}, **{f'torch {k}': v for k, v in theirs.items()}},
      args.rounds,
    )
    convs.append(dict(input=shape, features=features, stride=stride, count=count, ms=timed))
    print(shape, features, stride, count, {k: round(v, 1) for k, v in timed.items()}, flush=True)

  result = dict(
    model=args.model,
    batch=args.batch,
    image_size=size,
    machine=f'{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}'
    + (f', torch {torch.__version__}' if torch is not None else f' ({why})'),
    load_before=os.getloadavg(),
    seconds=round(time.perf_counter() - t0, 1),
    whole=whole,
    convs=convs,
  )
  stem = os.path.join(args.out_dir, f'step_profile_{args.model}')
  common.write_json(stem + '.json', result)
  common.write_text(stem + '.md', markdown(result))
  print(markdown(result))
  return result


def markdown(r: dict) -> str:
  w = r['whole']
  lines = [
    f'`python -m experiments.step_profile --model {r["model"]}` (batch {r["batch"]}, '
    f'{r["image_size"]} px, fp32; {r["machine"]}; medians of interleaved rounds, ms)',
    '',
    '| pass | ours ms | torch ms | ours / torch time |',
    '|---|---:|---:|---:|',
  ]
  for k in ('forward', 'fwd + input grads', 'fwd + param grads', 'fwd + both'):
    a, b = w.get(f'ours {k}'), w.get(f'torch {k}')
    lines.append(f'| {k} | {a:.1f} | {b:.1f} | {a / b:.2f}x |' if b else f'| {k} | {a:.1f} | | |')
  lines += [
    '',
    '| 3x3 conv input (HWC) | out | stride | in model | ours fwd | torch fwd | ours dgrad | '
    'torch dgrad | ours wgrad | torch wgrad | ours / torch (sum) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  for c in r['convs']:
    ms = c['ms']
    keys = ('forward', 'data grad', 'weight grad')
    ours = [ms[f'ours {k}'] for k in keys]
    theirs = [ms.get(f'torch {k}') for k in keys]
    cells = []
    for a, b in zip(ours, theirs, strict=True):
      cells += [f'{a:.1f}', f'{b:.1f}' if b else '']
    total = f'{sum(ours) / sum(theirs):.2f}x' if all(theirs) else ''
    shape = 'x'.join(str(s) for s in c['input'])
    lines.append(
      f'| {shape} | {c["features"]} | {c["stride"]} | {c["count"]} | '
      + ' | '.join(cells)
      + f' | {total} |'
    )
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
