"""torchvision's state-dict names and ours, both ways: the name rules of each model family.

Used by cnn_jax/weights/torchvision.py (load, export). A rule pairs a torchvision module name with
ours, (torch template, our template); `family(module)` holds the rules of one model (VGG's and
SqueezeNet's depend on its stages), and `Mapper` maps whole leaf keys with them:

  'layer1.0.bn1.running_var'  <->  ('batch_stats', 'stage1_block1', 'bn1', 'var')
"""

import dataclasses
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from cnn_jax.core.errors import UserError
from cnn_jax.models.alexnet import AlexNet
from cnn_jax.models.densenet import DenseNet
from cnn_jax.models.efficientnet import EfficientNet
from cnn_jax.models.googlenet import GoogLeNet
from cnn_jax.models.mobilenet import MobileNetV2
from cnn_jax.models.resnet import ResNet
from cnn_jax.models.squeezenet import SqueezeNet
from cnn_jax.models.vgg import VGG

LeafKey = tuple[str, ...]  # (collection, module, ..., leaf), e.g. ('params', 'head', 'kernel')

# Registered names whose torchvision model of the same name has the same layers.
TORCHVISION_MODELS: tuple[str, ...] = (
  *(f'resnet{d}' for d in (18, 34, 50, 101, 152)),
  *(f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')),
  'alexnet',
  *(f'densenet{d}' for d in (121, 161, 169, 201)),
  'googlenet',
  'squeezenet1_0',
  'squeezenet1_1',
  'mobilenet_v2',
  *(f'efficientnet_b{i}' for i in range(8)),
)


# ----------------------------------------------------------------------------------------------
# Names. A rule pairs a torchvision module name with ours: (torch template, our template).
# Templates: '{i}' a number copied as is, '{j+1}' a number offset on that side, '*' one name
# segment, '**' one or more segments; torch separates segments with '.', we with '/'.
# The first rule that matches wins, in either direction.

_SEGMENT = r'[A-Za-z0-9_]+'
_TOKEN = re.compile(r'\{(\w+)([+-]\d+)?\}|\*\*|\*')


@functools.cache
def _pattern(template: str, sep: str) -> re.Pattern:
  parts, pos, stars = [], 0, 0
  for m in _TOKEN.finditer(template):
    parts.append(re.escape(template[pos : m.start()]))
    if m.group(1):
      parts.append(rf'(?P<{m.group(1)}>\d+)')
    else:
      seg = _SEGMENT if m.group(0) == '*' else rf'{_SEGMENT}(?:{re.escape(sep)}{_SEGMENT})*'
      parts.append(f'(?P<_star{stars}>{seg})')
      stars += 1
    pos = m.end()
  parts.append(re.escape(template[pos:]))
  return re.compile(''.join(parts) + r'\Z')


def _parse(template: str, sep: str, name: str) -> tuple[dict[str, int], list[list[str]]] | None:
  """The numbers (offsets undone) and star segments of `name` under `template`, or None."""
  m = _pattern(template, sep).match(name)
  if m is None:
    return None
  numbers, stars = {}, []
  for t in _TOKEN.finditer(template):
    if t.group(1):
      numbers[t.group(1)] = int(m.group(t.group(1))) - int(t.group(2) or 0)
    else:
      stars.append(m.group(f'_star{len(stars)}').split(sep))
  return numbers, stars


def _format(template: str, sep: str, numbers: dict[str, int], stars: list[list[str]]) -> str:
  star_values = iter(stars)

  def fill(t: re.Match) -> str:
    if t.group(1):
      return str(numbers[t.group(1)] + int(t.group(2) or 0))
    return sep.join(next(star_values))

  return _TOKEN.sub(fill, template)


def translate(name: str, rules: Sequence[tuple[str, str]], to_ours: bool) -> str | None:
  """'layer1.0.conv1' (torch) -> 'stage1_block1/conv1' (ours) or back; None: no rule matches."""
  for torch_t, ours_t in rules:
    src, dst = (torch_t, ours_t) if to_ours else (ours_t, torch_t)
    parsed = _parse(src, '.' if to_ours else '/', name)
    if parsed is not None:
      return _format(dst, '/' if to_ours else '.', *parsed)
  return None


@dataclasses.dataclass(frozen=True)
class Family:
  """The name rules of one model, its classifier's keys and its flattening Dense layers."""

  rules: Sequence[tuple[str, str]]
  head: str  # regex of the classifier's torchvision keys: the skip= for another num_classes
  # Our Dense layers fed by a flattened conv map -> the map's (H, W): torch flattens (C, H, W),
  # we flatten (H, W, C).
  flatten: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


_RESNET = (
  ('conv1', 'stem_conv'),
  ('bn1', 'stem_bn'),
  ('layer{i}.{j}.downsample.0', 'stage{i}_block{j+1}/proj_conv'),
  ('layer{i}.{j}.downsample.1', 'stage{i}_block{j+1}/proj_bn'),
  ('layer{i}.{j}.**', 'stage{i}_block{j+1}/**'),  # conv1, bn1, ..., conv3, bn3
  ('fc', 'head'),
)
# torchvision's features.N of AlexNet (ReLUs and pools hold no weights) and the classifier.
_ALEXNET = (
  *((f'features.{n}', f'conv{i}') for i, n in enumerate((0, 3, 6, 8, 10), start=1)),
  ('classifier.1', 'fc6'),
  ('classifier.4', 'fc7'),
  ('classifier.6', 'fc8'),
)
_VGG_CLASSIFIER = (('classifier.0', 'fc6'), ('classifier.3', 'fc7'), ('classifier.6', 'fc8'))
_DENSENET = (('classifier', 'classifier'), ('features.**', '**'))
# Inception branches: torch's nn.Sequential index becomes a suffix ('branch2.0' -> 'branch2_0').
_GOOGLENET = (('*.branch{b}.{n}.*', '*/branch{b}_{n}/*'), ('**', '**'))
# Inverted residual sublayers; without expansion (t = 1) the depthwise conv comes first.
_INVERTED_RESIDUAL = (
  ('conv.0.0', 'expand_conv'),
  ('conv.0.1', 'expand_bn'),
  ('conv.1.0', 'dw_conv'),
  ('conv.1.1', 'dw_bn'),
  ('conv.2', 'project_conv'),
  ('conv.3', 'project_bn'),
)
_INVERTED_RESIDUAL_T1 = (
  ('conv.0.0', 'dw_conv'),
  ('conv.0.1', 'dw_bn'),
  ('conv.1', 'project_conv'),
  ('conv.2', 'project_bn'),
)
_MBCONV = (
  ('block.0.0', 'expand_conv'),
  ('block.0.1', 'expand_bn'),
  ('block.1.0', 'dw_conv'),
  ('block.1.1', 'dw_bn'),
  ('block.2.fc1', 'se/reduce'),
  ('block.2.fc2', 'se/expand'),
  ('block.3.0', 'project_conv'),
  ('block.3.1', 'project_bn'),
)
_MBCONV_T1 = (
  ('block.0.0', 'dw_conv'),
  ('block.0.1', 'dw_bn'),
  ('block.1.fc1', 'se/reduce'),
  ('block.1.fc2', 'se/expand'),
  ('block.2.0', 'project_conv'),
  ('block.2.1', 'project_bn'),
)


def _vgg(m: VGG) -> Family:
  # torchvision's features: per conv [Conv2d, (BatchNorm2d), ReLU], a MaxPool2d after each stage.
  rules, n = [], 0
  for s, widths in enumerate(m.stages, start=1):
    for i in range(1, len(widths) + 1):
      rules.append((f'features.{n}', f'conv{s}_{i}'))
      if m.batch_norm:
        rules.append((f'features.{n + 1}', f'bn{s}_{i}'))
      n += 3 if m.batch_norm else 2
    n += 1
  return Family((*rules, *_VGG_CLASSIFIER), r'^classifier\.6\.', {'fc6': (m.pool_size,) * 2})


def _squeezenet(m: SqueezeNet) -> Family:
  # features.0 conv, .1 ReLU, .2 pool, then Fire modules with a pool between stages.
  rules, n, number = [('features.0', 'conv1'), ('classifier.1', 'conv10')], 3, 2
  for k, stage in enumerate(m.stages):
    n += k > 0
    for _ in stage:
      rules.append((f'features.{n}.*', f'fire{number}/*'))
      n, number = n + 1, number + 1
  return Family(rules, r'^classifier\.1\.')


def _mobilenet_v2(m: MobileNetV2) -> Family:
  expansions = [t for t, _, n, _ in m.setting for _ in range(n)]
  last = len(expansions) + 1
  rules = [
    ('features.0.0', 'stem_conv'),
    ('features.0.1', 'stem_bn'),
    (f'features.{last}.0', 'last_conv'),
    (f'features.{last}.1', 'last_bn'),
    ('classifier.1', 'head'),
  ]
  for k, t in enumerate(expansions, start=1):
    table = _INVERTED_RESIDUAL if t != 1 else _INVERTED_RESIDUAL_T1
    rules += [(f'features.{k}.{a}', f'block{k}/{b}') for a, b in table]
  return Family(rules, r'^classifier\.1\.')


def _efficientnet(m: EfficientNet) -> Family:
  last = len(m.stages) + 1
  rules = [
    ('features.0.0', 'stem_conv'),
    ('features.0.1', 'stem_bn'),
    (f'features.{last}.0', 'last_conv'),
    (f'features.{last}.1', 'last_bn'),
    ('classifier.1', 'head'),
  ]
  for s, stage in enumerate(m.stages, start=1):
    table = _MBCONV if stage.expand_ratio != 1 else _MBCONV_T1
    rules += [(f'features.{s}.{{j}}.{a}', f'mbconv{s}_block{{j+1}}/{b}') for a, b in table]
  return Family(rules, r'^classifier\.1\.')


def family(module: nn.Module) -> Family:
  """The rules of `module` (its fields decide VGG's, SqueezeNet's, ... numbering); a UserError for
  a model torchvision has no counterpart of."""
  if isinstance(module, ResNet):
    return Family(_RESNET, r'^fc\.')
  if isinstance(module, VGG):
    return _vgg(module)
  if isinstance(module, AlexNet):
    return Family(_ALEXNET, r'^classifier\.6\.', {'fc6': (module.pool_size,) * 2})
  if isinstance(module, DenseNet):
    return Family(_DENSENET, r'^classifier\.')
  if isinstance(module, GoogLeNet):
    return Family(_GOOGLENET, r'^(fc|aux[12]\.fc2)\.')
  if isinstance(module, SqueezeNet):
    return _squeezenet(module)
  if isinstance(module, MobileNetV2):
    return _mobilenet_v2(module)
  if isinstance(module, EfficientNet):
    return _efficientnet(module)
  raise UserError(
    f'{type(module).__name__} has no torchvision counterpart; weights import for: '
    f'{", ".join(TORCHVISION_MODELS)}'
  )


# ----------------------------------------------------------------------------------------------
# Leaves: torch's parameter and buffer names against our collections and leaf names.

_BN_LEAVES = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}
_LAYER_LEAVES = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}
_TORCH_LEAF = {v: k for table in (_BN_LEAVES, _LAYER_LEAVES) for k, v in table.items()}


class Mapper:
  """Both directions between torchvision keys and our leaf keys, for one model."""

  def __init__(self, module: nn.Module, target: Mapping[LeafKey, Any]):
    self.family = family(module)
    self.target = target

  def ours(self, torch_key: str) -> LeafKey | None:
    """'layer1.0.bn1.running_var' -> ('batch_stats', 'stage1_block1', 'bn1', 'var')."""
    module, _, leaf = torch_key.rpartition('.')
    path = translate(module, self.family.rules, to_ours=True)
    if path is None:
      return None
    path = tuple(path.split('/'))
    is_norm = ('batch_stats', *path, 'mean') in self.target
    collection, name = (_BN_LEAVES if is_norm else _LAYER_LEAVES).get(leaf, (None, None))
    return None if name is None else (collection, *path, name)

  def torch(self, key: LeafKey) -> str | None:
    """The inverse of `ours`."""
    module = translate('/'.join(key[1:-1]), self.family.rules, to_ours=False)
    leaf = _TORCH_LEAF.get((key[0], key[-1]))
    return None if module is None or leaf is None else f'{module}.{leaf}'

  def flatten_hw(self, key: LeafKey) -> tuple[int, int] | None:
    return self.family.flatten.get('/'.join(key[1:-1])) if key[-1] == 'kernel' else None
