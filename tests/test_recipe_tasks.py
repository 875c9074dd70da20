"""The detection and metric-learning recipes in the shared trainer (configs/yolo.py,
configs/triplet.py): their data, tasks, host-side evaluation and errors, at tiny sizes."""

import functools
import json

import helpers
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import data, tasks, train
from cnn_jax.core.errors import UserError
from cnn_jax.data import digit_scenes
from configs import triplet as triplet_config
from configs import yolo as yolo_config


def _yolo(data_dir: str, **overrides):
  """configs/yolo.py at 32x32 (a 4x4 grid), narrow, 12 steps of batch 32."""
  fields = {
    'data_dir': data_dir,
    'image_size': 32,
    'num_train_steps': 12,
    'eval_batch_size': 100,
    'log_every_steps': 4,
    'checkpoint_every_steps': 12,
    'eval_every_steps': -1,
    'optimizer.warmup_steps': 2,
  }
  config = yolo_config.get_config()
  config.model.backbone_kwargs = {'stem': 'imagenet', 'widths': (8, 8, 8)}  # a field it lacks
  return helpers.set_fields(config, **(fields | overrides))


def _triplet(data_dir: str, **overrides):
  """configs/triplet.py on encoder_tiny at 16x16, 12 steps."""
  fields = {
    'data_dir': data_dir,
    'image_size': 16,
    'batch_size': 64,
    'eval_batch_size': 64,
    'num_train_steps': 12,
    'log_every_steps': 4,
    'checkpoint_every_steps': 12,
    'eval_every_steps': -1,
    'model.name': 'encoder_tiny',
    'optimizer.name': 'adamw',
    'optimizer.lr': 1e-3,
  }
  return helpers.set_fields(triplet_config.get_config(), **(fields | overrides))


def test_digit_boxes_batches_hold_each_digits_box_and_class(scenes_dir):
  ds = data.load('digit_boxes', scenes_dir)
  assert (ds.num_classes, ds.spec.task, len(ds.test)) == (10, 'detection', 500)
  batch = next(data.eval_iterator(ds, global_batch=8, image_size=32, channels=1, split='test'))
  assert batch['image'].shape == (8, 32, 32, 1) and batch['boxes'].shape == (8, 3, 4)
  for i, record in enumerate(ds.test.__getitems__(list(range(8)))):
    scene_id = int(record['scene_id'])  # tfds stores the scenes in an order of its own
    scene = digit_scenes.render_scene(
      digit_scenes.scene_rng('test', scene_id), *_pool_images_labels('test')
    )
    labels, boxes = scene['digit_labels'], scene['digit_boxes']
    np.testing.assert_array_equal(batch['classes'][i], labels)
    for slot in np.flatnonzero(labels >= 0):
      top, left, side = boxes[slot]
      expected = np.array([top, left, top + side, left + side]) / digit_scenes.SIZE
      np.testing.assert_allclose(batch['boxes'][i, slot], expected, rtol=1e-6)


@functools.cache
def _pool_images_labels(split):
  from sklearn.datasets import load_digits

  from cnn_jax.data import digits

  source = load_digits()
  return digits.split_indices()[split], source.images, source.target


@pytest.mark.slow  # about 30 s alone, 100 s on a busy 2-core machine
def test_yolo_recipe_trains_and_scores_map_whatever_the_eval_padding(scenes_dir, tmp_path):
  workdir = str(tmp_path / 'yolo')
  summary = train.train_and_evaluate(_yolo(scenes_dir), workdir)
  assert 0.0 <= summary['test_map50'] <= 1.0 and np.isfinite(summary['test_loss'])
  assert summary['test_detections_per_image'] > 0
  assert (tmp_path / 'yolo' / 'boxes.png').stat().st_size > 10_000
  rows = [json.loads(line) for line in open(tmp_path / 'yolo' / 'metrics.jsonl')]
  losses = [r['loss'] for r in rows if r['split'] == 'train']
  assert losses[-1] < losses[0] and {'box_loss', 'no_object_loss'} <= set(rows[0])
  # 500 test scenes in batches of 24 over 4 devices: the last batch is padded (mask 0); the
  # gathered rows of the padding must not count.
  again = train.restore_and_evaluate(_yolo(scenes_dir, eval_batch_size=24), workdir)
  assert again['map50'] == pytest.approx(summary['validation_map50'], abs=1e-6)
  assert again['loss'] == pytest.approx(summary['validation_loss'], rel=1e-5)
  # --mode=predict on three test scenes saved as PNG files gives the eval path's detections.
  from cnn_jax.inference import predict

  config = _yolo(scenes_dir)
  exp = train.build(config, workdir)
  records = exp.data.validation.__getitems__([0, 1, 2])
  folder = tmp_path / 'scenes'
  folder.mkdir()
  for i, r in enumerate(records):
    (folder / f'scene{i}.png').write_bytes(r['image'])
  result = predict.predict(config, workdir, [str(folder)], output=str(tmp_path / 'out'))
  batch = next(data.eval_iterator(exp.data, global_batch=3, image_size=32, channels=1))
  outputs = exp.model.apply(train.restore_variables(exp), batch['image'], train=False)
  for row, found in zip(result['predictions'], exp.task.detect(np.asarray(outputs)), strict=True):
    shown = found.scores >= predict.SHOWN_SCORE
    assert [d['class'] for d in row['detections']] == found.classes[shown].tolist()
    boxes = np.array([d['box'] for d in row['detections']]).reshape(-1, 4)
    np.testing.assert_allclose(boxes, found.boxes[shown] * 64, atol=0.06)  # rounded to 0.1 px
  assert (tmp_path / 'out' / 'detections.png').exists()


def test_detection_task_prepares_the_notes_targets():
  task = tasks.Detection(3, grid=(2, 2), anchors=((1.0, 1.0),))
  batch = {
    'boxes': np.array([[[0.1, 0.1, 0.4, 0.3], [0.0, 0.0, 0.0, 0.0]]], np.float32),
    'classes': np.array([[2, -1]], np.int32),
  }
  targets = task.prepare(batch)['targets']
  assert targets.shape == (1, 2, 2, 1, 8)
  # Centre (0.25, 0.2) -> cell (0, 0); b_x = 0.2 * 2, b_y = 0.25 * 2, b_h = 0.3 * 2, b_w = 0.2 * 2.
  np.testing.assert_allclose(targets[0, 0, 0, 0], [1, 0.4, 0.5, 0.6, 0.4, 0, 0, 1], rtol=1e-6)
  assert targets[0, 1:].sum() == 0 and targets[0, 0, 1].sum() == 0


@pytest.mark.slow  # about 30 s alone, 100 s on a busy 2-core machine
def test_triplet_recipe_reports_one_shot_accuracy_on_held_out_classes(data_dir, tmp_path):
  summary = train.train_and_evaluate(_triplet(data_dir), str(tmp_path / 'triplet'))
  assert summary['test_held_out_classes'] == 4
  for key in ('one_shot_accuracy', 'verification_accuracy', 'seen_verification_accuracy'):
    assert 0.0 <= summary[f'test_{key}'] <= 1.0
  rows = [json.loads(line) for line in open(tmp_path / 'triplet' / 'metrics.jsonl')]
  assert 'active_fraction' in rows[0]


def test_held_out_classes_join_the_eval_split_only(data_dir):
  ds = data.load('digits', data_dir)
  sub = data.class_subset(ds, (0, 1, 2), held_out=(7, 9))
  train_labels = data.datasets.source_labels(sub.train)
  eval_labels = data.datasets.source_labels(sub.test)
  original = data.datasets.source_labels(ds.test)
  assert set(train_labels) == {0, 1, 2} and sub.num_classes == 3
  assert set(eval_labels) == {0, 1, 2, 3, 4}  # 7 -> 3, 9 -> 4
  assert np.sum(eval_labels == 4) == np.sum(original == 9)
  assert len(sub.test) == np.isin(original, (0, 1, 2, 7, 9)).sum()


def test_detection_finalize_scores_real_rows_only():
  task = tasks.Detection(2, grid=(2, 2), anchors=((1.0, 1.0),))
  boxes = np.array([[[0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.0, 0.0]]] * 2, np.float32)
  classes = np.array([[1, -1], [0, -1]], np.int32)
  targets = task.prepare({'boxes': boxes, 'classes': classes})['targets']
  # Raw outputs whose activation reproduces the targets closely: a perfect detector.
  logit = lambda p: np.log(np.clip(p, 1e-4, 1 - 1e-4) / (1 - np.clip(p, 1e-4, 1 - 1e-4)))  # noqa: E731
  outputs = np.zeros_like(targets)
  outputs[..., 0:3] = logit(targets[..., 0:3])
  outputs[..., 3:5] = np.log(np.maximum(targets[..., 3:5], 1e-4))
  outputs[..., 5:] = targets[..., 5:] * 20.0
  # A padding row (mask 0) whose detection (class 1, scoring above the real one) would be a
  # false positive if it counted.
  padding = outputs[:1] + np.where(targets[:1, ..., :1] > 0, 3.0, 0.0) * (np.arange(7) == 0)
  rows = {
    'outputs': np.concatenate([outputs, padding]),
    'boxes': np.concatenate([boxes, np.zeros((1, 2, 4), np.float32)]),
    'classes': np.concatenate([classes, np.full((1, 2), -1, np.int32)]),
    'mask': np.array([1, 1, 0], np.float32),
  }
  out = task.finalize({'loss': 0.0, 'count': 2.0, tasks.ROWS: rows})
  assert out['map50'] == 1.0 and out['ap50_class0'] == 1.0 and out['ap50_class1'] == 1.0
  rows['mask'][2] = 1.0  # counted: its detection has no ground truth, a false positive
  assert task.finalize({'loss': 0.0, 'count': 3.0, tasks.ROWS: rows})['map50'] < 1.0


def test_triplet_finalize_uses_only_real_rows_and_held_out_classes():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), 6)  # classes 0-2 seen, 3-4 held out
  centres = rng.normal(size=(5, 8)) * 3
  emb = centres[labels] + rng.normal(size=(30, 8)) * 0.1
  mask = np.ones(30, np.float32)
  padded = {
    'embedding': np.concatenate([emb, np.zeros((2, 8))]),
    'label': np.concatenate([labels, [0, 0]]),
    'mask': np.concatenate([mask, [0, 0]]),
  }
  out = tasks.Triplet(3, trials=5).finalize({'count': 30, tasks.ROWS: padded})
  assert out['held_out_classes'] == 2
  assert out['one_shot_accuracy'] == 1.0 and out['seen_verification_accuracy'] == 1.0


@pytest.mark.parametrize(
  'make, overrides, message',
  [
    ('yolo', {'dataset': 'digits'}, "gives detection outputs but dataset 'digits'"),
    ('yolo', {'model.name': 'resnet_tiny'}, 'gives per-image logits but dataset'),
    ('yolo', {'augment.crop': False}, 'detection dataset'),
    ('triplet', {'model.name': 'resnet_tiny'}, 'metric-learning .* use an encoder model'),
    ('triplet', {'held_out_classes': (5, 6)}, 'listed twice or also in config.data_classes'),
    ('triplet', {'triplet.mining': 'easy'}, "mining='easy'"),
  ],
)
def test_bad_recipe_configs_fail_before_training(
  make, overrides, message, data_dir, scenes_dir, tmp_path
):
  if make == 'yolo':
    config = _yolo(data_dir if overrides.get('dataset') == 'digits' else scenes_dir, **overrides)
  else:
    config = _triplet(data_dir, **overrides)
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=message) as e:
    train.build(config, str(workdir))
  assert '\n' not in str(e.value) and not workdir.exists()


def test_held_out_classes_need_the_triplet_task(data_dir, tmp_path):
  config = helpers.tiny_config(data_dir, data_classes=(0, 1), held_out_classes=(2,))
  with pytest.raises(UserError, match='held_out_classes is for metric learning'):
    train.build(config, str(tmp_path / 'run'))


def test_registry_kinds():
  from cnn_jax import models

  kinds = {n: models.output_kind(n) for n in ('yolo_tiny', 'encoder', 'unet', 'resnet20')}
  assert kinds == {
    'yolo_tiny': 'detection',
    'encoder': 'embedding',
    'unet': 'segmentation',
    'resnet20': 'classification',
  }
  det = models.create('yolo', num_classes=20)  # ResNet-18, stride 32: 7x7 at 224
  assert det.grid_shape((224, 224, 3)) == (7, 7)
  enc = models.create('encoder', num_classes=10, embedding_dim=32)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  out = jax.eval_shape(lambda x: enc.apply(enc.init(jax.random.key(0), x), x), x)
  assert out.shape == (2, 32)
