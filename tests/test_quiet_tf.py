"""TensorFlow's start-up log stays off stderr (cnn_jax/core/quiet_tf.py), whatever the processor."""

import os
import subprocess
import sys

from cnn_jax.core.quiet_tf import filter_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What TF 2.21 printed at import on an AVX-512 machine, before anything of ours.
STARTUP = """WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796667249.867545    4795 port.cc:153] oneDNN custom operations are on. You may see
I0000 00:00:1796667251.570767    4795 cpu_feature_guard.cc:227] This TensorFlow binary is optimized
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations.
E0000 00:00:1796667251.6 4795 cuda_dnn.cc:8310] Unable to register cuDNN factory
a Python warning of the import
"""


def test_filter_keeps_errors_and_what_is_not_a_log_record():
  assert filter_log(STARTUP, 2).splitlines() == [
    'E0000 00:00:1796667251.6 4795 cuda_dnn.cc:8310] Unable to register cuDNN factory',
    'a Python warning of the import',
  ]
  assert len(filter_log(STARTUP, 0).splitlines()) == 5  # all records; never the preamble
  assert filter_log('', 2) == ''


def test_importing_every_module_writes_nothing_on_stderr():
  """Every module of the package, and the TensorBoard writer (flax's imports TensorFlow), with
  TensorFlow's oneDNN notice forced on."""
  modules = []
  for folder, _, files in os.walk(os.path.join(ROOT, 'cnn_jax')):
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.relpath(os.path.join(folder, name), ROOT)[:-3]
        modules.append(path.replace(os.sep, '.').removesuffix('.__init__'))
  code = (
    'import importlib, tempfile\n'
    f'for m in {sorted(modules)!r}:\n'
    '  importlib.import_module(m)\n'
    'from cnn_jax.core import logs\n'
    'logs.MetricWriter(tempfile.mkdtemp()).close()\n'
  )
  env = {**os.environ, 'TF_ENABLE_ONEDNN_OPTS': '1', 'JAX_PLATFORMS': 'cpu'}
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  done = subprocess.run(
    [sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stderr == ''
