"""LeNet-5 as in the course notes' table (LeCun et al. 1998, with ReLU and max pooling)."""

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax.nn.layers import Conv, Flatten, MaxPool


class LeNet5(nn.Module):
  """conv5x5(6) - pool - conv5x5(16) - pool - fc120 - fc84 - fc(num_classes).

  For a (32, 32, 3) input: 456 / 2,416 / 48,120 / 10,164 / 850 parameters in
  conv1 / conv2 / fc3 / fc4 / logits. Has no BatchNorm; `norm_axis_name` and `train`
  exist only to keep the model contract.
  """

  num_classes: int = 10
  dtype: Any = jnp.float32
  norm_axis_name: str | None = None

  @nn.compact
  def __call__(
    self, x: jax.Array, *, train: bool = False, features: bool = False
  ) -> jax.Array | dict[str, jax.Array]:
    del train  # no BatchNorm or dropout
    feats = {}
    conv = partial(Conv, kernel_size=(5, 5), padding='VALID', dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(conv(6, name='conv1')(x))  # (B, 28, 28, 6)
    x = MaxPool((2, 2), name='pool1')(x)  # (B, 14, 14, 6)
    feats['stage1'] = x
    x = nn.relu(conv(16, name='conv2')(x))  # (B, 10, 10, 16)
    x = MaxPool((2, 2), name='pool2')(x)  # (B, 5, 5, 16)
    feats['stage2'] = x
    x = Flatten(name='flatten')(x)  # (B, 400)
    x = nn.relu(nn.Dense(120, dtype=self.dtype, name='fc3')(x))
    x = nn.relu(nn.Dense(84, dtype=self.dtype, name='fc4')(x))
    feats['pre_logits'] = x
    # Logits in float32 so that softmax / cross-entropy stay accurate under bf16 compute.
    x = jnp.asarray(nn.Dense(self.num_classes, dtype=self.dtype, name='logits')(x), jnp.float32)
    feats['logits'] = x
    return feats if features else x
