"""One-shot learning with a Siamese encoder and the triplet loss (seed 004, "[One-shot Learning]").

The notes (004, [One-shot Learning] / [Siamese Network] / [Triplet Loss]) learn a similarity
d(img1, img2) instead of a classifier, so that a new person (class) needs one reference image and
no retraining. A Siamese network runs two inputs through the same encoder f (same parameters);
the triplet loss looks at an anchor A, a positive P (same class) and a negative N (another class):

  want       ||f(A) - f(P)||^2 + alpha <= ||f(A) - f(N)||^2        (alpha: the margin)
  L(A, P, N) = max(||f(A) - f(P)||^2 - ||f(A) - f(N)||^2 + alpha, 0)

Distances are squared Euclidean as in the notes (and FaceNet, Schroff et al. 2015); `squared=False`
gives the plain Euclidean distance that Hermans, Beyer & Leibe 2017 ("In Defense of the Triplet
Loss") prefer. The notes add that random triplets make the loss zero too easily, so triplets
whose d(A, P) and d(A, N) are close should be chosen: that is the in-batch mining here.

- `pairwise_distances` / `triplet_loss`: the formula, jnp, batch-first.
- `triplet_mining_sums` / `batch_triplet_loss`: the loss over triplets mined inside a batch of
  (embeddings, labels), with static shapes (masks, no boolean indexing) for a jitted per-device
  step: 'all' (every valid triplet), 'hard' (batch hard) and 'semi-hard' (FaceNet).
- `Encoder` / `encoder`: f(x) from any registered classifier's pooled features, a linear
  embedding, optionally L2-normalised (FaceNet's ||f(x)|| = 1).
- Host side (NumPy): verification by a distance threshold (`verify`, `best_threshold`,
  `verification_accuracy`, `pair_distances`) and `one_shot_evaluation` (one reference embedding
  per held-out class). The training batches of P classes x K images are cnn_jax/ops/pk_batches.py.
"""

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.core.errors import UserError

Mining = Literal['all', 'hard', 'semi-hard']
MINING = ('all', 'hard', 'semi-hard')

# ---------------------------------------------------------------------------------------------
# Distances and the triplet loss (device side, jnp)


def safe_sqrt(d: jax.Array) -> jax.Array:
  """sqrt(d) for d >= 0 with a zero (not NaN) gradient at d = 0 (an anchor against itself)."""
  positive = d > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, d, 1.0)), 0.0)


def pairwise_sq_distances(embeddings: jax.Array) -> jax.Array:
  """(B, B) squared Euclidean distances ||e_i - e_j||^2 between the rows of `embeddings` (B, D).

  Computed as |e_i|^2 + |e_j|^2 - 2 e_i.e_j in float32 at full matmul precision (the default on
  GPU/TPU may round the matmul's inputs to TF32/bf16, whose ~1e-3 relative error swamps small
  distances), clipped at 0 (rounding can make the expanded form slightly negative) and with an
  exactly zero diagonal.
  """
  e = jnp.asarray(embeddings, jnp.float32)
  if e.ndim != 2:
    raise UserError(f'embeddings must be (batch, dim); got shape {e.shape}')
  sq = jnp.sum(e * e, axis=-1)  # (B,)
  gram = jnp.matmul(e, e.T, precision=lax.Precision.HIGHEST)  # (B, B)
  d = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  return jnp.where(jnp.eye(e.shape[0], dtype=bool), 0.0, d)


def pairwise_distances(embeddings: jax.Array, *, squared: bool = True) -> jax.Array:
  """(B, B) squared (the notes' d) or plain Euclidean distances, differentiable everywhere."""
  d = pairwise_sq_distances(embeddings)
  return d if squared else safe_sqrt(d)


def triplet_loss(
  anchor: jax.Array,
  positive: jax.Array,
  negative: jax.Array,
  margin: float,
  *,
  squared: bool = True,
) -> jax.Array:
  """Per-triplet loss max(||f(A) - f(P)||^2 - ||f(A) - f(N)||^2 + alpha, 0) (seed 004).

  Args:
    anchor, positive, negative: (B, D) embeddings f(A), f(P), f(N).
    margin: alpha >= 0.
    squared: squared Euclidean distances as in the notes; False for plain Euclidean.

  Returns:
    (B,) float32 losses; `.mean()` is the loss over the batch of triplets.
  """
  _check_margin(margin)
  a, p, n = (jnp.asarray(x, jnp.float32) for x in (anchor, positive, negative))
  if not a.shape == p.shape == n.shape or a.ndim != 2:
    raise UserError(
      f'anchor, positive and negative must be (batch, dim) of one shape; got {a.shape}, '
      f'{p.shape}, {n.shape}'
    )
  d_ap = jnp.sum(jnp.square(a - p), axis=-1)
  d_an = jnp.sum(jnp.square(a - n), axis=-1)
  if not squared:
    d_ap, d_an = safe_sqrt(d_ap), safe_sqrt(d_an)
  return jnp.maximum(d_ap - d_an + margin, 0.0)


# ---------------------------------------------------------------------------------------------
# In-batch triplet mining (device side, jnp, static shapes)


class TripletSums(NamedTuple):
  """Sums over this device's batch; they add across devices (psum) and batches.

  loss_sum: the sum of the losses that the mode averages.
  count: the mode's denominator ('all': active triplets; 'hard': valid anchors; 'semi-hard':
    valid anchor-positive pairs), so that the mean is loss_sum / count.
  num_valid: triplets ('all'), anchors ('hard') or anchor-positive pairs ('semi-hard') that the
    batch can form: the anchor has a positive and a negative among the unmasked examples.
  num_active: how many of those have a loss > 0 (num_active / num_valid is worth logging: it
    falls as training makes the batch easy).
  """

  loss_sum: jax.Array
  count: jax.Array
  num_valid: jax.Array
  num_active: jax.Array


def triplet_mining_sums(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  margin: float,
  mining: Mining = 'hard',
  squared: bool = True,
  mask: jax.Array | None = None,
) -> TripletSums:
  """The triplet loss over triplets mined inside the batch, as sums (see `TripletSums`).

  d is `pairwise_distances` (squared by default, as in the notes), l(a, p, n) the notes'
  max(d(a, p) - d(a, n) + margin, 0). p ranges over the other examples of a's class (never a
  itself), n over the examples of other classes; masked-out examples (mask 0: padding) are none
  of a, p, n. An anchor without a positive or without a negative contributes nothing.

  Modes:
    'all': every valid triplet (a, p, n). The mean is over the active triplets (loss > 0), the
      "batch all" of Hermans et al. 2017 (their BA_{!=0}: a mean over all valid triplets is
      washed out by the many easy ones as training goes on). loss_sum / num_valid gives the mean
      over all valid triplets instead. Memory: a (B, B, B) float32 array, 64 MB at B = 256.
    'hard': "batch hard" (Hermans et al. 2017): for each anchor, its hardest positive
      (max_p d(a, p)) and its hardest negative (min_n d(a, n)); one term per anchor, mean over
      the anchors that have both.
    'semi-hard': FaceNet (Schroff et al. 2015, Sec. 3.2): every anchor-positive pair (a, p), with
      the closest negative farther than the positive, argmin {d(a, n) : d(a, n) > d(a, p)}; when
      that negative is within the margin it is a semi-hard one, d(a, p) < d(a, n) < d(a, p) +
      margin, and beyond the margin the pair's loss is 0 either way. When no negative is farther
      than the positive (every negative of a is a hard one), FaceNet does not say what to do;
      this follows TF-Addons' `triplet_semihard_loss` and takes the farthest negative,
      max_n d(a, n) (the least hard of the hard ones, not the hardest). Mean over the valid
      anchor-positive pairs, as TF-Addons does. Memory: (B, B, B) temporaries, as 'all'.

  Args:
    embeddings: (B, D) f(x) of the batch (L2-normalised for FaceNet's setting).
    labels: (B,) integer class of each example.
    margin: alpha >= 0.
    mining: 'all', 'hard' or 'semi-hard'.
    squared: squared Euclidean distances (the notes, FaceNet); False for Euclidean (Hermans).
    mask: optional (B,) 1 for the examples that count, 0 for padding.

  Returns:
    `TripletSums` of float32 scalars (count and num_* hold integers). Under data parallelism the
    global mean is psum(loss_sum) / psum(count); to differentiate it on each device while the
    trainer averages gradients with pmean, use loss_sum * num_devices /
    lax.stop_gradient(jnp.maximum(psum(count), 1)). Mining then stays within each device's share:
    give every device positives and negatives (`pk_batch_indices` with shards = the device count
    puts K / shards images of every class on each device), or all_gather the embeddings and
    labels over the mesh axis and mine over the global batch.
  """
  _check_margin(margin)
  if mining not in MINING:
    raise UserError(f'unknown triplet mining {mining!r}; use one of {", ".join(MINING)}')
  e = jnp.asarray(embeddings)
  labels = jnp.asarray(labels)
  if e.ndim != 2 or labels.shape != e.shape[:1]:
    raise UserError(
      f'embeddings must be (batch, dim) and labels (batch,); got {e.shape} and {labels.shape}'
    )
  b = e.shape[0]
  d = pairwise_distances(e, squared=squared)  # (B, B)
  valid = jnp.ones(b, bool) if mask is None else jnp.asarray(mask).reshape(b) > 0
  both = valid[:, None] & valid[None, :]
  same = labels[:, None] == labels[None, :]
  pos = same & ~jnp.eye(b, dtype=bool) & both  # (B, B) p is a positive of anchor a
  neg = ~same & both  # (B, B) n is a negative of anchor a
  has_neg = jnp.any(neg, axis=1)  # (B,)
  # Fill values for the masked reductions: finite, so that the gradient of a jnp.where over
  # them is 0 rather than NaN (inf - inf in the branch a where leaves out still poisons it).
  far = lax.stop_gradient(jnp.max(d)) + 1.0

  if mining == 'all':
    triplet = pos[:, :, None] & neg[:, None, :]  # (B, B, B) [a, p, n]
    loss = jnp.maximum(d[:, :, None] - d[:, None, :] + margin, 0.0)
    loss = jnp.where(triplet, loss, 0.0)
    active = triplet & (loss > 0)
    return TripletSums(
      loss_sum=jnp.sum(loss),
      count=jnp.sum(active).astype(jnp.float32),
      num_valid=jnp.sum(triplet).astype(jnp.float32),
      num_active=jnp.sum(active).astype(jnp.float32),
    )

  if mining == 'hard':
    hardest_pos = jnp.max(jnp.where(pos, d, 0.0), axis=1)  # d >= 0, so 0 never wins wrongly
    hardest_neg = jnp.min(jnp.where(neg, d, far), axis=1)
    anchor = jnp.any(pos, axis=1) & has_neg  # (B,)
    loss = jnp.where(anchor, jnp.maximum(hardest_pos - hardest_neg + margin, 0.0), 0.0)
    count = jnp.sum(anchor).astype(jnp.float32)
    return TripletSums(
      loss_sum=jnp.sum(loss),
      count=count,
      num_valid=count,
      num_active=jnp.sum(anchor & (loss > 0)).astype(jnp.float32),
    )

  # semi-hard: for each pair (a, p), the negatives n with d(a, n) > d(a, p).
  farther = neg[:, None, :] & (d[:, None, :] > d[:, :, None])  # (B, B, B) [a, p, n]
  closest_farther = jnp.min(jnp.where(farther, d[:, None, :], far), axis=2)  # (B, B)
  farthest = jnp.max(jnp.where(neg, d, 0.0), axis=1)  # (B,) the fallback
  chosen = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest[:, None])
  pair = pos & has_neg[:, None]
  loss = jnp.where(pair, jnp.maximum(d - chosen + margin, 0.0), 0.0)
  count = jnp.sum(pair).astype(jnp.float32)
  return TripletSums(
    loss_sum=jnp.sum(loss),
    count=count,
    num_valid=count,
    num_active=jnp.sum(pair & (loss > 0)).astype(jnp.float32),
  )


def batch_triplet_loss(
  embeddings: jax.Array,
  labels: jax.Array,
  *,
  margin: float,
  mining: Mining = 'hard',
  squared: bool = True,
  mask: jax.Array | None = None,
) -> jax.Array:
  """The mean in-batch triplet loss: loss_sum / count of `triplet_mining_sums` (0 if count is 0).

  A float32 scalar for one device's batch; see `triplet_mining_sums` for the modes and for the
  mean over a batch split across devices.
  """
  sums = triplet_mining_sums(
    embeddings, labels, margin=margin, mining=mining, squared=squared, mask=mask
  )
  return sums.loss_sum / jnp.maximum(sums.count, 1.0)


def _check_margin(margin: float) -> None:
  if isinstance(margin, int | float) and not margin >= 0:
    raise UserError(f'triplet margin (alpha) must be >= 0; got {margin}')


# ---------------------------------------------------------------------------------------------
# Embeddings on the unit sphere


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def one_shot_split(
  labels: np.ndarray, classes: Sequence[int], *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(reference, query) index arrays: one random reference image per class, the rest queries.

  The notes' one-shot setting on held-out `classes`: the encoder never saw them in training, each
  is known from one image, and every other image of them is a query.
  """
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  refs = []
  for c in classes:
    members = np.flatnonzero(labels == c)
    if members.size < 2:
      raise UserError(
        f'held-out class {c} has {members.size} image(s); one-shot evaluation needs a reference '
        'and at least one query per class'
      )
    refs.append(rng.choice(members))
  refs = np.asarray(refs, np.int64)
  queries = np.flatnonzero(np.isin(labels, list(classes)) & ~np.isin(np.arange(labels.size), refs))
  return refs, queries.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Verification by a distance threshold (host side, NumPy)


def _cross_distances(a: np.ndarray, b: np.ndarray, squared: bool) -> np.ndarray:
  """(len(a), len(b)) distances in float64 (host)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = np.sum(a * a, 1)[:, None] + np.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
  d = np.maximum(d, 0.0)
  return d if squared else np.sqrt(d)


def verify(distances: Any, threshold: float) -> Any:
  """True ('same') where d <= threshold, False ('different') where d > threshold.

  The notes' d(img1, img2), a degree of difference, read against a threshold tau. Works on NumPy
  and jnp arrays alike (on the device too).
  """
  return distances <= threshold


def verification_accuracy(distances: np.ndarray, same: np.ndarray, threshold: float) -> float:
  """Fraction of pairs whose verdict `verify(d, threshold)` matches `same`."""
  distances, same = _pairs(distances, same)
  return float(np.mean(verify(distances, threshold) == same))


def best_threshold(distances: np.ndarray, same: np.ndarray) -> tuple[float, float]:
  """(threshold, accuracy): the threshold that maximises `verification_accuracy` on these pairs.

  Candidates are the midpoints between consecutive distinct distances, plus one below the
  smallest (d_min - 1: every pair 'different') and one above the largest (d_max + 1: every pair
  'same'); among equally accurate candidates the smallest wins (fewest false accepts). Choose it
  on validation pairs and report accuracy on others: on the test pairs it overestimates.
  O(n log n) with a sort and cumulative counts.
  """
  distances, same = _pairs(distances, same)
  order = np.argsort(distances, kind='stable')
  d, s = distances[order], same[order]
  values, starts = np.unique(d, return_index=True)  # distinct distances, first position of each
  # Accepting everything up to and including the i-th distinct value: the pairs before index
  # ends[i] are 'same'.
  ends = np.append(starts[1:], d.size)
  same_before = np.concatenate([[0], np.cumsum(s)])  # same pairs among the first j
  n_same = same_before[-1]
  accepted = np.concatenate([[0], ends])  # 0: the candidate below every distance
  true_accepts = same_before[accepted]
  true_rejects = (d.size - accepted) - (n_same - true_accepts)
  accuracy = (true_accepts + true_rejects) / d.size
  thresholds = np.concatenate(
    [[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0, [values[-1] + 1.0]]
  )
  best = int(np.argmax(accuracy))  # the first maximum: the smallest threshold
  return float(thresholds[best]), float(accuracy[best])


def _pairs(distances: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
  distances = np.asarray(distances, np.float64).ravel()
  same = np.asarray(same).astype(bool).ravel()
  if distances.size == 0 or distances.shape != same.shape:
    raise UserError(
      f'distances and same must be non-empty and of one size; got {distances.size} and {same.size}'
    )
  return distances, same


def pair_distances(
  embeddings: np.ndarray, labels: np.ndarray, *, squared: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """(distances, same) of every unordered pair i < j of a set of embeddings (host, float64).

  The validation pairs for `best_threshold`: n (n - 1) / 2 of them, 'same' where the labels agree.
  """
  e = np.asarray(embeddings)
  labels = np.asarray(labels)
  if e.ndim != 2 or labels.shape != e.shape[:1]:
    raise UserError(
      f'embeddings must be (n, dim) and labels (n,); got {e.shape} and {labels.shape}'
    )
  i, j = np.triu_indices(e.shape[0], k=1)
  d = _cross_distances(e, e, squared)
  return d[i, j], labels[i] == labels[j]


def one_shot_evaluation(
  reference_embeddings: np.ndarray,
  reference_labels: np.ndarray,
  query_embeddings: np.ndarray,
  query_labels: np.ndarray,
  *,
  threshold: float,
  squared: bool = True,
) -> dict[str, float]:
  """One-shot recognition and verification against one reference embedding per class.

  Args:
    reference_embeddings: (C, D), one f(x) per class (the one image the class is known by).
    reference_labels: (C,) distinct class labels.
    query_embeddings: (Q, D); query_labels: (Q,), each one of reference_labels.
    threshold: the verification threshold (from `best_threshold` on validation pairs).
    squared: distance as in training.

  Returns:
    'one_shot_accuracy': fraction of queries whose nearest reference has their class;
    'verification_accuracy': over all Q x C (query, reference) pairs, 'same' iff d <= threshold
      (1 same to C - 1 different pairs per query, so this leans on the different pairs);
    'true_accept_rate' / 'false_accept_rate': accepted fraction of the same / different pairs
      (FaceNet's VAL and FAR).
  """
  refs, ref_labels = np.asarray(reference_embeddings), np.asarray(reference_labels)
  queries, q_labels = np.asarray(query_embeddings), np.asarray(query_labels)
  if refs.ndim != 2 or queries.ndim != 2 or refs.shape[1] != queries.shape[1]:
    raise UserError(
      f'reference and query embeddings must be (n, dim) of one dim; got {refs.shape} and '
      f'{queries.shape}'
    )
  if ref_labels.shape != refs.shape[:1] or q_labels.shape != queries.shape[:1]:
    raise UserError('reference_labels / query_labels must hold one label per embedding')
  if np.unique(ref_labels).size != ref_labels.size:
    raise UserError('one-shot evaluation takes exactly one reference per class; labels repeat')
  unknown = np.setdiff1d(q_labels, ref_labels)
  if unknown.size:
    raise UserError(f'query classes {unknown.tolist()} have no reference embedding')
  d = _cross_distances(queries, refs, squared)  # (Q, C)
  same = q_labels[:, None] == ref_labels[None, :]
  accepted = verify(d, threshold)
  return {
    'one_shot_accuracy': float(np.mean(ref_labels[np.argmin(d, axis=1)] == q_labels)),
    'verification_accuracy': float(np.mean(accepted == same)),
    'true_accept_rate': float(np.mean(accepted[same])),
    'false_accept_rate': float(np.mean(accepted[~same])) if (~same).any() else float('nan'),
  }
