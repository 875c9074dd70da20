"""Triplet loss and in-batch mining vs direct NumPy loops; verification, PK batches, encoder."""

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models
from cnn_jax.core.errors import UserError
from cnn_jax.models.encoder import Encoder, encoder
from cnn_jax.ops import metric_learning as ml
from cnn_jax.ops import pk_batches

# ---------------------------------------------------------------------------------------------
# NumPy references: one loop per anchor, positive, negative.


def _np_dist(e: np.ndarray, squared: bool) -> np.ndarray:
  n = len(e)
  d = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      d[i, j] = np.sum((e[i] - e[j]) ** 2)
  return d if squared else np.sqrt(d)


def _np_mining(e, labels, margin, mining, squared, mask=None):
  """(loss_sum, count, num_valid, num_active, fallbacks) by brute force."""
  n = len(e)
  d = _np_dist(np.asarray(e, np.float64), squared)
  ok = np.ones(n, bool) if mask is None else np.asarray(mask) > 0
  positives, negatives = [], []
  for a in range(n):
    others = [j for j in range(n) if ok[a] and ok[j] and j != a]
    positives.append([j for j in others if labels[j] == labels[a]])
    negatives.append([j for j in others if labels[j] != labels[a]])
  loss_sum = count = valid = active = fallbacks = 0
  for a in range(n):
    if not positives[a] or not negatives[a]:
      continue
    if mining == 'all':
      for p in positives[a]:
        for m in negatives[a]:
          loss = max(d[a, p] - d[a, m] + margin, 0.0)
          valid += 1
          if loss > 0:
            loss_sum += loss
            active += 1
      count = active
    elif mining == 'hard':
      hp = max(d[a, p] for p in positives[a])
      hn = min(d[a, m] for m in negatives[a])
      loss = max(hp - hn + margin, 0.0)
      loss_sum += loss
      valid += 1
      active += loss > 0
      count = valid
    else:  # semi-hard
      for p in positives[a]:
        farther = [d[a, m] for m in negatives[a] if d[a, m] > d[a, p]]
        if farther:
          dn = min(farther)
        else:
          dn = max(d[a, m] for m in negatives[a])
          fallbacks += 1
        loss = max(d[a, p] - dn + margin, 0.0)
        loss_sum += loss
        valid += 1
        active += loss > 0
      count = valid
  return loss_sum, count, valid, active, fallbacks


def _batch(seed: int, n: int = 12, dim: int = 3, classes: int = 4):
  """Gaussian embeddings (distances tie with probability 0) and labels with a singleton class."""
  rng = np.random.default_rng(seed)
  e = rng.normal(size=(n, dim)).astype(np.float32)
  labels = rng.integers(0, classes, n)
  labels[-1] = classes  # a class of one: this anchor has no positive
  return e, labels


# Tiny inputs compile without XLA's expensive passes (compile time dominates there).
_jit_fast = partial(
  jax.jit,
  compiler_options={'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True},
)
_sums = _jit_fast(ml.triplet_mining_sums, static_argnames=('mining', 'squared', 'margin'))

# ---------------------------------------------------------------------------------------------
# Distances and the loss formula


@pytest.mark.parametrize('squared', [True, False])
def test_pairwise_distances_match_a_loop(squared):
  e, _ = _batch(0)
  e[3] = e[5]  # a duplicate: the expanded form can round below 0 there
  d = np.asarray(ml.pairwise_distances(e, squared=squared))
  np.testing.assert_allclose(d, _np_dist(e.astype(np.float64), squared), rtol=1e-5, atol=1e-5)
  assert (d >= 0).all() and (np.diag(d) == 0).all()
  assert d[3, 5] == pytest.approx(0.0, abs=1e-3 if not squared else 1e-6)


def test_distance_gradient_is_finite_at_zero_distance():
  e, _ = _batch(1)
  e[2] = e[7]
  for squared in (True, False):
    grad = _jit_fast(jax.grad(lambda x, s=squared: ml.pairwise_distances(x, squared=s).sum()))
    g = grad(jnp.asarray(e))
    assert np.isfinite(np.asarray(g)).all(), squared


def test_triplet_loss_hand_case_and_loop():
  # d(A, P) = 1, d(A, N) = 2 (squared): max(1 - 2 + alpha, 0).
  a, p, n = np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]]), np.array([[1.0, 1.0]])
  assert float(ml.triplet_loss(a, p, n, 2.0)[0]) == pytest.approx(1.0)
  assert float(ml.triplet_loss(a, p, n, 0.5)[0]) == 0.0
  # Euclidean: 1 - sqrt(2) + 1.
  assert float(ml.triplet_loss(a, p, n, 1.0, squared=False)[0]) == pytest.approx(2 - np.sqrt(2))
  rng = np.random.default_rng(2)
  a, p, n = (rng.normal(size=(9, 4)) for _ in range(3))
  want = [max(np.sum((a[i] - p[i]) ** 2) - np.sum((a[i] - n[i]) ** 2) + 0.7, 0) for i in range(9)]
  got = ml.triplet_loss(a, p, n, 0.7)
  assert got.shape == (9,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert 0 < np.count_nonzero(want) < 9  # both branches of the max are exercised


# ---------------------------------------------------------------------------------------------
# Mining


@pytest.mark.parametrize(
  'mining,squared,seed', list(itertools.product(ml.MINING, [True, False], [3, 4, 5]))
)
def test_mining_matches_numpy_loops(mining, squared, seed):
  e, labels = _batch(seed)
  margin = 1.0 if squared else 0.5
  mask = np.ones(len(e), np.float32)
  mask[0] = 0.0  # a padded example: neither anchor, positive nor negative
  got = _sums(e, labels, margin=margin, mining=mining, squared=squared, mask=mask)
  loss_sum, count, valid, active, _ = _np_mining(e, labels, margin, mining, squared, mask)
  assert valid > 0 and 0 < active  # the case is not empty
  assert float(got.loss_sum) == pytest.approx(loss_sum, rel=1e-5)
  assert (got.count, got.num_valid, got.num_active) == (count, valid, active)
  mean = ml.batch_triplet_loss(e, labels, margin=margin, mining=mining, squared=squared, mask=mask)
  assert float(mean) == pytest.approx(loss_sum / count, rel=1e-5)


def test_mining_modes_order_and_semi_hard_fallback():
  # Small margin, spread-out classes: some pairs have no farther negative (the fallback), others do.
  e, labels = _batch(6, n=16, dim=2, classes=3)
  ref = {m: _np_mining(e, labels, 0.2, m, True) for m in ml.MINING}
  fallbacks = ref['semi-hard'][4]
  pairs = ref['semi-hard'][2]
  assert 0 < fallbacks < pairs, (fallbacks, pairs)  # both branches of the semi-hard rule
  got = {m: _sums(e, labels, margin=0.2, mining=m, squared=True) for m in ml.MINING}
  for m in ml.MINING:
    assert float(got[m].loss_sum) == pytest.approx(ref[m][0], rel=1e-5), m
    assert (got[m].count, got[m].num_valid, got[m].num_active) == ref[m][1:4], m


def test_a_padded_example_changes_nothing_and_empty_batches_give_zero():
  e, labels = _batch(7)
  pad_e = np.concatenate([e, 100 * np.ones((1, e.shape[1]), np.float32)])
  pad_l = np.concatenate([labels, labels[:1]])
  mask = np.concatenate([np.ones(len(e)), [0.0]])
  for m in ml.MINING:
    a = _sums(e, labels, margin=0.5, mining=m, squared=True)
    b = _sums(pad_e, pad_l, margin=0.5, mining=m, squared=True, mask=mask)
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-6)
    one_class = _sums(e, np.zeros(len(e), int), margin=0.5, mining=m, squared=True)  # no negative
    assert np.array(one_class).tolist() == [0.0, 0.0, 0.0, 0.0], m
    loss = _jit_fast(partial(ml.batch_triplet_loss, margin=0.5, mining=m))
    assert float(loss(e, np.zeros(len(e), int))) == 0.0


@pytest.mark.parametrize('mining', ml.MINING)
def test_mining_gradients_are_finite_and_match_finite_differences(mining):
  e, labels = _batch(8, n=8)
  loss = jax.jit(partial(ml.batch_triplet_loss, margin=1.0, mining=mining, squared=False))
  g = np.asarray(jax.grad(loss)(jnp.asarray(e, jnp.float32), labels))
  assert np.isfinite(g).all() and np.abs(g).sum() > 0
  # Central difference along one random direction (float64 NumPy reference, small step).
  rng = np.random.default_rng(0)
  v = rng.normal(size=e.shape)
  h = 1e-4
  e64 = e.astype(np.float64)
  plus = _np_mining(e64 + h * v, labels, 1.0, mining, False)
  minus = _np_mining(e64 - h * v, labels, 1.0, mining, False)
  numeric = (plus[0] / plus[1] - minus[0] / minus[1]) / (2 * h)
  assert np.sum(g * v) == pytest.approx(numeric, rel=2e-2, abs=1e-3)


def test_mining_rejects_bad_arguments():
  e, labels = _batch(9)
  with pytest.raises(UserError, match="unknown triplet mining 'hardest'.*semi-hard"):
    ml.triplet_mining_sums(e, labels, margin=0.2, mining='hardest')
  with pytest.raises(UserError, match='margin .* >= 0'):
    ml.batch_triplet_loss(e, labels, margin=-0.1)
  with pytest.raises(UserError, match='labels'):
    ml.batch_triplet_loss(e, labels[:-1], margin=0.2)


# ---------------------------------------------------------------------------------------------
# Verification


def test_best_threshold_hand_case():
  d = [0.9, 0.1, 0.4, 0.2, 0.5]
  same = [False, True, False, True, True]
  # Sorted: 0.1 S, 0.2 S, 0.4 D, 0.5 S, 0.9 D. Accuracy by candidate threshold:
  # -0.9: 2/5, 0.15: 3/5, 0.3: 4/5, 0.45: 3/5, 0.7: 4/5, 1.9: 3/5 -> the smaller of the 4/5's.
  t, acc = ml.best_threshold(d, same)
  assert t == pytest.approx(0.3) and acc == pytest.approx(0.8)
  assert ml.verification_accuracy(d, same, t) == pytest.approx(0.8)
  np.testing.assert_array_equal(ml.verify(np.array(d), t), [False, True, False, True, False])
  # Equal distances cannot be split: one same and one different pair at 0.2.
  t, acc = ml.best_threshold([0.2, 0.2, 0.6], [True, False, False])
  assert acc == pytest.approx(2 / 3) and t == pytest.approx(-0.8)
  t, acc = ml.best_threshold([0.3, 0.1], [True, True])  # all same: accept everything
  assert acc == 1.0 and t > 0.3


def test_best_threshold_matches_a_brute_force_search():
  rng = np.random.default_rng(10)
  same = rng.random(200) < 0.4
  d = np.round(np.where(same, rng.normal(1.0, 0.5, 200), rng.normal(2.0, 0.5, 200)), 1)  # ties
  t, acc = ml.best_threshold(d, same)
  cands = np.unique(d)
  grid = np.concatenate([[cands[0] - 1], (cands[:-1] + cands[1:]) / 2, [cands[-1] + 1]])
  accs = [np.mean((d <= c) == same) for c in grid]
  assert acc == pytest.approx(max(accs)) and t == pytest.approx(grid[int(np.argmax(accs))])
  assert acc > 0.7  # the two distributions are separable enough to be better than chance


def test_pair_distances_and_one_shot_evaluation_hand_case():
  e = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
  d, same = ml.pair_distances(e, np.array([0, 1, 0]))
  np.testing.assert_allclose(d, [9.0, 1.0, 10.0])  # pairs (0,1), (0,2), (1,2)
  np.testing.assert_array_equal(same, [False, True, False])

  refs = np.array([[0.0, 0.0], [10.0, 0.0]])
  ref_labels = np.array([7, 3])
  queries = np.array([[1.0, 0.0], [9.0, 0.0], [6.0, 0.0], [4.0, 0.0]])
  q_labels = np.array([7, 3, 7, 7])
  # Squared distances to (ref 7, ref 3): (1, 81), (81, 1), (36, 16), (16, 36).
  out = ml.one_shot_evaluation(refs, ref_labels, queries, q_labels, threshold=20.0)
  assert out['one_shot_accuracy'] == pytest.approx(3 / 4)  # the query at 6 is nearer to 3
  # Accepted (<= 20): (1, -), (-, 1), (-, 16), (16, -): same pairs accepted 3 of 4, different
  # pairs accepted 1 of 4 (query at 6 with ref 3); verdicts right on 6 of 8 pairs.
  assert out['true_accept_rate'] == pytest.approx(3 / 4)
  assert out['false_accept_rate'] == pytest.approx(1 / 4)
  assert out['verification_accuracy'] == pytest.approx(6 / 8)
  with pytest.raises(UserError, match=r'query classes \[5\] have no reference'):
    ml.one_shot_evaluation(refs, ref_labels, queries, np.array([7, 3, 5, 7]), threshold=1.0)


def test_one_shot_split():
  labels = np.array([0, 1, 2, 1, 2, 2, 0, 1])
  refs, queries = ml.one_shot_split(labels, [1, 2], seed=3)
  assert sorted(labels[refs].tolist()) == [1, 2] and len(refs) == 2
  assert sorted(np.concatenate([refs, queries]).tolist()) == [1, 2, 3, 4, 5, 7]
  with pytest.raises(UserError, match='held-out class 9 has 0 image'):
    ml.one_shot_split(labels, [9])


# ---------------------------------------------------------------------------------------------
# PK batches


def test_pk_batches_hold_p_classes_of_k_images_and_depend_on_seed_and_step_only():
  labels = np.repeat(np.arange(6), [9, 9, 9, 9, 9, 2])  # class 5 has fewer than K images
  kw = dict(classes_per_batch=4, images_per_class=3)
  seen = set()
  for step in range(30):
    idx = pk_batches.pk_batch_indices(labels, seed=1, step=step, **kw)
    assert idx.shape == (12,) and idx.dtype == np.int64
    blocks = labels[idx].reshape(4, 3)
    assert (blocks == blocks[:, :1]).all()  # class-contiguous: K of one class, then the next
    assert len(set(blocks[:, 0].tolist())) == 4  # P distinct classes
    for block, c in zip(idx.reshape(4, 3), blocks[:, 0], strict=True):
      if c != 5:
        assert len(set(block.tolist())) == 3  # without replacement where the class has K
    seen.update(blocks[:, 0].tolist())
    np.testing.assert_array_equal(idx, pk_batches.pk_batch_indices(labels, seed=1, step=step, **kw))
  assert seen == set(range(6))
  a, b = (pk_batches.pk_batch_indices(labels, seed=1, step=s, **kw) for s in (0, 1))
  c = pk_batches.pk_batch_indices(labels, seed=2, step=0, **kw)
  assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_pk_batch_rejects_impossible_requests():
  labels = np.repeat(np.arange(3), 4)
  with pytest.raises(UserError, match='classes_per_batch=5 but the data holds 3 classes'):
    pk_batches.pk_batch_indices(labels, classes_per_batch=5, images_per_class=2, seed=0, step=0)
  with pytest.raises(UserError, match='images_per_class >= 2'):
    pk_batches.pk_batch_indices(labels, classes_per_batch=2, images_per_class=1, seed=0, step=0)


# ---------------------------------------------------------------------------------------------
# Encoder


def test_encoder_on_tiny_backbones():
  x = jnp.asarray(np.random.default_rng(11).normal(size=(4, 16, 16, 3)), jnp.float32)
  net = encoder('resnet_tiny', embedding_dim=8)

  @_jit_fast
  def run(x):  # one compile: init, a train-mode call, the Siamese distance, an eval-mode call
    variables = net.init(jax.random.key(0), x)
    emb, updates = net.apply(variables, x, train=True, mutable=['batch_stats'])
    d = net.apply(variables, x[:2], x[2:], method=Encoder.distance)
    return variables, emb, updates, d, net.apply(variables, x)

  variables, emb, updates, d, e = run(x)
  assert set(variables['params']) == {'backbone', 'embedding'}
  assert variables['params']['embedding']['kernel'].shape == (16, 8)  # resnet_tiny: 16 channels
  assert variables['params']['backbone']['head']['kernel'].shape == (16, 1)  # unused, 1 wide
  assert emb.shape == (4, 8) and emb.dtype == jnp.float32 and 'batch_stats' in updates
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
  # The Siamese distance: one encoder, shared parameters, both images in one batch; BatchNorm in
  # eval mode, so each image's embedding does not depend on the rest of the batch.
  np.testing.assert_allclose(d, np.sum((e[:2] - e[2:]) ** 2, axis=1), rtol=1e-4, atol=1e-6)
  assert float(np.max(d)) > 1e-4  # different images, different embeddings

  raw = encoder('lenet5', embedding_dim=5, normalize=False, feature='stage2')  # a 4-D map
  shapes = jax.eval_shape(raw.init, jax.random.key(0), jnp.zeros((2, 32, 32, 1)))
  assert shapes['params']['embedding']['kernel'].shape == (16, 5)  # pooled stage2: 16 channels
  g = encoder('googlenet_tiny')
  assert g.backbone.aux_logits is False and g.backbone.num_classes == 1


def test_encoder_rejects_segmentation_models_and_unknown_features():
  with pytest.raises(UserError, match="'unet_tiny' is a segmentation model"):
    encoder('unet_tiny')
  with pytest.raises(UserError, match="no feature 'pool9'.*pre_logits"):
    net = encoder('lenet5', feature='pool9')
    jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))  # traces, no compute
  with pytest.raises(UserError, match='unknown model'):
    encoder('resnet_tinyy')
  # Every registered classifier can be wrapped (construction only: no tracing).
  for name in models.list_models():
    if not models.is_segmentation(name):
      assert isinstance(encoder(name, embedding_dim=4).backbone, type(models.create(name)))
