"""--mode=export: a TF SavedModel (jax2tf) or a serialized jax.export StableHLO module that
computes the JAX model's logits, and the .npz."""

import json
import os
import subprocess
import sys

import helpers
import jax
import numpy as np
import pytest
import tensorflow as tf
from test_predict import DEFAULT_OVERRIDES, default_config, trained_run, two_step_config
from test_synthetic import _site_without_tensorflow

from cnn_jax import cli, train
from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError
from cnn_jax.inference import export, predict
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


# ---------------------------------------------------------------------------------------------
# --export_format=stablehlo: JAX only


def test_stablehlo_gives_the_jax_logits_for_any_batch(tiny_run, data_dir, tmp_path, capsys):
  config = two_step_config(data_dir)
  out = str(tmp_path / 'export')
  cli.run(config, tiny_run, 'export', output=out, export_format='stablehlo')
  info = json.loads(capsys.readouterr().out)
  assert info['format'] == 'stablehlo' and info['platforms'] == ['cpu', 'cuda']
  assert info['output'] == out and info['step'] == 2 and 'call' in info
  assert sorted(os.listdir(out)) == ['export.json', 'model.stablehlo', 'variables.npz']
  assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]  # no staging folder left
  with open(os.path.join(out, 'export.json')) as f:
    assert json.load(f) == info
  assert 0 <= info['max_abs_diff']['stablehlo'] <= 1e-5  # checked on 8 images

  exp = train.build(config, tiny_run)
  variables = train.restore_variables(exp)
  images = next(data_lib.eval_iterator(exp.data, global_batch=8, image_size=16, channels=3))
  images = images['image']
  forward = jax.jit(predict.forward_fn(exp))
  logits = export.load_stablehlo(out)
  for n in (3, 5):  # not the 8 checked at export: the batch dimension is symbolic
    got = logits(images[:n])
    assert got.shape == (n, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, forward(variables, images[:n]), rtol=0, atol=1e-5)
  with pytest.raises(
    UserError, match=r'images of shape \(2, 16, 16, 1\); this export takes \(N, 16'
  ):
    logits(images[:2, ..., :1])
  # The weights are arguments of the module, not constants in it: other weights, other logits.
  with open(os.path.join(out, 'model.stablehlo'), 'rb') as f:
    exported = jax.export.deserialize(f.read())
  assert len(exported.in_avals) == len(jax.tree.leaves(variables)) + 1
  halved = jax.tree.map(
    lambda a: np.asarray(a) / 2, npz.load_npz(os.path.join(out, 'variables.npz'))
  )
  np.testing.assert_allclose(
    exported.call(halved, images[:3]), forward(halved, images[:3]), rtol=0, atol=1e-5
  )


def test_what_load_stablehlo_refuses(tmp_path):
  with pytest.raises(UserError, match=r'holds no export.json; give a folder that --mode=export'):
    export.load_stablehlo(str(tmp_path))
  with open(tmp_path / 'export.json', 'w') as f:
    json.dump({'model': 'resnet_tiny'}, f)  # an export written before --export_format
  with pytest.raises(UserError, match='holds a saved_model export; load_stablehlo reads'):
    export.load_stablehlo(str(tmp_path))
  with pytest.raises(UserError, match="--export_format='onnx'; use one of saved_model, stablehlo"):
    export.export(helpers.tiny_config(''), str(tmp_path), export_format='onnx')


def test_warning_threshold_is_looser_for_bf16():
  config = helpers.tiny_config('')
  logits = np.array([[-3.0, 12.0]], np.float32)
  assert export.tolerance(config, logits) == 1e-4
  config.half_precision = True
  # 12 is held to 1/16 in bf16 (8 significant bits): 3 steps of the largest logit.
  assert export.tolerance(config, logits) == 12 / 64
  assert export.tolerance(config, logits / 100) == 1 / 64  # at least 2 steps of 1


# Three processes (train, export, load) of a few seconds each: 15 s on a 2-core CPU.
def test_stablehlo_export_runs_where_tensorflow_is_not_installed(tmp_path):
  """main.py trains a synthetic run and exports it as StableHLO in a site-packages without
  TensorFlow (as on the GPU machines); another such process loads it and computes logits."""
  env = {**helpers.env('', devices=1), 'PYTHONPATH': _site_without_tensorflow(tmp_path / 'site')}
  workdir, out = tmp_path / 'run', tmp_path / 'export'

  def python(*args):
    done = subprocess.run(
      [sys.executable, '-S', *args], cwd=helpers.ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout

  args = [*helpers.TINY, '--config.dataset=synthetic', f'--workdir={workdir}']
  args += ['--config.num_train_steps=2', '--config.checkpoint_every_steps=2']
  python('main.py', *args)
  info = json.loads(
    python('main.py', *args, '--mode=export', '--export_format=stablehlo', f'--output={out}')
  )
  assert info['format'] == 'stablehlo' and info['dataset'] == 'synthetic'
  assert info['class_names'] == [str(c) for c in range(10)]
  assert 0 <= info['max_abs_diff']['stablehlo'] <= 1e-5
  probe = (
    'import sys, json, numpy as np; from cnn_jax.inference import export; '
    'images = np.linspace(-1, 1, 2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3); '
    'print(json.dumps([export.load_stablehlo(sys.argv[1])(images).tolist(), '
    "'tensorflow' in sys.modules]))"
  )
  logits, imported_tf = json.loads(python('-c', probe, str(out)))
  assert not imported_tf
  images = np.linspace(-1, 1, 2 * 16 * 16 * 3, dtype=np.float32).reshape(2, 16, 16, 3)
  np.testing.assert_allclose(logits, export.load_stablehlo(str(out))(images), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# --export_format=saved_model on synthetic data: no encoded images to check serving_encoded on


@pytest.mark.slow  # a 2-step training run, jax2tf, the SavedModel loaded back: about 10 s
def test_saved_model_of_a_synthetic_run(tmp_path_factory, tmp_path):
  steps = dict(num_train_steps=2, log_every_steps=2, checkpoint_every_steps=2, eval_every_steps=-1)
  config = helpers.tiny_config('', dataset='synthetic', **steps)
  workdir = trained_run(tmp_path_factory, 'export_synthetic', config)
  info = export.export(config, workdir, output=str(tmp_path / 'export'))
  assert info['format'] == 'saved_model'
  assert info['max_abs_diff']['serving_encoded'] is None
  assert info['not_checked'] == {'serving_encoded': 'synthetic data has no encoded images'}
  assert 0 <= info['max_abs_diff']['serving_default'] <= 1e-5
  exp = train.build(config, workdir)
  batch = next(data_lib.eval_iterator(exp.data, global_batch=5, image_size=16, channels=3))
  loaded = tf.saved_model.load(str(tmp_path / 'export' / 'saved_model'))
  got = loaded.signatures['serving_default'](images=tf.constant(batch['image']))['logits']
  expected = jax.jit(predict.forward_fn(exp))(train.restore_variables(exp), batch['image'])
  np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-5)
