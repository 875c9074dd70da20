"""The style transfer recipe end to end at a tiny size (main's dispatch, backbone trained then
reused), image loading, and the one-line errors bad options give before anything trains."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from cnn_jax import cli
from cnn_jax.core.errors import UserError
from cnn_jax.recipes import style as style_recipe
from configs import style_transfer

OUTPUTS = ('stylised.png', 'content.png', 'style.png', 'loss_curve.png', 'summary.json')


def _config(data_dir: str, **style_overrides):
  """configs/style_transfer.py shrunk: vgg_tiny's own widths at 32x32, 2 backbone steps, 3
  stylise steps on 32x32 images."""
  config = style_transfer.get_config()
  backbone = config.backbone
  backbone.data_dir = data_dir
  backbone.model.stages = ((4,), (8,), (8,), (16,), (16,))  # vgg_tiny's
  backbone.model.hidden = 32
  backbone.batch_size = 32
  backbone.eval_batch_size = 64
  backbone.num_train_steps = 2
  backbone.log_every_steps = 1
  backbone.checkpoint_every_steps = 2
  backbone.eval_every_steps = -1  # the final evaluation only
  config.style.image_size = 32
  config.style.steps = 3
  for key, value in style_overrides.items():
    config.style[key] = value
  return config


def _read(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _train_and_stylise(workdir: str, data_dir: str, capsys) -> dict:
  cli.run(_config(data_dir), workdir, 'train')  # main.py's dispatch
  printed = json.loads(capsys.readouterr().out)
  for name in OUTPUTS:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  summary = _read(os.path.join(workdir, 'summary.json'))
  assert summary == printed
  assert summary['J_end'] < summary['J_start']
  assert summary['J_content_start'] == pytest.approx(0.0, abs=1e-6)  # G starts as C
  assert summary['J_content_end'] > 0 and summary['J_style_end'] < summary['J_style_start']
  assert summary['steps'] == 3 and summary['stylise_seconds'] > 0
  assert summary['style_layers'] == list(style_transfer.get_config().style.style_layers)
  backbone = os.path.join(workdir, 'backbone')
  trained = _read(os.path.join(backbone, 'summary.json'))
  assert summary['backbone_test_accuracy'] == trained['test_accuracy']
  assert trained['steps'] == 2
  assert _read(os.path.join(backbone, 'config.json'))['model']['name'] == 'vgg_tiny'
  for name in ('stylised.png', 'content.png', 'style.png'):
    with Image.open(os.path.join(workdir, name)) as image:
      assert image.size == (32, 32) and image.mode == 'RGB'
  return trained


@pytest.mark.slow  # trains a backbone and stylises: about 35 s on 2 CPU cores
def test_recipe_trains_the_backbone_then_stylises(tmp_path, data_dir, capsys):
  _train_and_stylise(str(tmp_path / 'style'), data_dir, capsys)


@pytest.mark.slow  # three stylisations: about 40 s on 2 CPU cores
def test_a_trained_backbone_is_reused_not_retrained(tmp_path, data_dir, capsys):
  workdir = str(tmp_path / 'style')
  trained = _train_and_stylise(workdir, data_dir, capsys)
  backbone = os.path.join(workdir, 'backbone')
  metrics = os.path.getmtime(os.path.join(backbone, 'metrics.jsonl'))
  # Asked to train it again (the default), the recipe finds the finished run and only stylises.
  assert (
    style_recipe.run(_config(data_dir, steps=1), workdir)['backbone_test_accuracy']
    == (trained['test_accuracy'])
  )
  assert os.path.getmtime(os.path.join(backbone, 'metrics.jsonl')) == metrics
  # Another style run reading that backbone where it lies, without training.
  other = str(tmp_path / 'other')
  config = _config(data_dir, backbone_workdir=backbone, train_backbone=False, steps=1, init='noise')
  again = style_recipe.run(config, other)
  assert os.path.getmtime(os.path.join(backbone, 'metrics.jsonl')) == metrics
  assert again['backbone_test_accuracy'] == trained['test_accuracy']
  assert again['J_content_start'] > 0  # G starts as white noise
  assert sorted(os.listdir(other)) == sorted([*OUTPUTS, 'config.json'])


def test_load_image_centre_crops_resizes_and_converts(tmp_path):
  pixels = np.zeros((20, 40, 3), np.uint8)  # (H, W): a wide image, white in its centred square
  pixels[:, 10:30] = (255, 255, 255)
  path = str(tmp_path / 'wide.png')
  Image.fromarray(pixels).save(path)
  rgb = style_recipe.load_image(path, 8, 3, 'content')
  assert rgb.shape == (8, 8, 3) and rgb.dtype == np.float32
  np.testing.assert_allclose(rgb, 1.0, atol=1 / 255)
  grey = style_recipe.load_image('sklearn:flower.jpg', 16, 1, 'style')
  assert grey.shape == (16, 16, 1) and 0.0 <= grey.min() < grey.max() <= 1.0


@pytest.mark.parametrize(
  'overrides,message',
  [
    ({'content_image': 'no/such/photo.jpg'}, "content_image='no/such/photo.jpg': no such file"),
    ({'style_image': 'sklearn:mona_lisa.jpg'}, "scikit-learn ships no sample image 'mona_lisa"),
    ({'style_weights': (1.0, 2.0)}, 'style_weights has 2 values for 5 style_layers'),
    ({'optimizer': 'sgd'}, "optimizer='sgd'; expected one of"),
    ({'style_normalisation': 'paper'}, "style normalisation='paper'"),
    ({'train_backbone': False}, 'no backbone checkpoint in'),
  ],
)
def test_bad_style_options_are_one_line_errors_before_anything_is_made(
  tmp_path, overrides, message
):
  workdir = str(tmp_path / 'style')
  with pytest.raises(UserError, match='^[^\n]*$') as error:
    style_recipe.run(_config(str(tmp_path / 'no_data'), **overrides), workdir)
  assert message in str(error.value)
  assert not os.path.exists(workdir)  # checked before the backbone's data is even read
  assert not os.path.exists(tmp_path / 'no_data')


def test_a_file_that_is_not_an_image_and_the_workdir_as_backbone_workdir(tmp_path):
  text = tmp_path / 'notes.txt'
  text.write_text('not an image')
  with pytest.raises(UserError, match='is not an image PIL can read'):
    style_recipe.run(_config(str(tmp_path), style_image=str(text)), str(tmp_path / 'a'))
  workdir = str(tmp_path / 'b')
  with pytest.raises(UserError, match="is the style run's --workdir"):
    style_recipe.run(_config(str(tmp_path), backbone_workdir=workdir), workdir)


def test_unknown_layer_model_and_too_small_image_fail_before_anything_is_made(tmp_path):
  workdir, data_dir = str(tmp_path / 'style'), str(tmp_path / 'no_data')
  with pytest.raises(UserError, match=r"^VGG has no 4-D layer 'conv9_1' .* closest: conv") as e:
    style_recipe.run(_config(data_dir, content_layer='conv9_1:relu'), workdir)
  assert '\n' not in str(e.value)
  with pytest.raises(UserError, match='VGG needs NHWC inputs of at least 32x32'):
    style_recipe.run(_config(data_dir, image_size=16), workdir)
  config = _config(data_dir)
  config.backbone.model.name = 'vgg_tiniest'
  with pytest.raises(UserError, match='vgg_tiniest'):
    style_recipe.run(config, workdir)
  assert not os.path.exists(workdir) and not os.path.exists(data_dir)


def test_a_config_without_a_backbone_section_is_refused(tmp_path):
  config = _config(str(tmp_path))
  del config['backbone']
  with pytest.raises(UserError, match='config has no backbone section'):
    style_recipe.run(config, str(tmp_path / 'style'))


def test_other_modes_on_a_style_config(tmp_path, capsys):
  config = style_transfer.get_config()
  cli.run(config, None, 'summary')  # the backbone's per-layer table
  assert 'conv1_1' in capsys.readouterr().out
  for mode in ('eval', 'predict', 'export'):
    with pytest.raises(UserError, match=f'--mode={mode}: a style transfer run has no checkpoint'):
      cli.run(config, str(tmp_path / 'style'), mode)
