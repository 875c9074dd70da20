"""VGG (Simonyan & Zisserman 2015). Offline default: VGG-11-BN on digits with a CIFAR-style head.

  python main.py --config=configs/vgg.py --workdir=runs/vgg11_bn_digits
  --config.model.name=vgg16_bn      any of vgg11/13/16/19 and their _bn twins

At 32x32 the five pools leave a 1x1 map; the ImageNet head would repeat it 49 times (adaptive pool
to 7x7) into a 25,088 x 4,096 fc6, 102 M weights for no information. The offline default and the
CIFAR variant therefore use the head CIFAR work uses (pool to 1x1, fc6/fc7 of 512): vgg11_bn has
9.8 M parameters there instead of 128.8 M. Cost and accuracy: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the paper's recipe: batch 256, SGD momentum 0.9, weight decay 5e-4, lr 0.01
                 divided by 10 three times when the validation accuracy stopped improving, 74
                 epochs (fixed here at epochs 30, 50, 65); dropout 0.5; VGG-16, the 4096 head.
  :cifar10       the same optimizer and decay on CIFAR-10 with the 512 head, 60 epochs.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'vgg11_bn'
  config.model.hidden = 512  # fc6 and fc7 width (the ImageNet head: 4096)
  config.model.pool_size = 1  # adaptive pool grid before fc6 (the ImageNet head: 7)
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=5.0)
    return config
  config.optimizer.lr = 0.01
  config.optimizer.weight_decay = 5e-4
  config.optimizer.schedule = 'step'
  if variant == 'imagenet2012':
    config.model.name = 'vgg16'
    config.model.hidden = 4096
    config.model.pool_size = 7
    config.num_epochs = 74.0
    config.optimizer.decay_epochs = (30.0, 50.0, 65.0)
  else:
    config.num_epochs = 60.0
    config.optimizer.decay_epochs = (30.0, 45.0)
  return config
