"""Pseudo-labels for Noisy Student self-training (Xie, Luong, Hovy & Le, CVPR 2020).

The clean teacher (eval mode, no augmentation) labels the unlabeled pool elsewhere; `select` turns
its logits into the student's pseudo-labelled set, as in the paper's "data filtering and
balancing": drop images whose confidence (the teacher's max probability) is below a threshold
(0.3 on ImageNet), then make every class equally large: classes with too many images keep their
most confident ones, classes with too few have images duplicated (ImageNet: 130K per class, which
took 81M unique images to 130M). Pure NumPy: nothing here runs on the accelerator.

Output order: by class ascending, then confidence descending, then pool index ascending; the
copies of a duplicated image sit next to each other. The trainer shuffles.
"""

import dataclasses
import numbers

import numpy as np

from cnn_jax.core.errors import UserError

MODES = ('hard', 'soft')
BALANCES = ('none', 'duplicate', 'subsample', 'both')

# Rows per softmax block: 65,536 rows x 1,000 classes x 4 B = 262 MB of temporaries, so a
# 1.3M-image pool is never expanded to a second full (N, K) array at once.
_CHUNK = 1 << 16


@dataclasses.dataclass(frozen=True, eq=False)
class PseudoLabels:
  """The student's pseudo-labelled examples, M rows (M may exceed N: duplicates).

  indices: (M,) int64 rows of the unlabeled pool; an index repeats when its image is duplicated.
  targets: (M, K) float32 probability rows: one-hot (hard) or softmax(logits / T) (soft).
  confidence: (M,) float32 the teacher's max probability at temperature 1.
  stats: plain ints and lists for logging: num_examples, dropped_by_threshold, counts_before
    (per class, after the threshold), counts_after, per_class (the balancing target, None for
    'none'), empty_classes (no image left after the threshold: they stay empty), num_selected,
    num_unique.
  """

  indices: np.ndarray
  targets: np.ndarray
  confidence: np.ndarray
  stats: dict

  def __len__(self) -> int:
    return int(self.indices.shape[0])


def select(
  logits: np.ndarray,
  *,
  mode: str = 'hard',
  temperature: float = 1.0,
  threshold: float = 0.0,
  balance: str = 'none',
  per_class: int | None = None,
  seed: int = 0,
) -> PseudoLabels:
  """Filters and balances a teacher's predictions into pseudo-labels (Noisy Student, Sec. 3).

  Args:
    logits: (N, K) the clean teacher's logits on the unlabeled pool.
    mode: 'hard' (one-hot of the argmax) or 'soft' (softmax(logits / temperature)).
    temperature: > 0; softens soft targets. Hard targets do not depend on it (argmax is the same
      at every temperature), nor do the confidence, the threshold and the balancing (all at T=1).
    threshold: in [0, 1]; images with confidence below it are dropped (the paper: 0.3).
    balance: 'none'; 'duplicate' (classes below per_class are filled up by duplication, never
      cut); 'subsample' (classes above per_class keep their per_class most confident images,
      never duplicated); 'both' (equal counts: cut and fill).
    per_class: the target count. None: the largest class ('duplicate'), the smallest non-empty
      class ('subsample') or the lower median of the non-empty classes ('both', a real class's
      count); classes left empty by the threshold are ignored there and stay empty.
    seed: >= 0; picks which images get the one extra copy when the target is not a multiple of
      a class's size (each image first gets target // size whole copies). Class c draws from
      its own stream (seed, c), so one class's choice does not depend on the others.

  Returns:
    PseudoLabels, deterministic given the arguments.
  """
  x = _check(logits, mode, temperature, threshold, balance, per_class, seed)
  n, k = x.shape
  labels, confidence = _argmax_confidence(x)

  keep = np.flatnonzero(confidence >= threshold)
  counts_before = np.bincount(labels[keep], minlength=k)
  target = _target(counts_before, balance, per_class)
  rows = _balance(keep, labels, confidence, counts_before, balance, target, seed)

  if mode == 'hard':
    targets = np.zeros((rows.size, k), np.float32)
    targets[np.arange(rows.size), labels[rows]] = 1.0
  else:
    unique, inverse = np.unique(rows, return_inverse=True)
    targets = _softmax(x[unique], temperature)[inverse]

  counts_after = np.bincount(labels[rows], minlength=k)
  stats = {
    'num_examples': int(n),
    'dropped_by_threshold': int(n - keep.size),
    'counts_before': counts_before.tolist(),
    'counts_after': counts_after.tolist(),
    'per_class': target,
    'empty_classes': np.flatnonzero(counts_before == 0).tolist(),
    'num_selected': int(rows.size),
    'num_unique': int(np.unique(rows).size),
  }
  return PseudoLabels(rows, targets, confidence[rows], stats)


def _check(logits, mode, temperature, threshold, balance, per_class, seed) -> np.ndarray:
  """The logits as a float array (float32 at least) after checking every argument."""
  if mode not in MODES:
    raise UserError(f"unknown pseudo-label mode {mode!r}; use 'hard' or 'soft'")
  if balance not in BALANCES:
    raise UserError(
      f"unknown pseudo-label balance {balance!r}; use 'none', 'duplicate', 'subsample' or 'both'"
    )
  if not (isinstance(temperature, numbers.Real) and np.isfinite(temperature) and temperature > 0):
    raise UserError(f'pseudo-label temperature={temperature!r}; expected a number > 0')
  if not (isinstance(threshold, numbers.Real) and 0.0 <= threshold <= 1.0):
    raise UserError(f'pseudo-label threshold={threshold!r}; expected a number in [0, 1]')
  if per_class is not None:
    if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
      raise UserError(f'pseudo-label per_class={per_class!r}; expected an int >= 1 or None')
    if balance == 'none':
      raise UserError(
        f"pseudo-label per_class={per_class} has no effect with balance='none'; "
        "set balance to 'duplicate', 'subsample' or 'both', or per_class to None"
      )
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise UserError(f'pseudo-label seed={seed!r}; expected an int >= 0')
  x = np.asarray(logits)
  if x.ndim != 2 or x.shape[1] < 1:
    raise UserError(f'pseudo-label logits have shape {x.shape}; expected (N, K) with K >= 1')
  # bfloat16 (a JAX teacher's compute dtype) is kind 'V' in NumPy but casts to float32 exactly.
  if x.dtype.kind not in 'biuf' and x.dtype.name != 'bfloat16':
    raise UserError(f'pseudo-label logits have dtype {x.dtype}; expected numbers')
  return x.astype(np.result_type(x.dtype, np.float32), copy=False)


def _argmax_confidence(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(N,) int64 argmax and (N,) float32 max softmax probability, block by block."""
  n = x.shape[0]
  labels = np.empty(n, np.int64)
  confidence = np.empty(n, np.float32)
  for start in range(0, n, _CHUNK):
    z = x[start : start + _CHUNK]
    finite = np.isfinite(z).all(axis=1)
    if not finite.all():
      row = start + int(np.argmin(finite))
      raise UserError(
        f'pseudo-label logits contain NaN or inf (first in row {row}); '
        'check the teacher checkpoint and its inputs'
      )
    labels[start : start + len(z)] = z.argmax(axis=1)
    # max_j softmax(z)_j = exp(0) / sum_j exp(z_j - max z): no (N, K) probability array needed.
    confidence[start : start + len(z)] = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(1)
  return labels, confidence


def _softmax(x: np.ndarray, temperature: float) -> np.ndarray:
  """(M, K) float32 softmax(x / temperature), block by block."""
  out = np.empty(x.shape, np.float32)
  for start in range(0, x.shape[0], _CHUNK):
    z = x[start : start + _CHUNK] / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out[start : start + len(z)] = e / e.sum(axis=1, keepdims=True)
  return out


def _target(counts: np.ndarray, balance: str, per_class: int | None) -> int | None:
  """The per-class count to balance to (None: no balancing)."""
  if balance == 'none':
    return None
  if per_class is not None:
    return int(per_class)
  nonempty = np.sort(counts[counts > 0])
  if nonempty.size == 0:  # the threshold dropped everything: nothing to balance
    return 0
  if balance == 'duplicate':
    return int(nonempty[-1])
  if balance == 'subsample':
    return int(nonempty[0])
  return int(nonempty[(nonempty.size - 1) // 2])


def _balance(
  keep: np.ndarray,
  labels: np.ndarray,
  confidence: np.ndarray,
  counts: np.ndarray,
  balance: str,
  target: int | None,
  seed: int,
) -> np.ndarray:
  """(M,) int64 pool rows in output order: class, confidence descending, index; copies adjacent."""
  # lexsort: the last key is the primary one.
  order = keep[np.lexsort((keep, -confidence[keep], labels[keep]))]
  if target is None:
    return order.astype(np.int64)
  cut = balance in ('subsample', 'both')
  fill = balance in ('duplicate', 'both')
  out = []
  for c, class_rows in enumerate(np.split(order, np.cumsum(counts)[:-1])):
    size = class_rows.size
    if size == 0:  # nothing to duplicate: the class stays empty (stats['empty_classes'])
      continue
    if cut and size > target:
      class_rows = class_rows[:target]  # the most confident ones
    elif fill and size < target:
      copies = np.full(size, target // size)
      rest = target % size
      if rest:
        rng = np.random.default_rng((int(seed), c))
        copies[rng.choice(size, rest, replace=False)] += 1
      class_rows = np.repeat(class_rows, copies)
    out.append(class_rows)
  return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
