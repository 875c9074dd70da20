"""Fields shared by every classification config; the family configs import and override them.

Not meant to be run by itself (it names no model); see configs/resnet.py and configs/lenet5.py.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  # What the run learns (cnn_jax/tasks/): 'classification' | 'distillation' | 'self_training' |
  # 'segmentation' | 'detection' | 'triplet'; each task reads its own section below or in its
  # config file.
  config.task = 'classification'
  # Data. 'digits' is built locally from scikit-learn's copy: no download, ever.
  config.dataset = 'digits'
  config.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  # The split evaluated during training and chosen on: 'validation' (the dataset's own, or a
  # fixed 10% of its train split that training never sees: cnn_jax/data/specs.py) or 'test'.
  # The test split is evaluated once more at the end, for the report: summary.json holds
  # validation_* and test_*.
  config.eval_split = 'validation'
  config.image_size = 32
  config.image_channels = 3  # grey datasets are tiled to RGB, so one net serves every dataset
  # Part of a classification dataset (datasets.class_subset), e.g. a transfer learning source
  # task on digits 0-4 and a small target task on 5-9: the classes kept, relabelled 0..k-1 in
  # this order in both splits (() = all), and that many training examples of each kept class,
  # a stratified draw from config.seed (-1 = all).
  config.data_classes = ()
  config.train_examples_per_class = -1
  # Metric learning (configs/triplet.py): classes never trained on whose test examples join the
  # eval split, for one-shot evaluation (needs data_classes).
  config.held_out_classes = ()

  config.model = ml_collections.ConfigDict()
  config.model.name = ''
  config.model.num_classes = -1  # -1: the dataset's number of classes

  # Duration: num_train_steps if > 0, else num_epochs.
  config.num_epochs = 1.0
  config.num_train_steps = -1
  config.batch_size = 128  # global, over all devices and hosts
  config.eval_batch_size = 256

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' | 'rmsprop' | 'adamw'
  config.optimizer.lr = 0.1
  # > 0: `lr` is the paper's for a batch of this size, scaled linearly to config.batch_size when
  # the run starts (Goyal et al.'s rule), so --config.batch_size=64 keeps the recipe. 0: as given.
  config.optimizer.lr_batch_size = 0
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.b1 = 0.9  # adamw
  config.optimizer.b2 = 0.999  # adamw
  config.optimizer.rms_decay = 0.9  # rmsprop: decay of the mean square
  config.optimizer.eps = 1e-3  # rmsprop (TensorFlow's convention: inside the square root)
  config.optimizer.weight_decay = 1e-4  # on kernels only, never on biases or norm parameters
  # After a linear warmup: 'cosine' | 'linear' | 'step' | 'exponential' | 'constant' (optim.py).
  config.optimizer.schedule = 'cosine'
  config.optimizer.warmup_epochs = 0.0
  config.optimizer.warmup_steps = -1  # >= 0 overrides warmup_epochs
  config.optimizer.decay_epochs = ()  # 'step': multiply by decay_factor at these epochs
  config.optimizer.decay_steps = ()  # ... or at these steps (used when not empty)
  config.optimizer.decay_every_epochs = 1.0  # 'exponential': multiply by decay_factor this often
  config.optimizer.decay_factor = 0.1
  config.label_smoothing = 0.0
  # Train augmentation of classification datasets (cnn_jax/data/pipeline.py: augment_options);
  # None keeps the dataset's default: digits and mnist a random 2-pixel shift, cifar a 4-pixel
  # pad-and-crop + mirror, imagenet a random-resized crop + mirror.
  config.augment = ml_collections.ConfigDict()
  config.augment.crop = config_dict.placeholder(bool)  # False: resized as in eval
  config.augment.flip = config_dict.placeholder(bool)  # left-right mirror, probability 1/2
  # s: a uniform offset in [-s, s] per channel of the [0, 1] image (grey: brightness); 0 off.
  config.augment.color_shift = config_dict.placeholder(float)

  # Transfer learning (cnn_jax/weights/transfer.py): start from another run's checkpoint or
  # torchvision
  # weights, taking the weights `load` matches and `skip` does not (regexes on names such as
  # 'stage1_block1/conv1/kernel'); a fresh start only. `freeze`: parameters left untrained.
  config.init_from = ml_collections.ConfigDict()
  config.init_from.path = ''  # a workdir, a step folder .../checkpoints/<step>, a .pth or .npz
  config.init_from.load = ''  # '' = every weight
  config.init_from.skip = ''  # e.g. '^head/': a classifier for another number of classes
  config.freeze = ''  # e.g. '^(?!head/)': everything but the classifier

  config.log_every_steps = 20
  config.eval_every_steps = -1  # <= 0: evaluate at the end only
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  # A NaN or Inf in the loss, gradients or update: 0 stops the run (naming the step and metric;
  # nothing non-finite is saved). N > 0 skips such steps instead (state unchanged, counted in the
  # logs as skipped_steps) and stops at the N+1st.
  config.skip_nonfinite_steps = 0
  # An image that does not decode: False stops the run naming the example and its file. True
  # decodes every image once before training and leaves the unreadable ones out (each logged,
  # counted in summary.json as skipped_corrupt_images); resume stays exact.
  config.skip_corrupt_images = False
  config.seed = 0
  config.half_precision = False  # bfloat16 compute, float32 parameters (for GPU/TPU)
  config.parallel = 'shard_map'  # 'shard_map' (jit over a device mesh) | 'pmap'
  return config


# The variants every family config accepts as its argument ('' is the offline default).
VARIANTS = ('', 'digits', 'cifar10', 'imagenet2012')


def set_variant(
  config: ml_collections.ConfigDict, arg: str | None, *, cifar_image_size: int = 32
) -> str:
  """Points `config` at the dataset of variant `arg` and returns the variant ('digits' for '').

  cifar10 and imagenet2012 also get the logging cadence of a long run; the family config then sets
  its paper's recipe. `cifar_image_size`: nets with an ImageNet stem that cannot take 32x32
  (AlexNet) see CIFAR images resized up.
  """
  if arg in (None, '', 'digits'):
    return 'digits'
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant '{arg}'; use one of {', '.join(map(repr, VARIANTS))}")
  config.dataset = arg
  config.log_every_steps = 100
  if arg == 'cifar10':
    config.image_size = cifar_image_size
    config.eval_every_steps = config.checkpoint_every_steps = 2_000
  else:
    config.image_size = 224
    config.batch_size = 256
    config.eval_every_steps = config.checkpoint_every_steps = 5_000
  return arg


def set_offline_recipe(config: ml_collections.ConfigDict, num_epochs: float) -> None:
  """The recipe every offline default shares (1,292 training digits, batch 128: 10 steps an epoch).

  SGD + Nesterov 0.1, 1 warmup epoch then cosine, weight decay 5e-4, label smoothing 0.1: the
  ResNet-20 prototype's recipe (DESIGN.md), which trains every family here without tuning.
  Evaluates (on the validation split) and saves every 5 epochs.
  """
  config.num_epochs = num_epochs
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 5e-4
  config.optimizer.warmup_epochs = 1.0
  config.label_smoothing = 0.1
  config.eval_every_steps = config.checkpoint_every_steps = 50


def add_segmentation_fields(config: ml_collections.ConfigDict) -> None:
  """The options of the segmentation task (cnn_jax/tasks/: Segmentation)."""
  config.task = 'segmentation'
  seg = config.segmentation = ml_collections.ConfigDict()
  seg.class_weights = ()  # one per class, torch CrossEntropyLoss(weight=...) style; () = none
  seg.dice_weight = 0.0  # loss += dice_weight * soft Dice loss
  # Eval-time dense CRF (cnn_jax/ops/crf.py), DeepLab v2's released settings; theta_alpha <= 0:
  # DeepLab's 67 for 500-pixel images, scaled to config.image_size. theta_gamma 3 (the paper's
  # text) erases thin digits on the offline scenes (crf.py's notes).
  seg.crf = False
  seg.crf_iterations = 10
  seg.crf_w_appearance = 4.0
  seg.crf_theta_alpha = -1.0
  seg.crf_theta_beta = 3.0
  seg.crf_w_smoothness = 3.0
  seg.crf_theta_gamma = 1.0


def set_segmentation_offline(config: ml_collections.ConfigDict) -> None:
  """digit_scenes (3,000 train / 500 test 64x64 scenes, built locally), 300 steps of batch 32.

  The loss adds a soft Dice term (weight 1): about 93% of the pixels are background, and with
  cross-entropy alone the U-Net still predicts background almost everywhere after 200 steps
  (test mean IoU 0.17), with Dice it reaches 0.67 (2-core CPU).
  """
  config.dataset = 'digit_scenes'
  config.image_size = 64
  config.batch_size = 32
  config.eval_batch_size = 100
  config.num_train_steps = 300
  config.optimizer.warmup_steps = 30
  config.segmentation.dice_weight = 1.0
  config.log_every_steps = 20
  config.eval_every_steps = config.checkpoint_every_steps = 100
