"""Whether XLA was asked for run-to-run deterministic GPU kernels (XLA_FLAGS), which changes what
some layers may lower to.

  XLA_FLAGS=--xla_gpu_deterministic_ops=true python main.py ...

With `--xla_gpu_deterministic_ops` (or `--xla_gpu_exclude_nondeterministic_ops`) XLA:GPU picks
deterministic scatter, reduction, GEMM and convolution kernels, and refuses to compile
select-and-scatter, for which it has none (openxla's docs/determinism.md). Max pooling's gradient
is select-and-scatter when jax differentiates `reduce_window(max)`, so `cnn_jax.nn.pooling`
uses its own phase-wise backward (pads and adds only) whenever these flags are set.
"""

import os

FLAGS = ('xla_gpu_deterministic_ops', 'xla_gpu_exclude_nondeterministic_ops')


def requested(xla_flags: str | None = None) -> bool:
  """True when XLA_FLAGS (or `xla_flags`) turns one of FLAGS on (the last mention wins)."""
  text = os.environ.get('XLA_FLAGS', '') if xla_flags is None else xla_flags
  state = {}
  for token in text.split():
    name, eq, value = token.lstrip('-').partition('=')
    if name in FLAGS:
      state[name] = (not eq) or value.strip().lower() in ('true', '1', 't', 'yes')
  return any(state.values())


__all__ = ['FLAGS', 'requested']
