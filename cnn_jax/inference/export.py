"""A trained run exported for serving, in one of two formats, with its weights as .npz.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20_digits --mode=export
  python main.py --config=configs/resnet.py --workdir=runs/resnet20_digits --mode=export \
      --export_format=stablehlo

--workdir is the run's folder (its latest checkpoint) or a step folder of it, as for
--mode=predict. Written to <workdir>/export/ (or --output; replacing an earlier export whole):

--export_format=saved_model (the default; needs TensorFlow):
  saved_model/   the model in eval mode, lowered by jax.experimental.jax2tf (native
                 serialization: StableHLO inside an XlaCallModule op, for CPU and CUDA), the
                 weights as TF variables, the batch dimension symbolic. Two signatures:
                   serving_default   images (N, S, S, C) float32, preprocessed as the pipeline
                                     does (resized, normalised with export.json's mean and std)
                                     -> logits (N, classes), or (N, h, w, classes) per pixel
                   serving_encoded   encoded (N,) string: PNG, JPEG, BMP, GIF, WebP bytes -> logits;
                                     the run's eval preprocessing (predict.eval_preprocess) is
                                     inside the graph

--export_format=stablehlo (JAX only: no TensorFlow to write it or to run it):
  model.stablehlo  jax.export's serialization of the same forward (`predict.forward_fn`), lowered
                 for CPU and CUDA with a symbolic batch dimension; it takes (variables, images),
                 so the weights are arguments, not constants in the module. `load_stablehlo(folder)`
                 gives images -> logits; without this package:
                   exported = jax.export.deserialize(open('model.stablehlo', 'rb').read())
                   exported.call(variables, images)   # variables: load_npz('variables.npz')

Both formats also write:
  variables.npz  every parameter and BatchNorm statistic, keyed 'params/<module path>/<name>'
                 and 'batch_stats/...' (`cnn_jax.weights.npz.load_npz` reads it back as {'params',
                 'batch_stats'})
  export.json    format, model, dataset, step, input shape, mean/std, class names, the SHA-256 of
                 the weights (train.fingerprint, as in summary.json) and the check below

The logits are the model's own: a segmentation run's eval-time dense CRF (config.segmentation.crf)
is not part of the export. Before it returns, `export` loads what it wrote back and compares it
with the JAX model on the first eval images (max_abs_diff in export.json: each SavedModel
signature, or the deserialized StableHLO run on this machine's default backend). Synthetic data
has no encoded images, so there serving_encoded is not checked (None, and a note why).
safetensors is not a pinned package, so the weights are .npz only.

Measured (2-core CPU, shared with another job): the offline ResNet-20 run (110 steps) exports in
41 s of wall time for the whole main.py command, max_abs_diff 1.2e-6 / 1.9e-6 (serving_default /
serving_encoded); the offline U-Net (300 steps) 5.7e-6 / 7.5e-6. The CUDA lowering itself was run
on an H200 through jax.export (the same forward, platforms and symbolic batch; jax 0.11.2
there reading what jax 0.10.2 wrote, no TensorFlow there): logits within 4.6e-3 (ResNet-20) and
8.8e-3 (U-Net) of the CPU's, as TF32 convolutions at default precision give; the same argmax for
every image and all but 1 of 65,536 pixels. --export_format=stablehlo (2-core CPU, one run each,
on a 100-step ResNet-20 digits run): 10.0 s for the main.py command against 13.2 s for the
SavedModel, model.stablehlo 41 KB beside a 1.1 MB variables.npz, max_abs_diff 0.0 (on CPU the
deserialized module compiles to the program jax.jit makes).
"""

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.errors import UserError
from cnn_jax.inference import predict
from cnn_jax.weights import npz

PyTree = Any
FORMATS = ('saved_model', 'stablehlo')  # --export_format
PLATFORMS = ('cpu', 'cuda')  # where the export runs; the StableHLO is lowered for each
STABLEHLO_FILE = 'model.stablehlo'
_CHECK_IMAGES = 8  # eval images the exported model is compared on
_TOLERANCE = 1e-4  # float32: a larger max_abs_diff is warned about
# bf16 compute (config.half_precision) keeps 8 significant bits, about 2.4 decimal digits: a logit
# near 5 is held to 1/32, and two compilations of the same graph (TF's XLA bridge, jax.jit) that
# round one op differently differ by whole bf16 steps, not by 1e-4. Measured (2-core CPU): the
# ResNet-20 digits run with half_precision, SavedModel vs JAX 0.031 (one step; largest logit 5.8),
# StableHLO 0. So the warning starts at 2**-6 of the largest logit: 2 to 4 bf16 steps of it.
_BF16_RELATIVE_TOLERANCE = 2**-6


# ---------------------------------------------------------------------------------------------
# The check: the first eval images through the JAX model


def _check_batch(restored: predict.Restored) -> tuple[np.ndarray, np.ndarray]:
  """The first eval images (as eval_iterator makes them; synthetic data too) and the JAX logits."""
  exp, config = restored.exp, restored.exp.config
  n = min(_CHECK_IMAGES, len(exp.data.validation))
  batch = next(
    data_lib.eval_iterator(
      exp.data, global_batch=n, image_size=config.image_size, channels=config.image_channels
    )
  )
  expected = np.asarray(jax.jit(predict.forward_fn(exp))(restored.variables, batch['image']))
  return batch['image'], expected


def tolerance(config: ml_collections.ConfigDict, expected: np.ndarray) -> float:
  """The max_abs_diff above which export warns: 1e-4, or for a half-precision run 2**-6 of the
  largest logit (at least 1): 2 to 4 bf16 steps of it."""
  if not config.get('half_precision', False):
    return _TOLERANCE
  return _BF16_RELATIVE_TOLERANCE * max(1.0, float(np.max(np.abs(expected))))


def _max_abs_diff(got: Any, expected: np.ndarray) -> float:
  return float(np.max(np.abs(np.asarray(got) - expected)))


# ---------------------------------------------------------------------------------------------
# --export_format=saved_model (TensorFlow, imported here only)


def _tf_module(
  restored: predict.Restored, platforms: tuple[str, ...]
) -> tuple[Any, dict[str, Any]]:
  """A tf.Module holding the weights as variables, and its signatures."""
  from jax.experimental import jax2tf

  from cnn_jax.core.quiet_tf import tf

  exp, config = restored.exp, restored.exp.config
  size, channels = config.image_size, config.image_channels
  converted = jax2tf.convert(
    predict.forward_fn(exp),
    polymorphic_shapes=[None, '(b, ...)'],  # any batch size
    with_gradient=False,
    native_serialization_platforms=platforms,
  )
  weights = tf.nest.map_structure(tf.Variable, restored.variables)
  module = tf.Module()
  module.weights = weights  # tracked: saved with the model (a wrapper; `weights` stays a dict)
  preprocess = predict.eval_preprocess(exp.data, config)
  image_spec = tf.TensorSpec((size, size, channels), tf.float32)

  @tf.function(
    autograph=False,
    input_signature=[tf.TensorSpec((None, size, size, channels), tf.float32, name='images')],
  )
  def serving_default(images):
    return {'logits': converted(weights, images)}

  @tf.function(autograph=False, input_signature=[tf.TensorSpec((None,), tf.string, name='encoded')])
  def serving_encoded(encoded):
    images = tf.map_fn(preprocess, encoded, fn_output_signature=image_spec)
    return {'logits': converted(weights, images)}

  module.serving_default, module.serving_encoded = serving_default, serving_encoded
  signatures = {
    'serving_default': serving_default.get_concrete_function(),
    'serving_encoded': serving_encoded.get_concrete_function(),
  }
  return module, signatures


def check_saved_model(
  restored: predict.Restored, path: str, check: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[str, float | None]:
  """Max |logits(SavedModel) - logits(JAX)| on the first eval images, for each signature
  (`check`: those images and logits, if already computed). serving_encoded is None for
  synthetic data: it has no encoded images to feed it."""
  from cnn_jax.core.quiet_tf import tf

  exp = restored.exp
  images, expected = check or _check_batch(restored)
  loaded = tf.saved_model.load(path)
  from_images = loaded.signatures['serving_default'](images=tf.constant(images))
  diffs = {
    'serving_default': _max_abs_diff(from_images['logits'], expected),
    'serving_encoded': None,
  }
  if not data_lib.synthetic.is_synthetic(exp.data.name):
    encoded = [r['image'] for r in exp.data.validation.__getitems__(list(range(len(images))))]
    from_encoded = loaded.signatures['serving_encoded'](encoded=tf.constant(encoded))
    diffs['serving_encoded'] = _max_abs_diff(from_encoded['logits'], expected)
  return diffs


def _write_saved_model(
  restored: predict.Restored, folder: str, platforms: tuple[str, ...], check: tuple
) -> dict[str, Any]:
  """saved_model/ in `folder`, checked; returns export.json's format-specific fields."""
  from cnn_jax.core.quiet_tf import tf

  module, signatures = _tf_module(restored, platforms)
  path = os.path.join(folder, 'saved_model')
  tf.saved_model.save(module, path, signatures=signatures)
  fields: dict[str, Any] = {
    'signatures': {
      'serving_default': 'images (N, S, S, C) float32, normalised -> logits',
      'serving_encoded': 'encoded (N,) string, image file bytes -> logits',
    },
    'max_abs_diff': check_saved_model(restored, path, check),
  }
  if fields['max_abs_diff']['serving_encoded'] is None:
    fields['not_checked'] = {'serving_encoded': 'synthetic data has no encoded images'}
  return fields


# ---------------------------------------------------------------------------------------------
# --export_format=stablehlo (JAX only)


def _load_exported(folder: str) -> tuple[jax.export.Exported, dict[str, PyTree]]:
  with open(os.path.join(folder, STABLEHLO_FILE), 'rb') as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return exported, npz.load_npz(os.path.join(folder, 'variables.npz'))


def _stablehlo_fn(folder: str) -> Callable[[np.ndarray], np.ndarray]:
  exported, variables = _load_exported(folder)
  call = jax.jit(exported.call)
  variables = jax.device_put(variables)
  image_shape = tuple(exported.in_avals[-1].shape[1:])  # (S, S, C): the batch is symbolic

  def logits(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[1:] != image_shape:
      want = ', '.join(map(str, image_shape))
      raise UserError(f'images of shape {images.shape}; this export takes (N, {want}) float32')
    return np.asarray(call(variables, images))

  return logits


def load_stablehlo(folder: str) -> Callable[[np.ndarray], np.ndarray]:
  """images (N, S, S, C) float32, preprocessed as export.json says (mean, std, input_shape) ->
  logits (np.ndarray), from an --export_format=stablehlo folder, on JAX's default backend (one
  of export.json's platforms). Any N: the batch dimension is symbolic. Needs JAX and NumPy only:
  no TensorFlow, no config, no checkpoint."""
  path = os.path.join(folder, 'export.json')
  if not os.path.isfile(path):
    raise UserError(f'{folder} holds no export.json; give a folder that --mode=export wrote')
  with open(path) as f:
    kind = json.load(f).get('format', 'saved_model')  # exports before the flag: SavedModels
  if kind != 'stablehlo':
    raise UserError(
      f'{folder} holds a {kind} export; load_stablehlo reads --export_format=stablehlo exports'
    )
  return _stablehlo_fn(folder)


def _write_stablehlo(
  restored: predict.Restored, folder: str, platforms: tuple[str, ...], check: tuple
) -> dict[str, Any]:
  """model.stablehlo in `folder` (beside its variables.npz), checked by running the bytes and
  the .npz read back; returns export.json's format-specific fields."""
  config = restored.exp.config
  size, channels = config.image_size, config.image_channels
  weights = npz.load_npz(os.path.join(folder, 'variables.npz'))  # the tree callers will pass
  (batch,) = jax.export.symbolic_shape('b')  # any batch size
  exported = jax.export.export(jax.jit(predict.forward_fn(restored.exp)), platforms=platforms)(
    jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), weights),
    jax.ShapeDtypeStruct((batch, size, size, channels), np.float32),
  )
  with open(os.path.join(folder, STABLEHLO_FILE), 'wb') as f:
    f.write(exported.serialize())
  images, expected = check
  return {
    'call': {
      'cnn_jax': 'cnn_jax.inference.export.load_stablehlo(folder)(images) -> logits',
      'jax': (
        "jax.export.deserialize(open('model.stablehlo', 'rb').read()).call(variables, images)"
        " -> logits; variables: cnn_jax.weights.npz.load_npz('variables.npz'), {'params', "
        "'batch_stats'} nested by module path"
      ),
      'images': '(N, S, S, C) float32, normalised with mean and std; any N',
    },
    'max_abs_diff': {'stablehlo': _max_abs_diff(_stablehlo_fn(folder)(images), expected)},
  }


_WRITERS = {'saved_model': _write_saved_model, 'stablehlo': _write_stablehlo}


# ---------------------------------------------------------------------------------------------
# The whole command


def export(
  config: ml_collections.ConfigDict,
  path: str | None,
  *,
  output: str | None = None,
  platforms: tuple[str, ...] = PLATFORMS,
  export_format: str = 'saved_model',
) -> dict[str, Any]:
  """Exports the checkpoint at `path` (a workdir or a step folder) to `output` (default
  <workdir>/export) as `export_format` (FORMATS; see the module doc). Returns export.json's
  contents."""
  if export_format not in FORMATS:
    raise UserError(f'--export_format={export_format!r}; use one of {", ".join(FORMATS)}')
  exp, step = predict.build(config, path, mode='export')
  kind = predict.task_kind(exp.task, 'export')  # a run export cannot serve: an error now
  restored = predict.restore(exp, step)
  output = os.path.abspath(output or os.path.join(exp.workdir, 'export'))
  staging = f'{output}.tmp-{os.getpid()}'  # the old export stays whole until the new one is
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  arrays = npz.save_npz(os.path.join(staging, 'variables.npz'), restored.variables)
  check = _check_batch(restored)
  written = _WRITERS[export_format](restored, staging, tuple(platforms), check)
  diffs = [d for d in written['max_abs_diff'].values() if d is not None]
  if max(diffs) > tolerance(config, check[1]):
    logging.warning(
      'The %s export differs from the JAX model by up to %s.',
      export_format,
      written['max_abs_diff'],
    )
  spec = exp.data.spec
  info = {
    'format': export_format,
    'model': config.model.name,
    'dataset': config.dataset,
    'task': kind,
    'step': restored.step,
    'checkpoint': os.path.join(exp.workdir, 'checkpoints', str(restored.step)),
    'input_shape': [None, config.image_size, config.image_size, config.image_channels],
    'mean': list(spec.mean),
    'std': list(spec.std),
    'eval_resize': spec.eval_resize,
    'num_classes': exp.num_classes,
    'class_names': predict.class_names(exp),
    'params_sha256': train.fingerprint(
      restored.variables['params'], restored.variables['batch_stats']
    ),
    'arrays': arrays,
    'platforms': list(platforms),
    **written,
    'output': output,
  }
  with open(os.path.join(staging, 'export.json'), 'w') as f:
    json.dump(info, f, indent=2)
  if os.path.exists(output):
    shutil.rmtree(output)
  os.replace(staging, output)
  return info


__all__ = ['FORMATS', 'PLATFORMS', 'check_saved_model', 'export', 'load_stablehlo', 'tolerance']
