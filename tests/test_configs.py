"""Every family config: each variant builds its model, takes its image size and its optimizer."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnn_jax import train
from cnn_jax.train import optim
from configs import default

CONFIG_DIR = pathlib.Path(__file__).parents[1] / 'configs'
# style_transfer is not a trainer config (a backbone's config inside; tests/test_style_recipe.py).
CONFIG_NAMES = sorted(
  p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in ('__init__', 'default', 'style_transfer')
)
SEGMENTATION = ('deeplab', 'fcn', 'unet')  # digit_scenes offline, 'pets' by argument
RECIPES = ('distill', 'noisy_student')  # digits offline, 'cifar10' by argument
# Other tasks: (offline dataset, variants) of detection and metric learning.
TASKS = {'yolo': ('digit_boxes', ['', 'voc']), 'triplet': ('digits', [''])}
# The classification families (lenet5 has its own 'mnist' variant).
FAMILIES = [
  n for n in CONFIG_NAMES if n != 'lenet5' and n not in SEGMENTATION + RECIPES + tuple(TASKS)
]


def _variants(name: str) -> list[str]:
  if name in TASKS:
    return TASKS[name][1]
  if name in SEGMENTATION:
    return ['', 'pets']
  if name in RECIPES:
    return ['', 'cifar10']
  return ['', 'mnist'] if name == 'lenet5' else ['', 'cifar10', 'imagenet2012']


_CHECKED = set()  # (model fields, image size) already traced: tracing a DenseNet takes seconds


@pytest.mark.parametrize('name,arg', [(n, a) for n in CONFIG_NAMES for a in _variants(n)])
def test_config_builds_its_model_at_its_size(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  offline = 'digit_scenes' if name in SEGMENTATION else TASKS.get(name, ('digits',))[0]
  expected = {'': offline, 'mnist': 'mnist', 'pets': 'oxford_iiit_pet'}.get(arg, arg)
  assert config.dataset == expected
  key = (str(config.model), config.image_size)
  if key not in _CHECKED:
    model = train.create_model(config, num_classes=10)  # config.model fields are module fields
    train.check_input_size(model, config)  # jax.eval_shape: no compute
    _CHECKED.add(key)
  steps_per_epoch = 10 if arg == '' else 100
  schedule = optim.create_schedule(config.optimizer, 1000, steps_per_epoch)
  lrs = [float(schedule(s)) for s in range(0, 1000, 50)]
  assert all(np.isfinite(lrs)) and max(lrs) == pytest.approx(config.optimizer.lr, rel=0.05)
  optim.create_optimizer(config.optimizer, schedule).init({'w': jnp.ones((3, 3))})


@pytest.mark.parametrize('name', FAMILIES + list(SEGMENTATION + RECIPES) + list(TASKS))
def test_unknown_variant_is_refused(name):
  with pytest.raises(ValueError, match="unknown variant 'cifar11'"):
    importlib.import_module(f'configs.{name}').get_config('cifar11')


def test_every_offline_default_shares_the_recipe():
  for name in FAMILIES:
    config = importlib.import_module(f'configs.{name}').get_config()
    assert config.dataset == 'digits' and config.optimizer.nesterov, name
    assert config.label_smoothing == 0.1 and config.optimizer.warmup_epochs == 1.0, name


def test_exponential_and_linear_schedules():
  config = default.get_config().optimizer
  config.lr, config.schedule, config.decay_factor = 0.256, 'exponential', 0.97
  config.decay_every_epochs = 2.4  # EfficientNet: 0.97 every 2.4 epochs, staircase
  schedule = optim.create_schedule(config, 10_000, 100)
  assert [float(schedule(s)) for s in (0, 239, 240, 480)] == pytest.approx(
    [0.256, 0.256, 0.256 * 0.97, 0.256 * 0.97**2]
  )
  config.schedule, config.lr = 'linear', 0.04  # SqueezeNet's "poly" with power 1
  schedule = optim.create_schedule(config, 1000, 100)
  assert [float(schedule(s)) for s in (0, 500, 1000)] == pytest.approx([0.04, 0.02, 0.0], abs=1e-7)


def test_rmsprop_is_tensorflows():
  """First step: ms = rho * 1 + (1 - rho) g^2 (started at 1), update = lr g / sqrt(ms + eps)."""
  config = default.get_config().optimizer
  config.name, config.lr, config.momentum, config.weight_decay = 'rmsprop', 0.1, 0.9, 0.0
  tx = optim.create_optimizer(config, optax.constant_schedule(config.lr))
  params = {'w': jnp.zeros((2, 2))}
  grads = {'w': jnp.array([[1.0, -2.0], [0.5, 3.0]])}
  updates, _ = tx.update(grads, tx.init(params), params)
  g = np.asarray(grads['w'])
  ms = 0.9 + 0.1 * g**2
  np.testing.assert_allclose(updates['w'], -0.1 * g / np.sqrt(ms + 1e-3), rtol=1e-6)
  jax.block_until_ready(updates)


@pytest.mark.parametrize(
  'name,reference_lr,reference_batch',
  [('resnet', 0.1, 256), ('senet', 0.6, 1024), ('efficientnet', 0.256, 4096)],
)
def test_the_linear_scaling_rule_follows_a_batch_size_override(name, reference_lr, reference_batch):
  """The ImageNet recipes give lr for the paper's batch; --config.batch_size=64 scales it when
  the run starts (a lr computed in get_config kept the default batch's lr and diverged)."""
  config = importlib.import_module(f'configs.{name}').get_config('imagenet2012')
  assert config.optimizer.lr_batch_size == reference_batch
  for batch in (config.batch_size, 64):
    schedule = optim.create_schedule(config.optimizer, 10_000, 100, batch)
    peak = max(float(schedule(s)) for s in range(0, 10_000, 10))
    assert peak == pytest.approx(reference_lr * batch / reference_batch, rel=1e-6)
