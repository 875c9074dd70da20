"""The `synthetic` dataset (cnn_jax/data/synthetic.py), and runs on it where TensorFlow is not
installed."""

import json
import os
import site
import subprocess
import sys

import helpers
import numpy as np
import pytest

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.errors import UserError

ROOT = helpers.ROOT


def _train(data, start_step=0, **kw):
  options = dict(
    seed=3, global_batch=8, start_step=start_step, num_steps=4, image_size=5, channels=2
  )
  return list(data_lib.train_iterator(data, **{**options, **kw}))


def test_batches_are_a_pure_function_of_seed_and_step():
  data = data_lib.load('synthetic:7')
  assert (
    data.num_classes == 7
    and len(data.train) == 12_800
    and len(data.validation) == len(data.test) == 1_024
  )
  first = _train(data)
  assert first[0]['image'].shape == (8, 5, 5, 2) and first[0]['image'].dtype == np.float32
  assert first[0]['label'].max() < 7 and first[0]['label'].dtype == np.int32
  again = _train(data, start_step=2)  # a resume at step 2 reads what steps 2 and 3 read
  for a, b in zip(first[2:], again, strict=True):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  assert not np.array_equal(first[0]['image'], first[1]['image'])
  hosts = [_train(data, process_index=i, process_count=2)[1] for i in range(2)]
  assert np.array_equal(np.concatenate([h['image'] for h in hosts]), first[1]['image'])
  other_seed = _train(data, seed=4)[0]
  assert not np.array_equal(other_seed['image'], first[0]['image'])


def test_blocks_are_drawn_per_host_and_look_normalised():
  # 70 rows: blocks of 32, 32 and 6; two hosts of 35 rows each straddle the middle block.
  data = data_lib.load('synthetic')
  whole = _train(data, global_batch=70, image_size=8, channels=3)[1]
  hosts = [
    _train(data, global_batch=70, image_size=8, channels=3, process_index=i, process_count=2)[1]
    for i in range(2)
  ]
  for key in ('image', 'label'):
    assert np.array_equal(np.concatenate([h[key] for h in hosts]), whole[key])
  image = whole['image']
  assert abs(image.mean()) < 0.05 and abs(image.var() - 1) < 0.05
  assert image.min() >= -np.sqrt(3) and image.max() <= np.sqrt(3)


def test_segmentation_variant_gives_label_maps_on_cells():
  data = data_lib.load('synthetic_segmentation:21')
  assert data.spec.segmentation and data.num_classes == 21
  batch = _train(data, image_size=20, channels=3)[0]
  maps = batch['segmentation']
  assert maps.shape == (8, 20, 20) and maps.dtype == np.int32 and maps.max() < 21
  assert 'label' not in batch
  # Constant on 8 x 8 cells, the last cell cropped to 4 pixels.
  assert np.array_equal(maps[:, :8, :8], np.broadcast_to(maps[:, :1, :1], (8, 8, 8)))
  assert np.array_equal(maps[:, 16:, 16:], np.broadcast_to(maps[:, 16:17, 16:17], (8, 4, 4)))
  assert len(np.unique(maps)) > 10
  padded = list(data_lib.eval_iterator(data, global_batch=1000, image_size=8, channels=1))
  last = padded[-1]  # 1,024 = 1,000 + 24: 976 padded rows, all ignored
  assert last['mask'].sum() == 24 and (last['segmentation'][24:] == 255).all()
  assert (last['segmentation'][:24] < 21).all()


@pytest.mark.slow
def test_segmentation_variant_trains_a_unet(tmp_path):
  from configs import unet

  overrides = {'dataset': 'synthetic_segmentation:3', 'model.name': 'unet_tiny'}
  overrides.update(image_size=16, batch_size=8, eval_batch_size=256, num_train_steps=2)
  config = helpers.set_fields(unet.get_config(), **overrides, eval_every_steps=-1)
  summary = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert 0 <= summary['test_mean_iou'] <= 1 and summary['compile_seconds'] > 0
  assert summary['host_peak_rss_mib'] > 0 and 'device_peak_mib' not in summary  # CPU


def test_eval_split_counts_each_example_once_and_repeats():
  data = data_lib.load('synthetic')
  options = dict(global_batch=300, image_size=4, channels=3)
  batches = list(data_lib.eval_iterator(data, **options))
  assert sum(float(b['mask'].sum()) for b in batches) == 1024 and len(batches) == 4
  again = next(data_lib.eval_iterator(data, **options))
  assert np.array_equal(batches[0]['image'], again['image'])


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'dataset': 'synthetic:0'}, r"dataset 'synthetic:0': give the number of classes"),
    (
      {'dataset': 'synthetic_segmentation:300'},
      r"dataset 'synthetic_segmentation:300': give .* >= 1 and < 255",
    ),
    ({'data_classes': (1, 2)}, 'config.data_classes .* not available for synthetic data'),
    ({'augment.flip': True}, 'config.augment is not available for synthetic data'),
    ({'model.num_classes': 5}, "config.model.num_classes=5 but dataset 'synthetic' has 10"),
  ],
)
def test_what_synthetic_data_cannot_do_is_one_line(overrides, message, tmp_path):
  config = helpers.tiny_config('', **{'dataset': 'synthetic', **overrides})
  with pytest.raises(UserError, match=message):
    train.build(config, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def _site_without_tensorflow(folder) -> str:
  """This venv's site-packages, less TensorFlow and tensorflow-datasets (symlinks)."""
  src = next(p for p in site.getsitepackages() if p.endswith('site-packages'))
  folder.mkdir()
  for name in os.listdir(src):
    if not name.lower().startswith('tensorflow') and not name.endswith('.pth'):
      os.symlink(os.path.join(src, name), folder / name)
  return str(folder)


def test_trains_evaluates_and_resumes_without_tensorflow(tmp_path):
  env = {**helpers.env('', devices=1), 'PYTHONPATH': _site_without_tensorflow(tmp_path / 'site')}
  probe = 'import importlib.util; print(importlib.util.find_spec("tensorflow"))'
  out = subprocess.run([sys.executable, '-S', '-c', probe], env=env, capture_output=True, text=True)
  assert out.stdout.strip() == 'None', out.stderr  # TensorFlow is not there

  def main(workdir, steps, mode='train'):
    args = [*helpers.TINY, '--config.dataset=synthetic', f'--config.num_train_steps={steps}']
    args += ['--config.checkpoint_every_steps=2', f'--workdir={workdir}', f'--mode={mode}']
    # A schedule that does not depend on the run's length: 3 then 6 steps = 6 steps.
    args += ['--config.optimizer.schedule=constant', '--config.optimizer.warmup_steps=0']
    done = subprocess.run(
      [sys.executable, '-S', 'main.py', *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done

  whole, parts = tmp_path / 'whole', tmp_path / 'parts'
  main(whole, 6)
  main(parts, 3)  # stops after step 3 (checkpoint at 2 and 3) ...
  main(parts, 6)  # ... and resumes there
  first, second = helpers.summary(str(whole)), helpers.summary(str(parts))
  assert second['resumed_from_step'] == 3
  # This process's first step (trace + compile) and peak memory; the CPU backend counts no
  # device bytes.
  assert first['compile_seconds'] > 0 and first['host_peak_rss_mib'] > 100
  assert 'device_peak_mib' not in first
  assert first['params_sha256'] == second['params_sha256']
  assert [r['loss'] for r in helpers.metric_rows(str(whole)) if r['split'] == 'train'][-3:] == [
    r['loss'] for r in helpers.metric_rows(str(parts)) if r['split'] == 'train'
  ][-3:]
  evaluated = json.loads(main(whole, 6, mode='eval').stdout)
  assert evaluated['step'] == 6 and evaluated['accuracy'] == first['validation_accuracy']
