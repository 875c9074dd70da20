"""summary: per-layer shapes, parameters and multiply-adds against published numbers."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import models
from cnn_jax.models.summary import format_table, summarize


def test_lenet5_rows_equal_course_table():
  summary = summarize(models.create('lenet5'), (32, 32, 3))
  rows = [(r.path, r.type, r.output_shape, r.params) for r in summary.rows]
  assert rows == [
    ('conv1', 'Conv', (28, 28, 6), 456),
    ('pool1', 'MaxPool', (14, 14, 6), 0),
    ('conv2', 'Conv', (10, 10, 16), 2_416),
    ('pool2', 'MaxPool', (5, 5, 16), 0),
    ('flatten', 'Flatten', (400,), 0),
    ('fc3', 'Dense', (120,), 48_120),
    ('fc4', 'Dense', (84,), 10_164),
    ('logits', 'Dense', (10,), 850),
  ]
  assert summary.rows[0].activations == 28 * 28 * 6
  assert summary.rows[0].macs == 28 * 28 * 6 * 5 * 5 * 3
  assert summary.total_params == 62_006


def test_format_table_uses_thousands_separators():
  table = format_table(summarize(models.create('lenet5'), (32, 32, 3)))
  lines = table.splitlines()
  assert lines[0] == 'input (32, 32, 3) (batch 1)'
  assert lines[1].split() == ['layer', 'type', 'output', 'shape', 'activations', 'params', 'MACs']
  fc3 = next(line for line in lines if line.startswith('fc3'))
  assert fc3.split() == ['fc3', 'Dense', '(120,)', '120', '48,120', '48,000']
  assert lines[-1].split() == ['total', '8,494', '62,006', '651,720']


def test_resnet18_macs_equal_torchvision_convention():
  summary = summarize(models.create('resnet18'), (224, 224, 3))
  assert summary.total_macs == 1_814_073_344
  assert summary.total_params == 11_689_512
  assert sum(r.params for r in summary.rows) == summary.total_params
  assert summary.rows[0].path == 'stem_conv' and summary.rows[0].output_shape == (112, 112, 64)
  assert summary.rows[2].type == 'MaxPool' and summary.rows[2].output_shape == (56, 56, 64)
  # BatchNorm statistics are not parameters: the stem BN has 64 scales + 64 biases.
  assert summary.rows[1].type == 'BatchNorm' and summary.rows[1].params == 128


def test_resnet50_macs():
  assert round(summarize(models.create('resnet50'), (224, 224, 3)).total_macs / 1e9, 2) == 4.09


class _Bottleneck(nn.Module):
  """The course notes' 1x1 bottleneck example: 28x28x192 -> 5x5 conv with 32 filters."""

  bottleneck: int | None

  @nn.compact
  def __call__(self, x):
    if self.bottleneck:
      x = nn.Conv(self.bottleneck, (1, 1), use_bias=False)(x)
    return nn.Conv(32, (5, 5), padding='SAME', use_bias=False)(x)


def test_bottleneck_example_macs():
  direct = summarize(_Bottleneck(None), (28, 28, 192)).total_macs
  reduced = summarize(_Bottleneck(16), (28, 28, 192)).total_macs
  assert direct == 28 * 28 * 32 * 5 * 5 * 192 and round(direct / 1e6) == 120
  assert reduced == 28 * 28 * 16 * 192 + 28 * 28 * 32 * 5 * 5 * 16
  assert round(reduced / 1e6, 1) == 12.4


class _Mixed(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.Conv(8, (3, 3), feature_group_count=8, name='depthwise')(x)  # (8, 8, 8)
    x = nn.ConvTranspose(4, (2, 2), strides=(2, 2), name='up')(x)  # (16, 16, 4)
    x = nn.Dense(6, name='per_pixel')(x)  # (16, 16, 6)
    shared = nn.Dense(6, name='shared')
    return shared(shared(x))


def test_macs_of_grouped_transposed_and_shared_layers():
  summary = summarize(_Mixed(), (8, 8, 8))
  rows = {(r.path, r.macs, r.params) for r in summary.rows}
  assert ('depthwise', 8 * 8 * 8 * 3 * 3 * 1, 8 * 9 + 8) in rows
  assert ('up', 8 * 8 * 2 * 2 * 8 * 4, 2 * 2 * 8 * 4 + 4) in rows  # per input position
  assert ('per_pixel', 16 * 16 * 4 * 6, 4 * 6 + 6) in rows
  # A module called twice gives two rows, its parameters counted once.
  assert [(r.path, r.params) for r in summary.rows[-2:]] == [('shared', 42), ('shared', 0)]
  variables = jax.eval_shape(_Mixed().init, jax.random.key(0), jnp.ones((1, 8, 8, 8)))
  assert summary.total_params == sum(p.size for p in jax.tree.leaves(variables['params']))


def test_layer_with_own_kernel_and_children_is_counted():
  # DeformableConv owns its kernel and an offset conv: both appear, and rows add up to the total.
  s = summarize(models.create('resnet50', deformable_stages=(2, 3, 4)), (224, 224, 3))
  assert sum(r.params for r in s.rows) == s.total_params == 26_428_295
  assert s.total_macs == 4_278_172_160  # counted by hand: 4,089,184,256 + DCN and offset convs
