"""--mode=predict: a user's image files through the eval preprocessing and a trained checkpoint."""

import io
import json
import os
import re

import helpers
import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax import cli, tasks, train
from cnn_jax import data as data_lib
from cnn_jax.core.errors import UserError
from cnn_jax.inference import predict
from configs import resnet, unet


def trained_run(tmp_path_factory, name: str, config) -> str:
  """The workdir of `config` trained under pytest's base folder; a second call (another test
  file on the same worker) finds the finished run and trains nothing."""
  workdir = str(tmp_path_factory.getbasetemp() / name)
  train.train_and_evaluate(config, workdir)
  return workdir


def two_step_config(data_dir: str):
  """helpers.tiny_config (resnet_tiny on 16x16 digits) for 2 steps: a checkpoint in seconds."""
  return helpers.tiny_config(
    data_dir, num_train_steps=2, log_every_steps=2, checkpoint_every_steps=2, eval_every_steps=-1
  )


# configs/resnet.py as it is (ResNet-20, digits at 32x32, its preprocessing), trained 3 steps.
DEFAULT_OVERRIDES = {'num_train_steps': 3, 'log_every_steps': 3, 'checkpoint_every_steps': 3}


def default_config(data_dir: str):
  config = resnet.get_config()
  config.data_dir = data_dir
  for key, value in DEFAULT_OVERRIDES.items():
    config[key] = value
  return config


def write_pngs(records: list[dict], folder) -> list[str]:
  """Each record's image decoded and written again as a PNG file of its own, in order."""
  os.makedirs(folder, exist_ok=True)
  paths = []
  for i, record in enumerate(records):
    path = os.path.join(folder, f'image{i}.png')
    Image.open(io.BytesIO(record['image'])).save(path)
    paths.append(path)
  return paths


def eval_path(config, workdir: str, count: int) -> tuple[np.ndarray, np.ndarray]:
  """The first `count` eval images as eval_iterator makes them, and the model's logits on them
  with the run's latest checkpoint: what --mode=eval computes."""
  exp = train.build(config, workdir)
  batch = next(
    data_lib.eval_iterator(
      exp.data,
      global_batch=config.eval_batch_size,
      image_size=config.image_size,
      channels=config.image_channels,
    )
  )
  variables = train.restore_variables(exp)
  logits = jax.jit(lambda v, x: exp.model.apply(v, x, train=False))(variables, batch['image'])
  return batch['image'][:count], np.asarray(logits)[:count]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, data_dir) -> str:
  return trained_run(tmp_path_factory, 'predict_tiny', two_step_config(data_dir))


def test_predict_is_the_eval_path(tiny_run, data_dir, tmp_path):
  config = two_step_config(data_dir)
  data = data_lib.load('digits', data_dir)
  paths = write_pngs(data.validation.__getitems__([0, 1, 2]), tmp_path / 'images')
  images, logits = eval_path(config, tiny_run, 3)
  # The same normalised inputs, bit for bit, as eval_iterator gives the model.
  preprocess = predict.eval_preprocess(data, config)
  np.testing.assert_array_equal(predict.load_images(paths, preprocess), images)

  result = predict.predict(config, tiny_run, [str(tmp_path / 'images')], top_k=3)
  assert [r['file'] for r in result['predictions']] == paths
  expected = np.asarray(jax.nn.softmax(logits, -1))
  for row, p in zip(result['predictions'], expected, strict=True):
    top = row['top_k']
    assert [t['class'] for t in top] == list(np.argsort(-p)[:3])
    assert [t['name'] for t in top] == [str(t['class']) for t in top]  # digits' names are 0..9
    np.testing.assert_allclose([t['probability'] for t in top], np.sort(p)[::-1][:3], atol=1e-5)
  assert result['step'] == 2
  with open(os.path.join(tiny_run, 'predictions', 'predictions.json')) as f:
    assert json.load(f) == result


def test_cli_prints_what_it_writes(tiny_run, data_dir, tmp_path, capsys):
  """main.py's path (cli.run) with a step folder for --workdir and a glob for --inputs: one line
  per image, the top-k of predictions.json."""
  data = data_lib.load('digits', data_dir)
  paths = write_pngs(data.validation.__getitems__([3, 4]), tmp_path / 'images')
  out = tmp_path / 'out'
  step_dir = os.path.join(tiny_run, 'checkpoints', '2')
  inputs = [str(tmp_path / 'images' / '*.png')]
  cli.run(two_step_config(data_dir), step_dir, 'predict', inputs=inputs, top_k=2, output=str(out))
  lines = capsys.readouterr().out.strip().splitlines()
  with open(out / 'predictions.json') as f:
    written = json.load(f)
  assert written['step'] == 2 and written['checkpoint'] == step_dir
  assert lines[0] == f'checkpoint {step_dir} (step 2)'
  assert len(lines) == 4 and lines[3] == f'written: {out / "predictions.json"}'
  for line, path, row in zip(lines[1:3], paths, written['predictions'], strict=True):
    printed = re.fullmatch(r'(.+): (\S+) \((\S+)\)  (\S+) \((\S+)\)', line)
    assert printed, line
    assert printed[1] == row['file'] == path
    assert [printed[2], printed[4]] == [t['name'] for t in row['top_k']]
    assert [float(printed[3]), float(printed[5])] == [
      round(t['probability'], 3) for t in row['top_k']
    ]
  with pytest.raises(UserError, match=r'no checkpoint .*checkpoints/7 \(its steps: 2\)'):
    predict.predict(two_step_config(data_dir), os.path.join(tiny_run, 'checkpoints', '7'), paths)


def test_another_config_is_refused(tiny_run, data_dir, tmp_path):
  data = data_lib.load('digits', data_dir)
  paths = write_pngs(data.validation.__getitems__([0]), tmp_path / 'images')
  config = two_step_config(data_dir)
  config.model.name = 'resnet20'
  with pytest.raises(UserError, match="trained with another config .*model.name: 'resnet_tiny'"):
    predict.predict(config, tiny_run, paths, output=str(tmp_path / 'o'))


def _fake_run(tmp_path) -> str:
  """A workdir with an (empty) step folder: enough to get past the checkpoint lookup."""
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '1').mkdir(parents=True)
  return str(workdir)


def test_unreadable_file_is_named(tmp_path, data_dir):
  bad = tmp_path / 'images' / 'notes.png'
  bad.parent.mkdir()
  bad.write_bytes(b'these are not pixels')
  with pytest.raises(UserError) as e:
    predict.predict(two_step_config(data_dir), _fake_run(tmp_path), [str(bad.parent)])
  message = str(e.value)
  assert message.startswith(f'{bad} is not a readable image (') and '\n' not in message
  assert message.endswith('give PNG, JPEG, BMP, GIF or WebP files')


@pytest.mark.parametrize('exists', [True, False])
def test_empty_or_missing_folder(tmp_path, data_dir, exists):
  folder = tmp_path / 'photos'
  if exists:
    (folder / 'sub').mkdir(parents=True)
    (folder / 'sub' / 'notes.txt').write_text('x')  # not an image: the listing skips it
    message = rf'--inputs: the folder {folder} holds no image \(\.png, \.jpg, .*\); point at'
  else:
    message = rf'--inputs: {folder} does not exist; give image files, globs or folders'
  with pytest.raises(UserError, match=message):
    predict.predict(two_step_config(data_dir), _fake_run(tmp_path), [str(folder)])


def test_bad_input_errors(tmp_path, data_dir):
  run, config = _fake_run(tmp_path), two_step_config(data_dir)
  image = tmp_path / 'a.png'
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
  cases = [
    (dict(path=run, inputs=[]), '--mode=predict needs --inputs'),
    (dict(path=run, inputs=[str(tmp_path / '*.jpg')]), r"'.*\*\.jpg' matches no file"),
    (dict(path=run, inputs=[str(image)], top_k=0), '--top_k=0: give a whole number >= 1'),
    (dict(path=str(tmp_path / 'nowhere'), inputs=[str(image)]), 'nowhere does not exist'),
    (dict(path=str(tmp_path), inputs=[str(image)]), r'no checkpoint in .*checkpoints; train'),
    (dict(path='', inputs=[str(image)]), '--mode=predict needs --workdir'),
  ]
  for kwargs, message in cases:
    with pytest.raises(UserError, match=message) as e:
      predict.predict(config, **kwargs)
    assert '\n' not in str(e.value)


@pytest.mark.slow
def test_default_config_cli_prints_the_eval_classes(tmp_path_factory, data_dir, tmp_path):
  """The offline default config, 3 steps; main.py --mode=predict prints, for three digits test
  images written as PNGs, the classes that the model gives them on eval_iterator's batch."""
  config = default_config(data_dir)
  workdir = trained_run(tmp_path_factory, 'predict_resnet20', config)
  data = data_lib.load('digits', data_dir)
  paths = write_pngs(data.validation.__getitems__([0, 1, 2]), tmp_path / 'images')
  _, logits = eval_path(config, workdir, 3)
  args = ['--config=configs/resnet.py', f'--workdir={workdir}', '--mode=predict']
  args += [f'--config.{k}={v}' for k, v in DEFAULT_OVERRIDES.items()]
  args += [f'--inputs={tmp_path / "images"}', '--top_k=3', f'--output={tmp_path / "out"}']
  code, out, err = helpers.run(args, data_dir)
  assert code == 0, err
  lines = out.strip().splitlines()
  printed = [re.match(r'(.+): (\S+) \((\S+)\)', line) for line in lines[1:4]]
  assert [m[1] for m in printed] == paths
  assert [int(m[2]) for m in printed] == list(np.argmax(logits, -1))
  expected = np.max(np.asarray(jax.nn.softmax(logits, -1)), -1)
  np.testing.assert_allclose([float(m[3]) for m in printed], expected, atol=6e-4)  # 3 decimals


@pytest.mark.slow
def test_segmentation_writes_masks_and_overlays(tmp_path_factory, data_dir, tmp_path):
  """A small U-Net on digit_scenes, 2 steps: each scene's mask is the eval path's argmax."""
  data = data_lib.load('digit_scenes', data_dir)
  config = unet.get_config()
  config.data_dir = data_dir
  config.model.depth, config.model.base_width, config.image_size = 1, 4, 16
  config.batch_size, config.eval_batch_size = 8, 100
  config.num_train_steps = config.log_every_steps = config.checkpoint_every_steps = 2
  workdir = trained_run(tmp_path_factory, 'predict_unet', config)
  paths = write_pngs(data.validation.__getitems__([0, 1]), tmp_path / 'scenes')
  _, logits = eval_path(config, workdir, 2)
  out = tmp_path / 'masks'
  result = predict.predict(config, workdir, paths, output=str(out))
  assert result['task'] == 'segmentation'
  for row, expected in zip(result['predictions'], np.argmax(logits, -1), strict=True):
    mask = np.asarray(Image.open(row['mask']))
    assert mask.dtype == np.uint8 and mask.shape == (16, 16)
    np.testing.assert_array_equal(mask, expected)
    overlay = np.asarray(Image.open(row['overlay']))
    assert overlay.shape == (256, 256, 3)  # 16 px upscaled 16x for viewing
    counts = np.bincount(mask.ravel(), minlength=11)
    assert row['class_fractions'] == {str(c): n / 256 for c, n in enumerate(counts) if n}
  assert sorted(os.listdir(out)) == [
    'image0_mask.png',
    'image0_overlay.png',
    'image1_mask.png',
    'image1_overlay.png',
    'predictions.json',
  ]


def test_tasks_without_a_predictor_are_refused():
  message = '--mode=export handles classification, segmentation and detection runs, not a Triplet'
  with pytest.raises(UserError, match=message):
    predict.task_kind(tasks.Triplet(6), 'export')
  assert predict.task_kind(tasks.Segmentation(11)) == 'segmentation'
  assert predict.task_kind(tasks.Distillation(10)) == 'classification'
  assert predict.task_kind(tasks.Detection(10, grid=(8, 8), anchors=((1.0, 1.0),))) == 'detection'
  assert set(predict.PREDICTORS) == {'classification', 'segmentation', 'detection'}
