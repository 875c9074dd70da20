"""Layer micro-benchmarks: forward, and forward + backward through `jax.vjp` with a fixed
cotangent, of the layers our models build, against PyTorch's channels_last twins."""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax.nn.layers import AvgPool, BatchNorm, Conv, DepthwiseConv, MaxPool, PointwiseConv
from cnn_jax.nn.upsample import Upsample
from experiments.benchmark.spec import measurement, ratio
from experiments.benchmark.tables import fmt_ms, ms_of
from experiments.timing import compile_jit, interleaved


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

  fwd, fwd_compile = compile_jit(forward, params, x)
  fwd_bwd, fwd_bwd_compile = compile_jit(forward_backward, params, x, g)
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
  times = interleaved(fns, steps)
  for key, t in times.items():
    row[key] = measurement(t, batch)
  row['jax_forward']['compile_s'] = fwd_compile
  row['jax_forward_backward']['compile_s'] = fwd_bwd_compile
  # Speed of ours relative to PyTorch's: PyTorch's time over ours (below 1: slower than PyTorch).
  row['forward_vs_torch'] = ratio(ms_of(row['torch_forward']), ms_of(row['jax_forward']))
  row['forward_backward_vs_torch'] = ratio(
    ms_of(row['torch_forward_backward']), ms_of(row['jax_forward_backward'])
  )
  row['load_average_before'], row['load_average_after'] = load_before, os.getloadavg()
  row['machine'] = machine
  print(
    f'{name:18s} {"x".join(map(str, row["shape"])):16s} fwd+bwd ours '
    f'{fmt_ms(row["jax_forward_backward"])}, torch {fmt_ms(row["torch_forward_backward"])}',
    flush=True,
  )
  return row
