"""DeepLab v3 / v3+ (Chen et al. 2017, 2018). Offline default: v3+ on digit_scenes.

  python main.py --config=configs/deeplab.py --workdir=runs/deeplab_digit_scenes
  --config.model.name=deeplabv3_resnet50     v3 (3x3 head instead of the decoder, aux FCN head) at
                                             this config's output stride 16 and ASPP rates
  --config.segmentation.crf=True             dense CRF on the eval predictions

The offline default is DeepLab v3+ (ASPP, decoder with the stride-4 features, depthwise-separable
convs) on a ResNet-18 backbone at output stride 16 with a 64-wide head: at 64x64 the ASPP sees a
4x4 map, so its rates are 1/2/3 (the paper's 6/12/18 are for 513-pixel crops at stride 16). It
evaluates at its training stride and has no multi-grid (ResNet-18's last stage has two blocks);
`--config.model.eval_output_stride=8` evaluates the same weights at output stride 8 (ASPP rates
2/4/6 there).

Variants (the dataset prepared with tfds, see README):
  :pets   oxford_iiit_pet at 256x256 (a multiple of both output strides), DeepLab v3+ ResNet-50,
          the paper's recipe: SGD momentum 0.9, lr 0.007 "poly" (power 0.9; linear here), weight
          decay 4e-5 (1e-4 for ResNet in torchvision), batch 16, 30k steps; multi-grid (1, 2, 4)
          in stage 4; trained at output stride 16 (ASPP 6/12/18), evaluated at 8 (12/24/36).

ImageNet weights, as the papers start from: torchvision's resnet50 weights into the backbone
(init_from puts a classifier's converted weights, less its fc head, under 'backbone/'):

  python -m cnn_jax.weights.torchvision convert resnet50.pth resnet50.npz   # needs torch, once
  python main.py --config=configs/deeplab.py:pets --workdir=runs/deeplab_pets \
    --config.init_from.path=resnet50.npz --config.init_from.load='^backbone/'

(tests/test_deeplab.py loads a torchvision-named ResNet state dict this way.)
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = default.get_config()
  default.add_segmentation_fields(config)
  config.model.name = 'deeplabv3plus_resnet50'
  config.model.backbone = 'resnet18'
  config.model.output_stride = 16
  config.model.eval_output_stride = config_dict.placeholder(int)  # None: output_stride
  config.model.multi_grid = ()  # ResNet-18 has two blocks in stage 4, the paper's grid three
  config.model.aspp_rates = (1, 2, 3)  # at output_stride; a smaller eval stride scales them
  config.model.aspp_features = 64
  config.model.decoder_features = 64
  config.optimizer.name = 'adamw'
  config.optimizer.lr = 1e-3
  config.optimizer.weight_decay = 1e-4
  if arg in (None, '', 'digit_scenes'):
    default.set_segmentation_offline(config)
  elif arg == 'pets':
    config.dataset = 'oxford_iiit_pet'
    config.image_size = 256
    config.batch_size = 16
    config.model.backbone = 'resnet50'
    config.model.eval_output_stride = 8  # the paper's: train at 16, evaluate at 8
    config.model.multi_grid = (1, 2, 4)
    config.model.aspp_rates = (6, 12, 18)  # (12, 24, 36) in evaluation at output stride 8
    config.model.aspp_features = 256
    config.model.decoder_features = 256
    config.optimizer.name = 'sgd'
    config.optimizer.lr = 0.007
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = 'linear'
    config.num_train_steps = 30_000
    config.log_every_steps = 50
    config.eval_every_steps = config.checkpoint_every_steps = 2_000
  else:
    raise ValueError(f"unknown variant '{arg}'; use '' (digit_scenes) or 'pets'")
  return config
