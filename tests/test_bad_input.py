"""Bad input: one line naming the problem and the fix, raised before anything compiles, and
nothing written into the workdir. In process through cli.run (what main.py calls), plus two
runs of main.py itself for the exit code and the one-line stderr."""

import copy
import functools
import os

import helpers
import numpy as np
import pytest

from cnn_jax import cli, data, train
from cnn_jax.core.errors import UserError
from configs import distill, lenet5

# Keyword defaults of helpers.tiny_config; a call's own keywords win.
_tiny = functools.partial(
  helpers.tiny_config,
  num_train_steps=2,
)


def _distill(data_dir, **overrides):
  config = distill.get_config()
  config.data_dir = config.teacher.data_dir = data_dir
  config.model = copy.deepcopy(config.teacher.model)
  config.model.name = config.teacher.model.name = 'resnet_tiny'
  config.image_size = config.teacher.image_size = 16
  for key, value in overrides.items():
    config.distill[key] = value
  return config


def _lenet(data_dir, image_size):
  config = lenet5.get_config()
  config.data_dir, config.image_size = data_dir, image_size
  return config


# (case, config builder (data_dir, tmp_path) -> config, parts the message must hold: the problem
# and the fix)
CASES = [
  (
    'unknown model',
    lambda d, t: _tiny(d, **{'model.name': 'resnet5'}),
    ["unknown model 'resnet5'; closest registered names: ", 'resnet50', 'resnet56'],
  ),
  (
    'unknown dataset',
    lambda d, t: _tiny(d, dataset='digitz'),
    ["unknown dataset 'digitz'; closest: digits", 'known: digits, mnist'],
  ),
  (
    'image too small for the net',
    lambda d, t: _lenet(d, 8),
    ["model 'lenet5' cannot take 8x8x3 images", 'set --config.image_size to a size it accepts'],
  ),
  (
    'batch does not divide over the devices',
    lambda d, t: _tiny(d, batch_size=30),
    ['config.batch_size=30 does not divide over 4 devices', 'use a multiple of 4, e.g. 28 or 32'],
  ),
  (
    'eval batch does not divide over the devices',
    lambda d, t: _tiny(d, eval_batch_size=10),
    ['config.eval_batch_size=10 does not divide over 4 devices', 'e.g. 8 or 12'],
  ),
  (
    'num_classes disagrees with the dataset',
    lambda d, t: _tiny(d, **{'model.num_classes': 100}),
    [
      "config.model.num_classes=100 but dataset 'digits' has 10 classes",
      'set it to 10 (or -1: take it from the data)',
    ],
  ),
  (
    'missing teacher checkpoint',
    lambda d, t: _distill(d, train_teacher=False),
    ['no teacher checkpoint in ', '--config.distill.train_teacher=True'],
  ),
  (
    'teacher_workdir is the student workdir',
    lambda d, t: _distill(d, teacher_workdir=str(t / 'w')),
    ["is the student's --workdir; give the teacher a folder of its own"],
  ),
  (
    'dataset missing offline',
    lambda d, t: _tiny(str(t / 'empty'), dataset='cifar10'),
    [
      "dataset 'cifar10' is not prepared in ",
      'and this run does not download',
      'python -m cnn_jax.data.prepare cifar10',
    ],
  ),
]


@pytest.mark.parametrize('make, parts', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_and_writes_nothing(tmp_path, data_dir, make, parts):
  workdir = tmp_path / 'w'
  with pytest.raises(UserError) as e:
    cli.run(make(data_dir, tmp_path), str(workdir), 'train')
  message = str(e.value)
  assert '\n' not in message
  for part in parts:
    assert part in message, message
  assert not workdir.exists()  # not even an empty folder


def _tree(path):
  return sorted(
    (os.path.relpath(os.path.join(d, f), path), open(os.path.join(d, f)).read())
    for d, _, files in os.walk(path)
    for f in files
  )


def test_existing_workdir_is_left_unchanged(tmp_path, data_dir):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('mine')
  before = _tree(workdir)
  with pytest.raises(UserError, match='num_classes=3 but'):
    cli.run(_tiny(data_dir, **{'model.num_classes': 3}), str(workdir), 'train')
  assert _tree(workdir) == before
  assert not (workdir / 'checkpoints').exists()


def test_workdir_that_is_a_file_is_untouched(tmp_path, data_dir):
  path = tmp_path / 'file'
  path.write_text('x')
  with pytest.raises(UserError, match=r'--workdir=\S+/file is a file, not a folder; pass a folder'):
    cli.run(_tiny(data_dir), str(path), 'train')
  assert path.read_text() == 'x'
  with pytest.raises(UserError, match=r'cannot be created: \S+/file is a file; pass a folder'):
    cli.run(_tiny(data_dir), str(path / 'sub'), 'train')
  assert path.read_text() == 'x'


def test_workdir_not_writable(tmp_path, data_dir, monkeypatch):
  # Tests may run as root, for whom every folder is writable: the permission check is faked.
  locked = tmp_path / 'locked'
  locked.mkdir()
  real_access = os.access
  monkeypatch.setattr(
    train.experiment.os, 'access', lambda p, mode: p != str(locked) and real_access(p, mode)
  )
  with pytest.raises(UserError, match=r'--workdir=\S+/locked/w is not writable .*pick another'):
    cli.run(_tiny(data_dir), str(locked / 'w'), 'train')
  assert os.listdir(locked) == []


def test_main_exits_2_with_one_line(tmp_path, data_dir):
  """The way a user meets it: exit code 2, one line on stderr, no traceback."""
  code, _, err = helpers.run(
    [*helpers.TINY, '--config.batch_size=30', f'--workdir={tmp_path}/w'], data_dir
  )
  assert code == 2
  assert err.strip().splitlines() == [
    'error: config.batch_size=30 does not divide over 4 devices (1 host(s)); '
    'use a multiple of 4, e.g. 28 or 32'
  ]
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
  'override, line',
  [
    (
      '--config.optimzer.lr=0.1',
      "error: --config.optimzer.lr: the config has no field 'optimzer'; did you mean: optimizer",
    ),
    (
      '--config.optimizer.lrr=0.1',
      "error: --config.optimizer.lrr: config.optimizer has no field 'lrr'; did you mean: lr",
    ),
    (
      '--config.model.nmae=x',
      "error: --config.model.nmae: config.model has no field 'nmae'; "
      'did you mean: name, num_classes',
    ),
  ],
)
def test_config_typo_is_one_line_with_close_names(tmp_path, data_dir, override, line):
  code, _, err = helpers.run([*helpers.TINY, override, f'--workdir={tmp_path}/w'], data_dir)
  assert code == 2
  assert err.strip().splitlines() == [line]
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize(
  'flag, line',
  [
    (
      '--mode=bogus',
      'error: flag --mode=bogus: value should be one of <train|eval|predict|export|summary|gather>',
    ),
    (
      '--export_format=onnx',
      'error: flag --export_format=onnx: value should be one of <saved_model|stablehlo>',
    ),
  ],
)
def test_a_bad_choice_of_a_flag_is_one_line(tmp_path, data_dir, flag, line):
  code, _, err = helpers.run([*helpers.TINY, flag, f'--workdir={tmp_path}/w'], data_dir)
  assert code == 2 and err.strip().splitlines() == [line]
  assert not (tmp_path / 'w').exists()


def _folder_with_a_corrupt_image(root):
  from PIL import Image

  rng = np.random.default_rng(0)
  for split in ('train', 'validation', 'test'):
    for label in ('cat', 'dog'):
      (root / split / label).mkdir(parents=True)
      for i in range(4):
        pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / label / f'{i}.png')
  for split in ('train', 'validation', 'test'):
    bad = root / split / 'dog' / '2.png'
    bad.write_bytes(bad.read_bytes()[:40])  # cut short: the PNG header survives, the data not
  return data.load(f'folder:{root}')


def test_corrupt_image_is_named(tmp_path):
  ds = _folder_with_a_corrupt_image(tmp_path)
  # One epoch of 8 images in 2 steps of 4: the bad one is read in one of them.
  batches = data.train_iterator(
    ds, seed=0, global_batch=4, start_step=0, num_steps=2, image_size=16, channels=3
  )
  with pytest.raises(UserError) as e:
    list(batches)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f"dataset 'folder:{tmp_path}': example 6 of the train split (")
  assert 'dog/2.png) is not a readable image (' in message
  assert message.endswith('set config.skip_corrupt_images=True to leave such images out (counted)')
  with pytest.raises(UserError, match=r'example 6 of the validation split \(\S+dog/2.png\)'):
    list(data.eval_iterator(ds, global_batch=4, image_size=16, channels=3))


def test_good_images_pass_the_corrupt_image_check(tmp_path):
  ds = _folder_with_a_corrupt_image(tmp_path)
  from cnn_jax.data.pipeline import _corrupt_image

  assert _corrupt_image(ds.train, np.arange(6), 3, 'label') is None
  assert _corrupt_image(ds.train, np.arange(8), 3, 'label')[0] == 6


def test_skip_corrupt_images_leaves_them_out_and_counts_them(tmp_path):
  ds = data.drop_corrupt_images(_folder_with_a_corrupt_image(tmp_path))
  skipped = {k: [i for i, _, _ in v] for k, v in ds.skipped.items()}
  assert skipped == {'train': [6], 'validation': [6], 'test': [6]}
  assert ds.skipped['train'][0][1].endswith('dog/2.png')
  assert len(ds.train) == len(ds.validation) == len(ds.test) == 7
  # Every batch decodes now, and a start at step 2 gives the batches an uninterrupted run has
  # there (the same examples are left out at every start): resume stays exact.
  stream = functools.partial(
    data.train_iterator, ds, seed=0, global_batch=4, num_steps=4, image_size=16, channels=3
  )
  whole = list(stream(start_step=0))
  resumed = list(stream(start_step=2))
  assert len(whole) == 4
  for a, b in zip(whole[2:], resumed, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  assert len(list(data.eval_iterator(ds, global_batch=4, image_size=16, channels=3))) == 2


def test_training_with_skip_corrupt_images_reports_the_count(tmp_path, data_dir):
  _folder_with_a_corrupt_image(tmp_path / 'images')
  config = _tiny(
    data_dir,
    dataset=f'folder:{tmp_path / "images"}',
    skip_corrupt_images=True,
    batch_size=4,
    eval_batch_size=4,
    log_every_steps=1,
  )
  summary = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert summary['skipped_corrupt_images'] == {'train': 1, 'validation': 1, 'test': 1}
