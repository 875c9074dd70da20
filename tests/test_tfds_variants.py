"""Every config variant that names a tfds dataset, through main.py on it in its real format.

The datasets are tests/tfds_fixtures.py's: built by tfds's own builders from small generated
sources, in the exact on-disk format `tfds build` writes. Each variant trains 3 steps (its model,
its preprocessing, its task; a small batch, since the fixtures hold tens of images), is killed
after the checkpoint of step 2, resumes to step 3, evaluates on the validation split and once on
the test split, then predicts two of the dataset's own test images from files. The runs share a
persistent compilation cache: the resumed run and predict reuse what the first run compiled.

Two variants run in the fast suite; the others (the 224 px ImageNet nets among them) and the
recipes are marked slow.
"""

import importlib
import json
import os
import pathlib

import helpers
import numpy as np
import pytest

from cnn_jax.data.specs import DATASETS

CONFIG_DIR = pathlib.Path(__file__).parents[1] / 'configs'
# style_transfer is not a trainer config; its backbone is configs/resnet.py or configs/vgg.py.
NAMES = sorted(
  p.stem for p in CONFIG_DIR.glob('*.py') if p.stem not in ('__init__', 'default', 'style_transfer')
)
ARGS = ('', 'digits', 'mnist', 'cifar10', 'cifar100', 'imagenet2012', 'pets', 'voc')
# Recipes (several runs in one command) and sweeps: their own tests below.
RECIPES = ('distill', 'noisy_student', 'resnet_lr_sweep', 'efficientnet_sweep')


def _accepted(name: str) -> list[str]:
  module = importlib.import_module(f'configs.{name}')
  args = []
  for arg in ARGS:
    try:
      module.get_config(arg)
    except ValueError:  # 'unknown variant'
      continue
    args.append(arg)
  return args


def _tfds_variants() -> list[tuple[str, str, str]]:
  """(config name, variant, dataset) of every variant whose dataset tfds prepares."""
  found = []
  for name in NAMES:
    for arg in _accepted(name):
      dataset = importlib.import_module(f'configs.{name}').get_config(arg).dataset
      if DATASETS[dataset].how_to_prepare:  # the local builders (digits, scenes) need none
        found.append((name, arg, dataset))
  return found


VARIANTS = _tfds_variants()
PLAIN = [v for v in VARIANTS if v[0] not in RECIPES]


def test_every_tfds_dataset_a_config_names_has_a_fixture():
  import tfds_fixtures

  named = {DATASETS[d].tfds_name for _, _, d in VARIANTS}
  assert named == {'mnist', 'cifar10', 'imagenet2012', 'oxford_iiit_pet', 'voc/2007'}
  assert named <= set(tfds_fixtures.DATASETS)
  assert len(PLAIN) == 23  # 9 families x (cifar10, imagenet2012), lenet5:mnist, 3 pets, voc


def _args(name: str, arg: str, tfds_dir: str, workdir: str) -> list[str]:
  return [
    f'--config=configs/{name}.py:{arg}',
    f'--workdir={workdir}',
    f'--config.data_dir={tfds_dir}',
    '--config.num_train_steps=3',
    '--config.batch_size=4',
    '--config.eval_batch_size=4',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=2',
    '--config.eval_every_steps=-1',
  ]


@pytest.fixture(scope='session')
def compile_cache(tmp_path_factory) -> dict[str, str]:
  path = tmp_path_factory.mktemp('jax_cache')
  return {
    'JAX_COMPILATION_CACHE_DIR': str(path),
    'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
    'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
  }


def _test_images(tfds_dir: str, dataset: str, folder: pathlib.Path) -> list[str]:
  """Two of the dataset's test images as files, their bytes as tfds stored them."""
  import tensorflow_datasets as tfds

  spec = DATASETS[dataset]
  builder = tfds.builder(spec.tfds_name, data_dir=tfds_dir)
  skip = {'image': tfds.decode.SkipDecoding()}
  if spec.segmentation:
    skip[spec.mask_feature] = tfds.decode.SkipDecoding()
  source = builder.as_data_source(spec.test_split, decoders=skip)
  folder.mkdir()
  paths = []
  for i, record in enumerate(source.__getitems__([0, 1])):
    path = folder / f'image{i}.jpg'
    path.write_bytes(record['image'])
    paths.append(str(path))
  return paths


def _train_resume_predict(name, arg, dataset, tfds_dir, tmp_path, cache, timeout=900):
  workdir = str(tmp_path / 'run')
  args = _args(name, arg, tfds_dir, workdir)
  # Killed (SIGKILL) right after the checkpoint of step 2 is written ...
  code, _, err = helpers.run(
    args, tfds_dir, devices=2, timeout=timeout, extra_env={**cache, 'CNN_JAX_FAULT': 'saved@2'}
  )
  assert code == -9, err[-3000:]
  assert not os.path.exists(os.path.join(workdir, 'summary.json'))
  # ... then the same command resumes from it, trains step 3, evaluates.
  code, out, err = helpers.run(args, tfds_dir, devices=2, timeout=timeout, extra_env=cache)
  assert code == 0, err[-3000:]
  summary = helpers.summary(workdir)
  assert json.loads(out[out.index('{') :]) == summary
  assert (summary['dataset'], summary['steps'], summary['resumed_from_step']) == (dataset, 3, 2)
  metric = {'segmentation': 'mean_iou', 'detection': 'map50'}.get(
    DATASETS[dataset].task, 'accuracy'
  )
  for split in ('validation', 'test'):
    assert 0.0 <= summary[f'{split}_{metric}'] <= 1.0, summary
  rows = helpers.metric_rows(workdir)
  assert [r['split'] for r in rows if r['split'] != 'train'] == ['validation', 'test']
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3]
  # Predict on two of the dataset's own test images, as files.
  images = _test_images(tfds_dir, dataset, tmp_path / 'images')
  code, out, err = helpers.run(
    [*args, '--mode=predict', f'--inputs={",".join(images)}'],
    tfds_dir,
    devices=2,
    timeout=timeout,
    extra_env=cache,
  )
  assert code == 0, err[-3000:]
  for image in images:
    assert image in out
  return summary


# The two cheapest in the fast suite (30-40 s each on 2 cores); the others (pets and VOC at 60 s
# and more, the 224 px ImageNet nets) in the slow step. The fast suite still opens every fixture.
FAST = {('lenet5', 'mnist'), ('resnet', 'cifar10')}


def _marks(name: str, arg: str):
  return [] if (name, arg) in FAST else [pytest.mark.slow]


@pytest.mark.parametrize(
  'name,arg,dataset',
  [pytest.param(n, a, d, id=f'{n}:{a}', marks=_marks(n, a)) for n, a, d in PLAIN],
)
def test_variant_trains_resumes_evaluates_and_predicts(
  name, arg, dataset, tfds_dir, tmp_path, compile_cache
):
  _train_resume_predict(name, arg, dataset, tfds_dir, tmp_path, compile_cache)


# Recipes: several runs in one command. The kill lands in the first run that trains (the teacher;
# the first trial), the rerun resumes it and goes on through the others.
SMALL_RUN = ('num_train_steps=3', 'batch_size=4', 'eval_batch_size=4', 'checkpoint_every_steps=2')
RECIPE_ARGS = {
  ('distill', 'cifar10'): [f'--config.teacher.{f}' for f in SMALL_RUN],
  ('noisy_student', 'cifar10'): [
    '--config.noisy_student.iterations=1',
    '--config.noisy_student.unlabeled_batch_size=4',
  ],
  ('resnet_lr_sweep', 'cifar10'): ['--config.sweep.lr_factors=(1.0,)'],
  ('resnet_lr_sweep', 'imagenet2012'): ['--config.sweep.lr_factors=(1.0,)'],
  # Two networks at phi = 1 within the variant's tolerance of 1.21x the base's measured MACs
  # (cifar10: the base itself and width 1.1; imagenet2012: width or resolution 1.1), then phi = 0
  # alone in stage 1 (the base net, one trial).
  ('efficientnet_sweep', 'cifar10'): [
    '--config.sweep.target=1.21',
    '--config.sweep.max_mult=1.1',
    '--config.sweep.max_phi=0',
  ],
  ('efficientnet_sweep', 'imagenet2012'): [
    '--config.sweep.target=1.21',
    '--config.sweep.max_mult=1.1',
    '--config.sweep.max_phi=0',
  ],
}


def test_every_recipe_variant_is_tested():
  assert sorted((n, a) for n, a, _ in VARIANTS if n in RECIPES) == sorted(RECIPE_ARGS)


@pytest.mark.slow
@pytest.mark.parametrize('name,arg', [pytest.param(*k, id=':'.join(k)) for k in RECIPE_ARGS])
def test_recipe_variant_trains_resumes_and_evaluates(name, arg, tfds_dir, tmp_path, compile_cache):
  workdir = tmp_path / 'run'
  args = [*_args(name, arg, tfds_dir, str(workdir)), *RECIPE_ARGS[(name, arg)]]
  kill = {**compile_cache, 'CNN_JAX_FAULT': 'saved@2'}
  code, _, err = helpers.run(args, tfds_dir, devices=2, timeout=1200, extra_env=kill)
  assert code == -9, err[-3000:]
  code, out, err = helpers.run(args, tfds_dir, devices=2, timeout=1200, extra_env=compile_cache)
  assert code == 0, err[-3000:]
  if 'sweep' in name:
    rows = json.loads((workdir / 'sweep.json').read_text())['rows']
    assert rows and all(r['status'] == 'done' for r in rows), rows
    assert all(0 <= r['validation_accuracy'] <= 1 and 0 <= r['test_accuracy'] <= 1 for r in rows)
    first = json.loads((workdir / rows[0]['trial'] / 'summary.json').read_text())
    assert first['resumed_from_step'] == 2  # the killed trial, resumed
    assert 'chosen on the validation split' in (workdir / 'sweep.md').read_text()
    return
  summary = helpers.summary(str(workdir))
  assert 0 <= summary['validation_accuracy'] <= 1 and 0 <= summary['test_accuracy'] <= 1
  first = workdir / ('teacher' if name == 'distill' else 'iter0')
  assert helpers.summary(str(first))['resumed_from_step'] == 2
  # The student predicts two of the dataset's test images.
  images = _test_images(tfds_dir, 'cifar10', tmp_path / 'images')
  predict = [*args, '--mode=predict', f'--inputs={",".join(images)}']
  code, out, err = helpers.run(predict, tfds_dir, devices=2, timeout=600, extra_env=compile_cache)
  assert code == 0, err[-3000:]
  assert all(image in out for image in images)


def test_a_tfrecord_build_gets_the_command_that_rebuilds_it(tmp_path):
  """`tfds build` without --file_format writes tfrecord, which has no random access."""
  import tfds_fixtures

  from cnn_jax import data
  from cnn_jax.core.errors import UserError

  tfds_fixtures.prepare('cifar10', str(tmp_path), file_format='tfrecord')
  with pytest.raises(UserError) as e:
    data.load('cifar10', str(tmp_path))
  assert str(e.value) == (
    f"dataset 'cifar10' in {tmp_path} is in tfrecord format, not array_record, which random "
    f'access needs; rebuild it with: python -m cnn_jax.data.prepare cifar10 --data_dir={tmp_path}'
  )


def test_an_empty_validation_slice_is_one_line(tfds_dir, monkeypatch):
  """ImageNet's validation is the slice train[99%:]: tfds cannot open an empty slice."""
  import dataclasses

  from cnn_jax import data
  from cnn_jax.core.errors import UserError
  from cnn_jax.data import specs

  spec = dataclasses.replace(specs.DATASETS['imagenet2012'], validation_split='train[100%:]')
  monkeypatch.setitem(specs.DATASETS, 'imagenet2012', spec)
  with pytest.raises(UserError, match=r"split 'train\[100%:\]' cannot be read .* train 60, "):
    data.load('imagenet2012', tfds_dir)


def test_imagenet_validation_is_the_last_percent_of_train(tfds_dir):
  from cnn_jax import data

  ds = data.load('imagenet2012', tfds_dir)
  # 60 train images: train[:99%] 59, train[99%:] 1 (big_vision's minival); test: tfds's
  # 'validation' split (the official 50,000 validation images, here 10).
  assert (len(ds.train), len(ds.validation), len(ds.test), ds.num_classes) == (59, 1, 10, 1000)


def test_voc_validation_is_its_own_val_split(tfds_dir):
  from cnn_jax import data

  ds = data.load('voc', tfds_dir)
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (12, 8, 10)


@pytest.mark.parametrize('name', ['mnist', 'cifar10', 'cifar100', 'oxford_iiit_pet'])
def test_held_out_validation_of_the_tfds_datasets(tfds_dir, name):
  from cnn_jax import data
  from cnn_jax.data.datasets import source_labels

  ds = data.load(name, tfds_dir)
  train, validation = source_labels(ds.train), source_labels(ds.validation)
  assert len(train) + len(validation) == (30 if name == 'oxford_iiit_pet' else 40)
  # Every class with two or more training images gives one or more to validation.
  classes, counts = np.unique(np.concatenate([train, validation]), return_counts=True)
  for c, n in zip(classes, counts, strict=True):
    assert (c in validation) == (n >= 2), (c, n)


@pytest.mark.slow
def test_cifar100_through_the_cifar10_variant(tfds_dir, tmp_path, compile_cache):
  """No config names cifar100: it is --config.dataset=cifar100 on a CIFAR variant."""
  workdir = str(tmp_path / 'run')
  args = [*_args('resnet', 'cifar10', tfds_dir, workdir), '--config.dataset=cifar100']
  code, out, err = helpers.run(args, tfds_dir, devices=2, timeout=600, extra_env=compile_cache)
  assert code == 0, err[-3000:]
  summary = helpers.summary(workdir)
  assert summary['dataset'] == 'cifar100' and 0 <= summary['validation_accuracy'] <= 1


def test_an_empty_validation_split_is_refused_before_training(tmp_path, data_dir):
  """One training image per class leaves nothing to hold out: a clear error before anything
  runs, not a crash in the first evaluation (found by the cifar100 fixture when it held 40
  classes of one image each)."""
  from PIL import Image

  from cnn_jax import train
  from cnn_jax.core.errors import UserError

  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label in ('cat', 'dog'):
      (tmp_path / 'images' / split / label).mkdir(parents=True)
      pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(tmp_path / 'images' / split / label / '0.png')
  config = helpers.tiny_config(data_dir, dataset=f'folder:{tmp_path / "images"}', batch_size=4)
  with pytest.raises(UserError) as e:
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert str(e.value).startswith(
    f"dataset 'folder:{tmp_path / 'images'}' has no examples in its validation split as this "
    'run reads it (2 train, 0 validation, 2 test); a held-out validation split takes 10% of '
    'each class with 2 or more training examples'
  )
  assert not (tmp_path / 'w').exists()


def test_the_prepare_command_builds_what_runs_read(tmp_path, capsys):
  """`python -m cnn_jax.data.prepare` (what a "not prepared" error tells a user to run) with the
  download redirected to generated CIFAR-10 files, as tests/tfds_fixtures.py does."""
  import tensorflow_datasets as tfds
  import tfds_fixtures

  from cnn_jax import data
  from cnn_jax.data import prepare

  (tmp_path / 'src').mkdir()
  builder = tfds.builder('cifar10', data_dir=str(tmp_path / 'data'))
  sources = tfds_fixtures._WRITERS['cifar10'](builder, str(tmp_path / 'src'))
  with tfds_fixtures._downloads_from(sources.files):
    prepare.main(['cifar10', f'--data_dir={tmp_path / "data"}'])
  last = capsys.readouterr().out.strip().splitlines()[-1]  # after tfds's own progress lines
  assert last == f'prepared cifar10 in {tmp_path / "data"}/cifar10/3.0.2'
  ds = data.load('cifar10', str(tmp_path / 'data'))
  assert (len(ds.train) + len(ds.validation), len(ds.test)) == (40, 20)
  with pytest.raises(SystemExit):
    prepare.main(['cifar11'])
  assert capsys.readouterr().err.startswith("error: no tfds dataset 'cifar11'; the datasets ")
