"""YOLO-style detectors: a `DetectionHead` on any registered backbone (cnn_jax/ops/detection.py
has the targets, the activation and the loss; cnn_jax/ops/detection_metrics.py NMS and mAP)."""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from cnn_jax.core.errors import UserError
from cnn_jax.nn.layers import PointwiseConv
from cnn_jax.ops.detection import check_anchors


class DetectionHead(nn.Module):
  """A conv on a feature map (B, S_h, S_w, F) -> raw outputs (B, S_h, S_w, A, 5 + C), float32.

  The notes' convolutional implementation (004, "[Convolutional Implementation of Sliding
  Windows]"): one k x k conv of A (5 + C) filters yields every cell's y in one pass. Raw outputs:
  `activate` (used by `cnn_jax.ops.detection_loss.yolo_loss` and `decode_outputs`) applies the
  sigmoid / exp / softmax.
  Kernel N(0, 0.01^2), bias 0: at initialisation every anchor predicts about p_c = 0.5 and its
  own shape at the cell's centre, with uniform class probabilities.
  """

  num_anchors: int
  num_classes: int
  kernel_size: int = 1  # 1 or 3 ('SAME' padding)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise UserError(f'DetectionHead takes a (B, S_h, S_w, F) feature map; got shape {x.shape}')
    if self.num_anchors < 1 or self.num_classes < 1 or self.kernel_size < 1:
      raise UserError(
        f'DetectionHead(num_anchors={self.num_anchors}, num_classes={self.num_classes}, '
        f'kernel_size={self.kernel_size}); expected values >= 1'
      )
    depth = 5 + self.num_classes
    k = self.kernel_size
    y = PointwiseConv(
      self.num_anchors * depth,
      (k, k),
      padding='SAME',
      dtype=self.dtype,
      kernel_init=nn.initializers.normal(0.01),
      name='conv',
    )(x)  # (B, S_h, S_w, A * (5 + C))
    b, gh, gw, _ = y.shape
    return jnp.asarray(y, jnp.float32).reshape(b, gh, gw, self.num_anchors, depth)


class YOLO(nn.Module):
  """`DetectionHead` on a registered backbone: (B, H, W, C_in) -> (B, S_h, S_w, A, 5 + C) raw.

  The backbone is the registry model `backbone`, built head-less (num_classes=0) as the submodule
  'backbone', as FCN and DeepLab build theirs, so its parameter names under 'backbone' are the
  classifier's. `feature=None` takes its last feature map (what the head-less ResNets, VGGs and
  MobileNets return); a name ('stage3', 'pool4', ...) takes that entry of its `features=True`
  dict instead. The grid is that map's size: `grid_shape` computes it without
  running anything. The head is the submodule 'head'.
  """

  num_classes: int = 20  # PASCAL VOC's 20 object classes (no background class in detection)
  backbone: str = 'resnet18'
  # Further backbone fields (tiny variants); stored as a FrozenDict to keep the module hashable.
  backbone_kwargs: Mapping[str, Any] = FrozenDict()
  feature: str | None = None
  anchors: tuple[tuple[float, float], ...] = ((1.0, 1.0),)  # (h, w) in cell units
  head_kernel_size: int = 1
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  def __post_init__(self) -> None:
    if not isinstance(self.backbone_kwargs, FrozenDict):  # a dict from a config: freeze it
      object.__setattr__(self, 'backbone_kwargs', FrozenDict(self.backbone_kwargs))
    object.__setattr__(self, 'anchors', tuple(tuple(float(v) for v in a) for a in self.anchors))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    anchors = check_anchors(self.anchors)
    from cnn_jax.models import create  # the registry may import this module

    kwargs = dict(self.backbone_kwargs)
    kwargs.update(num_classes=0, dtype=self.dtype, norm_axis_name=self.norm_axis_name)
    backbone = create(self.backbone, parent=None, **kwargs).clone(parent=self, name='backbone')
    if self.feature is None:
      feats = backbone(x, train=train)
      if not isinstance(feats, jax.Array) or feats.ndim != 4:
        raise UserError(
          f'YOLO: backbone {self.backbone!r} built with num_classes=0 does not return a feature '
          'map; name one of its features with feature=... (e.g. a ResNet, VGG or MobileNet)'
        )
    else:
      all_feats = backbone(x, train=train, features=True)
      feats = all_feats.get(self.feature)
      if feats is None or feats.ndim != 4:
        names = sorted(k for k, v in all_feats.items() if v.ndim == 4)
        raise UserError(
          f'YOLO: backbone {self.backbone!r} has no feature map {self.feature!r}; it has {names}'
        )
    head = DetectionHead(
      anchors.shape[0],
      self.num_classes,
      kernel_size=self.head_kernel_size,
      dtype=self.dtype,
      name='head',
    )
    return head(feats)

  def grid_shape(self, input_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(S_h, S_w) for one (H, W, C_in) input, by shape inference only (no compute)."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

    def trace(x):
      return self.apply(self.init(jax.random.key(0), x), x)

    out = jax.eval_shape(trace, x)
    return int(out.shape[1]), int(out.shape[2])


def yolo(**kwargs: Any) -> nn.Module:
  """`YOLO`: a conv detection head on a registered backbone (module fields)."""
  return YOLO(**kwargs)


def yolo_tiny(**kwargs: Any) -> nn.Module:
  """YOLO on a small ResNet with the ImageNet stem (stride 8 at 'stage2': an 8x8 grid at 64 px,
  the digit_boxes scenes), one 2.5-cell anchor (the scenes' digits are 16-24 px), 3x3 head."""
  defaults = dict(
    num_classes=10,
    backbone='resnet_tiny',
    backbone_kwargs={'stem': 'imagenet', 'widths': (16, 32, 64)},
    feature='stage2',
    anchors=((2.5, 2.5),),
    head_kernel_size=3,
  )
  return yolo(**(defaults | kwargs))


__all__ = ['DetectionHead', 'YOLO', 'yolo', 'yolo_tiny']
