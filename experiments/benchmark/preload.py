"""Imported first by experiments.benchmark (and step_profile), before JAX starts and before
TensorFlow loads: PyTorch runs in the same process as JAX there."""

import os

# JAX takes 75% of a GPU's memory at start by default; PyTorch runs in the same process.
os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.5')

try:
  # Before TensorFlow (cnn_jax.data): PyPI's CUDA wheel of torch brings triton, whose shared
  # library kills the process (SIGSEGV) when it loads after TensorFlow's (torch._dynamo loads it).
  import triton  # noqa: F401
except Exception:  # not installed (CPU builds of torch): nothing to do
  pass
