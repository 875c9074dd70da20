"""ResNet. No argument: the offline default, a CIFAR-style ResNet-20 on `digits` at 32x32.

  python main.py --config=configs/resnet.py --workdir=runs/resnet20_digits

Variants (need the dataset prepared with tfds, see README):
  --config=configs/resnet.py:cifar10       He et al. 2016, sec. 4.2: ResNet-20..110 on CIFAR-10
  --config=configs/resnet.py:imagenet2012  ResNet-50, torchvision's reference recipe (90 epochs)
Any field can be overridden, e.g. --config.model.name=resnet56 --config.optimizer.lr=0.05.

The default, measured on a 2-core AMD EPYC CPU machine (2026-12-07, three runs): 100 steps (10
epochs of the 1,292 training digits, batch 128) in 89-110 s of training wall time; 100%
validation accuracy (145 of 145), 99.17% test accuracy (357 of 360). XLA:CPU spends most of each
~0.8 s step in the backward convolutions (docs/performance.md).
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'resnet20'
  config.model.deformable_stages = ()  # e.g. (3,): deformable conv v2 in stage 3's 3x3 convs
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    # Sized for 2 CPU cores: 1,292 training images, 10 steps an epoch.
    default.set_offline_recipe(config, num_epochs=10.0)
  elif variant == 'cifar10':
    # He et al. 2016, sec. 4.2: batch 128, lr 0.1 divided by 10 at 32k and 48k iterations,
    # stop at 64k; weight decay 1e-4, momentum 0.9; 4-pixel pad, 32x32 crop, horizontal flip.
    config.num_train_steps = 64_000
    config.optimizer.schedule = 'step'
    config.optimizer.decay_steps = (32_000, 48_000)
  else:
    # torchvision's reference: 90 epochs, batch 256, lr 0.1 divided by 10 every 30 epochs,
    # weight decay 1e-4, momentum 0.9; random-resized crop 224 + flip; eval 256 -> 224 crop.
    config.model.name = 'resnet50'
    config.optimizer.lr = 0.1  # per 256 images, scaled to the batch (Goyal et al.'s rule)
    config.optimizer.lr_batch_size = 256
    config.num_epochs = 90.0
    config.optimizer.schedule = 'step'
    config.optimizer.decay_epochs = (30.0, 60.0)
  return config
