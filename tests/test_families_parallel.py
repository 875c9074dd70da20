"""Each family's config trains its tiny variant one step on 4 simulated devices (the real step).

The family's own config (optimizer, schedule, label smoothing, model fields) with the model name
swapped for the tiny variant, the trainer's `train_step` under shard_map over 4 devices, a global
batch of 8 digits (2 per device). Variables come from numpy (XLA:CPU compiles each random
initializer for ~0.3 s) and the step is compiled with LLVM's cheap passes: compile time is all
these tests spend.
"""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cnn_jax import data, train
from cnn_jax.core import parallel
from cnn_jax.models.deeplab import TINY_BACKBONE

# config file -> (tiny model, image size)
FAMILIES = {
  'lenet5': ('lenet5', 32),
  'resnet': ('resnet_tiny', 16),
  'senet': ('resnet_tiny', 16),  # with the config's se_reduction, 4 here (widths 4/8/16)
  'alexnet': ('alexnet_tiny', 64),
  'vgg': ('vgg_tiny', 32),
  'googlenet': ('googlenet_tiny', 32),
  'densenet': ('densenet_tiny', 32),
  'squeezenet': ('squeezenet_tiny', 32),
  'mobilenet': ('mobilenet_v2_tiny', 32),
  'efficientnet': ('efficientnet_tiny', 32),
  'unet': ('unet', 32),
  'fcn': ('fcn8s', 32),
  'deeplab': ('deeplabv3plus_resnet50', 32),
}
# Segmentation configs name full-size nets with offline widths; these fields make them tiny.
TINY_FIELDS = {
  'unet': {'depth': 2, 'base_width': 4},
  'fcn': {'backbone': 'vgg_tiny', 'hidden': 16},
  'deeplab': {
    'backbone': 'resnet_tiny',
    'backbone_kwargs': dict(TINY_BACKBONE),  # 4 stages of 4..32 channels
    'aspp_features': 8,
    'decoder_features': 8,
  },
}
_FAST = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _numpy_variables(model, shape):
  rng = np.random.default_rng(0)
  abstract = jax.eval_shape(
    functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros(shape)
  )

  def fill(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, np.float32)
    if name in ('bias', 'mean'):
      return np.zeros(leaf.shape, np.float32)
    fan_in = max(int(np.prod(leaf.shape[:-1])), 1)
    return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, abstract)


# The two slowest (25-27 s each on 2 cores) run in CI's slow step.
SLOW_FAMILIES = ('deeplab', 'googlenet')


@pytest.mark.parametrize(
  'family',
  [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_FAMILIES else f for f in sorted(FAMILIES)],
)
def test_family_trains_one_step_on_four_devices(family, tmp_path, data_dir):
  name, size = FAMILIES[family]
  config = importlib.import_module(f'configs.{family}').get_config()
  config.model.name, config.image_size = name, size
  if family == 'senet':
    config.model.se_reduction = 4
  for field, value in TINY_FIELDS.get(family, {}).items():
    config.model[field] = value
  config.batch_size = config.eval_batch_size = 8
  config.num_train_steps = 1
  config.optimizer.warmup_steps = 0  # the step at lr 0 would move nothing
  config.data_dir = data_dir
  exp = train.build(config, str(tmp_path / 'w'))
  assert exp.runner.num_devices == 4
  variables = _numpy_variables(exp.model, (1, size, size, config.image_channels))
  params = variables['params']
  state = train.TrainState(
    step=np.zeros((), np.int32),
    params=params,
    batch_stats=variables.get('batch_stats', {}),
    opt_state=exp.tx.init(params),
    rng=jax.random.PRNGKey(0),
  )
  step = functools.partial(train.train_step, model=exp.model, tx=exp.tx, task=exp.task)
  mapped = jax.shard_map(
    step,
    mesh=exp.runner.mesh,
    in_specs=(P(), P(parallel.AXIS)),
    out_specs=(P(), P()),
    check_vma=False,
  )
  (batch,) = data.train_iterator(
    exp.data,
    seed=0,
    global_batch=8,
    start_step=0,
    num_steps=1,
    image_size=size,
    channels=config.image_channels,
  )
  new, metrics = jax.jit(mapped, compiler_options=_FAST)(
    exp.runner.put_state(state), exp.runner.put_batch(batch)
  )
  new, metrics = jax.device_get((new, metrics))
  assert int(new.step) == 1 and np.isfinite(metrics['loss']) and metrics['loss'] > 0
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, new.params)
  assert sum(jax.tree.leaves(moved)) > 0.9 * len(jax.tree.leaves(moved)), family
  if family in ('googlenet',):  # the aux heads learn from their own losses
    assert all(jax.tree.leaves(moved['aux1'])) and all(jax.tree.leaves(moved['aux2']))
