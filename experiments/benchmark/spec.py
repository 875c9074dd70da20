"""What is benchmarked and on what: the models and their input sizes, the machine (CPU name,
device, versions), torch if importable, the trainer config and the synthetic batch; and the
measurement record every timed callable gets."""

import dataclasses
import os
import platform
import statistics
from typing import Any

import jax
import ml_collections
import numpy as np

from cnn_jax import models
from cnn_jax.core.errors import UserError
from configs import default
from experiments import common

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
  torch_twin: str  # a builder of experiments.benchmark.torch_steps, or '' for none


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


def machine_info(torch_mod: Any, torch_device: str) -> dict[str, Any]:
  info = dict(
    platform=platform.platform(),
    cpu=common.cpu_name(),
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
      torch_mod.cuda.get_device_name(0) if torch_device == 'cuda' else common.cpu_name()
    )
  return info


def import_torch(no_torch: bool, threads: int) -> tuple[Any, str, str]:
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


def one_line(e: BaseException) -> str:
  lines = [s for s in str(e).splitlines() if s.strip()]
  return f'{type(e).__name__}: {lines[0] if lines else ""}'[:200]


def measurement(times: list[float], batch: int, **extra) -> dict[str, Any]:
  median = statistics.median(times)
  return dict(
    median_ms=1e3 * median,
    min_ms=1e3 * min(times),
    steps=len(times),
    images_per_s=batch / median,
    **extra,
  )


def ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else a / b


def ips(m: Any) -> float | None:
  return m['images_per_s'] if isinstance(m, dict) else None
