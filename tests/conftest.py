"""Test set-up: 4 simulated CPU devices and a private tfds data folder, before JAX starts."""

import os

# Must be set before JAX initialises its CPU backend (at the first import of jax below).
os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('NO_GCE_CHECK', 'true')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A tfds data folder holding only the locally built `digits` (nothing else: offline)."""
  path = str(tmp_path_factory.mktemp('tfds'))
  from cnn_jax import data

  data.load('digits', path)  # builds it once for the session (a few seconds)
  return path


@pytest.fixture(scope='session')
def scenes_dir(data_dir) -> str:
  """The session's tfds folder with the locally built `digit_scenes` added (a few seconds)."""
  from cnn_jax import data

  data.load('digit_scenes', data_dir)
  return data_dir


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory) -> str:
  """A tfds data folder with the six datasets of tests/tfds_fixtures.py (mnist, cifar10, cifar100,
  imagenet2012, oxford_iiit_pet, voc/2007) built by their real tfds builders from small generated
  sources (about 1 s, plus TensorFlow's import). Built once per test run: under pytest-xdist the
  workers share one folder beside their own temporary folders (the first builds it under a lock,
  the others wait)."""
  import tfds_fixtures

  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  return tfds_fixtures.prepare_all_once(str(shared))
