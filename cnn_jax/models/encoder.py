"""The Siamese encoder of one-shot learning (seed 004, "[Siamese Network]"): f(x) from any
registered
classifier's features, a linear embedding, optionally L2-normalised. Its losses and evaluation are
in
cnn_jax/ops/metric_learning.py."""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.core.errors import UserError
from cnn_jax.ops.metric_learning import l2_normalize, safe_sqrt


class Encoder(nn.Module):
  """f(x): a backbone's pooled features, a linear embedding to `embedding_dim`, optional L2 norm.

  The Siamese network of the notes is this one module applied to both images (shared
  parameters); `distance` does that in one call on the concatenated pair, so that BatchNorm sees
  one batch. `backbone` is any model with the project's feature contract,
  `backbone(x, train=..., features=True)` -> {..., 'pre_logits': (B, C), 'logits': ...} (every
  registered classifier); `feature` picks another entry of that dict, and a (B, H, W, C) map is
  global-average-pooled. The backbone's own classifier head is left unused (XLA drops its
  compute; `encoder` makes it one output wide). `normalize` puts the embedding on the unit sphere
  (FaceNet's ||f(x)|| = 1), so squared distances lie in [0, 4] and a margin has a fixed scale.

  Parameters: 'backbone/...' (the backbone's own names under that prefix) and 'embedding/'.
  """

  backbone: nn.Module
  embedding_dim: int = 128
  normalize: bool = True
  feature: str = 'pre_logits'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    feats = self.backbone(x, train=train, features=True)
    if not isinstance(feats, dict) or self.feature not in feats:
      names = ', '.join(feats) if isinstance(feats, dict) else 'none'
      raise UserError(
        f"the backbone has no feature '{self.feature}' (it has: {names}); set the encoder's "
        'feature to one of them'
      )
    f = feats[self.feature]
    if f.ndim == 4:
      f = jnp.mean(f, axis=(1, 2))  # (B, C)
    x = nn.Dense(self.embedding_dim, dtype=self.dtype, name='embedding')(f)  # (B, D)
    x = jnp.asarray(x, jnp.float32)  # distances in float32 under bf16 compute
    return l2_normalize(x) if self.normalize else x

  def distance(
    self, x1: jax.Array, x2: jax.Array, *, train: bool = False, squared: bool = True
  ) -> jax.Array:
    """(B,) d(x1_i, x2_i) = ||f(x1_i) - f(x2_i)||^2 (or its root) of two image batches."""
    e = self(jnp.concatenate([x1, x2], axis=0), train=train)
    d = jnp.sum(jnp.square(e[: x1.shape[0]] - e[x1.shape[0] :]), axis=-1)
    return d if squared else safe_sqrt(d)


def encoder(
  backbone: str = 'resnet20',
  *,
  num_classes: int = 0,
  embedding_dim: int = 128,
  normalize: bool = True,
  feature: str = 'pre_logits',
  dtype: Any = jnp.float32,
  **backbone_kwargs: Any,
) -> Encoder:
  """An `Encoder` on the registered model `backbone` (models.create's name and keyword fields).

  num_classes is not the encoder's: it is accepted, as every registered model takes it, and left
  unused (the embedding has no classes). The backbone gets num_classes=1 (its head is unused),
  and a backbone with auxiliary classifiers (GoogLeNet) gets aux_logits=False unless given: the
  trainer would otherwise add a loss of their logits, weighted by a model field the encoder does
  not have.
  """
  del num_classes
  from cnn_jax import models  # the registry imports this module

  if models.is_segmentation(backbone):
    raise UserError(
      f"'{backbone}' is a segmentation model (per-pixel logits); the encoder needs a "
      f'classifier backbone: {", ".join(models.list_models("resnet*")[:3])}, ...'
    )
  if embedding_dim < 1:
    raise UserError(f'embedding_dim must be >= 1; got {embedding_dim}')
  kwargs = {'num_classes': 1, 'dtype': dtype, **backbone_kwargs}
  net = models.create(backbone, **kwargs)
  fields = {f.name for f in dataclasses.fields(net)}
  if 'aux_logits' in fields and 'aux_logits' not in backbone_kwargs:
    net = net.clone(aux_logits=False)
  return Encoder(
    backbone=net, embedding_dim=embedding_dim, normalize=normalize, feature=feature, dtype=dtype
  )


def encoder_tiny(**kwargs: Any) -> Encoder:
  """An encoder on resnet_tiny with a 16-dimensional embedding, for tests."""
  return encoder(**({'backbone': 'resnet_tiny', 'embedding_dim': 16} | kwargs))


__all__ = ['Encoder', 'encoder', 'encoder_tiny']
