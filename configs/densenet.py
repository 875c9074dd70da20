"""DenseNet (Huang et al. 2017), growth rate 32, compression 0.5. Offline default: DenseNet-121.

  python main.py --config=configs/densenet.py --workdir=runs/densenet121_digits
  --config.model.name=densenet169     or densenet161, densenet201

Cost and accuracy of the offline default: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the paper's recipe: batch 256, 90 epochs, SGD with Nesterov momentum 0.9, weight
                 decay 1e-4, lr 0.1 divided by 10 at epochs 30 and 60.
  :cifar10       the paper's CIFAR recipe (batch 64, 300 epochs, lr 0.1 divided by 10 at 50% and
                 75% of training, weight decay 1e-4, Nesterov 0.9) on DenseNet-121. The paper's
                 CIFAR nets (DenseNet-BC, L=100, k=12, a 3x3 stem) are not built here.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'densenet121'
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=10.0)
    return config
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.optimizer.schedule = 'step'
  if variant == 'imagenet2012':
    config.num_epochs = 90.0
    config.optimizer.decay_epochs = (30.0, 60.0)
  else:
    config.batch_size = 64
    config.num_epochs = 300.0
    config.optimizer.decay_epochs = (150.0, 225.0)
  return config
