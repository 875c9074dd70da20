"""MobileNet v1 (Howard et al. 2017) and v2 (Sandler et al. 2018). Offline default: v2 on digits.

  python main.py --config=configs/mobilenet.py --workdir=runs/mobilenet_v2_digits
  --config.model.name=mobilenet_v1   --config.model.width_multiplier=0.5

Depthwise convolutions take the shift-and-add path on CPU (cnn_jax/nn/depthwise.py). Cost and
accuracy of the offline default: README, "Offline results".

Variants (the dataset prepared with tfds, see README):
  :imagenet2012  the v2 paper's recipe: RMSProp (decay 0.9, momentum 0.9; TensorFlow's, eps 1.0
                 as in the TF-slim training script), weight decay 4e-5, lr 0.045 decayed by 0.98
                 every epoch, batch 96 per worker (1,536 over 16: the lr here is scaled linearly to
                 the batch of 256 used), 300 epochs. v1's paper gives the same optimizer family.
  :cifar10       the same optimizer on CIFAR-10 at 32x32, 100 epochs.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'mobilenet_v2'
  config.model.width_multiplier = 1.0
  variant = default.set_variant(config, arg)
  if variant == 'digits':
    default.set_offline_recipe(config, num_epochs=10.0)
    return config
  config.optimizer.name = 'rmsprop'
  config.optimizer.eps = 1.0
  config.optimizer.weight_decay = 4e-5
  config.optimizer.lr = 0.045  # per 1,536 images, scaled to the batch (Goyal et al.'s rule)
  config.optimizer.lr_batch_size = 1536
  config.optimizer.schedule = 'exponential'
  config.optimizer.decay_factor = 0.98
  config.optimizer.decay_every_epochs = 1.0
  config.num_epochs = 300.0 if variant == 'imagenet2012' else 100.0
  return config
