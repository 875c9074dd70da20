"""Parameters and multiply-adds of every registered model, against the published numbers.

  python -m experiments.param_counts            # prints a markdown table, writes it to
                                                # experiments/results/param_counts.md

Everything is traced with jax.eval_shape (no compute): a few seconds on a laptop CPU.
"""

import os

from cnn_jax import models
from cnn_jax.models import summary
from cnn_jax.models.resnet import CIFAR_DEPTHS
from experiments import common

# Published parameter counts: torchvision (ImageNet nets, 1000 classes), He et al. 2016 Table 6
# (CIFAR nets, rounded to 0.01 M), the course notes' LeNet-5 table (sum of its rows).
REFERENCE = {
  'lenet5': '62,006 (notes: 456 + 2,416 + 48,120 + 10,164 + 850)',
  'resnet18': '11,689,512 (torchvision)',
  'resnet34': '21,797,672 (torchvision)',
  'resnet50': '25,557,032 (torchvision)',
  'resnet101': '44,549,160 (torchvision)',
  'resnet152': '60,192,808 (torchvision)',
  'resnet20': '0.27 M (He et al.)',
  'resnet32': '0.46 M (He et al.)',
  'resnet44': '0.66 M (He et al.)',
  'resnet56': '0.85 M (He et al.)',
  'resnet110': '1.7 M (He et al.)',
  'seresnet50': '28,088,024 (timm/torchvision-style SE-ResNet-50)',
  'alexnet': '61,100,840 (torchvision)',
  'vgg11': '132,863,336 (torchvision)',
  'vgg11_bn': '132,868,840 (torchvision)',
  'vgg16': '138,357,544 (torchvision)',
  'vgg16_bn': '138,365,992 (torchvision)',
  'vgg19': '143,667,240 (torchvision)',
  'vgg19_bn': '143,678,248 (torchvision)',
  'googlenet': '13,004,888 with aux heads, 6,624,904 without (torchvision)',
  'densenet121': '7,978,856 (torchvision)',
  'densenet169': '14,149,480 (torchvision)',
  'densenet201': '20,013,928 (torchvision)',
  'squeezenet1_0': '1,248,424 (torchvision)',
  'squeezenet1_1': '1,235,496 (torchvision)',
  'mobilenet_v1': '4,231,976 (1.0, 224)',
  'mobilenet_v2': '3,504,872 (torchvision)',
  **{
    f'efficientnet_b{i}': f'{n} (torchvision)'
    for i, n in enumerate(
      [
        '5,288,548',
        '7,794,184',
        '9,109,994',
        '12,233,232',
        '19,341,616',
        '30,389,784',
        '43,040,704',
        '66,347,960',
      ]
    )
  },
}


def input_shape(name: str) -> tuple[int, int, int]:
  if name == 'alexnet_tiny':
    return (64, 64, 3)  # AlexNet's 11x11/4 stem and three pools need at least 63 pixels
  if name == 'unet_valid':
    return (572, 572, 3)  # the paper's input tile (388x388 out); 224 does not pool evenly
  depth = ''.join(c for c in name if c.isdigit())
  cifar = name.startswith(('resnet', 'plain')) and depth and int(depth) in CIFAR_DEPTHS
  small = name == 'lenet5' or name.endswith('_tiny') or cifar
  return (32, 32, 3) if small else (224, 224, 3)


def main() -> str:
  lines = [
    '| model | input | parameters | multiply-adds | published |',
    '|---|---|---:|---:|---|',
  ]
  for name in models.list_models():
    shape = input_shape(name)
    s = summary.summarize(models.create(name), shape)
    lines.append(
      f'| {name} | {shape[0]}x{shape[1]}x{shape[2]} | {s.total_params:,} | {s.total_macs:,} '
      f'| {REFERENCE.get(name, "")} |'
    )
  table = '\n'.join(lines)
  common.write_text(os.path.join(common.RESULTS, 'param_counts.md'), table + '\n')
  return table


if __name__ == '__main__':
  print(main())
