"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions").

torchvision's layout, so that its weights line up and the parameter counts agree (6,624,904
without, 13,004,888 with the auxiliary classifiers, 1000 classes). Where it departs from the paper:

- every conv is BasicConv2d: conv without bias + BatchNorm (epsilon 1e-3) + ReLU; the paper
  predates BatchNorm and uses local response normalisation in the stem instead;
- the "5x5" branch of each Inception module uses a 3x3 conv (torchvision's known deviation, kept
  for its weights): 9/25 of the paper's weights in that branch;
- the auxiliary heads pool adaptively to 4x4; the paper's 5x5/3 average pool gives 4x4 only on
  the 14x14 maps of a 224px input, the adaptive pool gives 4x4 at any input size (the FC after it
  needs 4 * 4 * 128 = 2048 inputs either way);
- max pools use torch's ceil_mode=True, done here with explicit right/bottom padding (-inf).

`naive=True` builds every Inception module as the "naive version" of the paper's figure 2a: the
3x3 and "5x5" convs read the module's input directly (no 1x1 reductions) and the pool branch
passes its input through (no 1x1 projection). The output then carries all the input channels
plus c1 + c2 + c3, so the width grows from module to module and with it the cost: the 1x1
bottleneck is what keeps GoogLeNet affordable (experiments/claims_training.py measures it).

The auxiliary classifiers (after inception4a and inception4d) run only in training: there they
`sow` their float32 logits into the 'aux_logits' collection, as {'aux1': {'logits': (l1,)},
'aux2': {'logits': (l2,)}}; the trainer adds `aux_weight` times the cross-entropy of each leaf
(0.3 in the paper) to the loss. Eval never produces them.
Their parameters are created by `init` in either mode, so a model initialised with train=False
trains with its aux heads.
"""

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.models.alexnet import AdaptiveAvgPool  # torch bins; one copy, shared
from cnn_jax.nn.layers import BatchNorm, Conv, GlobalAvgPool, MaxPool

ModuleDef = Any

# Inception modules in order: name -> (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj);
# the paper's Table 1 (torchvision's Inception(...) arguments, input channels left out).
INCEPTION_CONFIGS: dict[str, tuple[int, int, int, int, int, int]] = {
  'inception3a': (64, 96, 128, 16, 32, 32),  # -> 256 channels
  'inception3b': (128, 128, 192, 32, 96, 64),  # -> 480
  'inception4a': (192, 96, 208, 16, 48, 64),  # -> 512
  'inception4b': (160, 112, 224, 24, 64, 64),  # -> 512
  'inception4c': (128, 128, 256, 24, 64, 64),  # -> 512
  'inception4d': (112, 144, 288, 32, 64, 64),  # -> 528
  'inception4e': (256, 160, 320, 32, 128, 128),  # -> 832
  'inception5a': (256, 160, 320, 32, 128, 128),  # -> 832
  'inception5b': (384, 192, 384, 48, 128, 128),  # -> 1024
}
# Stem widths (conv1, conv2, conv3) and the aux heads' widths (1x1 conv, hidden FC).
STEM_WIDTHS = (64, 64, 192)
AUX_WIDTHS = (128, 1024)
# The ceil-mode max pool (name, window; stride 2) that closes stages 3 and 4.
_STAGE_POOLS = {3: ('maxpool3', 3), 4: ('maxpool4', 2)}
_AUX_AFTER = {'inception4a': 'aux1', 'inception4d': 'aux2'}


def _stage(module_name: str) -> int:
  return int(module_name[len('inception')])  # 'inception4d' -> 4


# torchvision's GoogLeNet init: trunc_normal_(std=0.01, a=-2, b=2) for conv and linear weights;
# the bounds are absolute, 200 standard deviations out, so this is a plain N(0, 0.01^2).
kernel_init = nn.initializers.normal(stddev=0.01)


def ceil_mode_padding(
  shape: Sequence[int], window: int, stride: int, pad: int = 0
) -> tuple[tuple[int, int], tuple[int, int]]:
  """(H, W) padding that makes a VALID pool of an NHWC `shape` match torch's ceil_mode=True.

  torch: out = ceil((size + 2 pad - window) / stride) + 1, less one if the last window would
  start in the right padding; the extra right/bottom padding supplies the partial last window.
  """
  pads = []
  for size in shape[1:3]:
    out = -(-(size + 2 * pad - window) // stride) + 1
    if (out - 1) * stride >= size + pad:
      out -= 1
    pads.append((pad, (out - 1) * stride + window - size - pad))
  return tuple(pads)


class BasicConv2d(nn.Module):
  """conv (no bias) + BatchNorm + ReLU; torchvision's `BasicConv2d` ('conv', 'bn')."""

  features: int
  kernel_size: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  padding: int = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel_size, self.kernel_size)
    x = self.conv(self.features, k, self.strides, padding=self.padding, name='conv')(x)
    return nn.relu(self.norm(name='bn')(x))


class Inception(nn.Module):
  """Four parallel branches concatenated on channels: 1x1 | 1x1-3x3 | 1x1-3x3 | pool-1x1.

  Names follow torchvision: 'branch1', 'branch2_0', 'branch2_1', 'branch3_0', 'branch3_1',
  'branch4_1' (its index 0 is the parameter-free 3x3/1 max pool).

  `naive`: Szegedy et al.'s figure 2a, 1x1 | 3x3 | 3x3 | pool: the reductions (branch2_0,
  branch3_0) and the pool projection (branch4_1) are left out, the other names kept; c2_red,
  c3_red and c4 are then unused and the output has C_in + c1 + c2 + c3 channels.
  """

  widths: tuple[int, int, int, int, int, int]
  conv: ModuleDef
  norm: ModuleDef
  naive: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c1, c2_red, c2, c3_red, c3, c4 = self.widths
    block = partial(BasicConv2d, conv=self.conv, norm=self.norm)
    b1 = block(c1, 1, name='branch1')(x)
    b2 = x if self.naive else block(c2_red, 1, name='branch2_0')(x)
    b2 = block(c2, 3, padding=1, name='branch2_1')(b2)
    b3 = x if self.naive else block(c3_red, 1, name='branch3_0')(x)
    # torchvision: 3x3 here, where the paper has 5x5 (padding 1 instead of 2).
    b3 = block(c3, 3, padding=1, name='branch3_1')(b3)
    b4 = MaxPool((3, 3), (1, 1), padding=ceil_mode_padding(x.shape, 3, 1, 1), name='branch4_0')(x)
    if not self.naive:
      b4 = block(c4, 1, name='branch4_1')(b4)  # naive: (B, H, W, C_in), passed through
    return jnp.concatenate([b1, b2, b3, b4], axis=-1)  # (B, H, W, c1 + c2 + c3 + c4)


class InceptionAux(nn.Module):
  """Auxiliary classifier: 4x4 adaptive avg pool - 1x1 conv (128) - FC (1024) - dropout - FC."""

  num_classes: int
  conv: ModuleDef
  norm: ModuleDef
  dense: ModuleDef
  widths: tuple[int, int] = AUX_WIDTHS
  dropout_rate: float = 0.7

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = AdaptiveAvgPool((4, 4), name='pool')(x)  # (B, 4, 4, C)
    x = BasicConv2d(self.widths[0], 1, conv=self.conv, norm=self.norm, name='conv')(x)
    # Flatten in torch's (C, H, W) order so fc1's weight imports from torchvision unpermuted.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # (B, 128 * 16)
    x = nn.relu(self.dense(self.widths[1], name='fc1')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    x = jnp.asarray(self.dense(self.num_classes, name='fc2')(x), jnp.float32)
    if train:  # an eval-mode init only creates the parameters
      # Sown here, not by the parent, whose scope already holds this module's name ('aux1').
      self.sow('aux_logits', 'logits', x)
    return x


class GoogLeNet(nn.Module):
  """GoogLeNet (Inception v1), torchvision's layout; `googlenet()` builds the published net.

  `__call__` returns float32 logits, or with `features=True` a dict with 'stem' (conv3 output,
  stride 4), 'inception3' (stride 8), 'inception4' (stride 16), 'inception5' (stride 32),
  'pre_logits' and 'logits'. In training the aux logits go to the 'aux_logits' collection
  (pass mutable=['batch_stats', 'aux_logits'] and rngs={'dropout': key}).
  """

  aux_logits: bool = True
  aux_weight: float = 0.3  # read by the trainer: loss += aux_weight * CE(aux) per aux head
  width: float = 1.0  # multiplies every channel count (stem, Inception branches, aux heads)
  dropout_rate: float = 0.2  # before the final FC
  aux_dropout_rate: float = 0.7
  # Which Inception modules of INCEPTION_CONFIGS to build, in order: all 9 for the published net,
  # a subset (4a and 4d among them, with aux heads) for a net that compiles faster in tests.
  # The pools between stages run whenever a later stage follows: stages 3 / 4 / 5 keep strides
  # 8 / 16 / 32 whichever of their modules are built.
  modules: Sequence[str] = tuple(INCEPTION_CONFIGS)
  # Every Inception module in its naive form (no 1x1 reductions or pool projection, fig. 2a).
  naive: bool = False
  num_classes: int = 1000
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check_fields()
    conv = partial(Conv, use_bias=False, dtype=self.dtype, kernel_init=kernel_init)
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-3,  # torchvision's BasicConv2d (ported from TensorFlow)
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    dense = partial(nn.Dense, dtype=self.dtype, kernel_init=kernel_init)
    block = partial(BasicConv2d, conv=conv, norm=norm)
    ch = self._channels
    feats = {}

    x = jnp.asarray(x, self.dtype)
    x = block(ch(STEM_WIDTHS[0]), 7, strides=2, padding=3, name='conv1')(x)  # (B, H/2, W/2, 64)
    x = MaxPool((3, 3), (2, 2), ceil_mode_padding(x.shape, 3, 2), name='maxpool1')(x)  # H/4
    x = block(ch(STEM_WIDTHS[1]), 1, name='conv2')(x)
    x = block(ch(STEM_WIDTHS[2]), 3, padding=1, name='conv3')(x)  # (B, H/4, W/4, 192)
    feats['stem'] = x
    x = MaxPool((3, 3), (2, 2), ceil_mode_padding(x.shape, 3, 2), name='maxpool2')(x)  # H/8

    run_aux = self.aux_logits and (train or self.is_initializing())
    stage = 3  # maxpool2's stride-8 output feeds stage 3
    for name in self.modules:
      while stage < _stage(name):  # ceil-mode max pool between stages (3x3/2, then 2x2/2)
        pool_name, window = _STAGE_POOLS[stage]
        pads = ceil_mode_padding(x.shape, window, 2)
        x = MaxPool((window, window), (2, 2), pads, name=pool_name)(x)
        stage += 1
      widths = tuple(ch(c) for c in INCEPTION_CONFIGS[name])
      x = Inception(widths, conv=conv, norm=norm, naive=self.naive, name=name)(x)
      feats[f'inception{stage}'] = x  # ends as the stage's last output (stride 8, 16 or 32)
      if name in _AUX_AFTER and run_aux:
        InceptionAux(
          self.num_classes,
          conv=conv,
          norm=norm,
          dense=dense,
          widths=(ch(AUX_WIDTHS[0]), ch(AUX_WIDTHS[1])),
          dropout_rate=self.aux_dropout_rate,
          name=_AUX_AFTER[name],
        )(x, train=train)

    x = GlobalAvgPool(name='avgpool')(x)  # (B, 1024)
    feats['pre_logits'] = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout')(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=kernel_init, name='fc')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(x, jnp.float32)
    feats['logits'] = x
    return feats if features else x

  def _channels(self, c: int) -> int:
    return max(1, round(c * self.width))

  def _check_fields(self) -> None:
    if not isinstance(self.naive, bool):
      raise UserError(f'GoogLeNet.naive={self.naive!r}; expected True or False')
    if not self.width > 0:
      raise UserError(f'GoogLeNet.width={self.width!r}; expected a positive multiplier')
    for field in ('dropout_rate', 'aux_dropout_rate'):
      value = getattr(self, field)
      if not 0 <= value < 1:
        raise UserError(f'GoogLeNet.{field}={value!r}; expected a rate in [0, 1)')
    if not (self.aux_weight >= 0 and math.isfinite(self.aux_weight)):
      raise UserError(f'GoogLeNet.aux_weight={self.aux_weight!r}; expected a finite weight >= 0')
    modules = tuple(self.modules)
    order = list(INCEPTION_CONFIGS)
    in_order = all(m in INCEPTION_CONFIGS for m in modules) and (
      sorted(set(modules), key=order.index) == list(modules)
    )
    if not modules or not in_order:
      raise UserError(
        f'GoogLeNet.modules={modules!r}; expected Inception module names in the order of {order}'
      )
    if self.aux_logits and not set(_AUX_AFTER) <= set(modules):
      raise UserError(
        f'GoogLeNet.modules={modules!r} lacks {sorted(_AUX_AFTER)}, where the aux heads attach;'
        ' add them or set aux_logits=False'
      )


def googlenet(**kwargs: Any) -> GoogLeNet:
  """The published GoogLeNet (224x224 inputs, 1000 classes); kwargs override fields."""
  return GoogLeNet(**kwargs)


def googlenet_tiny(**kwargs: Any) -> GoogLeNet:
  """GoogLeNet for tests: 1/8 width, 4 of the 9 Inception modules (both aux heads), 10 classes.

  XLA:CPU compile time grows with the number of conv + BatchNorm layers (57 + 5 in the full
  net), not with their width: 4 modules roughly halve the compile time of a train step.
  """
  defaults = dict(
    width=1 / 8,
    modules=('inception3a', 'inception4a', 'inception4d', 'inception5a'),
    num_classes=10,
  )
  return GoogLeNet(**(defaults | kwargs))
