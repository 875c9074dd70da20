"""Depthwise convolution on CPU: XLA's grouped conv vs the shift-and-add form (vs PyTorch).

  python -m experiments.depthwise_benchmark               # ~6 minutes on 2 cores
  python -m experiments.depthwise_benchmark --quick       # fewer repetitions, no torch steps

Times, in milliseconds, the median of --reps calls after a warm-up call (compilation timed
apart, with `lower().compile()`):
- a 3x3 depthwise conv (padding 1, no bias) at MobileNet-v2 shapes, batch 32: forward, and
  forward + both gradients (`jax.vjp` with a fixed cotangent; PyTorch: `y.backward(g)`);
- whole train steps (batch 32, --image_size px, SGD with momentum, BN statistics, dropout) of
  MobileNet-v2 and EfficientNet-B0, JAX and PyTorch calls interleaved round by round so that
  both see the same machine load (the machine is shared).
The grouped conv takes seconds per call, so it runs --slow_reps times without a warm-up call.
PyTorch (if importable) runs channels_last (NCHW is 4-10x slower on CPU) with its default
threads; its MobileNet-v2 and EfficientNet-B0 are torchvision-free copies of the same layouts.

Prints a table and writes experiments/results/depthwise_benchmark.json. The machine is shared:
the load average before and after is recorded with the numbers.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.models.efficientnet import B0_STAGES, efficientnet_variant
from cnn_jax.models.mobilenet import V2_SETTING, mobilenet_v2
from cnn_jax.nn.depthwise import depthwise_conv
from experiments import common
from experiments.timing import compile_jit, interleaved, time_calls

# (H, W, C, stride): depthwise layers of MobileNet-v2 at 224 px (blocks 2, 4, 6-7, 14-16).
LAYER_SHAPES = [
  (112, 112, 96, 2),
  (56, 56, 144, 1),
  (28, 28, 192, 1),
  (14, 14, 576, 1),
  (7, 7, 960, 1),
]
IMPLS = ('shift', 'grouped')


def _row(kind: str, impl: str, times: list[float], compile_s: float | None = None, **extra) -> dict:
  return dict(
    kind=kind,
    impl=impl,
    median_ms=1e3 * statistics.median(times),
    min_ms=1e3 * min(times),
    reps=len(times),
    compile_s=compile_s,
    **extra,
  )


def bench_layers_jax(batch: int, reps: int, slow_reps: int) -> list[dict]:
  rows = []
  rng = np.random.default_rng(0)
  for h, w, c, s in LAYER_SHAPES:
    x = jnp.asarray(rng.normal(size=(batch, h, w, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 1, c)) * 0.1, jnp.float32)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    g = jnp.asarray(rng.normal(size=(batch, ho, wo, c)), jnp.float32)
    shape = dict(shape=[batch, h, w, c], stride=s)
    for impl in IMPLS:

      def fwd(x, k, impl=impl, s=s):
        return depthwise_conv(x, k, strides=s, padding=1, impl=impl)

      def fwd_bwd(x, k, g, impl=impl, s=s):
        y, vjp = jax.vjp(lambda x, k: depthwise_conv(x, k, strides=s, padding=1, impl=impl), x, k)
        return y, *vjp(g)

      slow = impl == 'grouped'
      n, warm = (slow_reps, 0) if slow else (reps, 1)
      f, cf = compile_jit(fwd, x, k)
      times = time_calls(lambda f=f, x=x, k=k: f(x, k).block_until_ready(), n, warm)
      rows.append(_row('forward', impl, times, cf, **shape))
      print(_fmt(rows[-1]), flush=True)
      fb, cfb = compile_jit(fwd_bwd, x, k, g)
      times = time_calls(lambda fb=fb, x=x, k=k, g=g: jax.block_until_ready(fb(x, k, g)), n, warm)
      rows.append(_row('forward+backward', impl, times, cfb, **shape))
      print(_fmt(rows[-1]), flush=True)
  return rows


def bench_layers_torch(batch: int, reps: int) -> list[dict]:
  import torch

  rows = []
  torch.manual_seed(0)
  for h, w, c, s in LAYER_SHAPES:
    conv = torch.nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False).to(
      memory_format=torch.channels_last
    )
    x = torch.randn(batch, c, h, w).to(memory_format=torch.channels_last).requires_grad_(True)
    with torch.no_grad():
      g = torch.randn_like(conv(x))
    shape = dict(shape=[batch, h, w, c], stride=s)

    def fwd(conv=conv, x=x):
      with torch.no_grad():
        conv(x)

    def fwd_bwd(conv=conv, x=x, g=g):
      x.grad, conv.weight.grad = None, None
      conv(x).backward(g)

    rows.append(_row('forward', 'torch', time_calls(fwd, reps, 1), **shape))
    print(_fmt(rows[-1]), flush=True)
    rows.append(_row('forward+backward', 'torch', time_calls(fwd_bwd, reps, 1), **shape))
    print(_fmt(rows[-1]), flush=True)
  return rows


def _jax_train_step(model, batch: int, size: int) -> tuple[Callable[[], Any], float]:
  """A jitted SGD-momentum train step of `model` on fixed data; (call, compile seconds)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 1000, batch))
  key = jax.random.key(0, impl='rbg')
  variables = jax.jit(model.init)(key, x[:1])
  tx = optax.sgd(0.05, momentum=0.9)
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))

  def step(state, x, labels):
    params, stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply(
        {'params': params, 'batch_stats': stats},
        x,
        train=True,
        mutable=['batch_stats'],
        rngs={'dropout': key},
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updates['batch_stats']

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), stats, opt_state), loss

  f, compile_s = compile_jit(step, state, x, labels)
  return (lambda: jax.block_until_ready(f(state, x, labels))), compile_s


def _torch_mobilenet_v2():
  from torch import nn

  def cbr(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU6()] if act else layers

  class Block(nn.Module):
    def __init__(self, cin: int, cout: int, t: int, s: int):
      super().__init__()
      hidden = cin * t
      layers = cbr(cin, hidden) if t != 1 else []
      layers += cbr(hidden, hidden, 3, s, groups=hidden) + cbr(hidden, cout, act=False)
      self.body, self.residual = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x):
      return x + self.body(x) if self.residual else self.body(x)

  layers, cin = cbr(3, 32, 3, 2), 32
  for t, c, n, s in V2_SETTING:
    for j in range(n):
      layers.append(Block(cin, c, t, s if j == 0 else 1))  # width 1.0: no rounding needed
      cin = c
  layers += [*cbr(cin, 1280), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2)]
  return nn.Sequential(*layers, nn.Linear(1280, 1000))


def _torch_efficientnet_b0():
  """torchvision's efficientnet_b0 layout (5,288,548 parameters), stochastic depth included."""
  import torch
  from torch import nn

  def cba(cin: int, cout: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + [nn.SiLU()] if act else layers

  class SE(nn.Module):
    def __init__(self, c: int, squeeze: int):
      super().__init__()
      self.reduce, self.expand = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

    def forward(self, x):
      s = nn.functional.adaptive_avg_pool2d(x, 1)
      return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(s))))

  class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, t: int, k: int, s: int, p: float):
      super().__init__()
      hidden = cin * t
      layers = cba(cin, hidden) if t != 1 else []
      layers += [*cba(hidden, hidden, k, s, groups=hidden), SE(hidden, max(1, cin // 4))]
      self.body = nn.Sequential(*layers, *cba(hidden, cout, act=False))
      self.residual, self.p = s == 1 and cin == cout, p

    def forward(self, x):
      y = self.body(x)
      if not self.residual:
        return y
      if self.training and self.p > 0:
        keep = torch.empty(y.shape[0], 1, 1, 1).bernoulli_(1 - self.p)
        y = y * keep / (1 - self.p)
      return x + y

  total = sum(st.repeats for st in B0_STAGES)
  layers, index = cba(3, 32, 3, 2), 0
  for st in B0_STAGES:
    for j in range(st.repeats):
      cin, s = (st.in_features, st.strides) if j == 0 else (st.out_features, 1)
      p = 0.2 * index / total
      layers.append(MBConv(cin, st.out_features, st.expand_ratio, st.kernel_size, s, p))
      index += 1
  layers += [*cba(320, 1280), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2)]
  return nn.Sequential(*layers, nn.Linear(1280, 1000))


def _torch_train_step(model, batch: int, size: int) -> Callable[[], None]:
  import torch

  model = model.to(memory_format=torch.channels_last)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
  x = torch.randn(batch, 3, size, size).to(memory_format=torch.channels_last)
  labels = torch.randint(0, 1000, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    opt.step()

  return step


def bench_train_steps(
  batch: int, size: int, reps: int, slow_reps: int, with_torch: bool, efficientnet: bool
) -> list[dict]:
  """MobileNet-v2 (and EfficientNet-B0) train steps, JAX and PyTorch interleaved."""
  if with_torch:
    __import__('torch').manual_seed(0)
  models = {'mobilenet_v2': (mobilenet_v2, _torch_mobilenet_v2)}
  if efficientnet:
    models['efficientnet_b0'] = (partial(efficientnet_variant, 'b0'), _torch_efficientnet_b0)
  fns, compile_s, params = {}, {}, {}
  for name, (jax_model, torch_model) in models.items():
    fns[(name, 'shift')], compile_s[(name, 'shift')] = _jax_train_step(jax_model(), batch, size)
    print(f'compiled {name} ({compile_s[(name, "shift")]:.1f} s)', flush=True)
    if with_torch:
      module = torch_model()
      params[(name, 'torch')] = sum(p.numel() for p in module.parameters())
      fns[(name, 'torch')] = _torch_train_step(module, batch, size)
  times = interleaved(fns, reps)
  # The grouped conv's step takes ~10 s: a few calls, no warm-up, after the others.
  grouped, compile_s[('mobilenet_v2', 'grouped')] = _jax_train_step(
    mobilenet_v2(depthwise_impl='grouped'), batch, size
  )
  times[('mobilenet_v2', 'grouped')] = time_calls(grouped, slow_reps, 0)
  rows = []
  for (name, impl), t in times.items():
    row = _row(
      f'train_step:{name}', impl, t, compile_s.get((name, impl)), shape=[batch, size, size, 3]
    )
    row['images_per_s'] = batch / (row['median_ms'] / 1e3)
    if (name, impl) in params:
      row['params'] = params[(name, impl)]
    rows.append(row)
    print(_fmt(row), flush=True)
  return rows


def _fmt(r: dict) -> str:
  compile_s = '' if r.get('compile_s') is None else f'{r["compile_s"]:6.1f}'
  shape = 'x'.join(map(str, r['shape'])) + (f' s{r["stride"]}' if 'stride' in r else '')
  return (
    f'{r["kind"]:28s} {shape:22s} {r["impl"]:8s} {r["median_ms"]:10.1f} {r["min_ms"]:10.1f} '
    f'{r["reps"]:4d} {compile_s:>9s}'
  )


def _table(rows: list[dict]) -> str:
  header = f'{"kind":28s} {"shape":22s} {"impl":8s} {"median ms":>10s} {"min ms":>10s} {"reps":>4s}'
  lines = [header + f' {"compile s":>9s}', '-' * (len(header) + 10)]
  lines += [_fmt(r) for r in rows]
  # Speed-ups against the grouped conv and the ratio to PyTorch, per (kind, shape).
  lines.append('')
  lines.append(f'{"kind":28s} {"shape":22s} {"grouped/shift":>14s} {"shift/torch":>12s}')
  groups: dict[tuple, dict[str, float]] = {}
  for r in rows:
    key = (
      r['kind'],
      'x'.join(map(str, r['shape'])) + (f' s{r["stride"]}' if 'stride' in r else ''),
    )
    groups.setdefault(key, {})[r['impl']] = r['median_ms']
  for (kind, shape), t in groups.items():
    gs = f'{t["grouped"] / t["shift"]:.1f}x' if {'grouped', 'shift'} <= set(t) else '-'
    st = f'{t["shift"] / t["torch"]:.2f}' if {'torch', 'shift'} <= set(t) else '-'
    lines.append(f'{kind:28s} {shape:22s} {gs:>14s} {st:>12s}')
  return '\n'.join(lines)


def main() -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image_size', type=int, default=128, help='train step input size')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--slow_reps', type=int, default=1, help='repetitions of the grouped conv')
  parser.add_argument(
    '--quick', action='store_true', help='--reps 3, no torch train steps, no EfficientNet'
  )
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--no_efficientnet', action='store_true', help='MobileNet-v2 steps only')
  args = parser.parse_args()
  reps = 3 if args.quick else args.reps

  try:
    import torch

    torch_version = None if args.no_torch else torch.__version__
  except ImportError:
    torch_version = None

  load_before = os.getloadavg()
  t0 = time.perf_counter()
  print(_table([]).split('\n')[0], flush=True)
  rows = bench_layers_jax(args.batch, reps, args.slow_reps)
  if torch_version:
    rows += bench_layers_torch(args.batch, reps)
  rows += bench_train_steps(
    args.batch,
    args.image_size,
    reps,
    args.slow_reps,
    with_torch=bool(torch_version) and not args.quick,
    efficientnet=not (args.quick or args.no_efficientnet),
  )
  result = dict(
    machine=dict(
      cpu=common.cpu_name(),
      cpu_count=os.cpu_count(),
      load_average_before=load_before,
      load_average_after=os.getloadavg(),
      jax=jax.__version__,
      backend=jax.default_backend(),
      torch=torch_version,
      torch_threads=__import__('torch').get_num_threads() if torch_version else None,
      wall_s=time.perf_counter() - t0,
    ),
    args=vars(args),
    rows=rows,
  )
  print()
  print(_table(rows))
  print(f'\nload average before {load_before}, after {result["machine"]["load_average_after"]}')
  out = os.path.join(common.RESULTS, 'depthwise_benchmark.json')
  common.write_json(out, result)
  print(f'wrote {out}')
  return result


if __name__ == '__main__':
  main()
