"""The triplet task's P x K training batches (Hermans et al. 2017; config.triplet.sampler='pk'):
P classes x K images, every device holding K / devices of each class, a pure function of
(seed, step), each host reading its own rows."""

import json

import helpers
import numpy as np
import pytest

from cnn_jax import data, train
from cnn_jax.core.errors import UserError
from cnn_jax.ops import pk_batches
from configs import triplet as triplet_config


def _triplet(data_dir: str, **overrides):
  """configs/triplet.py on encoder_tiny at 16x16: batches of P=4 classes x K=8 images."""
  fields = {
    'data_dir': data_dir,
    'image_size': 16,
    'batch_size': 32,
    'eval_batch_size': 64,
    'num_train_steps': 6,
    'log_every_steps': 2,
    'checkpoint_every_steps': 6,
    'eval_every_steps': -1,
    'model.name': 'encoder_tiny',
    'optimizer.name': 'adamw',
    'optimizer.lr': 1e-3,
  }
  return helpers.set_fields(triplet_config.get_config(), **(fields | overrides))


@pytest.fixture(scope='module')
def experiment(data_dir, tmp_path_factory):
  return train.build(_triplet(data_dir), str(tmp_path_factory.mktemp('pk') / 'run'))


def _batches(exp, start_step=0, **options):
  """Steps start_step .. 5 as the trainer draws them (4 simulated devices)."""
  config = exp.config
  kwargs = {
    'seed': config.seed,
    'global_batch': config.batch_size,
    'start_step': start_step,
    'num_steps': exp.num_steps,
    'image_size': config.image_size,
    'channels': config.image_channels,
    'augment': config.get('augment'),
  }
  return list(exp.task.train_batches(exp.data, num_local_devices=4, **(kwargs | options)))


def test_pk_indices_give_every_shard_k_over_shards_images_of_each_class():
  labels = np.repeat(np.arange(6), [10, 3, 7, 8, 9, 12])  # class 1 has fewer than K: repeats
  for step in range(5):
    idx = pk_batches.pk_batch_indices(
      labels, classes_per_batch=4, images_per_class=8, seed=3, step=step, shards=4
    )
    shards = labels[idx].reshape(4, 4, 2)  # (shard, class, K / shards)
    assert (shards == shards[:1, :, :1]).all()  # each shard: the same 4 classes, 2 images each
    assert np.unique(shards[0, :, 0]).size == 4
    # The same images as the class-contiguous batch, reordered.
    flat = pk_batches.pk_batch_indices(
      labels, classes_per_batch=4, images_per_class=8, seed=3, step=step
    )
    np.testing.assert_array_equal(np.sort(idx), np.sort(flat))


def test_pk_indices_reject_k_that_does_not_split_over_devices():
  with pytest.raises(UserError, match='K=6 must split over 4 device') as e:
    pk_batches.pk_batch_indices(
      np.arange(20) % 4, classes_per_batch=2, images_per_class=6, seed=0, step=0, shards=4
    )
  assert '\n' not in str(e.value)


def test_pk_index_maps_positions_to_rows_of_each_step():
  labels = np.arange(30) % 5
  index_of = pk_batches.pk_index(labels, classes_per_batch=3, images_per_class=4, seed=1, shards=2)
  positions = np.arange(36)  # steps 0, 1, 2 of batch 12
  out = index_of(positions)
  for step in range(3):
    want = pk_batches.pk_batch_indices(
      labels, classes_per_batch=3, images_per_class=4, seed=1, step=step, shards=2
    )
    np.testing.assert_array_equal(out[step * 12 : (step + 1) * 12], want)
  np.testing.assert_array_equal(index_of(positions[::-1]), out[::-1])  # order-free, stateless


def test_trainer_batches_are_p_classes_of_k_images_each_device_all_p(experiment):
  batches = _batches(experiment)
  assert len(batches) == 6
  for batch in batches:
    labels = batch['label']
    assert labels.shape == (32,) and batch['image'].shape[:3] == (32, 16, 16)
    classes, counts = np.unique(labels, return_counts=True)
    assert classes.size == 4 and (counts == 8).all()
    for device in labels.reshape(4, 8):  # the trainer's contiguous device chunks
      classes_d, counts_d = np.unique(device, return_counts=True)
      np.testing.assert_array_equal(classes_d, classes)
      assert (counts_d == 2).all()
  # Steps differ: other images (and, here, other class draws).
  assert not np.array_equal(batches[0]['image'], batches[1]['image'])
  assert len({tuple(np.unique(b['label'])) for b in batches}) > 1


def test_pk_batches_are_a_function_of_seed_and_step_and_resume_exactly(experiment):
  full = _batches(experiment)
  again = _batches(experiment)
  resumed = _batches(experiment, start_step=3)
  for a, b in zip(full, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(full[3:], resumed, strict=True):  # resume from step 3: bit-identical
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = _batches(experiment, seed=experiment.config.seed + 1, num_steps=1)
  assert not np.array_equal(other_seed[0]['image'], full[0]['image'])


def test_each_host_reads_its_own_rows_of_the_global_pk_batch(experiment):
  whole = _batches(experiment, num_steps=2)
  # 2 hosts x 2 devices: the same 4 shards of the global batch as 1 host x 4 devices.
  hosts = [
    list(
      experiment.task.train_batches(
        experiment.data,
        num_local_devices=2,
        seed=experiment.config.seed,
        global_batch=32,
        start_step=0,
        num_steps=2,
        image_size=16,
        channels=experiment.config.image_channels,
        augment=experiment.config.get('augment'),
        process_index=i,
        process_count=2,
      )
    )
    for i in range(2)
  ]
  for step in range(2):
    for key in whole[step]:
      joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_shuffle_sampler_keeps_the_pipelines_batches(data_dir, tmp_path):
  config = _triplet(data_dir, **{'triplet.sampler': 'shuffle'})
  exp = train.build(config, str(tmp_path / 'run'))
  got = next(train.train_batches(exp, 0))
  want = next(
    data.train_iterator(
      exp.data,
      seed=config.seed,
      global_batch=32,
      start_step=0,
      num_steps=1,
      image_size=16,
      channels=config.image_channels,
      augment=config.augment,
    )
  )
  for key in want:
    np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'triplet.k': 4}, r'P x K = 4 x 4 = 16 images but config.batch_size=32'),
    ({'triplet.p': 7, 'batch_size': 56}, r'2 <= P <= 6 \(the training classes\)'),
    ({'triplet.sampler': 'random'}, "sampler='random'"),
  ],
)
def test_bad_pk_configs_are_one_line_before_training(data_dir, tmp_path, overrides, message):
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=message) as e:
    train.build(_triplet(data_dir, **overrides), str(workdir))
  assert '\n' not in str(e.value) and not workdir.exists()


def test_k_that_does_not_split_over_the_devices_is_one_line(data_dir, tmp_path):
  config = _triplet(data_dir, batch_size=24, **{'triplet.k': 6})  # 6 images over 4 devices
  exp = train.build(config, str(tmp_path / 'run'))
  with pytest.raises(UserError, match='K=6 must split over 4 device') as e:
    train.train_batches(exp, 0)
  assert '\n' not in str(e.value)


def test_k_follows_the_batch_size_and_p():
  config = helpers.set_fields(triplet_config.get_config(), batch_size=64, **{'triplet.p': 2})
  assert (config.triplet.p, config.triplet.k) == (2, 32)


@pytest.mark.slow  # 18-21 s alone on 2 shared cores (compiling the step and the eval)
def test_tiny_triplet_training_on_pk_batches(data_dir, tmp_path):
  config = _triplet(data_dir, **{'triplet.mining': 'hard', 'num_train_steps': 2})
  summary = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert summary['test_held_out_classes'] == 4
  assert 0.0 <= summary['test_one_shot_accuracy'] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / 'run' / 'metrics.jsonl')]
  train_rows = [r for r in rows if 'active_fraction' in r]
  assert train_rows and all(np.isfinite(r['loss']) for r in train_rows)
