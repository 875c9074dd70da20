"""PyTorch's side of a model row: the twins of our models (torchvision's, or written here layer
for layer) and their eager and torch.compile train step and inference, channels_last."""

import functools
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import numpy as np

from cnn_jax.core.errors import UserError
from experiments.benchmark.spec import LR, MOMENTUM, WEIGHT_DECAY, Bench, one_line


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
        self.status[name] = f'failed: {one_line(e)}'
        print(f'  torch.compile {name}: {self.status[name]}', flush=True)
        continue
      self.compile_s[name] = time.perf_counter() - t0
      fns[name] = functools.partial(fn, self.compiled)
    return fns
