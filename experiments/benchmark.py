"""Side by side: our trainer's train step and inference against PyTorch, on the same machine.

  pip install -r requirements-bench.txt        # torch + torchvision (CPU builds) beside ours
  python experiments/benchmark.py              # every model, layer and the cold compile
  python experiments/benchmark.py --models resnet18_cifar,mobilenet_v2 --batch_sizes 32,64
  python experiments/benchmark.py --quick      # a smoke run: 3 steps, batch 4, no torch.compile

What it times, for each model of --models and each batch of --batch_sizes, on synthetic data
(fixed random images and labels, already on the device):
- ours: `cnn_jax.train.train_step` built the trainer's way (train.create_model, optim, tasks,
  train.initial_state) and compiled by the runner of cnn_jax.core.parallel (1 device, state donated);
- bare: a plain `jax.jit` (state donated) of the same model, softmax cross-entropy and optax
  update, no runner and no metrics: ours over bare is the trainer's overhead;
- JAX inference: a jitted eval-mode forward;
- PyTorch eager in channels_last (NCHW is 4-10x slower on CPU): an SGD-momentum step with
  cross-entropy, BatchNorm in train mode, and an inference-mode forward; then the same through
  `torch.compile` where it works (a failure is recorded as 'failed: <its first line>').
Every callable is compiled first (JAX: `.lower().compile()`, timed; torch.compile: its first
call, timed), called once more as warm-up, and then all of them are called in turn, one call each
per round, for --steps rounds (`depthwise_benchmark._interleaved`), so that a load that comes
and goes on a shared machine falls on all of them alike. Reported: the median, images/s, and the
ratios ours/bare (time) and ours/PyTorch (speed: above 1 is faster than PyTorch). Parameter
counts of both frameworks are printed; a mismatch is a warning in the table. The first step of
ours and of bare starts from the same state on the same batch: their losses are recorded, and a
difference is a warning too.

Also: the input pipeline alone (`cnn_jax.data.train_iterator` on the offline `digits`, or
`digit_scenes` for segmentation, upscaled to the model's image size, same batch) against the
step; layer micro-benchmarks (forward, and forward + backward through `jax.vjp` with a fixed
cotangent, against PyTorch channels_last); and the cold compile of the ResNet-50 train step in
a fresh process (trace + lower, and XLA's compile, timed apart; persistent cache off).

CPU: float32, batch 32, images at each model's CPU size (resnet18_cifar 32, resnet50,
mobilenet_v2 and efficientnet_b0 128, vgg16 and unet 64; --image_size overrides). GPU (jax's
default backend): bfloat16 compute (config.half_precision; torch autocast), batch 256, 224 px
(resnet18_cifar 32, unet 256), JAX held to half the GPU memory so that PyTorch fits beside it,
and the card's name recorded with every number. Models outside the six may be named by their
registry name (JAX rows only). A model or layer that fails (out of memory, say) becomes a row
with status 'failed: ...' and the run goes on.

Run it on an otherwise idle machine: a run that starts with a load average above half the CPU
count says so in a warning line. PyTorch's OpenMP workers wait for each other at every parallel
region, so on a machine shared with another job (or under `nice`) its times balloon: a
BatchNorm forward at 2x56x56x64 took 0.3 ms in some processes and 48 ms in others, under nice 19
on 2 cores that another job kept busy. Ratios from such a run say nothing.

Prints markdown tables and writes experiments/results/benchmark.json and benchmark.md (--out_dir).
Every row carries the machine (CPU, core count, device, versions) and the load average before
and after it. Without torch (or with --no_torch) the torch columns are 'n/a'.
"""

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# JAX takes 75% of a GPU's memory at start by default; PyTorch runs in the same process.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.5')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
  # Before TensorFlow (cnn_jax.data): PyPI's CUDA wheel of torch brings triton, whose shared
  # library kills the process (SIGSEGV) when it loads after TensorFlow's (torch._dynamo loads it).
  import triton  # noqa: F401
except Exception:  # not installed (CPU builds of torch): nothing to do
  pass

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from cnn_jax import data as data_lib  # noqa: E402
from cnn_jax import models, tasks, train
from cnn_jax.core import parallel  # noqa: E402
from cnn_jax.core.errors import UserError  # noqa: E402
from cnn_jax.nn.layers import (  # noqa: E402
  AvgPool,
  BatchNorm,
  Conv,
  DepthwiseConv,
  MaxPool,
  PointwiseConv,
)
from cnn_jax.nn.upsample import Upsample  # noqa: E402
from cnn_jax.train import optim
from configs import default  # noqa: E402
from experiments.depthwise_benchmark import _compile, _interleaved  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
# SGD for both frameworks. lr small enough that random labels do not blow VGG-16 (no BN) up.
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


@dataclasses.dataclass(frozen=True)
class Bench:
  """One benchmarked model: our registry name and fields, its input size, its PyTorch twin."""

  registry: str
  kwargs: dict[str, Any]
  num_classes: int
  cpu_size: int
  gpu_size: int
  torch_twin: str  # a `_torch_*` builder below, or '' for none


MODELS: dict[str, Bench] = {
  # resnet18 with the CIFAR stem (3x3/1 conv, no max pool), 11,173,962 parameters.
  'resnet18_cifar': Bench('resnet18', {'stem': 'cifar'}, 10, 32, 32, 'resnet18_cifar'),
  'resnet50': Bench('resnet50', {}, 1000, 128, 224, 'torchvision'),
  'mobilenet_v2': Bench('mobilenet_v2', {}, 1000, 128, 224, 'torchvision'),
  'efficientnet_b0': Bench('efficientnet_b0', {}, 1000, 128, 224, 'torchvision'),
  'vgg16': Bench('vgg16', {}, 1000, 64, 224, 'torchvision'),
  # The registry's U-Net (depth 4, base width 64, same padding, BN, 2x2 up-convs), 11 classes
  # as on digit_scenes: 31,038,283 parameters.
  'unet': Bench('unet', {'num_classes': 11}, 11, 64, 256, 'unet'),
}


def bench_spec(name: str) -> Bench:
  """MODELS[name], or a JAX-only entry for any other registry model (32 px, 10 / 11 classes)."""
  if name in MODELS:
    return MODELS[name]
  if name not in models.list_models():
    raise UserError(
      f"--models: unknown model '{name}'; use any of {', '.join(MODELS)} or a registry name "
      '(cnn_jax.models.list_models())'
    )
  num_classes = 11 if models.is_segmentation(name) else 10
  return Bench(name, {}, num_classes, 32, 32, '')


# ---------------------------------------------------------------------------------------------
# Machine


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
  except (OSError, StopIteration):
    return platform.processor() or platform.machine()


def machine_info(torch_mod: Any, torch_device: str) -> dict[str, Any]:
  info = dict(
    platform=platform.platform(),
    cpu=_cpu_name(),
    cpu_count=os.cpu_count(),
    backend=jax.default_backend(),
    device=jax.devices()[0].device_kind,
    jax=jax.__version__,
    torch=None,
    torchvision=None,
    torch_device=None,
    torch_threads=None,
  )
  if torch_mod is not None:
    info['torch'] = torch_mod.__version__
    try:
      import torchvision

      info['torchvision'] = torchvision.__version__
    except ImportError:
      pass
    info['torch_threads'] = torch_mod.get_num_threads()
    info['torch_device'] = (
      torch_mod.cuda.get_device_name(0) if torch_device == 'cuda' else _cpu_name()
    )
  return info


def _import_torch(no_torch: bool, threads: int) -> tuple[Any, str, str]:
  """(torch or None, its device, why not); prints one line when it is left out."""
  if no_torch:
    return None, '', 'n/a: --no_torch'
  try:
    import torch
  except ImportError:
    why = 'n/a: torch not importable'
    print(f'{why}: JAX-only rows (pip install -r requirements-bench.txt for the torch columns)')
    return None, '', why
  if threads > 0:
    torch.set_num_threads(threads)
  if jax.default_backend() == 'gpu':
    if not torch.cuda.is_available():
      why = 'n/a: torch has no CUDA while JAX runs on the GPU'
      print(f'{why}: JAX-only rows')
      return None, '', why
    torch.backends.cudnn.benchmark = True
    return torch, 'cuda', ''
  return torch, 'cpu', ''


# ---------------------------------------------------------------------------------------------
# JAX: the trainer's step, the bare step, inference


def make_config(
  bench: Bench, batch: int, image_size: int, bf16: bool, dataset: str
) -> ml_collections.ConfigDict:
  """A trainer config (configs/default.py) for `bench`: SGD with momentum, no label smoothing."""
  config = default.get_config()
  if models.is_segmentation(bench.registry):
    default.add_segmentation_fields(config)
  config.dataset = dataset
  config.image_size = image_size
  config.batch_size = batch
  config.model.name = bench.registry
  config.model.num_classes = bench.num_classes
  for key, value in bench.kwargs.items():
    if key != 'num_classes':
      config.model[key] = value
  config.half_precision = bf16
  config.optimizer.name = 'sgd'
  config.optimizer.lr = LR
  config.optimizer.momentum = MOMENTUM
  config.optimizer.weight_decay = WEIGHT_DECAY  # ours: kernels only; torch's SGD: every tensor
  config.optimizer.schedule = 'constant'
  config.seed = 0
  return config


def synthetic_batch(batch: int, size: int, num_classes: int, segmentation: bool, seed: int = 0):
  """Random normal images (B, H, W, 3) and uniform labels (per pixel for segmentation)."""
  rng = np.random.default_rng(seed)
  out = {'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32)}
  if segmentation:
    out['segmentation'] = rng.integers(0, num_classes, (batch, size, size)).astype(np.int32)
  else:
    out['label'] = rng.integers(0, num_classes, batch).astype(np.int32)
  return out


def bare_train_step(state: train.TrainState, batch, *, model: nn.Module, tx, segmentation: bool):
  """What one writes without the trainer: forward, softmax cross-entropy, optax update."""
  # The trainer's dropout key on device 0 of a 1-device mesh, so that both draw the same masks.
  rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0)
  labels = batch['segmentation' if segmentation else 'label']

  def loss_fn(params):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      batch['image'],
      train=True,
      mutable=['batch_stats'],
      rngs={'dropout': rng},
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return loss.mean(), updates.get('batch_stats', {})

  (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return new, loss


def _aot(jitted: Callable, *args) -> tuple[Callable, float, float]:
  """(compiled, trace + lower seconds, XLA compile seconds) of a `jax.jit` object."""
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


class JaxSteps:
  """Our trainer's step, the bare step and inference of one model, each on its own state."""

  def __init__(
    self, config: ml_collections.ConfigDict, num_classes: int, batch: dict, *, only_trainer=False
  ):
    self.timings: dict[str, dict[str, float]] = {}
    spec = data_lib.DATASETS[config.dataset]
    model = train.create_model(config, num_classes)
    schedule = optim.create_schedule(config.optimizer, 10_000, 100)
    tx = optim.create_optimizer(config.optimizer, schedule)
    task = tasks.create(config, spec, num_classes)
    runner = parallel.create_runner(config.parallel, jax.devices()[:1])
    exp = train.Experiment(
      config=config,
      workdir='',
      data=None,
      model=model,
      num_classes=num_classes,
      task=task,
      steps_per_epoch=100,
      num_steps=10_000,
      schedule=schedule,
      tx=tx,
      runner=runner,
    )
    t0 = time.perf_counter()
    host = train.initial_state(exp)
    self.timings['init'] = {'seconds': time.perf_counter() - t0}
    self.params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(host.params))
    self.segmentation = spec.segmentation

    step = runner.compile(functools.partial(train.train_step, model=model, tx=tx, task=task))
    self._state = {'trainer': runner.put_state(host)}
    self._trainer_batch = runner.put_batch(batch)
    self._trainer, lower_s, compile_s = _aot(step, self._state['trainer'], self._trainer_batch)
    self.timings['trainer'] = {'lower_s': lower_s, 'compile_s': compile_s}
    if only_trainer:
      return

    # The same module without the mesh axis: BatchNorm statistics of this device alone.
    self.bare_model = model.clone(norm_axis_name=None)
    device = jax.devices()[0]
    self._state['bare'] = jax.device_put(host, device)
    self._batch = jax.device_put(batch, device)
    bare = jax.jit(
      functools.partial(
        bare_train_step, model=self.bare_model, tx=tx, segmentation=self.segmentation
      ),
      donate_argnums=(0,),
    )
    self._bare, lower_s, compile_s = _aot(bare, self._state['bare'], self._batch)
    self.timings['bare'] = {'lower_s': lower_s, 'compile_s': compile_s}

    def forward(variables, images):
      return self.bare_model.apply(variables, images, train=False)

    self._infer, lower_s, compile_s = _aot(
      jax.jit(forward), self._variables(), self._batch['image']
    )
    self.timings['infer'] = {'lower_s': lower_s, 'compile_s': compile_s}

  def _variables(self) -> dict:
    state = self._state['bare']
    return {'params': state.params, 'batch_stats': state.batch_stats}

  def trainer_step(self) -> float:
    """One step of ours, waited for; returns its loss (the loss before the update)."""
    state, metrics = self._trainer(self._state['trainer'], self._trainer_batch)
    self._state['trainer'] = jax.block_until_ready(state)
    return float(metrics['loss'])

  def bare_step(self) -> float:
    state, loss = self._bare(self._state['bare'], self._batch)
    self._state['bare'] = jax.block_until_ready(state)
    return float(loss)

  def infer(self) -> None:
    jax.block_until_ready(self._infer(self._variables(), self._batch['image']))

  def callables(self) -> dict[str, Callable[[], Any]]:
    return {'ours': self.trainer_step, 'bare': self.bare_step, 'jax_infer': self.infer}


# ---------------------------------------------------------------------------------------------
# PyTorch twins


def _torch_resnet18_cifar(model: nn.Module):
  import torch
  import torchvision

  m = torchvision.models.resnet18(num_classes=model.num_classes)
  m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem: 3x3/1, no max pool
  m.maxpool = torch.nn.Identity()
  return m


def _torch_torchvision(name: str, model: nn.Module):
  import torchvision

  return getattr(torchvision.models, name)(num_classes=model.num_classes)


def _torch_unet(model: nn.Module):
  """Our same-padding U-Net with BN and 2x2 up-convs, layer for layer (`cnn_jax.models.unet`)."""
  import torch
  from torch import nn as tnn

  if (model.padding, model.batch_norm, model.upsample) != ('same', True, 'transpose'):
    raise UserError('the torch U-Net twin covers padding=same, batch_norm=True, transpose only')
  widths = [model.base_width * 2**level for level in range(model.depth + 1)]

  def block(cin: int, cout: int):
    layers = []
    for c in (cin, cout):
      layers += [tnn.Conv2d(c, cout, 3, 1, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]
    return tnn.Sequential(*layers)

  class UNet(tnn.Module):
    def __init__(self):
      super().__init__()
      ins = [3, *widths[:-1]]
      self.enc = tnn.ModuleList(block(i, o) for i, o in zip(ins, widths, strict=True))
      self.up = tnn.ModuleList(
        tnn.ConvTranspose2d(widths[i + 1], widths[i], 2, 2) for i in range(model.depth)
      )
      self.dec = tnn.ModuleList(block(2 * widths[i], widths[i]) for i in range(model.depth))
      self.score = tnn.Conv2d(widths[0], model.num_classes, 1)

    def forward(self, x):
      skips = []
      for level in range(model.depth):
        x = self.enc[level](x)
        skips.append(x)
        x = tnn.functional.max_pool2d(x, 2)
      x = self.enc[model.depth](x)
      for level in reversed(range(model.depth)):
        x = torch.cat([skips[level], self.up[level](x)], 1)  # copied features first, as ours
        x = self.dec[level](x)
      return self.score(x)

  return UNet()


def torch_twin(bench: Bench, model: nn.Module):
  """The PyTorch model of the same layout as our `model`, or None."""
  if bench.torch_twin == 'resnet18_cifar':
    return _torch_resnet18_cifar(model)
  if bench.torch_twin == 'torchvision':
    return _torch_torchvision(bench.registry, model)
  if bench.torch_twin == 'unet':
    return _torch_unet(model)
  return None


def _one_line(e: BaseException) -> str:
  lines = [s for s in str(e).splitlines() if s.strip()]
  return f'{type(e).__name__}: {lines[0] if lines else ""}'[:200]


class TorchSteps:
  """PyTorch eager (channels_last) train step and inference of one model, and torch.compile's."""

  def __init__(self, torch, module, batch: dict, device: str, bf16: bool, compile_: bool):
    self.torch, self.device = torch, device
    self.module = module.to(device).to(memory_format=torch.channels_last)
    self.params = sum(p.numel() for p in self.module.parameters())
    self.x = (
      torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy())
      .to(device)
      .contiguous(memory_format=torch.channels_last)
    )
    labels = batch['segmentation'] if 'segmentation' in batch else batch['label']
    self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)
    self.opt = torch.optim.SGD(
      self.module.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    self.autocast = functools.partial(
      torch.autocast, device_type=device, dtype=torch.bfloat16, enabled=bf16
    )
    self.status: dict[str, str] = {}
    self.compile_s: dict[str, float] = {}
    self.compiled = None
    if compile_:
      self.compiled = torch.compile(self.module)
    else:
      self.status['torch_compile_train'] = self.status['torch_compile_infer'] = (
        'n/a: --no_torch_compile'
      )

  def _sync(self) -> None:
    if self.device == 'cuda':
      self.torch.cuda.synchronize()

  def _train(self, m) -> float:
    m.train()
    self.opt.zero_grad(set_to_none=True)
    with self.autocast():
      out = m(self.x)
    loss = self.torch.nn.functional.cross_entropy(out.float(), self.labels)
    loss.backward()
    self.opt.step()
    self._sync()
    return float(loss.detach())

  def _infer(self, m) -> None:
    m.eval()
    with self.torch.inference_mode(), self.autocast():
      m(self.x)
    self._sync()

  def callables(self) -> dict[str, Callable[[], Any]]:
    fns = {
      'torch_train': functools.partial(self._train, self.module),
      'torch_infer': functools.partial(self._infer, self.module),
    }
    for fn in fns.values():  # a first call, like ours (which ran once to compare the losses)
      fn()
    if self.compiled is None:
      return fns
    # torch.compile compiles at the first call: timed here, apart; a failure leaves it out.
    for name, fn in (('torch_compile_train', self._train), ('torch_compile_infer', self._infer)):
      t0 = time.perf_counter()
      try:
        fn(self.compiled)
      except Exception as e:  # inductor raises many kinds (no compiler, unsupported op ...)
        self.status[name] = f'failed: {_one_line(e)}'
        print(f'  torch.compile {name}: {self.status[name]}', flush=True)
        continue
      self.compile_s[name] = time.perf_counter() - t0
      fns[name] = functools.partial(fn, self.compiled)
    return fns


# ---------------------------------------------------------------------------------------------
# Measurements


def _timing(times: list[float], batch: int, **extra) -> dict[str, Any]:
  median = statistics.median(times)
  return dict(
    median_ms=1e3 * median,
    min_ms=1e3 * min(times),
    steps=len(times),
    images_per_s=batch / median,
    **extra,
  )


def bench_pipeline(
  dataset: str, data_dir: str, batch: int, image_size: int, batches: int
) -> dict[str, Any]:
  """Images/s of `train_iterator` alone, after 2 start-up batches (graph build, first fill)."""
  data = data_lib.load(dataset, data_dir or None)
  it = data_lib.train_iterator(
    data,
    seed=0,
    global_batch=batch,
    start_step=0,
    num_steps=batches + 2,
    image_size=image_size,
    channels=3,
  )
  next(it)
  next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - t0
  return dict(dataset=dataset, batches=batches, images_per_s=batches * batch / seconds)


def _ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else a / b


def _ips(m: Any) -> float | None:
  return m['images_per_s'] if isinstance(m, dict) else None


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
      row['pipeline'] = bench_pipeline(
        dataset, args.data_dir, batch, image_size, args.pipeline_batches
      )
    except Exception as e:  # no TensorFlow here, say: the step columns still count
      row['pipeline'] = f'failed: {_one_line(e)}'
  print(f'  pipeline {_cell(row["pipeline"])} images/s', flush=True)

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
          row[key] = f'failed: {_one_line(e)}'
        print(f'  torch: {row["torch_train"]}', flush=True)
  row.setdefault('params_torch', None)

  times = _interleaved(fns, args.steps)
  for key, t in times.items():
    extra = {}
    if key in ('ours', 'bare', 'jax_infer'):
      extra['compile_s'] = compile_s[{'ours': 'trainer', 'bare': 'bare', 'jax_infer': 'infer'}[key]]
    elif key.startswith('torch_compile'):
      extra['compile_s'] = torch_steps.compile_s[key]
    row[key] = _timing(t, batch, **extra)
  row['trainer_lower_s'] = jax_steps.timings['trainer']['lower_s']
  row['trainer_xla_compile_s'] = jax_steps.timings['trainer']['compile_s']

  ours = _ips(row['ours'])
  row['overhead_pct'] = 100 * (row['ours']['median_ms'] / row['bare']['median_ms'] - 1)
  row['train_vs_torch'] = _ratio(ours, _ips(row['torch_train']))
  row['train_vs_torch_compile'] = _ratio(ours, _ips(row['torch_compile_train']))
  row['infer_vs_torch'] = _ratio(_ips(row['jax_infer']), _ips(row['torch_infer']))
  row['infer_vs_torch_compile'] = _ratio(_ips(row['jax_infer']), _ips(row['torch_compile_infer']))
  row['pipeline_vs_step'] = _ratio(_ips(row['pipeline']), ours)

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
    f'  ours {_ms(row["ours"])}, bare {_ms(row["bare"])}, torch {_ms(row["torch_train"])}, '
    f'torch.compile {_ms(row["torch_compile_train"])}; params {_params(row)}'
    + ''.join(f'; {w}' for w in warnings),
    flush=True,
  )
  del jax_steps, torch_steps
  return row


@dataclasses.dataclass(frozen=True)
class Layer:
  """A layer as our models build it (`jax(dtype)`) and PyTorch's twin (`torch(torch.nn)`)."""

  shape: tuple[int, int, int]  # input (H, W, C) at the default batch
  jax: Callable[[Any], nn.Module]
  torch: Callable[[Any], Any]


LAYERS: dict[str, Layer] = {
  # DESIGN.md's backward-conv case: 3x3, 128 -> 128 at 28x28.
  'conv3x3': Layer(
    (28, 28, 128),
    lambda dt: Conv(128, (3, 3), padding=1, use_bias=False, dtype=dt),  # cnn_jax.nn.layers.Conv
    lambda tnn: tnn.Conv2d(128, 128, 3, 1, 1, bias=False),
  ),
  # MobileNet's 1x1 convs run as one matmul on CPU (cnn_jax.nn.layers.PointwiseConv).
  'conv1x1': Layer(
    (28, 28, 192),
    lambda dt: PointwiseConv(64, (1, 1), use_bias=False, dtype=dt),
    lambda tnn: tnn.Conv2d(192, 64, 1, bias=False),
  ),
  # MobileNet-v2's block 4 at 224 px; the path the models use (impl 'auto': shift-and-add on CPU).
  'depthwise3x3': Layer(
    (56, 56, 144),
    lambda dt: DepthwiseConv((3, 3), padding=1, dtype=dt),
    lambda tnn: tnn.Conv2d(144, 144, 3, 1, 1, groups=144, bias=False),
  ),
  # The U-Net's 2x2 / 2 up-convolution (cnn_jax.nn.upsample.Upsample), halving the channels.
  'conv_transpose2x2': Layer(
    (28, 28, 128),
    lambda dt: Upsample(64, 2, kernel_size=2, bilinear_init=False, use_bias=True, dtype=dt),
    lambda tnn: tnn.ConvTranspose2d(128, 64, 2, 2),
  ),
  # Training mode. cnn_jax.nn.layers.BatchNorm (U-Net, MobileNet, EfficientNet) and flax's own
  # (ResNet, VGG-bn, DenseNet, GoogLeNet).
  'batchnorm': Layer(
    (56, 56, 64),
    lambda dt: BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dt),
    lambda tnn: tnn.BatchNorm2d(64),
  ),
  'batchnorm_flax': Layer(
    (56, 56, 64),
    lambda dt: nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dt),
    lambda tnn: tnn.BatchNorm2d(64),
  ),
  # ResNet's stem pool; the 2x2 pools of VGG and U-Net.
  'maxpool3x3s2': Layer(
    (112, 112, 64),
    lambda dt: MaxPool((3, 3), (2, 2), padding=((1, 1), (1, 1))),
    lambda tnn: tnn.MaxPool2d(3, 2, 1),
  ),
  'maxpool2x2': Layer((56, 56, 64), lambda dt: MaxPool((2, 2)), lambda tnn: tnn.MaxPool2d(2)),
  'avgpool2x2': Layer((56, 56, 64), lambda dt: AvgPool((2, 2)), lambda tnn: tnn.AvgPool2d(2)),
}


def bench_layer(
  name: str,
  batch: int,
  steps: int,
  bf16: bool,
  torch: Any,
  torch_device: str,
  torch_why: str,
  machine: dict,
) -> dict[str, Any]:
  """Forward, and forward + both gradients, of one layer: ours against PyTorch channels_last."""
  layer = LAYERS[name]
  load_before = os.getloadavg()
  dtype = jnp.bfloat16 if bf16 else jnp.float32
  rng = np.random.default_rng(0)
  x_host = rng.normal(size=(batch, *layer.shape)).astype(np.float32)
  module = layer.jax(dtype)
  variables = module.init(jax.random.key(0), jnp.asarray(x_host, dtype))
  params = variables.get('params', {})
  rest = {k: v for k, v in variables.items() if k != 'params'}
  x = jnp.asarray(x_host, dtype)

  def forward(params, x):
    out = module.apply({'params': params, **rest}, x, mutable=list(rest) or False)
    return out[0] if rest else out

  y_shape = jax.eval_shape(forward, params, x).shape
  g = jnp.asarray(rng.normal(size=y_shape), dtype)

  def forward_backward(params, x, g):
    y, vjp = jax.vjp(forward, params, x)
    return y, vjp(g)

  fwd, fwd_compile = _compile(forward, params, x)
  fwd_bwd, fwd_bwd_compile = _compile(forward_backward, params, x, g)
  fns = {
    'jax_forward': lambda: jax.block_until_ready(fwd(params, x)),
    'jax_forward_backward': lambda: jax.block_until_ready(fwd_bwd(params, x, g)),
  }
  row: dict[str, Any] = dict(
    kind='layer',
    layer=name,
    shape=[batch, *layer.shape],
    dtype='bfloat16' if bf16 else 'float32',
    device=machine['device'],
    torch_device=machine['torch_device'],
    torch_forward=torch_why,
    torch_forward_backward=torch_why,
  )
  if torch is not None:
    tdtype = torch.bfloat16 if bf16 else torch.float32
    tlayer = layer.torch(torch.nn).to(torch_device, tdtype).to(memory_format=torch.channels_last)
    tx = (
      torch.from_numpy(x_host.transpose(0, 3, 1, 2).copy())
      .to(torch_device, tdtype)
      .contiguous(memory_format=torch.channels_last)
      .requires_grad_(True)
    )
    tg = (
      torch.from_numpy(np.asarray(g, np.float32).transpose(0, 3, 1, 2).copy())
      .to(torch_device, tdtype)
      .contiguous(memory_format=torch.channels_last)
    )
    sync = torch.cuda.synchronize if torch_device == 'cuda' else lambda: None

    def torch_forward():
      with torch.no_grad():
        tlayer(tx)
      sync()

    def torch_forward_backward():
      tx.grad = None
      for p in tlayer.parameters():
        p.grad = None
      tlayer(tx).backward(tg)
      sync()

    fns['torch_forward'] = torch_forward
    fns['torch_forward_backward'] = torch_forward_backward
  times = _interleaved(fns, steps)
  for key, t in times.items():
    row[key] = _timing(t, batch)
  row['jax_forward']['compile_s'] = fwd_compile
  row['jax_forward_backward']['compile_s'] = fwd_bwd_compile
  # Speed of ours relative to PyTorch's: PyTorch's time over ours (below 1: slower than PyTorch).
  row['forward_vs_torch'] = _ratio(_ms_of(row['torch_forward']), _ms_of(row['jax_forward']))
  row['forward_backward_vs_torch'] = _ratio(
    _ms_of(row['torch_forward_backward']), _ms_of(row['jax_forward_backward'])
  )
  row['load_average_before'], row['load_average_after'] = load_before, os.getloadavg()
  row['machine'] = machine
  print(
    f'{name:18s} {"x".join(map(str, row["shape"])):16s} fwd+bwd ours '
    f'{_ms(row["jax_forward_backward"])}, torch {_ms(row["torch_forward_backward"])}',
    flush=True,
  )
  return row


def _cold_compile_child(args: argparse.Namespace) -> None:
  """In a fresh process: build the trainer's step of one model and time its first compile."""
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
    only_trainer=True,
  )
  result = dict(
    init_s=steps.timings['init']['seconds'],
    lower_s=steps.timings['trainer']['lower_s'],
    xla_compile_s=steps.timings['trainer']['compile_s'],
    build_s=time.perf_counter() - t0,
  )
  print('COLD_COMPILE ' + json.dumps(result), flush=True)


def bench_cold_compile(name: str, batch: int, image_size: int, dtype: str, machine: dict) -> dict:
  """Runs _cold_compile_child in a fresh Python process (so nothing is cached) and reads it."""
  load_before = os.getloadavg()
  cmd = [
    sys.executable,
    os.path.abspath(__file__),
    f'--cold_compile_child={name}',
    f'--batch_sizes={batch}',
    f'--image_size={image_size}',
    f'--dtype={dtype}',
  ]
  t0 = time.perf_counter()
  # On a GPU this process and PyTorch hold memory already; compiling needs little.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - t0
  row = dict(
    kind='cold_compile',
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
  print(f'cold compile {name}: {_s(row.get("train_step_compile_s"))} s {row.get("status", "")}')
  return row


# ---------------------------------------------------------------------------------------------
# Tables


def _ms_of(m: Any) -> float | None:
  return m['median_ms'] if isinstance(m, dict) else None


def _ms(m: Any) -> str:
  return f'{m["median_ms"]:.1f} ms' if isinstance(m, dict) else str(m).split(':')[0]


def _s(v: float | None) -> str:
  return 'n/a' if v is None else f'{v:.1f}'


def _x(v: float | None, digits: int = 2) -> str:
  return 'n/a' if v is None else f'{v:.{digits}f}x'


def _cell(m: Any, digits: int = 1) -> str:
  """images/s of a measurement, or its status ('n/a', 'failed')."""
  if isinstance(m, dict):
    return f'{m["images_per_s"]:.{digits}f}'
  return str(m).split(':')[0]


def _notes(r: dict) -> str:
  failed = [
    f'{k}: {r[k]}'
    for k in ('torch_compile_train', 'torch_compile_infer')
    if str(r.get(k, '')).startswith('failed')
  ]
  return '; '.join([*r.get('warnings', []), *failed])


def _params(r: dict) -> str:
  theirs = 'n/a' if r['params_torch'] is None else f'{r["params_torch"]:,}'
  return f'{r["params_jax"]:,} / {theirs}'


def _ms_cell(m: Any) -> str:
  return f'{m["median_ms"]:.2f}' if isinstance(m, dict) else str(m).split(':')[0]


# (header, right-aligned, cell): the columns of each table. A failed row ('status') fills the
# cells it has the values for and puts its status in the last one.
Column = tuple[str, bool, Callable[[dict], str]]
MODEL_COLUMNS: list[Column] = [
  ('model', False, lambda r: r['model']),
  ('batch', True, lambda r: str(r['batch'])),
  ('px', True, lambda r: str(r['image_size'])),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('ours img/s', True, lambda r: _cell(r['ours'])),
  ('bare img/s', True, lambda r: _cell(r['bare'])),
  ('overhead', True, lambda r: f'{r["overhead_pct"]:+.1f}%'),
  ('torch img/s', True, lambda r: _cell(r['torch_train'])),
  ('torch.compile img/s', True, lambda r: _cell(r['torch_compile_train'])),
  ('ours/torch', True, lambda r: _x(r['train_vs_torch'])),
  ('ours/compile', True, lambda r: _x(r['train_vs_torch_compile'])),
  ('ours infer img/s', True, lambda r: _cell(r['jax_infer'])),
  ('torch infer img/s', True, lambda r: _cell(r['torch_infer'])),
  ('infer ours/torch', True, lambda r: _x(r['infer_vs_torch'])),
  ('pipeline img/s', True, lambda r: _cell(r['pipeline'], 0)),
  ('pipeline/step', True, lambda r: _x(r['pipeline_vs_step'], 1)),
  ('compile s (ours)', True, lambda r: f'{r["ours"]["compile_s"]:.1f}'),
  ('params ours / torch', False, _params),
  ('notes', False, _notes),
]
LAYER_COLUMNS: list[Column] = [
  ('layer', False, lambda r: r['layer']),
  ('input', False, lambda r: 'x'.join(map(str, r['shape']))),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('ours fwd ms', True, lambda r: _ms_cell(r['jax_forward'])),
  ('torch fwd ms', True, lambda r: _ms_cell(r['torch_forward'])),
  ('fwd ours/torch', True, lambda r: _x(r['forward_vs_torch'])),
  ('ours fwd+bwd ms', True, lambda r: _ms_cell(r['jax_forward_backward'])),
  ('torch fwd+bwd ms', True, lambda r: _ms_cell(r['torch_forward_backward'])),
  ('fwd+bwd ours/torch', True, lambda r: _x(r['forward_backward_vs_torch'])),
  ('notes', False, lambda r: ''),
]
COLD_COLUMNS: list[Column] = [
  ('cold compile', False, lambda r: r['model']),
  ('batch', True, lambda r: str(r['batch'])),
  ('px', True, lambda r: str(r['image_size'])),
  ('dtype', False, lambda r: r['dtype']),
  ('device', False, lambda r: r['device']),
  ('trace+lower s', True, lambda r: _s(r['lower_s'])),
  ('XLA compile s', True, lambda r: _s(r['xla_compile_s'])),
  ('train step s', True, lambda r: _s(r['train_step_compile_s'])),
  ('init + step s', True, lambda r: _s(r['build_s'])),
  ('notes', False, lambda r: ''),
]


def _table(rows: list[dict], columns: list[Column]) -> list[str]:
  def cell(fn: Callable[[dict], str], r: dict) -> str:
    try:
      return fn(r)
    except (KeyError, TypeError):  # a failed row lacks the measurements
      return ''

  out = [
    '| ' + ' | '.join(c[0] for c in columns) + ' |',
    '|' + '|'.join('---:' if c[1] else '---' for c in columns) + '|',
  ]
  for r in rows:
    cells = [cell(fn, r) for _, _, fn in columns[:-1]]
    notes = cell(columns[-1][2], r)
    if 'status' in r:
      notes = f'{r["status"]}; {notes}' if notes else r['status']
    out.append('| ' + ' | '.join([*cells, notes]) + ' |')
  return out


def tables(rows: list[dict]) -> str:
  out = []
  for kind, columns in (
    ('model', MODEL_COLUMNS),
    ('layer', LAYER_COLUMNS),
    ('cold_compile', COLD_COLUMNS),
  ):
    selected = [r for r in rows if r['kind'] == kind]
    if selected:
      out += [*([''] if out else []), *_table(selected, columns)]
  return '\n'.join(out)


# ---------------------------------------------------------------------------------------------
# Command line


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
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
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
  parser.add_argument('--out_dir', default=RESULTS)
  parser.add_argument(
    '--quick',
    action='store_true',
    help='smoke test: 3 steps, batch 4, no torch.compile; no cold compile unless named',
  )
  parser.add_argument('--cold_compile_child', default='', help=argparse.SUPPRESS)
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
    status = f'failed: {_one_line(e)}'
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
    _cold_compile_child(args)
    return {}
  torch, torch_device, torch_why = _import_torch(args.no_torch, args.torch_threads)
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
    command='python experiments/benchmark.py '
    + ' '.join(argv if argv is not None else sys.argv[1:]),
    args=vars(args),
    rows=rows,
  )
  text = tables(rows)
  m = result['machine']
  header = (
    f'{m["cpu"]}, {m["cpu_count"]} CPUs, {m["platform"]}; JAX {m["jax"]} on {m["device"]}; '
    f'torch {m["torch"] or "n/a"} on {m["torch_device"] or "n/a"} '
    f'({m["torch_threads"] or "n/a"} threads); load average {_load(m["load_average_before"])} '
    f'before, {_load(m["load_average_after"])} after; {m["wall_s"]:.0f} s.'
    + (f'\n\n{busy}' if busy else '')
  )
  print()
  print(text)
  print()
  print(header)
  os.makedirs(args.out_dir, exist_ok=True)
  json_path = os.path.join(args.out_dir, 'benchmark.json')
  with open(json_path, 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out_dir, 'benchmark.md'), 'w') as f:
    f.write(f'`{result["command"]}`\n\n{header}\n\n{text}\n')
  print(f'wrote {json_path} and benchmark.md')
  return result


def _load(load: tuple[float, float, float]) -> str:
  return '/'.join(f'{v:.1f}' for v in load)


if __name__ == '__main__':
  try:
    main()
  except UserError as e:
    sys.exit(f'error: {e}')
