"""experiments.claims_transfer on its smallest path: resnet_tiny at 16x16, 2 steps a run,
one seed, n = 3; the arms are wired as they say, and a second invocation trains nothing."""

import argparse
import json
import os

import numpy as np
import pytest
from flax import traverse_util

from cnn_jax.core.checkpoint import Checkpointer
from cnn_jax.core.errors import UserError
from experiments import claims_transfer


def _params(workdir: str) -> dict[str, np.ndarray]:
  ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'))
  try:
    return traverse_util.flatten_dict(ckpt.restore(None)['params'], sep='/')
  finally:
    ckpt.close()


@pytest.mark.slow  # trains a source and two arms, twice (about 60 s)
def test_smallest_run_writes_the_table_and_is_resumable(tmp_path, data_dir):
  runs, out = tmp_path / 'runs', tmp_path / 'out'
  argv = [
    '--model=resnet_tiny',
    '--image_size=16',
    '--source_steps=2',
    '--steps=2',
    '--batch_size=8',
    '--sizes',
    '3',
    '--seeds',
    '0',
    '--arms',
    'head',
    'finetune',
    f'--runs_dir={runs}',
    f'--out_dir={out}',
    f'--data_dir={data_dir}',
  ]
  payload = claims_transfer.main(argv)
  # Digits: 648 training images of classes 0-4 (721 less the 73 held out for validation), 180
  # test images of classes 0-4, 180 of 5-9.
  assert payload['source']['train_count'] == 648 and payload['source']['test_count'] == 180
  assert payload['target']['train_counts'] == {'3': 15} and payload['target']['test_count'] == 180
  assert [(e['n'], e['arm'], e['seeds']) for e in payload['aggregate']] == [
    (3, 'head', [0]),
    (3, 'finetune', [0]),
  ]
  trained = payload['target']['trained_parameters']
  assert trained['finetune'][0] == trained['finetune'][1]  # every parameter
  head = _params(payload['source']['workdir'])['head/kernel']
  assert head.shape[1] == 5  # the trainer took config.data_classes: a 5-class source head
  assert trained['head'][0] == head.shape[0] * 5 + 5  # the new 5-class head only

  # The arms are what they claim: the frozen arm's backbone is the source's, bit for bit; the
  # fine-tuned one moved from it. (scratch: test_arms_share_everything_but_their_start)
  source_dir, target_dir = claims_transfer.run_dirs(
    argparse.Namespace(
      runs_dir=str(runs),
      model='resnet_tiny',
      image_size=16,
      source_steps=2,
      steps=2,
      batch_size=8,
      lr=0.1,
    )
  )
  source = _params(os.path.join(source_dir, 'seed0'))
  arms = {arm: _params(os.path.join(target_dir, f'{arm}_n3_seed0')) for arm in ('head', 'finetune')}
  backbone = [k for k in source if not k.startswith('head/')]
  for name in backbone:
    np.testing.assert_array_equal(arms['head'][name], source[name], err_msg=name)
  assert not np.array_equal(arms['finetune']['stem_conv/kernel'], source['stem_conv/kernel'])

  table = (out / 'claims_transfer.md').read_text()
  assert '| 3 (15) |' in table and 'frozen backbone + new head' in table
  assert (out / 'claims_transfer.png').stat().st_size > 0
  assert json.loads((out / 'claims_transfer.json').read_text())['best'].keys() == {'3'}

  # A second invocation reads every finished run instead of training it again.
  summaries = sorted(runs.rglob('summary.json'))
  assert len(summaries) == 3
  before = [p.stat().st_mtime_ns for p in summaries]
  again = claims_transfer.main(argv)
  assert [p.stat().st_mtime_ns for p in summaries] == before
  assert [e['test_accuracy'] for e in again['aggregate']] == [
    e['test_accuracy'] for e in payload['aggregate']
  ]


def test_arms_share_everything_but_their_start():
  args = argparse.Namespace(
    model='resnet20',
    image_size=32,
    data_dir='',
    steps=60,
    batch_size=32,
    lr=0.1,
    seeds=[0, 1],
    sizes=[5, -1],
    arms=list(claims_transfer.ARMS),
  )
  trials = claims_transfer.target_trials(args, '/src')
  assert len(trials) == 2 * 2 * 3 and len({t.name for t in trials}) == len(trials)
  by_name = {t.name: dict(t.overrides) for t in trials}
  assert by_name['scratch_n5_seed1'] == {'train_examples_per_class': 5, 'seed': 1}
  assert by_name['finetune_nall_seed0'] == {
    'init_from.path': '/src',
    'init_from.skip': '^head/',
    'train_examples_per_class': -1,
    'seed': 0,
  }
  assert by_name['head_n5_seed0'] == {
    'init_from.path': '/src',
    'init_from.skip': '^head/',
    'freeze': '^(?!head/)',
    'train_examples_per_class': 5,
    'seed': 0,
  }
  base = claims_transfer.target_config(args)
  assert base.data_classes == (5, 6, 7, 8, 9) and base.num_train_steps == 60
  assert base.optimizer.warmup_steps == 6 and base.batch_size == 32
  source = claims_transfer.source_config(argparse.Namespace(**vars(args), source_steps=50))
  assert source.data_classes == (0, 1, 2, 3, 4) and source.batch_size == 128 and source.seed == 0


@pytest.mark.parametrize(
  'flag, message',
  [
    (['--sizes', '0'], r'--sizes \[0\]: give images per class >= 1, or -1'),
    (['--steps', '0'], r'--source_steps, --steps and --batch_size must be >= 1'),
    (['--seeds', '-1'], r'--seeds \[-1\]'),
    (['--lr', '0'], r'--lr 0.0: give a learning rate > 0'),
    (['--sizes', '5', '500'], r'config.train_examples_per_class=500: class 5 .* has only'),
  ],
)
def test_bad_arguments_are_one_clear_line(tmp_path, data_dir, flag, message):
  """Refused before anything trains or any folder is made."""
  with pytest.raises(UserError, match=message):
    claims_transfer.main(
      [*flag, f'--runs_dir={tmp_path}', f'--out_dir={tmp_path}', f'--data_dir={data_dir}']
    )
  assert not os.listdir(tmp_path)
