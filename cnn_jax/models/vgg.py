"""VGG-11/13/16/19 (Simonyan & Zisserman 2015, configurations A/B/D/E), with or without BatchNorm.

torchvision's layout: 3x3 / pad 1 convs with bias (kept even before BatchNorm, so vgg16_bn has
138,357,544 + 2 * 4,224 BN parameters = 138,365,992), a 2x2 max pool after each of the 5 stages,
an adaptive average pool to 7x7, and a 4096 - 4096 - classes classifier with dropout 0.5.
Two stacked 3x3 convs see 5x5 with 18C^2 weights instead of 25C^2; three see 7x7 with 27C^2
instead of 49C^2 (paper Section 2.3).
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.models.alexnet import AdaptiveAvgPool
from cnn_jax.nn.layers import BatchNorm, Conv, Flatten, MaxPool, conv_kernel_init

# Conv widths per stage (the paper's Table 1; torchvision's cfgs 'A', 'B', 'D', 'E').
STAGES: dict[int, tuple[tuple[int, ...], ...]] = {
  11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
  19: ((64, 64), (128, 128), (256, 256, 256, 256), (512,) * 4, (512,) * 4),
}

# torchvision's Linear init for VGG: N(0, 0.01), zero bias.
fc_kernel_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
  """Stages of 3x3 convs (+ BN) + ReLU, each closed by a 2x2 / 2 max pool; then the classifier.

  Submodule names are the Caffe / FCN ones: 'conv{stage}_{i}' (and 'bn{stage}_{i}'), 'pool{stage}',
  'fc6', 'fc7', 'fc8' (torchvision's features.N and classifier.0/3/6, in order). torch flattens the
  7x7 map in (C, H, W) order and this model in (H, W, C) order, so importing fc6's weight (or
  reshaping it to FCN's 7x7 conv) needs a permutation of its rows. Init as torchvision: convs
  kaiming normal (fan_out), linears N(0, 0.01), zero biases.

  `features=True` returns a dict: 'stage{s}' for s = 1..5 (the last ReLU of stage s, before its
  pool: strides 1, 2, 4, 8, 16), 'pool{s}' (after the pool: strides 2, 4, 8, 16, 32; FCN-32s/16s/8s
  read pool5/pool4/pool3), 'pre_logits' (relu(fc7), (B, 4096)) and 'logits'. Inputs must be at least
  32x32 (five halvings).

  `num_classes=0` drops the classifier (no 'avgpool', 'fc6', 'fc7', 'fc8'): the call then returns
  'pool5' in the compute dtype, and `features=True` the dict without 'pre_logits' and 'logits'
  (FCN's backbone, which convolutionalizes fc6 / fc7 itself).
  """

  stages: Sequence[Sequence[int]] = STAGES[16]
  batch_norm: bool = False
  hidden: int = 4096  # width of fc6 and fc7
  pool_size: int = 7  # the adaptive average pool's output grid
  dropout_rate: float = 0.5
  num_classes: int = 1000  # 0: head-less (returns the last feature map, pool5)
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None  # BatchNorm statistics averaged over this axis

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    self._check(x)
    conv = partial(Conv, kernel_size=(3, 3), padding=1, dtype=self.dtype)
    norm = partial(
      BatchNorm,
      use_running_average=not train,
      momentum=0.9,  # torch's momentum=0.1 counts the other way round
      epsilon=1e-5,
      dtype=self.dtype,
      axis_name=self.norm_axis_name,
    )
    dense = partial(nn.Dense, dtype=self.dtype, kernel_init=fc_kernel_init)
    feats = {}

    x = jnp.asarray(x, self.dtype)
    for s, widths in enumerate(self.stages, start=1):
      for i, width in enumerate(widths, start=1):
        x = conv(width, kernel_init=conv_kernel_init, name=f'conv{s}_{i}')(x)
        if self.batch_norm:
          x = norm(name=f'bn{s}_{i}')(x)
        x = nn.relu(x)
      feats[f'stage{s}'] = x  # (B, H / 2^(s-1), W / 2^(s-1), C)
      x = feats[f'pool{s}'] = MaxPool((2, 2), name=f'pool{s}')(x)  # (B, H / 2^s, W / 2^s, C)

    if not self.num_classes:  # head-less: a backbone for dense prediction
      return feats if features else x  # (B, H/32, W/32, 512)
    x = AdaptiveAvgPool((self.pool_size, self.pool_size), name='avgpool')(x)  # (B, 7, 7, 512)
    x = Flatten(name='flatten')(x)  # (B, 25088)
    x = nn.relu(dense(self.hidden, name='fc6')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout6')(x)
    x = nn.relu(dense(self.hidden, name='fc7')(x))
    feats['pre_logits'] = x
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='dropout7')(x)
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = feats['logits'] = jnp.asarray(dense(self.num_classes, name='fc8')(x), jnp.float32)
    return feats if features else x

  def _check(self, x: jax.Array) -> None:
    if len(self.stages) != 5 or not all(len(s) for s in self.stages):
      raise UserError(f'VGG.stages needs 5 non-empty stages of conv widths, got {self.stages}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise UserError(f'VGG.dropout_rate={self.dropout_rate}; expected a value in [0, 1)')
    if self.num_classes < 0:
      raise UserError(f'VGG.num_classes={self.num_classes}; expected 0 (head-less) or more')
    if x.ndim != 4 or min(x.shape[1:3]) < 32:
      raise UserError(f'VGG needs NHWC inputs of at least 32x32, got shape {x.shape}')


def vgg(depth: int, batch_norm: bool = False, **kwargs: Any) -> VGG:
  """VGG-`depth` (11, 13, 16 or 19), torchvision's layout; kwargs override fields."""
  if depth not in STAGES:
    raise UserError(f'no VGG of depth {depth}; known depths: {sorted(STAGES)}')
  return VGG(stages=STAGES[depth], batch_norm=batch_norm, **kwargs)


def vgg_tiny(**kwargs: Any) -> VGG:
  """One conv per stage with widths 4/8/8/16/16, 32-wide fcs and a 2x2 pool grid, for tests."""
  defaults = dict(stages=((4,), (8,), (8,), (16,), (16,)), hidden=32, pool_size=2, num_classes=10)
  return VGG(**(defaults | kwargs))
