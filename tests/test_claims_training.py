"""experiments.claims_training on its smallest paths: k-NN, and two augmentation arms for 2
steps of one seed, through the real trainer, into tmp_path."""

import json

import pytest

from cnn_jax.core.errors import UserError
from experiments import claims_training


def _args(tmp_path, data_dir, *extra):
  return [
    '--out_dir',
    str(tmp_path / 'out'),
    '--runs_dir',
    str(tmp_path / 'runs'),
    '--data_dir',
    data_dir,
    *extra,
  ]


def _results(tmp_path) -> dict:
  with open(tmp_path / 'out' / 'claims_training.json') as f:
    return json.load(f)


def test_knn_on_raw_pixels(tmp_path, data_dir):
  claims_training.main(_args(tmp_path, data_dir, '--claims', 'knn'))
  rows = _results(tmp_path)['claims']['knn']['rows']
  assert [(r['input'], r['k']) for r in rows] == [
    (f'{s}x{s}', k) for s in (8, 32) for k in (1, 3, 5)
  ]
  for r in rows:
    assert (r['train_count'], r['test_count']) == (1292, 360)
    assert 0.9 < r['test_accuracy'] <= 1.0  # digits: k-NN on pixels is far above chance
  table = (tmp_path / 'out' / 'claims_training.md').read_text()
  assert '## knn' in table and '| 8x8 pixels |' in table


@pytest.mark.slow  # trains the five arms (about 35 s)
def test_augmentation_smallest_path_and_resume(tmp_path, data_dir):
  args = _args(
    tmp_path, data_dir, '--claims', 'augmentation', '--arms', 'none', 'flip', '--steps', '2'
  )
  claims_training.main([*args, '--seeds', '0'])
  claim = _results(tmp_path)['claims']['augmentation']
  assert claim['steps'] == 2
  rows = {r['arm']: r for r in claim['rows']}
  assert sorted(rows) == ['flip', 'none']
  for arm, r in rows.items():
    assert r['status'] == 'done' and r['steps'] == 2 and r['seed'] == 0
    assert (r['train_count'], r['test_count']) == (1292, 360)
    assert 0.0 <= r['train_error'] <= 1.0 and r['train_ce'] > 0
    assert len(r['test_class_accuracy']) == 10
    assert [s for s, _ in r['logged_train_loss']] == [2]  # log_every_steps min(10, steps)
    workdir = tmp_path / 'runs' / 'augmentation' / 'steps2' / f'{arm}_seed0'
    with open(workdir / 'config.json') as f:
      trained = json.load(f)
    assert trained['augment'] == {'crop': False, 'flip': arm == 'flip', 'color_shift': 0.0}
  assert (tmp_path / 'out' / 'claims_training_augment.png').stat().st_size > 0
  table = (tmp_path / 'out' / 'claims_training.md').read_text()
  assert '## augmentation' in table and '| flip | False | True | 0 |' in table

  # A rerun reads the finished runs (summary.json, claims_eval.json) instead of training them.
  summary = tmp_path / 'runs' / 'augmentation' / 'steps2' / 'none_seed0' / 'summary.json'
  before = summary.stat().st_mtime_ns
  claims_training.main([*args, '--seeds', '0'])
  assert summary.stat().st_mtime_ns == before


def test_bad_arguments(tmp_path, data_dir):
  with pytest.raises(UserError, match=r"unknown arms \['nope'\]"):
    claims_training.main(_args(tmp_path, data_dir, '--arms', 'nope'))
  with pytest.raises(UserError, match=r'--steps and --seeds must be >= 0'):
    claims_training.main(_args(tmp_path, data_dir, '--steps', '-1'))
