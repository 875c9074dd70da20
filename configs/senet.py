"""SENet (Hu et al. 2018): ResNets with squeeze-and-excitation (reduction 16) in every block.

  python main.py --config=configs/senet.py --workdir=runs/seresnet20_digits

Offline default: SE-ResNet-20 (the CIFAR ResNet-20 with SE in every block) on digits at 32x32.
Any ResNet of the registry becomes an SE-ResNet with `--config.model.se_reduction=16` (0 removes
SE: the plain ResNet, for the comparison); `seresnet50` is the ImageNet net. SE-ResNet-50 at
32x32 trains at about 8 images/s here (16 s a step of 128: XLA:CPU's convolution gradients at
2,048 channels on 1x1 maps), too slow for an offline default. Cost and accuracy of the offline
default: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the paper's recipe: SGD momentum 0.9, batch 1024, lr 0.6 divided by 10 every 30
                 epochs, 100 epochs, weight decay 1e-4; random-size crop 224 + flip.
  :cifar10       SE-ResNet-110 (the paper's CIFAR net): the ResNet CIFAR recipe of He et al.
                 (batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k steps, weight decay 1e-4).
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'resnet20'
  config.model.se_reduction = 16  # hidden units of the excitation FC: C / 16
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=10.0)
  elif variant == 'imagenet2012':
    config.model.name = 'seresnet50'
    config.batch_size = 1024
    config.optimizer.lr = 0.6  # per 1,024 images, scaled to the batch (Goyal et al.'s rule)
    config.optimizer.lr_batch_size = 1024
    config.num_epochs = 100.0
    config.optimizer.schedule = 'step'
    config.optimizer.decay_epochs = (30.0, 60.0, 90.0)
  else:
    config.model.name = 'resnet110'
    config.num_train_steps = 64_000
    config.optimizer.schedule = 'step'
    config.optimizer.decay_steps = (32_000, 48_000)
  return config
