"""SqueezeNet (Iandola et al. 2016): fire modules. Offline default: SqueezeNet 1.1 on digits.

  python main.py --config=configs/squeezenet.py --workdir=runs/squeezenet1_1_digits
  --config.model.name=squeezenet1_0

No BatchNorm: with SGD at the authors' lr 0.04 the offline default stayed near chance (26.4%
after 10 epochs, 110 steps), with AdamW 3e-4 or 1e-3 at 32x32 about 75%: at 32x32 the three
ceil-mode pools leave the last fire modules a 1x1 map. It trains with AdamW 1e-3 at 64x64 (91.1%).
Cost and accuracy of the offline default: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the authors' Caffe solver: SGD momentum 0.9, weight decay 2e-4, lr 0.04 decayed
                 linearly to 0 ("poly", power 1), batch 512, 170,000 iterations (68 epochs).
  :cifar10       the same solver on CIFAR-10 at 32x32, 60 epochs, batch 128.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'squeezenet1_1'
  config.optimizer.lr = 0.04
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=10.0)
    config.image_size = 64
    config.optimizer.name = 'adamw'
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 1e-4
    return config
  config.optimizer.weight_decay = 2e-4
  config.optimizer.schedule = 'linear'
  if variant == 'imagenet2012':
    config.batch_size = 512
    config.num_train_steps = 170_000
  else:
    config.num_epochs = 60.0
  return config
