"""Our models with torchvision's weights compute torchvision's logits (issue 3, Must-show 2).

  # torch and torchvision are no project requirement: a separate venv with them and requirements.txt
  python -m venv /tmp/tvenv
  /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 -r requirements.txt
  /tmp/tvenv/bin/python -m experiments.torchvision_parity             # all: 3.5 min on 2 cores
  /tmp/tvenv/bin/python -m experiments.torchvision_parity resnet50    # just some

Prints a table and writes experiments/results/torchvision_parity.md. For each model: torchvision's
model with random init (seeded, weights=None), every BatchNorm's running mean / var and affine
weight / bias randomised too (identity BN would hide a scale / mean / var mix-up), its state dict
through the user's path (torch.save -> `convert` -> .npz -> `load`), both in eval mode on the same
random batch (2 x 224 x 224 x 3, NCHW for torch in channels_last memory, NHWC here, float32;
efficientnet_b5 too, not its native 456, to stay cheap). Reported: max |ours - torch| and that
over max |torch| (pass: < 1e-4); seconds include compiling (rows of one group share a start).

Extra rows: googlenet with and without aux heads (torchvision's transform_input=False: True only
comes with its pretrained weights, see cnn_jax.weights.torchvision), googlenet in train mode with
dropout 0 (BN on batch statistics; the two aux heads' logits too), efficientnet_b0 without
`torchvision_kwargs` (BN epsilon 1e-3 instead of torchvision's 1e-5: expected to fail), and
single layers: conv, depthwise conv (both DepthwiseConv impls), linear, linear after a flatten.
"""

import os
import platform
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

from cnn_jax import models
from cnn_jax.nn.layers import DepthwiseConv
from cnn_jax.weights import torchvision as tvw
from experiments import common

try:
  import torch
  import torchvision
except ImportError:
  sys.exit('needs torch and torchvision: see the docstring of experiments/torchvision_parity.py')

TOLERANCE = 1e-4  # relative: max|ours - torch| / max|torch|
BATCH, SIZE = 2, 224
# The six first, then the other families that are cheap to run.
MODELS = (
  'resnet50',
  'vgg16_bn',
  'densenet121',
  'mobilenet_v2',
  'efficientnet_b0',
  'googlenet',
  'resnet18',
  'alexnet',
  'vgg11',
  'squeezenet1_0',
  'squeezenet1_1',
  'efficientnet_b5',
)


def torch_model(name: str, **kwargs) -> torch.nn.Module:
  """torchvision's `name`, random init (seeded), every BatchNorm's statistics and affine random."""
  torch.manual_seed(0)
  if name == 'googlenet':
    kwargs = dict(init_weights=True, aux_logits=True, transform_input=False) | kwargs
  m = getattr(torchvision.models, name)(weights=None, **kwargs)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for bn in m.modules():
      if isinstance(bn, torch.nn.BatchNorm2d):
        c = bn.num_features
        bn.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(c, generator=g))  # (0.5, 1.5)
        bn.weight.copy_(0.5 + torch.rand(c, generator=g))
        bn.bias.copy_(0.2 * torch.randn(c, generator=g))
  return m.eval().to(memory_format=torch.channels_last)


def imported(name: str, m: torch.nn.Module, model: nn.Module, folder: str) -> dict:
  """`model`'s variables from `m` the way a user gets them: .pth -> convert -> .npz -> load."""
  pth, npz = os.path.join(folder, f'{name}.pth'), os.path.join(folder, f'{name}.npz')
  torch.save(m.state_dict(), pth)
  tvw.convert(pth, npz)
  return tvw.load(model, npz)


def errors(ours, theirs) -> tuple[float, float]:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  diff = float(np.max(np.abs(ours - theirs)))
  return diff, diff / float(np.max(np.abs(theirs)))


def torch_forward(m: torch.nn.Module, x: np.ndarray, train: bool = False):
  m.train(train)
  with torch.no_grad():
    return m(torch.from_numpy(x).to(memory_format=torch.channels_last))


def nhwc(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def row(case: str, ours, expected, t0: float) -> tuple:
  """(case, max abs err, rel err, max |torch|, seconds since t0)."""
  expected = np.asarray(expected)
  return (case, *errors(ours, expected), float(np.abs(expected).max()), time.perf_counter() - t0)


def model_rows(name: str, x: np.ndarray, folder: str) -> list[tuple]:
  """Rows for one model, and for googlenet and efficientnet_b0 their extra cases."""
  t0 = time.perf_counter()
  m = torch_model(name)
  expected = torch_forward(m, x).numpy()
  model = models.create(name, **tvw.torchvision_kwargs(name))
  variables = imported(name, m, model, folder)
  rows = [row(name, jax.jit(model.apply)(variables, nhwc(x)), expected, t0)]

  if name == 'googlenet':
    # Train mode, dropout off on both sides: BN on batch statistics, and the aux heads run.
    t0 = time.perf_counter()
    for module in m.modules():
      if isinstance(module, torch.nn.Dropout):
        module.p = 0.0
    out = torch_forward(m, x, train=True)
    train_model = models.create(name, dropout_rate=0.0, aux_dropout_rate=0.0)
    logits, state = train_model.apply(
      variables, nhwc(x), train=True, mutable=['batch_stats', 'aux_logits']
    )
    aux = state['aux_logits']
    rows += [
      row('googlenet train: logits', logits, out.logits, t0),
      row('googlenet train: aux1', aux['aux1']['logits'][0], out.aux_logits1, t0),
      row('googlenet train: aux2', aux['aux2']['logits'][0], out.aux_logits2, t0),
    ]
    # Without aux heads: torchvision's state dict then has no aux1 / aux2 keys.
    t0 = time.perf_counter()
    m = torch_model(name, aux_logits=False)
    model = models.create(name, aux_logits=False)
    variables = imported('googlenet_noaux', m, model, folder)
    ours = jax.jit(model.apply)(variables, nhwc(x))
    rows.append(row('googlenet, aux_logits=False', ours, torch_forward(m, x), t0))

  if name == 'efficientnet_b0':
    # What torchvision_kwargs fixes: our default epsilon 1e-3 against torchvision's 1e-5.
    t0 = time.perf_counter()
    ours = jax.jit(models.create(name).apply)(variables, nhwc(x))
    rows.append(row('efficientnet_b0, bn_epsilon 1e-3 (expected to fail)', ours, expected, t0))
  return rows


def layer_rows() -> list[tuple]:
  """Single layers through `kernel_from_torch`: conv, depthwise conv, linear, flatten + linear."""
  torch.manual_seed(0)
  t0 = time.perf_counter()
  x = torch.randn(2, 16, 15, 15)
  x_nhwc = nhwc(x.numpy())
  weight = lambda layer: layer.weight.detach().numpy()
  bias = lambda layer: layer.bias.detach().numpy()
  rows = []
  with torch.no_grad():
    conv = torch.nn.Conv2d(16, 8, 7, stride=2, padding=3)
    v = {'params': {'kernel': tvw.kernel_from_torch(weight(conv)), 'bias': bias(conv)}}
    ours = nn.Conv(8, (7, 7), 2, padding=3).apply(v, x_nhwc)
    rows.append(row('layer: conv 7x7/2 pad 3', ours, nhwc(conv(x).numpy()), t0))

    for k, stride in ((3, 2), (5, 1)):
      dw = torch.nn.Conv2d(16, 16, k, stride=stride, padding=k // 2, groups=16, bias=False)
      v = {
        'params': {'kernel': tvw.kernel_from_torch(weight(dw))}
      }  # (16, 1, k, k) -> (k, k, 1, 16)
      for impl in ('shift', 'grouped'):
        ours = DepthwiseConv((k, k), strides=stride, padding=k // 2, impl=impl).apply(v, x_nhwc)
        rows.append(
          row(f'layer: depthwise {k}x{k}/{stride} ({impl})', ours, nhwc(dw(x).numpy()), t0)
        )

    linear = torch.nn.Linear(16 * 15 * 15, 10)
    # torch flattens (C, H, W), we flatten (H, W, C): the rows of the kernel are reordered.
    v = {
      'params': {'kernel': tvw.kernel_from_torch(weight(linear), (15, 15)), 'bias': bias(linear)}
    }
    ours = nn.Dense(10).apply(v, x_nhwc.reshape(2, -1))
    rows.append(row('layer: flatten + linear', ours, linear(x.flatten(1)), t0))
    y = torch.randn(2, 16 * 15 * 15)
    v = {'params': {'kernel': tvw.kernel_from_torch(weight(linear)), 'bias': bias(linear)}}
    rows.append(row('layer: linear', nn.Dense(10).apply(v, y.numpy()), linear(y), t0))
  return rows


def machine() -> str:
  return f'{common.cpu_name()}, {os.cpu_count()} cores visible, {jax.default_backend()}'


def main(names: list[str]) -> str:
  unknown = [n for n in names if n not in tvw.TORCHVISION_MODELS]
  if unknown:
    sys.exit(f'not torchvision models: {unknown}; pick from {", ".join(tvw.TORCHVISION_MODELS)}')
  start = time.perf_counter()
  x = np.random.default_rng(0).standard_normal((BATCH, 3, SIZE, SIZE), dtype=np.float32)
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for name in names:
      for row in model_rows(name, x, folder):
        print(f'{row[0]:<52} max abs {row[1]:.2e}  rel {row[2]:.2e}  ({row[4]:.0f} s)', flush=True)
        rows.append(row)
  rows += layer_rows()
  total = time.perf_counter() - start

  lines = [
    f'| case | max abs err | rel err | max abs logit | pass (rel < {TOLERANCE:g}) | seconds |',
    '|---|---:|---:|---:|---|---:|',
  ]
  for case, abs_err, rel_err, scale, seconds in rows:
    ok = 'yes' if rel_err < TOLERANCE else 'no'
    lines.append(f'| {case} | {abs_err:.2e} | {rel_err:.2e} | {scale:.3g} | {ok} | {seconds:.0f} |')
  table = '\n'.join(lines)
  versions = (
    f'python {platform.python_version()}, torch {torch.__version__}, torchvision '
    f'{torchvision.__version__}, jax {jax.__version__}, flax {__import__("flax").__version__}, '
    f'numpy {np.__version__}'
  )
  report = (
    '# torchvision parity\n\n'
    'Written by `python -m experiments.torchvision_parity` (its docstring says how to run it and\n'
    'what is compared): logits of our models with torchvision weights imported by\n'
    '`cnn_jax.weights.torchvision` against torchvision, eval mode unless the case says train,\n'
    f'batch {BATCH} at {SIZE}x{SIZE}, random weights and BatchNorm statistics. Seconds include\n'
    'torch, conversion and compiling; grouped rows (googlenet train, layers) share a start.\n\n'
    f'- machine: {machine()}\n- versions: {versions}\n'
    f'- torch threads: {torch.get_num_threads()}; total time {total:.0f} s\n\n{table}\n'
  )
  if names == list(MODELS):
    common.write_text(os.path.join(common.RESULTS, 'torchvision_parity.md'), report)
  return report


if __name__ == '__main__':
  print(main(sys.argv[1:] or list(MODELS)))
