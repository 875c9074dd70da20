"""Side by side: our trainer's train step and inference against PyTorch, on the same machine.

  pip install -r requirements-bench.txt        # torch + torchvision (CPU builds) beside ours
  python -m experiments.benchmark              # every model, layer and the cold compile
  python -m experiments.benchmark --models resnet18_cifar,mobilenet_v2 --batch_sizes 32,64
  python -m experiments.benchmark --quick      # a smoke run: 3 steps, batch 4, no torch.compile

What it times, for each model of --models and each batch of --batch_sizes, on synthetic data
(fixed random images and labels, already on the device):
- ours: `cnn_jax.train.train_step` built the trainer's way (train.create_model, optim, tasks,
  train.initial_state) and compiled by the runner of cnn_jax.core.parallel (1 device, state
  donated);
- bare: a plain `jax.jit` (state donated) of the same model, softmax cross-entropy and optax
  update, no runner and no metrics: ours over bare is the trainer's overhead;
- JAX inference: a jitted eval-mode forward;
- PyTorch eager in channels_last (NCHW is 4-10x slower on CPU): an SGD-momentum step with
  cross-entropy, BatchNorm in train mode, and an inference-mode forward; then the same through
  `torch.compile` where it works (a failure is recorded as 'failed: <its first line>').
Every callable is compiled first (JAX: `.lower().compile()`, timed; torch.compile: its first
call, timed), called once more as warm-up, and then all of them are called in turn, one call each
per round, for --steps rounds (`experiments.timing.interleaved`), so that a load that comes
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

The modules, by what they measure: model_bench (a model's row: jax_steps for ours, bare and JAX
inference, torch_steps for PyTorch, pipeline for the input pipeline), layer_bench (the layers),
cold_compile (the fresh-process compile); spec (models, machine, config, batch), tables (the
markdown) and cli (the flags and the run) around them.
"""

# First, before JAX starts and TensorFlow loads (see there).
from experiments.benchmark import preload  # noqa: F401

# isort: split
from experiments.benchmark.cli import image_size_of, main, parse_args
from experiments.benchmark.cold_compile import bench_cold_compile, cold_compile_child
from experiments.benchmark.jax_steps import JaxSteps, aot, bare_train_step
from experiments.benchmark.layer_bench import LAYERS, Layer, bench_layer
from experiments.benchmark.model_bench import bench_model
from experiments.benchmark.pipeline import bench_pipeline
from experiments.benchmark.spec import (
  LR,
  MODELS,
  MOMENTUM,
  WEIGHT_DECAY,
  Bench,
  bench_spec,
  import_torch,
  machine_info,
  make_config,
  synthetic_batch,
)
from experiments.benchmark.tables import tables
from experiments.benchmark.torch_steps import TorchSteps, torch_twin

__all__ = [
  'LAYERS',
  'LR',
  'MODELS',
  'MOMENTUM',
  'WEIGHT_DECAY',
  'Bench',
  'JaxSteps',
  'Layer',
  'TorchSteps',
  'aot',
  'bare_train_step',
  'bench_cold_compile',
  'bench_layer',
  'bench_model',
  'bench_pipeline',
  'bench_spec',
  'cold_compile_child',
  'image_size_of',
  'import_torch',
  'machine_info',
  'main',
  'make_config',
  'parse_args',
  'synthetic_batch',
  'tables',
  'torch_twin',
]
