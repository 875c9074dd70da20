"""Neural style transfer (Gatys, Ecker & Bethge 2015; note 004) from a backbone trained here.

  python main.py --config=configs/style_transfer.py --workdir=runs/style_transfer

J(G) = alpha J_content(C, G) + beta J_style(S, G), minimised over G's pixels with optax
(cnn_jax/recipes/style_transfer.py) on a classifier trained first by the ordinary trainer
(cnn_jax/recipes/style.py). `backbone` is that classifier's whole trainer config (any field
overridable: --config.backbone.num_epochs=30); `style` the images, layers, weights and optimiser.
The backbone trains in style.backbone_workdir ('' = <workdir>/backbone), once: a rerun, or another
style run pointed at it, reuses it. Writes stylised.png, content.png, style.png (the inputs as the
network saw them), loss_curve.png and summary.json into the workdir.

Offline default: content scikit-learn's 'china.jpg' (a pagoda), style its 'flower.jpg' (a
dahlia), centre squares resized to 128x128. Backbone: VGG-11-BN's layout (one 3x3 conv in each of
the first two stages, two in each of the last three, BatchNorm, 512-wide fc6 / fc7) at widths
32/64/128/128/128, trained on digits at 32x32 (grey tiled to RGB) with the shared offline recipe
for 15 epochs. Measured on the 2-core CPU, shared with another job: the backbone reaches 99.4%
test accuracy in 165 steps (111-115 s); J(G) falls from 915.0 to 7.12 in the 300 Adam steps
(J_content 0 -> 0.068, J_style 0.0915 -> 0.00064; 17-31 s, compile included); the whole command
takes 2 min 27 s to 3 min 9 s, a rerun with the backbone in place 30 s; runs repeat bit for bit.
G keeps the pagoda, shore and sky and takes the dahlia's peach, orange and dark teal
(experiments/results/style_transfer/).

How the defaults were chosen, each by looking at G (same machine and backbone unless said):
- A 128-wide fc6 / fc7 did not train (11% test accuracy after 5 epochs: VGG's N(0, 0.01) init
  over three narrow layers leaves almost no gradient); 512 wide: 59% after 5 epochs, 98.9% after
  10 (whose G kept less of the pagoda's structure), 99.4% after 15. The same 15 epochs without
  dropout (99.7%) gave G a flat dark pagoda: backbones of equal accuracy give visibly different G.
- Style on rectified maps only ('bn{1..5}_1:relu', as Gatys et al. read VGG) gave G pink and red
  speckle instead of the dahlia's peach and dark green: the backbone never saw colour (grey
  digits), so the colour part of its filters is their random init, and after BatchNorm + ReLU
  their Gram matrices pin the colours down poorly. conv1_1's own output (before BatchNorm, linear
  in the pixels) has 32 filters over the 27 values of a 3x3 RGB patch, so its Gram matrix fixes
  the patches' second moments, colours included: with it G takes the style's palette. With the
  five layers weighted equally conv1_1 holds about 90% of J_style at the start.
- 'gatys' normalisation: the note's leaves out 1/n_C^2, which would weigh the 128-wide layers
  16x more against the 32-wide conv1_1.
- Adam at lr 0.02 for 300 steps. With the rectified-only layers, L-BFGS (100 steps) reached a
  lower J but lost more of the layout to speckle; Adam at lr 0.005-0.01 left the style weaker.
- 128 px rather than 96: at 96 the speckle is coarse next to the image's detail.
- beta = 1e4 with alpha = 10: beta = 1e3 leaves the sky and water nearly untouched, 2e4 mutes
  the layout further. Content on bn3_1: bn2_1 and bn4_1 looked much the same.
What G still lacks is the dahlia's petal texture: features learnt from 8x8 digits see strokes and
blobs, not petals. The usual remedy for the speckle, a total-variation term, is not in the
note's J and was not tried here.

Variants, not run here (the dataset prepared with tfds, see README): :cifar10 (a VGG-11-BN that has
seen colour, 60 epochs) and :imagenet2012 (VGG-16 at 224 px, Gatys et al.'s layers); their alpha
and beta are the offline default's, untuned.
"""

import ml_collections

from configs import vgg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.recipe = 'style_transfer'  # cnn_jax/recipes/style.py
  # A whole trainer config (any family's would do); `arg` picks its dataset.
  backbone = config.backbone = vgg.get_config(arg)
  style = config.style = ml_collections.ConfigDict()
  # 'sklearn:<name>': scikit-learn's bundled photos (china.jpg, flower.jpg), or a path to a file.
  style.content_image = 'sklearn:china.jpg'
  style.style_image = 'sklearn:flower.jpg'
  style.image_size = 128  # both images: the centred square, resized
  # Layer names: cnn_jax.recipes.style_transfer.layer_names; ':relu' reads the rectified map.
  style.content_layer = 'bn3_1:relu'
  style.style_layers = ('conv1_1', 'bn2_1:relu', 'bn3_1:relu', 'bn4_1:relu', 'bn5_1:relu')
  style.style_weights = ()  # lambda_l, one per style layer; () = 1/L each (Gatys et al.)
  style.alpha = 10.0
  style.beta = 1e4
  style.steps = 300
  style.lr = 0.02  # Adam, in normalised pixel units (digits: std 0.376 of [0, 1])
  style.optimizer = 'adam'  # | 'lbfgs' (Gatys et al.'s; its line search sets the step)
  style.init = 'content'  # | 'noise' (white noise, note 004)
  # 'gatys': 1/(2 n_H n_W n_C)^2; 'notes': note 004's 1/(2 n_H n_W)^2, under which the widest
  # layers dominate an equal weighting.
  style.style_normalisation = 'gatys'
  style.seed = 0  # of the noise init
  style.backbone_workdir = ''  # '' = <workdir>/backbone
  style.train_backbone = True  # train it there first unless it has finished
  if arg in (None, '', 'digits'):
    backbone.model.name = 'vgg_tiny'  # VGG with every field set here
    backbone.model.batch_norm = True
    backbone.model.stages = ((32,), (64,), (128, 128), (128, 128), (128, 128))
    backbone.num_epochs = 15.0
  elif arg == 'imagenet2012':  # VGG-16 has no BatchNorm: Gatys et al.'s layers
    style.image_size = 224
    style.content_layer = 'conv4_2:relu'
    style.style_layers = tuple(f'conv{s}_1:relu' for s in range(1, 6))
  return config
