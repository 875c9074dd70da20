"""Fully convolutional networks: FCN-32s/16s/8s on VGG-16 (Long, Shelhamer & Darrell 2015) and
torchvision's FCN-ResNet50/101.

FCN-VGG: VGG-16's convs (the registry's 'vgg16' with `num_classes=0`, submodule 'backbone'),
fc6 / fc7 convolutionalized (a 7x7 conv of 4096 filters and a 1x1 conv: VGG's fc6 weight, flattened
in (H, W, C) order by this codebase, reshapes to fc6's (7, 7, 512, 4096) kernel as is), a 1x1 class
scorer, then upsampling back to the input. 32s upsamples the stride-32 scores x32; 16s first adds
x2-upsampled scores to a 1x1 scoring of pool4 (stride 16) and upsamples that x16; 8s adds pool3
(stride 8) the same way and upsamples x8. Layer names are the Caffe model's: 'fc6', 'fc7',
'score_fr', 'score_pool4', 'score_pool3', 'upscore' (32s), 'upscore2', 'upscore16' (16s),
'upscore_pool4', 'upscore8' (8s). As in the paper, the scoring layers start at zero.

As the reference's at-once net (shelhamer/fcn.berkeleyvision.org, voc-fcn8s-atonce), by default:
- Skip scaling, `skip_scale=(0.01, 1e-4)`: pool4 is multiplied by 0.01 and pool3 by 1e-4 before
  score_pool4 / score_pool3 (its fixed `Scale` layers scale_pool4 / scale_pool3, lr_mult 0; here
  constants, no parameters; the reference's comment: "scale pool4 skip for compatibility"). They
  damp the skips' un-normalised VGG features against the coarse scores while all layers learn at
  once. `skip_scale=(1.0, 1.0)`: the staged nets' unscaled skips, this model's behaviour before.
  FCN-16s uses the first entry only.
- Fixed bilinear upsampling, `learned_upsampling=False`: every upscore is a transposed conv with
  the constant bilinear kernel (its Deconvolution layers are bilinear-initialised with lr_mult 0,
  in the at-once and the staged nets alike), no parameters. `learned_upsampling=True`: the
  (2f, 2f, C, C) kernels are parameters started at bilinear (`cnn_jax.nn.upsample`).
With `upsample='bilinear'` or 'nearest' each upscore is a resize instead, followed (if learned) by
a 3x3 conv started at the identity.

Padding, where this departs from the Caffe model: Caffe pads conv1_1 by 100 pixels, so that fc6
(7x7, no padding) sees a map of at least 7x7 for any input, and crops every upsampled map back
into alignment (offsets 19, 27, 31 ...). That costs ((H + 198) / H)^2 more compute in conv1
(17x at 64x64, 3.7x at 224). Here fc6 is padded 'SAME' (3 pixels) instead and inputs must be
multiples of 32: then pool5 is exactly H / 32, every x2 upsampling lands exactly on pool4 / pool3,
and the output is exactly H x W. Other sizes raise UserError naming the nearest multiples.

Parameters (21 classes, kernels 2f / stride f without bias as Caffe's Deconvolution layers): the
paper's Table 1 gives 134M for FCN-VGG16, i.e. the VGG-16 convs (14,714,688) + fc6 (102,764,544) +
fc7 (16,781,312) + score_fr (86,037) = 134,346,581, which is this FCN-32s by default; 16s adds
score_pool4 (10,773), 8s also score_pool3 (5,397). `learned_upsampling=True` adds the upsampling
kernels (C * C * k * k: 1,806,336 for 32s, 458,640 for 16s, 127,008 for 8s).

FCN-ResNet (torchvision `fcn_resnet50` / `fcn_resnet101`): the registry's ResNet with
`num_classes=0` at output stride 8 (stages 3 and 4 dilated), torchvision's FCNHead (3x3 conv to
C / 4 without bias, BN, ReLU, dropout 0.1, 1x1 conv to classes) on stage 4, bilinear resizing to
the input size, and in training an auxiliary FCNHead on stage 3 whose logits (at input
resolution) are sown into 'aux_logits' as {'aux': (logits,)}; the trainer adds `aux_weight` (0.5,
torchvision's reference recipe) times their loss. fcn_resnet50, 21 classes, with the aux head:
35,322,218 parameters, torchvision's count.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import BatchNorm, Conv, conv_kernel_init, dense_kernel_init
from cnn_jax.nn.upsample import UPSAMPLE_MODES, Upsample, check_input_size, resize

VARIANTS = ('32s', '16s', '8s')
STRIDE = 32  # of pool5, the coarsest map FCN-VGG reads


def _backbone(parent: nn.Module, model: str, **kwargs: Any) -> nn.Module:
  """The registered `model` as `parent`'s submodule 'backbone' (call inside a compact method)."""
  # Imported here: the registry (cnn_jax.models) imports this file.
  from cnn_jax.models import create

  # `create`'s first parameter is itself called `name`, so the submodule name is set by a clone
  # of an unattached instance (parent=None) instead of passing name= through it.
  return create(model, parent=None, **kwargs).clone(parent=parent, name='backbone')


class FCN(nn.Module):
  """FCN-32s / 16s / 8s on a VGG backbone (Long et al. 2015); see the module docstring.

  Returns float32 logits (B, H, W, num_classes) for inputs whose H and W are multiples of 32.
  """

  variant: str = '8s'  # '32s' | '16s' | '8s': the stride of the finest skip fused
  backbone: str = 'vgg16'  # any registered VGG ('vgg16_bn', 'vgg_tiny', ...)
  hidden: int = 4096  # filters of fc6 and fc7
  fc6_kernel: int = 7  # VGG's 7x7 pool5 grid
  dropout_rate: float = 0.5  # after fc6 and fc7, as VGG's classifier
  upsample: str = 'transpose'  # 'transpose' (bilinear kernel) | 'bilinear' | 'nearest' (resize)
  # Multipliers of pool4 and pool3 before their scorers: the at-once net's fixed Scale layers.
  skip_scale: Sequence[float] = (0.01, 1e-4)
  learned_upsampling: bool = False  # the reference's deconvolutions are frozen (lr_mult 0)
  num_classes: int = 21  # PASCAL VOC: 20 classes + background
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # for a BatchNorm backbone ('vgg16_bn')

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self._check(x)
    h, w = x.shape[1:3]
    backbone = _backbone(
      self,
      self.backbone,
      num_classes=0,
      dtype=self.dtype,
      norm_axis_name=self.norm_axis_name,
    )
    feats = backbone(x, train=train, features=True)
    conv = partial(Conv, dtype=self.dtype, kernel_init=conv_kernel_init)
    # The paper zero-initialises the scoring layers (random init helped neither accuracy nor speed).
    score = partial(
      Conv, self.num_classes, (1, 1), dtype=self.dtype, kernel_init=nn.initializers.zeros
    )
    up = partial(
      Upsample,
      self.num_classes,
      mode=self.upsample,
      learned=self.learned_upsampling,
      dtype=self.dtype,
    )
    scale_pool4, scale_pool3 = self.skip_scale
    dropout = partial(nn.Dropout, self.dropout_rate, deterministic=not train)

    k = self.fc6_kernel
    y = feats['pool5']  # (B, H/32, W/32, 512)
    y = nn.relu(conv(self.hidden, (k, k), padding=k // 2, name='fc6')(y))
    y = dropout(name='drop6')(y)
    y = nn.relu(conv(self.hidden, (1, 1), name='fc7')(y))
    y = dropout(name='drop7')(y)
    y = score(name='score_fr')(y)  # (B, H/32, W/32, classes)

    if self.variant == '32s':
      y = up(32, name='upscore')(y, (h, w))
    else:
      pool4 = feats['pool4']  # (B, H/16, W/16, 512)
      y = up(2, name='upscore2')(y, pool4.shape[1:3])
      y = y + score(name='score_pool4')(pool4 * scale_pool4)
      if self.variant == '16s':
        y = up(16, name='upscore16')(y, (h, w))
      else:
        pool3 = feats['pool3']  # (B, H/8, W/8, 256)
        y = up(2, name='upscore_pool4')(y, pool3.shape[1:3])
        y = y + score(name='score_pool3')(pool3 * scale_pool3)
        y = up(8, name='upscore8')(y, (h, w))
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    return jnp.asarray(y, jnp.float32)  # (B, H, W, classes)

  def output_size(self, input_size: int) -> int:
    """The logits' height (width) for an input of `input_size`: the same size."""
    self._check_shape((1, input_size, input_size, 3))
    return input_size

  def _check_shape(self, shape: Sequence[int]) -> None:
    check_input_size(
      f'FCN-{self.variant} ({self.backbone})',
      shape,
      lambda s: s >= STRIDE and s % STRIDE == 0,
      f'height and width must be multiples of {STRIDE} (the stride of pool5)',
    )

  def _check(self, x: jax.Array) -> None:
    if self.variant not in VARIANTS:
      raise UserError(f'FCN.variant={self.variant!r}; expected one of {VARIANTS}')
    if self.upsample not in UPSAMPLE_MODES:
      raise UserError(f'FCN.upsample={self.upsample!r}; expected one of {UPSAMPLE_MODES}')
    if len(self.skip_scale) != 2:
      raise UserError(
        f'FCN.skip_scale={tuple(self.skip_scale)}; expected two multipliers (pool4, pool3)'
      )
    if self.fc6_kernel < 1 or self.fc6_kernel % 2 == 0:
      raise UserError(f'FCN.fc6_kernel={self.fc6_kernel}; expected an odd size (SAME padding)')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'FCN.dropout_rate={self.dropout_rate}; expected a value in [0, 1)')
    self._check_shape(x.shape)


class FCNHead(nn.Module):
  """torchvision's FCNHead: 3x3 conv (C / 4, no bias) - BN - ReLU - dropout - 1x1 conv (classes).

  Submodules 'conv', 'bn', 'out' are torchvision's classifier.0, .1 and .4. Also DeepLab's aux head.
  """

  num_classes: int
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    inner = x.shape[-1] // 4  # 2048 -> 512 (classifier), 1024 -> 256 (aux)
    x = Conv(
      inner,
      (3, 3),
      padding=1,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=conv_kernel_init,
      name='conv',
    )(x)
    x = BatchNorm(
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
      name='bn',
    )(x)
    x = nn.relu(x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    # torch's default conv init, U(+-1/sqrt(fan_in)), as torchvision leaves it for this layer.
    out = Conv(
      self.num_classes, (1, 1), dtype=self.dtype, kernel_init=dense_kernel_init, name='out'
    )
    return out(x)


class FCNResNet(nn.Module):
  """torchvision's FCN-ResNet: dilated ResNet (output stride 8), FCNHead, bilinear resize.

  Returns float32 logits (B, H, W, num_classes) for any input size; in training the aux head's
  logits go to the 'aux_logits' collection (pass mutable=['batch_stats', 'aux_logits'] and
  rngs={'dropout': key}). Submodules: 'backbone', 'classifier', 'aux_classifier' (torchvision's).
  """

  backbone: str = 'resnet50'  # any registered ResNet
  # torchvision's (False, True, True): stages 3 and 4 keep stride 8 and dilate by 2 and 4.
  replace_stride_with_dilation: Sequence[bool] = (False, True, True)
  aux_loss: bool = True  # an FCNHead on the second-to-last stage, in training only
  aux_weight: float = 0.5  # read by the trainer: loss += aux_weight * loss(aux)
  dropout_rate: float = 0.1  # in both heads
  num_classes: int = 21
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.ndim != 4:
      raise UserError(f'FCNResNet needs NHWC inputs, got shape {x.shape}')
    h, w = x.shape[1:3]
    backbone = _backbone(
      self,
      self.backbone,
      num_classes=0,
      replace_stride_with_dilation=tuple(self.replace_stride_with_dilation),
      dtype=self.dtype,
      norm_axis_name=self.norm_axis_name,
    )
    feats = backbone(x, train=train, features=True)
    stages = sorted(k for k in feats if k.startswith('stage'))  # 'stage1' .. 'stage4'
    head = partial(
      FCNHead,
      self.num_classes,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
      norm_axis_name=self.norm_axis_name,
    )
    y = head(name='classifier')(feats[stages[-1]], train=train)  # (B, H/8, W/8, classes)
    y = resize(y, (h, w), 'bilinear')
    if self.aux_loss and (train or self.is_initializing()):  # an eval init creates its params
      aux = head(name='aux_classifier')(feats[stages[-2]], train=train)
      if train:
        self.sow('aux_logits', 'aux', jnp.asarray(resize(aux, (h, w), 'bilinear'), jnp.float32))
    return jnp.asarray(y, jnp.float32)  # (B, H, W, classes)

  def output_size(self, input_size: int) -> int:
    """The logits' height (width) for an input of `input_size`: the same size."""
    return input_size


def fcn(variant: str = '8s', **kwargs: Any) -> FCN:
  """FCN-`variant` ('32s', '16s', '8s') on VGG-16, the paper's layout; kwargs override fields."""
  if variant not in VARIANTS:
    raise UserError(f'no FCN variant {variant!r}; known variants: {VARIANTS}')
  return FCN(variant=variant, **kwargs)


def fcn_resnet(depth: int, **kwargs: Any) -> FCNResNet:
  """torchvision's fcn_resnet50 / fcn_resnet101 (21 classes, aux head); kwargs override fields."""
  if depth not in (50, 101):
    raise UserError(f'no FCN-ResNet of depth {depth}; known depths: [50, 101]')
  return FCNResNet(backbone=f'resnet{depth}', **kwargs)


def fcn_tiny(**kwargs: Any) -> FCN:
  """FCN-8s on vgg_tiny (widths 4..16) with 32-wide 3x3 fc6 and fc7, 11 classes, for tests."""
  defaults = dict(variant='8s', backbone='vgg_tiny', hidden=32, fc6_kernel=3, num_classes=11)
  return FCN(**(defaults | kwargs))


def fcn_resnet_tiny(**kwargs: Any) -> FCNResNet:
  """FCN on resnet_tiny (3 stages of 4/8/16 channels, stage 3 dilated: stride 2), for tests."""
  defaults = dict(
    backbone='resnet_tiny', replace_stride_with_dilation=(False, True), num_classes=11
  )
  return FCNResNet(**(defaults | kwargs))
