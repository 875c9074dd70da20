"""GoogLeNet (Inception v1, Szegedy et al. 2015) with its two auxiliary classifiers in training.

  python main.py --config=configs/googlenet.py --workdir=runs/googlenet_digits

The auxiliary heads' cross-entropies are added with weight 0.3 (`config.model.aux_weight`); they
are not run in eval. Cost and accuracy of the offline default: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the paper's recipe: SGD momentum 0.9, the learning rate decreased by 4% every 8
                 epochs (the initial rate is not given; 0.01 with weight decay 2e-4 as in the
                 BVLC Caffe reproduction), batch 256, 120 epochs. Not reproduced: asynchronous
                 training on a cluster, Polyak averaging, the photometric distortions.
  :cifar10       the same optimizer on CIFAR-10 at 32x32, 60 epochs, decay 4% every 2 epochs.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'googlenet'
  config.model.aux_weight = 0.3
  config.model.naive = False  # True: the paper's naive Inception (fig. 2a), no 1x1 reductions
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=10.0)
    return config
  config.optimizer.lr = 0.01
  config.optimizer.weight_decay = 2e-4
  config.optimizer.schedule = 'exponential'
  config.optimizer.decay_factor = 0.96
  if variant == 'imagenet2012':
    config.num_epochs = 120.0
    config.optimizer.decay_every_epochs = 8.0
  else:
    config.num_epochs = 60.0
    config.optimizer.decay_every_epochs = 2.0
  return config
