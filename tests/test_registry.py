"""The contract every registered model keeps (checked on all of them, traced without compute)."""

import fnmatch

import pytest

from cnn_jax import models

# The smallest square input each family is traced at: nets with valid convs and fixed-size
# classifiers need their native size; everything else is traced at 64x64 to keep it fast.
NATIVE = {'lenet5': 32}
# Unpadded convs or ceil-mode pools: sizes like 32 -> 28 -> 14 -> 10 -> 5 (LeNet) or
# 224 -> 55 -> 27 -> 13 (AlexNet, SqueezeNet) give no exact power-of-2 strides.
VALID_CONVS = ('lenet5', 'alexnet*', 'squeezenet*')


# Variants built by the same code as a traced sibling (only depth/width tables differ) are
# skipped to keep the suite fast; their parameter counts are tested in the family's own file.
SIBLINGS = (
  'efficientnet_b[1-7]',
  'plain*',
  'resnet34',
  'resnet101',
  'resnet152',
  'resnet32',
  'resnet44',
  'resnet56',
  'resnet110',
  'vgg1[139]*',
  'vgg16',
)
TRACED = [
  n
  for n in models.list_models()
  if not any(fnmatch.fnmatch(n, p) for p in SIBLINGS)
  and models.output_kind(n) == 'classification'  # segmentation, detection, embedding: own files
]


def test_every_family_is_traced():
  assert {'lenet5', 'resnet18', 'resnet50', 'resnet20', 'vgg16_bn', 'efficientnet_b0'} <= set(
    TRACED
  )


@pytest.mark.parametrize('name', TRACED)
def test_logits_and_features(name):
  size = NATIVE.get(name, 64)
  model = models.create(name, num_classes=7)
  info = models.feature_info(model, (size, size, 3))
  assert info['logits'] == (0, 7)
  assert info['pre_logits'][0] == 0 and info['pre_logits'][1] > 0
  for feature, (stride, channels) in info.items():
    assert channels > 0, (feature, channels)
    if stride and not any(fnmatch.fnmatch(name, p) for p in VALID_CONVS):
      assert stride & (stride - 1) == 0, f'{feature}: stride {stride} is not a power of 2'
