"""Noisy Student self-training (Xie, Luong, Hovy & Le 2020), as iterations of the one trainer.

  workdir/iter0/   the teacher: trained on the labelled split only, without noise
  workdir/iter1/   pseudo_labels.npz (iter0 labels the unlabelled pool, clean: eval mode, no
                   augmentation), then a student trained on labelled + pseudo-labelled data with
                   noise (RandAugment, dropout, stochastic depth); it becomes the next teacher
  workdir/iter2/   ... as many as config.noisy_student.iterations
  workdir/summary.json   every iteration's validation and test accuracy, pseudo-label statistics

Each iteration is an ordinary trainer workdir (checkpoints, metrics, summary.json), so a killed
run resumes where it stopped: finished iterations (summary.json present) are skipped, saved
pseudo-labels are reused (never recomputed: they are a pure function of the teacher anyway), and
the interrupted iteration resumes from its last checkpoint. The result is bit-identical to an
uninterrupted run (tests/test_noisy_student.py).
"""

import copy
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.errors import UserError
from cnn_jax.recipes import pseudo_labels

PSEUDO_LABELS_FILE = 'pseudo_labels.npz'
# Model fields that are noise: zeroed for the clean teacher of iteration 0 (where the model has
# them), kept as configured for the students.
NOISE_FIELDS = ('dropout_rate', 'stochastic_depth_prob', 'dropout')


def iteration_dir(workdir: str, k: int) -> str:
  return os.path.join(workdir, f'iter{k}')


def final_run(config: ml_collections.ConfigDict, workdir: str):
  """(config, workdir) of the run --mode=eval/predict/export reads: the last iteration's
  student, workdir/iter<iterations>."""
  k = config.noisy_student.iterations
  return iteration_config(config, workdir, k), iteration_dir(workdir, k)


def iteration_config(config: ml_collections.ConfigDict, workdir: str, k: int):
  """The trainer config of iteration k: 0 is the clean teacher, k >= 1 a noisy student."""
  c = copy.deepcopy(config)
  ns = c.noisy_student
  if k == 0:
    for field in NOISE_FIELDS:
      if field in c.model:
        c.model[field] = 0.0
    c.randaugment = ()
    ns.pseudo_labels = ''
  else:
    ns.pseudo_labels = os.path.join(iteration_dir(workdir, k), PSEUDO_LABELS_FILE)
    c.task = 'self_training'  # cnn_jax/tasks/self_training.py
  c.seed = config.seed + k  # each iteration its own initialisation and data order
  return c


def label_pool(
  teacher: train.Experiment, pool: Any, variables: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
  """The teacher's float32 logits (N, K) on the unlabelled pool, clean, and the pool's labels.

  The labels are never trained on: they measure how right the pseudo-labels are.
  """
  config = teacher.config

  @jax.jit
  def predict(images):
    return teacher.model.apply(variables, images, train=False).astype(jnp.float32)

  logits, labels = [], []
  for batch in data_lib.pool_iterator(
    teacher.data,
    pool,
    global_batch=config.eval_batch_size,
    image_size=config.image_size,
    channels=config.image_channels,
  ):
    keep = batch['mask'] > 0  # the last batch is padded
    logits.append(np.asarray(predict(batch['image']))[keep])
    labels.append(np.asarray(batch['label'])[keep])
  return np.concatenate(logits), np.concatenate(labels)


def make_pseudo_labels(config: ml_collections.ConfigDict, workdir: str, k: int) -> dict[str, Any]:
  """Writes iteration k's pseudo_labels.npz from iteration k - 1's model; returns its stats."""
  path = os.path.join(iteration_dir(workdir, k), PSEUDO_LABELS_FILE)
  if os.path.exists(path):
    with np.load(path) as f:
      return json.loads(str(f['stats']))
  teacher_config = iteration_config(config, workdir, k - 1)
  teacher = train.build(teacher_config, iteration_dir(workdir, k - 1))
  _, pool = train.load_data(teacher_config)  # the unlabelled part of the train split
  if pool is None or len(pool) == 0:
    raise UserError(
      'Noisy Student needs an unlabelled pool: set config.noisy_student.labeled_fraction < 1'
    )
  logits, true_labels = label_pool(teacher, pool, train.restore_variables(teacher))
  ns = config.noisy_student
  selected = pseudo_labels.select(
    logits,
    mode=ns.mode,
    temperature=ns.temperature,
    threshold=ns.threshold,
    balance=ns.balance,
    per_class=ns.per_class if ns.per_class > 0 else None,
    seed=config.seed + k,
  )
  stats = dict(selected.stats)
  stats['teacher_pool_accuracy'] = float(np.mean(np.argmax(logits, -1) == true_labels))
  if len(selected):
    hits = np.argmax(selected.targets, -1) == true_labels[selected.indices]
    stats['pseudo_label_accuracy'] = float(np.mean(hits))  # over the selected (balanced) rows
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp.npz'  # np.savez keeps a name ending in .npz as is
  np.savez(
    tmp,
    indices=selected.indices,
    targets=selected.targets,
    confidence=selected.confidence,
    stats=json.dumps(stats),
  )
  os.replace(tmp, path)  # atomic: a killed run never leaves half a file
  logging.info('Iteration %d pseudo-labels: %s', k, stats)
  return stats


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """All iterations (resuming); returns the summary, or None when stopped by SIGTERM."""
  ns = config.noisy_student
  if ns.iterations < 1:
    raise UserError(
      f'config.noisy_student.iterations={ns.iterations}; expected >= 1 (0 would be the teacher '
      'alone: train it with its family config)'
    )
  # Every iteration's config is checked before anything trains.
  for k in range(ns.iterations + 1):
    c = iteration_config(config, workdir, k)
    c.noisy_student.pseudo_labels = ''  # the files do not exist yet: checked as the teacher
    c.task = config.task
    train.build(c, iteration_dir(workdir, k))
  summary = {'iterations': []}
  for k in range(ns.iterations + 1):
    stats = make_pseudo_labels(config, workdir, k) if k else None
    result = train.train_and_evaluate(
      iteration_config(config, workdir, k), iteration_dir(workdir, k)
    )
    if result is None:
      return None
    summary['iterations'].append(
      {
        'iteration': k,
        'role': 'teacher' if k == 0 else 'student',
        'validation_accuracy': result.get('validation_accuracy'),
        'test_accuracy': result['test_accuracy'],
        'params_sha256': result['params_sha256'],
        'pseudo_labels': stats,
      }
    )
  summary['validation_accuracy'] = summary['iterations'][-1]['validation_accuracy']
  summary['test_accuracy'] = summary['iterations'][-1]['test_accuracy']
  summary['params_sha256'] = summary['iterations'][-1]['params_sha256']
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  return summary
