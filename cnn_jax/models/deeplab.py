"""DeepLab v3 (Chen et al. 2017, "Rethinking Atrous Convolution for Semantic Image Segmentation")
and v3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution ...").

- Backbone: a head-less registry model (`cnn_jax.models.create(name, num_classes=0, ...)`) held as
  the submodule 'backbone', so its parameter names are the classification model's and ImageNet
  weights load into it. Output stride 16 or 8 comes from dilating the last stages instead of
  striding them (`replace_stride_with_dilation`, torchvision's field: OS 16 dilates stage 4, OS 8
  stages 3 and 4); a backbone without that field runs at its native output stride 32 only.
- Multi-Grid (`multi_grid`, v3 paper Section 3.2): the three blocks of ResNet's last stage dilate
  by the stage's rate times the unit rates (1, 2, 4): 2, 4, 8 at output stride 16, 4, 8, 16 at 8.
  The default of both `deeplabv3` and `deeplabv3plus` on ResNet-50/101/152: v3+ keeps v3 as its
  encoder, and the papers' TensorFlow code (research/deeplab) leaves its multi_grid flag unset by
  default but asks for [1, 2, 4] with its ResNet-v1-beta checkpoints. Other backbones here
  (ResNet-18/34, MobileNet-v2, the tiny nets) get none. torchvision's deeplabv3_resnet50/101 has
  no multi-grid: its dilated stages keep the previous rate in their first block (stage 4 at its
  output stride 8: 2, 4, 4); `multi_grid=()` is exactly that net. The paper's ResNet (v1) strides
  in the last unit of block3, so all of block4 runs at the new rate; ours (torchvision's v1.5)
  strides in the first block of stage 4, and with a multi-grid that block's 3x3 takes rate x 1
  like the paper's first block4 unit (2 at output stride 16), not the previous rate (1) that
  torchvision's rule gives it.
- Evaluation output stride (`eval_output_stride`): the v3 paper trains at output stride 16 and
  evaluates at 8 with the same weights (dilation changes no parameter shape). With train=False
  (evaluation, predictions, exports) the backbone dilates for eval_output_stride and the ASPP
  rates scale with it ((6, 12, 18) -> (12, 24, 36); explicit `aspp_rates` are the training
  stride's and scale the same way); with train=True it runs at output_stride. None: the same
  stride in both, as torchvision (8 and 8).
- ASPP ('aspp'): a 1x1 conv, three 3x3 atrous convs (rates (6, 12, 18) at OS 16, doubled at OS 8:
  torchvision's (12, 24, 36)) and image pooling (global mean, 1x1 conv, BN, ReLU, broadcast back),
  256 channels each with BN + ReLU; concatenated, projected by a 1x1 conv to 256 + BN + ReLU +
  dropout (0.5 in torchvision's v3, 0.1 in the papers' v3+ code).
- v3 head: 3x3 conv 256 + BN + ReLU ('head'), 1x1 conv to the classes ('classifier'), bilinear
  upsampling to the input size (torchvision's DeepLabHead).
- v3+ decoder ('decoder'): the stride-4 feature reduced to 48 channels (1x1 conv + BN + ReLU; its
  256 channels would outweigh the encoder's, and 48 was the best of 8..64 in the paper's Table 1),
  the ASPP output upsampled bilinearly to its size (x4 at OS 16), concatenated, two 3x3
  depthwise-separable convs of 256 (depthwise + BN + ReLU, pointwise + BN + ReLU), then the
  'classifier' and x4 bilinear upsampling. `separable_aspp=True` also makes the atrous ASPP
  branches separable (the paper's Xception model).
- Auxiliary head (`aux_loss=True`, torchvision's FCNHead on stage 3: 3x3 conv to C/4 + BN + ReLU +
  dropout 0.1 + 1x1 to the classes): runs in training only and sows its logits, upsampled to the
  input size, as {'aux_head': {'logits': (l,)}} in the 'aux_logits' collection; the trainer adds
  `aux_weight` (0.5 in torchvision's reference) times its loss. Its parameters exist after an
  eval-mode init too, so training and evaluation share one parameter tree.

Parameter counts (21 classes): v3 ResNet-50 with the aux head 42,004,074 and ResNet-101
60,996,202 (torchvision's deeplabv3_resnet50 / _resnet101); v3+ ResNet-50 39,211,461, ResNet-101
58,203,589 (no aux head). Neither the output stride (training or evaluation) nor the multi-grid
changes them.

Input sizes: height and width must be multiples of the output stride, of both strides when
evaluation runs at another (the decoder concatenates the upsampled stride-OS map with the
stride-4 one, and bilinear upsampling by exactly OS keeps pixels aligned); other sizes raise
UserError at trace time naming the nearest valid sizes. The logits have the input's height and
width.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from cnn_jax.core.errors import UserError
from cnn_jax.models.fcn import FCNHead  # torchvision's; also FCN-ResNet's heads
from cnn_jax.models.resnet import DILATION_FOR_OUTPUT_STRIDE
from cnn_jax.nn.layers import BatchNorm, Conv, DepthwiseConv, conv_kernel_init, dense_kernel_init

ModuleDef = Any

VERSIONS = ('v3', 'v3+')
# The paper's ASPP rates at output stride 16 (Section 4.1); rates scale with 16 / output stride.
PAPER_RATES_OS16 = (6, 12, 18)
# The paper's Multi-Grid unit rates for ResNet's last stage (Section 3.2's example).
PAPER_MULTI_GRID = (1, 2, 4)


def aspp_rates_for(output_stride: int) -> tuple[int, ...]:
  """The papers' ASPP rates at `output_stride`: (6, 12, 18) at 16, (12, 24, 36) at 8."""
  return tuple(r * 16 // output_stride for r in PAPER_RATES_OS16)


def _resize(x: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of NHWC `x` to `hw` (half-pixel centres: torch's align_corners=False)."""
  if x.shape[1:3] == tuple(hw):
    return x
  return jax.image.resize(x, (x.shape[0], *hw, x.shape[-1]), 'bilinear')


def _nearest_multiples(size: int, m: int) -> list[int]:
  below = size // m * m
  return [s for s in (below, below + m) if s > 0]


class ConvBNReLU(nn.Module):
  """k x k conv (dilated) + BN + ReLU; `separable`: depthwise k x k + BN + ReLU, 1x1 + BN + ReLU."""

  features: int
  norm: ModuleDef
  kernel_size: int = 1
  dilation: int = 1
  separable: bool = False
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, d = self.kernel_size, self.dilation
    pad = d * (k - 1) // 2  # keeps H and W
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_kernel_init)
    if self.separable and k > 1:
      x = DepthwiseConv(
        (k, k), padding=pad, dilation=d, dtype=self.dtype, impl=self.depthwise_impl, name='dw_conv'
      )(x)
      x = nn.relu(self.norm(name='dw_bn')(x))
      x = conv(self.features, (1, 1), padding=0, name='pw_conv')(x)
      return nn.relu(self.norm(name='pw_bn')(x))
    x = conv(self.features, (k, k), padding=pad, kernel_dilation=d, name='conv')(x)
    return nn.relu(self.norm(name='bn')(x))


class ASPP(nn.Module):
  """Atrous spatial pyramid pooling (DeepLab v3, Section 3.3): parallel 1x1, atrous 3x3 and
  image-pooling branches, concatenated and projected to `features` channels."""

  rates: Sequence[int]
  norm: ModuleDef
  features: int = 256
  separable: bool = False  # separable atrous branches (v3+ with Xception)
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    branch = partial(
      ConvBNReLU, self.features, self.norm, dtype=self.dtype, depthwise_impl=self.depthwise_impl
    )
    outs = [branch(name='conv1x1')(x)]
    for i, rate in enumerate(self.rates):
      outs.append(
        branch(kernel_size=3, dilation=rate, separable=self.separable, name=f'atrous{i + 1}')(x)
      )
    # Image-level features: at large rates a 3x3 atrous conv on a small map degenerates to its
    # centre tap (the paper's Figure 4), so global context gets its own branch.
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    pooled = branch(name='image_pool')(pooled)  # (B, 1, 1, 256)
    outs.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.features)))  # bilinear from 1x1
    y = jnp.concatenate(outs, axis=-1)  # (B, h, w, (len(rates) + 2) * 256)
    y = branch(name='project')(y)
    if self.dropout_rate:
      y = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(y)
    return y


def _classifier(num_classes: int, dtype: Any) -> nn.Module:
  # torch's default conv init (U(+-1/sqrt(fan_in))) for the last 1x1: He init would start the
  # logits about sqrt(6) times wider.
  return Conv(num_classes, (1, 1), dtype=dtype, kernel_init=dense_kernel_init, name='classifier')


class Decoder(nn.Module):
  """DeepLab v3+'s decoder (Section 3.1): fuse the upsampled encoder output with a stride-4
  feature reduced to `low_level_features` channels, refine with two 3x3 convs."""

  norm: ModuleDef
  low_level_features: int = 48
  features: int = 256
  separable: bool = True
  dtype: Any = jnp.float32
  depthwise_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, low: jax.Array) -> jax.Array:
    conv = partial(ConvBNReLU, norm=self.norm, dtype=self.dtype, depthwise_impl=self.depthwise_impl)
    low = conv(self.low_level_features, name='low_level')(low)  # (B, H/4, W/4, 48)
    x = _resize(x, low.shape[1:3])  # (B, H/4, W/4, 256): x4 at output stride 16
    x = jnp.concatenate([x, low.astype(x.dtype)], axis=-1)
    for i in range(2):
      x = conv(self.features, kernel_size=3, separable=self.separable, name=f'fuse{i + 1}')(x)
    return x


class DeepLab(nn.Module):
  """DeepLab v3 / v3+ on a registry backbone; `deeplabv3(...)` / `deeplabv3plus(...)` fill in the
  published settings. `__call__` returns float32 logits (B, H, W, num_classes)."""

  num_classes: int = 21  # PASCAL VOC: 20 classes + background
  version: str = 'v3'  # 'v3' | 'v3+' (decoder with low-level features)
  backbone: str = 'resnet50'  # a registry name; built head-less (num_classes=0)
  # Further backbone fields (tiny variants); stored as a FrozenDict to keep the module hashable.
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  output_stride: int = 16  # in training: 8, 16 (dilated last stages) or 32
  eval_output_stride: int | None = None  # with train=False; None: output_stride
  # Unit rates of the backbone's last-stage blocks (ResNet's multi_grid); (): none.
  multi_grid: Sequence[int] = ()
  # At output_stride (eval_output_stride scales them); None: (6, 12, 18) x 16 / output_stride.
  aspp_rates: Sequence[int] | None = None
  aspp_features: int = 256
  separable_aspp: bool = False
  aspp_dropout_rate: float = 0.5  # torchvision's v3; 0.1 in v3+
  # Backbone feature names: ResNet's; MobileNet-v2 uses 'stage5' and 'stage2'.
  high_level_feature: str = 'stage4'  # ASPP input
  low_level_feature: str = 'stage1'  # v3+ decoder input (stride 4)
  low_level_features: int = 48
  decoder_features: int = 256
  separable_decoder: bool = True
  aux_loss: bool = False  # torchvision's auxiliary FCNHead (training only)
  aux_feature: str = 'stage3'
  aux_weight: float = 0.5  # read by the trainer: loss += aux_weight * loss(aux logits)
  depthwise_impl: str = 'auto'  # 'auto' | 'shift' | 'grouped' (cnn_jax.nn.depthwise)
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  def __post_init__(self) -> None:
    if not isinstance(self.backbone_kwargs, FrozenDict):  # a dict from a config: freeze it
      object.__setattr__(self, 'backbone_kwargs', FrozenDict(self.backbone_kwargs))
    if self.aspp_rates is not None:
      object.__setattr__(self, 'aspp_rates', tuple(self.aspp_rates))
    object.__setattr__(self, 'multi_grid', tuple(self.multi_grid))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    self.check_input_size(x.shape[1], x.shape[2])  # before any compute
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    size = x.shape[1:3]
    stride = self.output_stride_for(train)  # one parameter tree at both strides
    backbone = self.make_backbone(stride).clone(parent=self, name='backbone')
    feats = backbone(x, train=train, features=True)
    high = self._feature(feats, self.high_level_feature)
    if high.shape[1] * stride != size[0]:
      raise UserError(
        f'DeepLab output stride {stride}, but backbone {self.backbone!r} gives '
        f'{size[0] / high.shape[1]:g} at {self.high_level_feature!r}; check backbone_kwargs'
      )
    y = ASPP(
      self.resolved_aspp_rates(stride),
      norm,
      features=self.aspp_features,
      separable=self.separable_aspp,
      dropout_rate=self.aspp_dropout_rate,
      dtype=self.dtype,
      depthwise_impl=self.depthwise_impl,
      name='aspp',
    )(high, train=train)  # (B, H/OS, W/OS, 256)
    if self.version == 'v3':
      y = ConvBNReLU(self.aspp_features, norm, kernel_size=3, dtype=self.dtype, name='head')(y)
    else:
      y = Decoder(
        norm,
        low_level_features=self.low_level_features,
        features=self.decoder_features,
        separable=self.separable_decoder,
        dtype=self.dtype,
        depthwise_impl=self.depthwise_impl,
        name='decoder',
      )(y, self._feature(feats, self.low_level_feature))  # (B, H/4, W/4, 256)
    y = _classifier(self.num_classes, self.dtype)(y)
    # Upsampled in float32: the logits feed softmax / cross-entropy.
    logits = _resize(jnp.asarray(y, jnp.float32), size)  # (B, H, W, num_classes)

    # The aux head's parameters also exist after an eval-mode init (one tree for both modes).
    if self.aux_loss and (train or self.is_initializing()):
      aux = FCNHead(
        self.num_classes, dtype=self.dtype, norm_axis_name=self.norm_axis_name, name='aux_head'
      )
      aux_logits = jnp.asarray(
        aux(self._feature(feats, self.aux_feature), train=train), jnp.float32
      )
      if train:
        aux.sow('aux_logits', 'logits', _resize(aux_logits, size))
    return logits

  def output_stride_for(self, train: bool) -> int:
    """The output stride of a call: output_stride in training, else eval_output_stride."""
    if train or self.eval_output_stride is None:
      return self.output_stride
    return self.eval_output_stride

  def make_backbone(self, output_stride: int | None = None) -> nn.Module:
    """The head-less backbone at `output_stride` (None: the training one), unbound (its
    `feature_info` is the table)."""
    self._check_fields()
    stride = self.output_stride if output_stride is None else output_stride
    kwargs = dict(self.backbone_kwargs)
    kwargs.update(num_classes=0, dtype=self.dtype, norm_axis_name=self.norm_axis_name)
    from cnn_jax import models  # the registry imports this module

    module = models.create(self.backbone, parent=None, **kwargs)
    fields = {f.name for f in dataclasses.fields(module)}
    if 'replace_stride_with_dilation' in fields:
      module = module.clone(replace_stride_with_dilation=DILATION_FOR_OUTPUT_STRIDE[stride])
    elif stride != 32:
      raise UserError(
        f'DeepLab output stride {stride}: backbone {self.backbone!r} has no '
        'dilated mode (replace_stride_with_dilation); it runs at output stride 32 only'
      )
    if 'multi_grid' in fields:
      module = module.clone(multi_grid=self.multi_grid)
    elif self.multi_grid:
      raise UserError(
        f'DeepLab.multi_grid={self.multi_grid}: backbone {self.backbone!r} has no multi-grid '
        '(a ResNet field); set multi_grid=()'
      )
    return module

  def resolved_aspp_rates(self, output_stride: int | None = None) -> tuple[int, ...]:
    """The ASPP rates at `output_stride` (None: the training one): `aspp_rates` (given for the
    training stride) times output_stride / that stride, or the papers' rates there."""
    stride = self.output_stride if output_stride is None else output_stride
    if self.aspp_rates is None:
      return aspp_rates_for(stride)
    rates = tuple(int(r) * self.output_stride / stride for r in self.aspp_rates)
    if not all(r.is_integer() for r in rates):
      raise UserError(
        f'DeepLab.aspp_rates={tuple(self.aspp_rates)} at output stride {self.output_stride} '
        f'give rates {tuple(f"{r:g}" for r in rates)} at {stride}; choose rates that scale to '
        'whole numbers'
      )
    return tuple(int(r) for r in rates)

  def check_input_size(self, height: int, width: int) -> None:
    """Raises UserError unless both sizes are multiples of the output stride (of both strides
    when evaluation runs at another)."""
    self._check_fields()
    stride = max(self.output_stride_for(True), self.output_stride_for(False))
    bad = [(n, s) for n, s in (('height', height), ('width', width)) if s % stride]
    if not bad:
      return
    if height == width:
      nearest = ', '.join(map(str, _nearest_multiples(height, stride)))
    else:
      nearest = '; '.join(
        f'{", ".join(map(str, _nearest_multiples(s, stride)))} ({n})' for n, s in bad
      )
    strides = f'output stride {self.output_stride}'
    if self.output_stride_for(False) != self.output_stride:
      strides += f', {self.eval_output_stride} in evaluation'
    raise UserError(
      f'DeepLab {self.version} ({strides}) cannot take {height}x{width} inputs: '
      f'sizes must be multiples of {stride}; nearest valid sizes: {nearest}'
    )

  def output_size(self, input_size: int) -> int:
    """The logits' height (width) for an input of that height (width): the same size."""
    self.check_input_size(input_size, input_size)
    return input_size

  def _feature(self, feats: dict[str, jax.Array], name: str) -> jax.Array:
    if name not in feats:
      raise UserError(
        f'DeepLab: backbone {self.backbone!r} has no feature {name!r}; it has '
        f'{sorted(k for k, v in feats.items() if v.ndim == 4)}'
      )
    return feats[name]

  def _check_fields(self) -> None:
    if self.version not in VERSIONS:
      raise UserError(f'DeepLab.version={self.version!r}; expected one of {VERSIONS}')
    for field in ('output_stride', 'eval_output_stride'):
      value = getattr(self, field)
      if value not in DILATION_FOR_OUTPUT_STRIDE and (field, value) != ('eval_output_stride', None):
        raise UserError(
          f'DeepLab.{field}={value}; expected one of {sorted(DILATION_FOR_OUTPUT_STRIDE)}'
          + (' or None (the training one)' if field == 'eval_output_stride' else '')
        )
    if not all(int(g) >= 1 for g in self.multi_grid):
      raise UserError(f'DeepLab.multi_grid={self.multi_grid}; expected unit rates >= 1')
    if self.aspp_rates is not None and not all(int(r) >= 1 for r in self.aspp_rates):
      raise UserError(f'DeepLab.aspp_rates={tuple(self.aspp_rates)}; expected rates >= 1')
    if not 0 <= self.aspp_dropout_rate < 1:
      raise UserError(
        f'DeepLab.aspp_dropout_rate={self.aspp_dropout_rate}; expected a value in [0, 1)'
      )
    if not self.aux_weight >= 0:
      raise UserError(f'DeepLab.aux_weight={self.aux_weight}; expected a weight >= 0')


# torchvision's reference recipe: output stride 8, rates (12, 24, 36), aux FCNHead, dropout 0.5.
TORCHVISION_V3 = dict(output_stride=8, aux_loss=True, aspp_dropout_rate=0.5)
# The v3+ paper: output stride 16 (train), rates (6, 12, 18), no aux head; dropout 0.1 as its code.
PAPER_V3PLUS = dict(version='v3+', output_stride=16, aux_loss=False, aspp_dropout_rate=0.1)
# resnet_tiny with an ImageNet-style stem and 4 stages (strides 4, 4, 8, 16, 32): the same feature
# layout as ResNet-50 at widths 4/8/16/32, so every DeepLab code path runs at 32x32 or 64x64.
TINY_BACKBONE = FrozenDict(
  stage_sizes=(1, 1, 1, 1), widths=(4, 8, 16, 32), stem='imagenet', shortcut='B'
)
TINY_HEAD = dict(aspp_features=16, low_level_features=8, decoder_features=16)
# Backbones other than ResNet: where their features are. MobileNet-v2 (the v3+ paper's mobile
# model): ASPP on the last inverted residual (320 channels, stride 32; the 1x1 conv to 1280 belongs
# to the classifier and goes unused), the decoder on 'stage2' (24 channels, stride 4). Output
# stride 16 (the last row dilated, rates (6, 12, 18)) as the v3+ paper's mobile model and
# torchvision's DeepLab-MobileNet use; 8 dilates the last two rows. No aux head, as in the paper.
# ResNets with the paper's three-block last stage get its Multi-Grid; the others none (ResNet-18
# and -34 were not in the paper, resnet_tiny has one block there).
BACKBONE_DEFAULTS: dict[str, dict[str, Any]] = {
  **{
    name: dict(
      high_level_feature='stage5',
      low_level_feature='stage2',
      aux_feature='stage4',
      aux_loss=False,
      output_stride=16,
    )
    for name in ('mobilenet_v2', 'mobilenet_v2_tiny')
  },
  **{f'resnet{d}': dict(multi_grid=PAPER_MULTI_GRID) for d in (50, 101, 152)},
}


def deeplabv3(backbone: str = 'resnet50', **kwargs: Any) -> DeepLab:
  """DeepLab v3 at torchvision's settings (OS 8, aux head) with the paper's multi-grid on
  ResNet-50/101/152 (`multi_grid=()`: torchvision's net); kwargs override fields."""
  defaults = TORCHVISION_V3 | BACKBONE_DEFAULTS.get(backbone, {})
  return DeepLab(backbone=backbone, **(defaults | kwargs))


def deeplabv3plus(backbone: str = 'resnet50', **kwargs: Any) -> DeepLab:
  """DeepLab v3+ at the paper's training settings (OS 16, no aux head, multi-grid on
  ResNet-50/101/152); kwargs override fields."""
  defaults = PAPER_V3PLUS | BACKBONE_DEFAULTS.get(backbone, {})
  return DeepLab(backbone=backbone, **(defaults | kwargs))


def deeplab_tiny(**kwargs: Any) -> DeepLab:
  """DeepLab v3 on a 4-stage resnet_tiny (widths 4..32), 16-channel ASPP, OS 16, aux head."""
  defaults = dict(
    backbone='resnet_tiny',
    backbone_kwargs=TINY_BACKBONE,
    output_stride=16,
    aux_loss=True,
    num_classes=10,
    **TINY_HEAD,
  )
  return DeepLab(**(defaults | kwargs))


def deeplabv3plus_tiny(**kwargs: Any) -> DeepLab:
  """`deeplab_tiny` with v3+'s decoder (8-channel low-level feature), no aux head."""
  return deeplab_tiny(**(PAPER_V3PLUS | kwargs))
