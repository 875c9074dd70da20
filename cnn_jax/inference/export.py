"""A trained run exported for serving: a TensorFlow SavedModel (jax2tf) and its weights as .npz.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20_digits --mode=export

--workdir is the run's folder (its latest checkpoint) or a step folder of it, as for
--mode=predict. Written to <workdir>/export/ (replacing an earlier export):

  saved_model/   the model in eval mode, lowered by jax.experimental.jax2tf (native
                 serialization: StableHLO inside an XlaCallModule op, for CPU and CUDA), the
                 weights as TF variables, the batch dimension symbolic. Two signatures:
                   serving_default   images (N, S, S, C) float32, preprocessed as the pipeline
                                     does (resized, normalised with export.json's mean and std)
                                     -> logits (N, classes), or (N, h, w, classes) per pixel
                   serving_encoded   encoded (N,) string: PNG, JPEG, BMP, GIF, WebP bytes -> logits;
                                     the run's eval preprocessing (predict.eval_preprocess) is
                                     inside the graph
  variables.npz  every parameter and BatchNorm statistic, keyed 'params/<module path>/<name>'
                 and 'batch_stats/...' (`cnn_jax.weights.npz.load_npz` reads it back as {'params',
                 'batch_stats'})
  export.json    model, dataset, step, input shape, mean/std, class names, the SHA-256 of the
                 weights (train.fingerprint, as in summary.json) and the check below

The logits are the model's own: a segmentation run's eval-time dense CRF (config.segmentation.crf)
is not part of the export. Before it returns, `export` loads the SavedModel back and compares
both signatures with the JAX model on the first eval images (max_abs_diff in export.json).
safetensors is not a pinned package, so the weights are .npz only.

Measured (2-core CPU, shared with another job): the offline ResNet-20 run (110 steps) exports in
41 s of wall time for the whole main.py command, max_abs_diff 1.2e-6 / 1.9e-6 (serving_default /
serving_encoded); the offline U-Net (300 steps) 5.7e-6 / 7.5e-6. The CUDA lowering itself was run
on an H200 through jax.export (the same forward, platforms and symbolic batch; jax 0.11.2
there reading what jax 0.10.2 wrote, no TensorFlow there): logits within 4.6e-3 (ResNet-20) and
8.8e-3 (U-Net) of the CPU's, as TF32 convolutions at default precision give; the same argmax for
every image and all but 1 of 65,536 pixels.
"""

import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from cnn_jax import data as data_lib
from cnn_jax import train
from cnn_jax.core.quiet_tf import tf
from cnn_jax.inference import predict
from cnn_jax.weights import npz

PyTree = Any
PLATFORMS = ('cpu', 'cuda')  # where the SavedModel runs; the StableHLO is lowered for each
_CHECK_IMAGES = 8  # eval images the exported model is compared on


def _tf_module(
  restored: predict.Restored, platforms: tuple[str, ...]
) -> tuple[tf.Module, dict[str, Any]]:
  """A tf.Module holding the weights as variables, and its signatures."""
  from jax.experimental import jax2tf

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


def check_saved_model(restored: predict.Restored, path: str) -> dict[str, float]:
  """Max |logits(SavedModel) - logits(JAX)| on the first eval images, for each signature."""
  exp, config = restored.exp, restored.exp.config
  n = min(_CHECK_IMAGES, len(exp.data.validation))
  batch = next(
    data_lib.eval_iterator(
      exp.data, global_batch=n, image_size=config.image_size, channels=config.image_channels
    )
  )
  encoded = [r['image'] for r in exp.data.validation.__getitems__(list(range(n)))]
  expected = np.asarray(jax.jit(predict.forward_fn(exp))(restored.variables, batch['image']))
  loaded = tf.saved_model.load(path)
  from_images = loaded.signatures['serving_default'](images=tf.constant(batch['image']))
  from_encoded = loaded.signatures['serving_encoded'](encoded=tf.constant(encoded))
  return {
    'serving_default': float(np.max(np.abs(from_images['logits'].numpy() - expected))),
    'serving_encoded': float(np.max(np.abs(from_encoded['logits'].numpy() - expected))),
  }


def export(
  config: ml_collections.ConfigDict,
  path: str | None,
  *,
  output: str | None = None,
  platforms: tuple[str, ...] = PLATFORMS,
) -> dict[str, Any]:
  """Exports the checkpoint at `path` (a workdir or a step folder) to `output` (default
  <workdir>/export; see the module doc). Returns export.json's contents."""
  exp, step = predict.build(config, path, mode='export')
  kind = predict.task_kind(exp.task, 'export')  # a run export cannot serve: an error now
  restored = predict.restore(exp, step)
  output = os.path.abspath(output or os.path.join(exp.workdir, 'export'))
  staging = f'{output}.tmp-{os.getpid()}'  # the old export stays whole until the new one is
  shutil.rmtree(staging, ignore_errors=True)
  os.makedirs(staging)
  module, signatures = _tf_module(restored, tuple(platforms))
  saved_model = os.path.join(staging, 'saved_model')
  tf.saved_model.save(module, saved_model, signatures=signatures)
  arrays = npz.save_npz(os.path.join(staging, 'variables.npz'), restored.variables)
  diffs = check_saved_model(restored, saved_model)
  if max(diffs.values()) > 1e-4:
    logging.warning('The SavedModel differs from the JAX model by up to %s.', diffs)
  spec = exp.data.spec
  info = {
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
    'signatures': {
      'serving_default': 'images (N, S, S, C) float32, normalised -> logits',
      'serving_encoded': 'encoded (N,) string, image file bytes -> logits',
    },
    'max_abs_diff': diffs,
    'output': output,
  }
  with open(os.path.join(staging, 'export.json'), 'w') as f:
    json.dump(info, f, indent=2)
  if os.path.exists(output):
    shutil.rmtree(output)
  os.replace(staging, output)
  return info


__all__ = ['PLATFORMS', 'check_saved_model', 'export']
