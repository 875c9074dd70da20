"""U-Net (Ronneberger et al. 2015) segmentation. Offline default: digit_scenes, no download.

  python main.py --config=configs/unet.py --workdir=runs/unet_digit_scenes
  --config.model.padding=valid --config.image_size=76     the paper's valid-padding net (crops)
  --config.model.upsample=bilinear                         resize + conv instead of up-convs

digit_scenes: 64x64 canvases of 1-3 handwritten digits, label = digit class + 1 per pixel, 0 the
background (11 classes), train and test scenes drawn from disjoint digits. The run writes
summary.json (test_mean_iou, test_pixel_accuracy, per-class IoU) and overlays.png.

Variants (the dataset prepared with tfds, see README):
  :pets   oxford_iiit_pet (pet / background, border pixels ignored) at 128x128, depth 4, base
          width 32, AdamW 1e-3, 40 epochs. The paper's own recipe (SGD, momentum 0.99, one large
          tile per batch, a weight map for touching cells) is for its microscopy data.
"""

import ml_collections

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  default.add_segmentation_fields(config)
  config.model.name = 'unet'
  config.model.depth = 3
  config.model.base_width = 16
  config.model.padding = 'same'
  config.model.upsample = 'transpose'
  config.model.batch_norm = True
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 3e-3
  config.optimizer.weight_decay = 1e-4
  if arg in (None, '', 'digit_scenes'):
    default.set_segmentation_offline(config)
    config.image_channels = 1
  elif arg == 'pets':
    config.dataset = 'oxford_iiit_pet'
    config.image_size = 128
    config.batch_size = 32
    config.model.depth = 4
    config.model.base_width = 32
    config.optimizer.lr = 1e-3
    config.num_epochs = 40.0
    config.optimizer.warmup_epochs = 1.0
    config.log_every_steps = 50
    config.eval_every_steps = config.checkpoint_every_steps = 1_000
  else:
    raise ValueError(f"unknown variant '{arg}'; use '' (digit_scenes) or 'pets'")
  return config
