"""Orbax checkpoints of the train state: atomic, verified on restore, the last few kept, resumable.

A step folder `directory/<step>/` holds two orbax items:

  default/  the state's arrays (`StandardSave`);
  meta/     JSON: the SHA-256 of those arrays (`tree_sha256`: each leaf's name and bytes, in a
            fixed order), each leaf's dtype and shape, small counters (`extra`), and a SHA-256
            of these fields themselves.

Both are written into one `<step>.orbax-checkpoint-tmp*` folder that orbax renames into place
once everything is on disk, in the background (async). A kill mid-save therefore leaves only the
temporary folder, which nothing reads and the next start deletes: a step folder never looks
complete without its hash, and the previous checkpoint is the one used. `max_to_keep` deletes
whole step folders, meta included.

Restore reads meta first, checks that the checkpoint fits the template (names, shapes, dtypes),
reads the arrays and recomputes the hash from what it read. The hash is over the arrays, not the
files, because the arrays are what a flipped byte would silently corrupt: a flip in the chunk
files mostly decodes to other numbers without any complaint from tensorstore (51 of 60 flips
tried in one chunk file; only the hash catches those), or makes tensorstore fail; a flip in the
metadata makes it fail. Every such case ends in the same error, never in silently wrong weights.
A flip in bytes that are never read back (orbax's timestamps, data files superseded within the
step folder) is harmless and not reported. The hash can also be computed before the files exist,
which is what lets it travel inside the atomic async save. It costs about 0.1 s per 64 MiB of
state, on save and on restore (2-core CPU, shared with another job).

A damaged checkpoint is an error, not a silent fall back to an older one: the error names the
step folder and the fix (delete it, and the run resumes from the previous one). Checkpoints
written before the hash existed (no meta/) restore with a warning.
"""

import hashlib
import json
import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cnn_jax.core.errors import UserError

PyTree = Any

ARRAYS, META = 'default', 'meta'  # 'default': the name orbax gave the single item before meta


def tree_sha256(tree: PyTree) -> str:
  """SHA-256 of every leaf's name (its key path) and bytes, in jax's flattening order.

  Dict keys flatten sorted, so the order is fixed: the same tree hashes the same in any process.
  """
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


def _layout(tree: PyTree) -> dict[str, list]:
  """{key path: [dtype, shape]} of every leaf (arrays, or orbax's ArrayMetadata)."""
  layout = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if not (hasattr(leaf, 'dtype') and hasattr(leaf, 'shape')):
      leaf = np.asarray(leaf)  # a Python scalar
    layout[jax.tree_util.keystr(path)] = [np.dtype(leaf.dtype).name, list(leaf.shape)]
  return layout


def _meta_sha256(meta: dict[str, Any]) -> str:
  """Protects meta's own fields: a flipped byte in them must not read as a different model."""
  fields = {k: meta.get(k) for k in ('sha256', 'leaves', 'extra')}
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _layout_difference(saved: dict[str, list], wanted: dict[str, list], limit: int = 3) -> str:
  """The first few leaves that differ, as 'name: saved -> wanted' ('' if none)."""
  diffs = []
  for key in sorted(set(saved) | set(wanted)):
    a, b = saved.get(key), wanted.get(key)
    if a != b:
      fmt = lambda v: 'absent' if v is None else f'{v[0]}{tuple(v[1])}'  # noqa: E731
      diffs.append(f'{key}: {fmt(a)} -> {fmt(b)}')
  more = f' and {len(diffs) - limit} more' if len(diffs) > limit else ''
  return ', '.join(diffs[:limit]) + more


class Checkpointer:
  """Saves and restores the train state under `directory/<step>/`."""

  def __init__(self, directory: str, *, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._closed = False
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_names=(ARRAYS, META),
      item_handlers={ARRAYS: ocp.StandardCheckpointHandler(), META: ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=True,
        # A save cut short (kill -9, preemption) leaves a temporary folder; drop it on start.
        cleanup_tmp_directories=True,
      ),
    )

  @staticmethod
  def find_latest(workdir: str) -> int | None:
    """The latest step saved under workdir/checkpoints, without creating anything."""
    directory = os.path.join(workdir, 'checkpoints')
    if not os.path.isdir(directory):
      return None
    steps = [int(d) for d in os.listdir(directory) if d.isdigit()]
    return max(steps, default=None)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: PyTree, extra: dict[str, Any] | None = None) -> None:
    """Starts saving in the background; the next save or `wait()` finishes it.

    The hash is of a host copy taken now, so it is the hash of exactly this state (the device
    buffers may be donated to the next step). `extra`: small JSON values kept with the step.
    """
    tree = flax.serialization.to_state_dict(state)
    host = jax.device_get(tree)
    meta = {'sha256': tree_sha256(host), 'leaves': _layout(host), 'extra': extra or {}}
    meta['meta_sha256'] = _meta_sha256(meta)
    self._manager.save(
      step,
      args=ocp.args.Composite(
        **{ARRAYS: ocp.args.StandardSave(tree), META: ocp.args.JsonSave(meta)}
      ),
      force=True,
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def _damaged(self, step: int, reason: str) -> UserError:
    previous = [s for s in self._manager.all_steps() if s < step]
    fallback = (
      f'to fall back to the checkpoint of step {max(previous)}'
      if previous
      else '(there is no earlier checkpoint: training starts over)'
    )
    return UserError(
      f'the checkpoint of step {step} in {self.directory} is damaged ({reason}); '
      f'delete {self.step_dir(step)} {fallback}, or use another --workdir'
    )

  def _meta(self, step: int) -> dict[str, Any] | None:
    """The step's meta item (None for checkpoints written before it existed)."""
    if not os.path.isdir(os.path.join(self.step_dir(step), META)):
      return None
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
      meta = meta[META]
      if meta.get('meta_sha256') != _meta_sha256(meta):
        raise ValueError('its fields do not match their own SHA-256')
    except Exception as e:  # a flipped byte in meta/ breaks the JSON, or its fields
      raise self._damaged(step, f'meta/ cannot be read: {_first_line(e)}') from e
    return meta

  def extra(self, step: int) -> dict[str, Any]:
    """The `extra` values saved with `step` ({} for checkpoints without meta)."""
    meta = self._meta(step)
    return dict(meta.get('extra', {})) if meta else {}

  def restore(
    self, template: PyTree | None, step: int | None = None, *, explain: str = ''
  ) -> PyTree:
    """The state at `step` (default: latest) as host arrays, shaped like `template`, verified.

    `template` None: the tree as it was saved (nested dicts of numpy arrays), e.g. to take some
    weights of another model from it (cnn_jax.weights.transfer). `explain`: what the caller knows
    about
    why a checkpoint may not fit (config changes); it joins the error when the checkpoint does
    not fit the template.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f'no checkpoint in {self.directory}; train that run first')
    if template is None:
      try:
        saved_tree = self._manager.item_metadata(step)[ARRAYS].tree
      except Exception as e:
        raise self._damaged(step, f'its metadata cannot be read: {_first_line(e)}') from e
      template = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), saved_tree)
    target = jax.tree.map(np.asarray, flax.serialization.to_state_dict(template))
    meta = self._meta(step)
    if meta is None:
      logging.warning(
        'The checkpoint %s has no content hash (written before checkpoints carried one): '
        'restoring it unverified.',
        self.step_dir(step),
      )
      try:
        saved = _layout(self._manager.item_metadata(step)[ARRAYS].tree)
      except Exception as e:
        raise self._damaged(step, f'its metadata cannot be read: {_first_line(e)}') from e
    else:
      saved = meta['leaves']
    # Checked before reading: orbax would otherwise hand back the saved shapes silently.
    difference = _layout_difference(saved, _layout(target))
    if difference:
      reason = f'{difference}; {explain}' if explain else difference
      raise UserError(
        f'the checkpoint {self.step_dir(step)} does not fit this model and optimizer '
        f'(saved -> now: {reason}); use the config that wrote it, or another --workdir'
      )
    try:
      restored = self._manager.restore(
        step, args=ocp.args.Composite(**{ARRAYS: ocp.args.StandardRestore(target)})
      )[ARRAYS]
    except Exception as e:  # tensorstore: a chunk that does not decompress, a bad manifest ...
      raise self._damaged(step, f'its arrays cannot be read: {_first_line(e)}') from e
    if meta is not None:
      if _layout(restored) != saved:
        raise self._damaged(
          step, f'it reads back as {_layout_difference(saved, _layout(restored))}'
        )
      if tree_sha256(restored) != meta['sha256']:
        raise self._damaged(step, 'its arrays do not match the SHA-256 saved with them')
    return flax.serialization.from_state_dict(template, restored)

  def close(self) -> None:
    """Finishes a save in flight; safe to call twice."""
    if self._closed:
      return
    self._closed = True
    self._manager.wait_until_finished()
    self._manager.close()


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return text[0][:200] if text else type(e).__name__
