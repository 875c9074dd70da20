"""--mode=export: a TF SavedModel (jax2tf) that computes the JAX model's logits, and the .npz."""

import json
import os

import helpers
import jax
import numpy as np
import pytest
import tensorflow as tf
from test_predict import DEFAULT_OVERRIDES, default_config, trained_run, two_step_config

from cnn_jax import cli, train
from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError
from cnn_jax.inference import export
from cnn_jax.weights import npz


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, data_dir) -> str:
  return trained_run(tmp_path_factory, 'predict_tiny', two_step_config(data_dir))  # test_predict's


@pytest.mark.slow  # jax2tf conversion, SavedModel written and loaded back: about 20 s
def test_saved_model_gives_the_jax_logits(tiny_run, data_dir, capsys):
  config = two_step_config(data_dir)
  out = os.path.join(tiny_run, 'export')
  os.makedirs(os.path.join(out, 'saved_model'), exist_ok=True)
  with open(os.path.join(out, 'stale.txt'), 'w') as f:
    f.write('from an earlier export')  # replaced whole
  cli.run(config, tiny_run, 'export')
  info = json.loads(capsys.readouterr().out)
  assert info['output'] == out and info['step'] == 2
  assert info['platforms'] == ['cpu', 'cuda']
  assert sorted(os.listdir(out)) == ['export.json', 'saved_model', 'variables.npz']
  assert not [p for p in os.listdir(tiny_run) if '.tmp-' in p]  # no staging folder left
  with open(os.path.join(out, 'export.json')) as f:
    assert json.load(f) == info
  assert info['input_shape'] == [None, 16, 16, 3] and info['class_names'] == list('0123456789')

  exp = train.build(config, tiny_run)
  variables = train.restore_variables(exp)
  with open(os.path.join(tiny_run, 'summary.json')) as f:
    assert info['params_sha256'] == json.load(f)['params_sha256']  # the trained weights
  # The weights file holds exactly the checkpoint's params and BatchNorm statistics.
  saved = npz.load_npz(os.path.join(out, 'variables.npz'))
  assert jax.tree.structure(saved) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)

  batch = next(data_lib.eval_iterator(exp.data, global_batch=8, image_size=16, channels=3))
  logits = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))
  loaded = tf.saved_model.load(os.path.join(out, 'saved_model'))
  for n in (8, 3):  # any batch size: the batch dimension is symbolic
    images = batch['image'][:n]
    got = loaded.signatures['serving_default'](images=tf.constant(images))['logits'].numpy()
    assert got.shape == (n, 10)
    np.testing.assert_allclose(got, logits(variables, images), rtol=0, atol=1e-5)
  # File bytes in, the eval preprocessing inside the graph.
  encoded = [r['image'] for r in exp.data.validation.__getitems__(list(range(8)))]
  got = loaded.signatures['serving_encoded'](encoded=tf.constant(encoded))['logits'].numpy()
  np.testing.assert_allclose(got, logits(variables, batch['image']), rtol=0, atol=1e-5)
  assert 0 <= max(info['max_abs_diff'].values()) <= 1e-5
  # The exported weights start another run (config.init_from.path): the same variables.
  config.init_from.path = os.path.join(out, 'variables.npz')
  started = train.starting_state(train.build(config, str(tiny_run) + '_from_npz'))
  for a, b in zip(
    jax.tree.leaves({'params': started.params, 'batch_stats': started.batch_stats}),
    jax.tree.leaves(variables),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


def test_npz_round_trip(tmp_path):
  variables = {
    'params': {'conv': {'kernel': np.ones((3, 3, 1, 2), np.float32)}, 'head': {'bias': np.ones(2)}},
    'batch_stats': {'bn': {'mean': np.zeros(2, np.float32), 'var': np.ones(2, np.float32)}},
  }
  path = str(tmp_path / 'w.npz')
  assert npz.save_npz(path, variables) == 4
  with np.load(path) as f:
    assert sorted(f.files) == [
      'batch_stats/bn/mean',
      'batch_stats/bn/var',
      'params/conv/kernel',
      'params/head/bias',
    ]
  back = npz.load_npz(path)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
    np.testing.assert_array_equal(a, b)
    assert a.dtype == b.dtype


def test_nothing_to_export(tmp_path, data_dir):
  with pytest.raises(UserError, match=r'no checkpoint in .*checkpoints; train first'):
    export.export(two_step_config(data_dir), str(tmp_path))
  with pytest.raises(UserError, match='--mode=export needs --workdir'):
    export.export(two_step_config(data_dir), None)
  assert not os.listdir(tmp_path)  # nothing created


@pytest.mark.slow
def test_default_config_exported_by_main(tmp_path_factory, data_dir, tmp_path):
  """main.py --mode=export on the offline default config (ResNet-20, 3 steps): the SavedModel's
  logits on an eval batch are the JAX model's."""
  config = default_config(data_dir)
  workdir = trained_run(tmp_path_factory, 'predict_resnet20', config)
  out = tmp_path / 'export'
  args = ['--config=configs/resnet.py', f'--workdir={workdir}', '--mode=export', f'--output={out}']
  args += [f'--config.{k}={v}' for k, v in DEFAULT_OVERRIDES.items()]
  code, stdout, err = helpers.run(args, data_dir)
  assert code == 0, err
  assert json.loads(stdout)['output'] == str(out)
  exp = train.build(config, workdir)
  variables = train.restore_variables(exp)
  batch = next(data_lib.eval_iterator(exp.data, global_batch=16, image_size=32, channels=3))
  expected = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))(variables, batch['image'])
  loaded = tf.saved_model.load(str(out / 'saved_model'))
  got = loaded.signatures['serving_default'](images=tf.constant(batch['image']))['logits']
  np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
