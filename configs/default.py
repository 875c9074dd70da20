"""Fields shared by every classification config; the family configs import and override them.

Not meant to be run by itself (it names no model); see configs/resnet.py and configs/lenet5.py.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  # Data. 'digits' is built locally from scikit-learn's copy: no download, ever.
  config.dataset = 'digits'
  config.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.image_size = 32
  config.image_channels = 3  # grey datasets are tiled to RGB, so one net serves every dataset

  config.model = ml_collections.ConfigDict()
  config.model.name = ''
  config.model.num_classes = -1  # -1: the dataset's number of classes

  # Duration: num_train_steps if > 0, else num_epochs.
  config.num_epochs = 1.0
  config.num_train_steps = -1
  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = 256

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' | 'adamw'
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.b1 = 0.9  # adamw
  config.optimizer.b2 = 0.999  # adamw
  config.optimizer.weight_decay = 1e-4  # on kernels only, never on biases or norm parameters
  config.optimizer.schedule = 'cosine'  # 'cosine' | 'step' | 'constant', after linear warmup
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.warmup_steps = -1  # >= 0 overrides warmup_epochs
  config.optimizer.decay_epochs = ()  # 'step': multiply by decay_factor at these epochs
  config.optimizer.decay_steps = ()  # ... or at these steps (used when not empty)
  config.optimizer.decay_factor = 0.1
  config.label_smoothing = 0.0

  config.log_every_steps = 20
  config.eval_every_steps = -1  # <= 0: evaluate at the end only
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  config.seed = 0
  config.half_precision = False  # bfloat16 compute, float32 parameters (for GPU/TPU)
  config.parallel = 'shard_map'  # 'shard_map' (jit over a device mesh) | 'pmap'
  return config
