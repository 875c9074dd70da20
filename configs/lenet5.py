"""LeNet-5 as in the course notes' table: conv 5x5x6, pool, conv 5x5x16, pool, FC 120, 84, 10.

python main.py --config=configs/lenet5.py --mode=summary       # the notes' table
python main.py --config=configs/lenet5.py --workdir=runs/lenet5
--config=configs/lenet5.py:mnist   the same net on MNIST padded/resized to 32x32 (tfds)
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.name = 'lenet5'
  config.image_size = 32  # (32, 32, 3) as in the table: CONV1 has (5*5*3 + 1) * 6 = 456 weights
  config.num_epochs = 30.0
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_epochs = 1.0
  config.eval_every_steps = 110
  config.checkpoint_every_steps = 110
  if arg == 'mnist':
    config.dataset = 'mnist'
    config.num_epochs = 10.0
    config.log_every_steps = 100
    config.eval_every_steps = 1_000
    config.checkpoint_every_steps = 1_000
  elif arg not in (None, '', 'digits'):
    raise ValueError(f"unknown variant '{arg}'; use '' or 'mnist'")
  return config
