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
  assert first['params_sha256'] == second['params_sha256']
  assert [r['loss'] for r in helpers.metric_rows(str(whole)) if r['split'] == 'train'][-3:] == [
    r['loss'] for r in helpers.metric_rows(str(parts)) if r['split'] == 'train'
  ][-3:]
  evaluated = json.loads(main(whole, 6, mode='eval').stdout)
  assert evaluated['step'] == 6 and evaluated['accuracy'] == first['validation_accuracy']
