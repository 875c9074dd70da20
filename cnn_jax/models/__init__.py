"""Model registry: `create('resnet50', num_classes=10)`, `list_models('resnet*')`."""

import fnmatch
from collections.abc import Callable
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.core.ranges import Range
from cnn_jax.models.alexnet import alexnet, alexnet_tiny
from cnn_jax.models.deeplab import deeplab_tiny, deeplabv3, deeplabv3plus, deeplabv3plus_tiny
from cnn_jax.models.densenet import densenet, densenet_tiny
from cnn_jax.models.efficientnet import efficientnet, efficientnet_tiny, efficientnet_variant
from cnn_jax.models.encoder import encoder, encoder_tiny
from cnn_jax.models.fcn import fcn, fcn_resnet, fcn_resnet_tiny, fcn_tiny
from cnn_jax.models.googlenet import googlenet, googlenet_tiny
from cnn_jax.models.lenet import LeNet5
from cnn_jax.models.mobilenet import (
  mobilenet_v1,
  mobilenet_v1_tiny,
  mobilenet_v2,
  mobilenet_v2_tiny,
)
from cnn_jax.models.resnet import ResNet, plain, resnet, resnet_tiny, seresnet
from cnn_jax.models.squeezenet import squeezenet, squeezenet_tiny
from cnn_jax.models.unet import unet, unet_tiny, unet_valid
from cnn_jax.models.vgg import vgg, vgg_tiny
from cnn_jax.models.yolo import yolo, yolo_tiny

# name -> constructor; keyword arguments of `create` go to the constructor (module fields).
_MODELS: dict[str, Callable[..., nn.Module]] = {
  'lenet5': LeNet5,
  # ImageNet ResNets, torchvision v1.5 layout (224x224 inputs, 1000 classes).
  'resnet18': partial(resnet, 18),
  'resnet34': partial(resnet, 34),
  'resnet50': partial(resnet, 50),
  'resnet101': partial(resnet, 101),
  'resnet152': partial(resnet, 152),
  # CIFAR ResNets of He et al. 2016, Section 4.2 (32x32 inputs, 10 classes, shortcut option A).
  'resnet20': partial(resnet, 20),
  'resnet32': partial(resnet, 32),
  'resnet44': partial(resnet, 44),
  'resnet56': partial(resnet, 56),
  'resnet110': partial(resnet, 110),
  # Plain twins (no shortcuts) for the degradation experiment.
  'plain18': partial(plain, 18),
  'plain34': partial(plain, 34),
  'plain50': partial(plain, 50),
  'plain101': partial(plain, 101),
  'plain152': partial(plain, 152),
  'plain20': partial(plain, 20),
  'plain32': partial(plain, 32),
  'plain44': partial(plain, 44),
  'plain56': partial(plain, 56),
  'plain110': partial(plain, 110),
  # SE-ResNet (Hu et al. 2018): squeeze-excite (reduction 16) on every residual branch.
  'seresnet50': partial(seresnet, 50),
  # AlexNet (torchvision's single tower), VGG (Simonyan & Zisserman 2015), SqueezeNet.
  'alexnet': alexnet,
  'vgg11': partial(vgg, 11),
  'vgg11_bn': partial(vgg, 11, batch_norm=True),
  'vgg13': partial(vgg, 13),
  'vgg13_bn': partial(vgg, 13, batch_norm=True),
  'vgg16': partial(vgg, 16),
  'vgg16_bn': partial(vgg, 16, batch_norm=True),
  'vgg19': partial(vgg, 19),
  'vgg19_bn': partial(vgg, 19, batch_norm=True),
  'squeezenet1_0': partial(squeezenet, '1_0'),
  'squeezenet1_1': partial(squeezenet, '1_1'),
  # GoogLeNet (Inception v1, Szegedy et al. 2015) with auxiliary classifiers in training.
  'googlenet': googlenet,
  # DenseNet (Huang et al. 2017), growth rate 32.
  'densenet121': partial(densenet, 121),
  'densenet161': partial(densenet, 161),
  'densenet169': partial(densenet, 169),
  'densenet201': partial(densenet, 201),
  # MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018), fast depthwise path on CPU.
  'mobilenet_v1': mobilenet_v1,
  'mobilenet_v2': mobilenet_v2,
  # EfficientNet B0-B7 (Tan & Le 2019): the hand-set width/depth/resolution/dropout table.
  **{f'efficientnet_b{i}': partial(efficientnet_variant, f'b{i}') for i in range(8)},
  # B0 at any width_mult / depth_mult: compound-scaling sweeps (configs/efficientnet_sweep.py).
  'efficientnet_scaled': efficientnet,
  # Segmentation (per-pixel logits): FCN (Long et al. 2015) on VGG-16 and torchvision's FCN-ResNet,
  # U-Net (Ronneberger et al. 2015), DeepLab v3 / v3+ (Chen et al. 2017, 2018).
  'fcn32s': partial(fcn, '32s'),
  'fcn16s': partial(fcn, '16s'),
  'fcn8s': partial(fcn, '8s'),
  'fcn_resnet50': partial(fcn_resnet, 50),
  'fcn_resnet101': partial(fcn_resnet, 101),
  'unet': unet,
  'unet_valid': unet_valid,
  'deeplabv3_resnet50': partial(deeplabv3, backbone='resnet50'),
  'deeplabv3_resnet101': partial(deeplabv3, backbone='resnet101'),
  'deeplabv3plus_resnet50': partial(deeplabv3plus, backbone='resnet50'),
  'deeplabv3plus_resnet101': partial(deeplabv3plus, backbone='resnet101'),
  'deeplabv3_mobilenet_v2': partial(deeplabv3, backbone='mobilenet_v2'),
  'deeplabv3plus_mobilenet_v2': partial(deeplabv3plus, backbone='mobilenet_v2'),
  # Tiny variants for tests.
  'resnet_tiny': resnet_tiny,
  'efficientnet_tiny': efficientnet_tiny,
  'googlenet_tiny': googlenet_tiny,
  'mobilenet_v1_tiny': mobilenet_v1_tiny,
  'mobilenet_v2_tiny': mobilenet_v2_tiny,
  'densenet_tiny': densenet_tiny,
  'alexnet_tiny': alexnet_tiny,
  'vgg_tiny': vgg_tiny,
  'squeezenet_tiny': squeezenet_tiny,
  'fcn_tiny': fcn_tiny,
  'fcn_resnet_tiny': fcn_resnet_tiny,
  'unet_tiny': unet_tiny,
  'deeplab_tiny': deeplab_tiny,
  'deeplabv3plus_tiny': deeplabv3plus_tiny,
  # Detection (cnn_jax/models/yolo.py): raw YOLO outputs (B, S_h, S_w, anchors, 5 + classes).
  'yolo': yolo,
  'yolo_tiny': yolo_tiny,
  # Metric learning (cnn_jax/models/encoder.py): embeddings (B, D) for the triplet loss.
  'encoder': encoder,
  'encoder_tiny': encoder_tiny,
}

# Names whose models return per-pixel logits (B, H, W, classes) rather than (B, classes).
SEGMENTATION = ('fcn*', 'unet*', 'deeplab*')
# What the other non-classifiers return: detection outputs, embeddings.
DETECTION = ('yolo*',)
EMBEDDING = ('encoder*',)

# The config.model fields every model takes (cnn_jax/core/ranges.py); a family's own fields are
# checked by its constructor.
RANGES = {'model.num_classes': Range(1, integer=True, also=(-1,), meaning="the dataset's")}


def create(name: str, /, **kwargs: Any) -> nn.Module:
  """The registered model `name`, with module fields overridden by `kwargs`."""
  if name not in _MODELS:
    raise UserError(
      f"unknown model '{name}'; closest registered names: {close_matches(name, _MODELS) or 'none'}"
      '; see cnn_jax.models.list_models()'
    )
  return _MODELS[name](**kwargs)


def feature_info(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, tuple[int, int]]:
  """{feature name: (stride, channels)} of `model(x, features=True)` for one input (no compute).

  Segmentation decoders pick their skip connections by stride from this table.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

  def trace(x):
    variables = model.init(jax.random.key(0), x)
    return model.apply(variables, x, features=True)

  feats = jax.eval_shape(trace, x)
  info = {}
  for name, f in feats.items():
    stride = input_shape[0] // f.shape[1] if f.ndim == 4 else 0  # 0: pooled (no spatial grid)
    info[name] = (stride, f.shape[-1])
  return info


def list_models(pattern: str = '*') -> list[str]:
  """Registered model names matching the fnmatch `pattern`, sorted."""
  return sorted(fnmatch.filter(_MODELS, pattern))


def is_segmentation(name: str) -> bool:
  """True for the models that return per-pixel logits."""
  return any(fnmatch.fnmatch(name, p) for p in SEGMENTATION)


def output_kind(name: str) -> str:
  """What model `name` returns: 'classification' (B, classes) logits, 'segmentation' per-pixel
  logits, 'detection' YOLO outputs, or 'embedding' (B, D) vectors."""
  for kind, patterns in (
    ('segmentation', SEGMENTATION),
    ('detection', DETECTION),
    ('embedding', EMBEDDING),
  ):
    if any(fnmatch.fnmatch(name, p) for p in patterns):
      return kind
  return 'classification'


__all__ = [
  'LeNet5',
  'ResNet',
  'create',
  'feature_info',
  'is_segmentation',
  'list_models',
  'output_kind',
  'plain',
  'resnet',
  'resnet_tiny',
]
