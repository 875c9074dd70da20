"""A learning-rate sweep of configs/resnet.py through the sweep runner (cnn_jax/recipes/sweep.py).

  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/resnet20_lr
  # or split over two processes (or hosts) sharing the folder, started together:
  python main.py --config=configs/resnet_lr_sweep.py --workdir=runs/resnet20_lr \\
      --shard_index=0 --num_shards=2      # and --shard_index=1 --num_shards=2

Five trials, optimizer.lr = 0.25x ... 4x the base config's (0.025 ... 0.4 for the offline
ResNet-20), each otherwise the base config (any variant: configs/resnet_lr_sweep.py:cifar10);
each trial costs what one run of configs/resnet.py costs (its docstring), the sweep five times
that. --config.sweep.lr_factors='(0.5,1,2)' picks other factors, --config.x=y sets the base.
Writes runs/.../sweep.{csv,json,md} (validation and test accuracy per trial; the learning rate
chosen on validation) and sweep.png (validation accuracy against the learning rate).
"""

import ml_collections

from configs import resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = resnet.get_config(arg)
  sweep = config.sweep = ml_collections.ConfigDict()
  sweep.lr_factors = (0.25, 0.5, 1.0, 2.0, 4.0)  # times config.optimizer.lr
  sweep.plot_x = 'optimizer.lr'
  sweep.plot_y = 'validation_accuracy'
  sweep.plot_group = ''
  sweep.plot_stage = -1
  sweep.plot_logx = True
  return config


def get_trials(config: ml_collections.ConfigDict) -> list[dict]:
  # round(): 0.1 * 0.25 prints as 0.025, not 0.025000000000000001, in folder names and tables.
  return [{'optimizer.lr': round(config.optimizer.lr * f, 12)} for f in config.sweep.lr_factors]
