"""Fully connected CRF post-processing (Krähenbühl & Koltun 2011), mean-field inference in JAX.

DeepLab v1/v2 (Chen et al. 2015, 2017) refine the network's score map with this CRF at eval time.
The energy of a labelling x of the image's N pixels is

  E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) k(f_i, f_j),     U_i = -log softmax(logits_i)
  k(f_i, f_j) = w_app exp(-|p_i - p_j|^2 / (2 theta_alpha^2) - |I_i - I_j|^2 / (2 theta_beta^2))
              + w_smooth exp(-|p_i - p_j|^2 / (2 theta_gamma^2))

with p the pixel position (row, column, in pixels), I the colour and mu the Potts compatibility
[x_i != x_j]. Mean field (Krähenbühl & Koltun, Algorithm 1) updates Q_i(l) proportional to
exp(-U_i(l) - sum_l' mu(l, l') sum_{j != i} k(f_i, f_j) Q_j(l')); under Potts that is
softmax(log softmax(logits_i) + sum_{j != i} k(f_i, f_j) Q_j) up to a per-pixel constant.

The message sum_j k_ij Q_j is computed exactly (no permutohedral lattice, no C++):
- the smoothness kernel is a Gaussian of position only, hence separable: two dense 1-D Gaussian
  filters, (H, H) along the rows and (W, W) along the columns, O(N (H + W) C) per iteration;
- the appearance (bilateral) kernel is not separable; its dense form costs O(N^2) per iteration:
  4096 pixels (64x64) is a 4096x4096 kernel, 64 MB in float32, which is built once per image
  and reused by every iteration; above that, it is rebuilt block by block (512 rows at a time,
  32 MB per block at 128x128) in every iteration. Images are processed one at a time (lax.map),
  so a batch never needs more memory than one image: XLA reports 66 MB of temporaries for 8
  images of 64x64, 34 MB for one of 128x128.
  Time per image, 11 classes, 10 iterations, on the 2-core CPU while other jobs ran: 0.4 s at
  64x64, 4 s at 96x96, 23 s at 128x128 (above 64x64 the N^2 exponentials, 85e6 at 96x96 and
  268e6 at 128x128, are evaluated in every iteration instead of once); on CPU, downsample
  anything above 64x64.
Above `max_pixels` (128x128 = 16,384 pixels, whose full kernel would take 1 GB and whose 10
iterations evaluate 2.7e9 exponentials) `dense_crf` refuses and names the `downsample` factor
that fits: the CRF then runs on a downsampled image and score map and its pairwise term is
upsampled back (boundaries are then placed to within about `downsample` pixels).
"""

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core.errors import UserError

# Defaults: DeepLab v2 (Chen et al., TPAMI 2017) describes the smoothness kernel as Krähenbühl &
# Koltun's w2 = 3, sigma_gamma = 3, cross-validates w1, sigma_alpha, sigma_beta on a 100-image
# subset of PASCAL VOC 2012 val and runs 10 mean-field iterations; the values its released
# ResNet-101 VOC model uses (and public reproductions keep) are w1 = 4, sigma_alpha = 67,
# sigma_beta = 3, w2 = 3, sigma_gamma = 1: those are the defaults here. sigma_gamma = 3 erases thin
# structures: on the offline digit scenes (64x64, strokes 3-6 px wide) it took the U-Net's test
# mean IoU from 0.85 to 0.09 (every digit turned background), sigma_gamma = 1 raised it
# (experiments/segmentation_table.py). The values are for ~500-pixel VOC images with colours in
# 0..255: scale theta_alpha with the image size (`scaled_theta_alpha`: 8.6 for 64-pixel images);
# theta_gamma (a few-pixel local smoothness) and theta_beta (a colour distance) do not depend on
# the size.
NUM_ITERATIONS = 10
W_APPEARANCE = 4.0
THETA_ALPHA = 67.0
THETA_BETA = 3.0
W_SMOOTHNESS = 3.0
THETA_GAMMA = 1.0
REFERENCE_SIZE = 500  # VOC images are at most 500x500

MAX_PIXELS = 128 * 128
_FULL_KERNEL_PIXELS = 64 * 64  # up to here the (N, N) appearance kernel is kept (<= 64 MB)
_ROWS_PER_BLOCK = 512


def scaled_theta_alpha(image_size: int, theta_alpha: float = THETA_ALPHA) -> float:
  """theta_alpha for `image_size`-pixel images, scaled from DeepLab's ~500-pixel VOC setting."""
  return theta_alpha * image_size / REFERENCE_SIZE


def _gaussian_matrix(n: int, theta: float) -> jax.Array:
  """(n, n) exp(-(a - b)^2 / (2 theta^2)) over positions a, b = 0..n-1."""
  pos = jnp.arange(n, dtype=jnp.float32)
  return jnp.exp(-jnp.square(pos[:, None] - pos[None, :]) / (2.0 * theta * theta))


def _bilateral_kernel(rows: jax.Array, features: jax.Array) -> jax.Array:
  """(R, N) exp(-|f_r - f_j|^2 / 2) of `rows` (R, D) against all `features` (N, D)."""
  # The difference form, not |a|^2 + |b|^2 - 2ab: colour features reach 255 / theta_beta = 85,
  # and the expanded form loses the small distances to cancellation (1e-3 absolute error in the
  # kernel, against 3e-9 here). One (R, N) term per feature keeps XLA:CPU from materialising an
  # (R, N, D) array: at 4096 pixels 0.19 s against 0.55 s for jnp.sum over a D axis, the 16.7 M
  # exps alone taking 0.15 s (2 busy cores).
  d2 = jnp.zeros((rows.shape[0], features.shape[0]), jnp.float32)
  for k in range(features.shape[1]):
    d2 = d2 + jnp.square(rows[:, k, None] - features[None, :, k])
  return jnp.exp(-0.5 * d2)


def _mean_field(
  unary: jax.Array,
  image: jax.Array,
  *,
  num_iterations: int,
  w_appearance: float,
  theta_alpha: float,
  theta_beta: float,
  w_smoothness: float,
  theta_gamma: float,
) -> jax.Array:
  """The final pairwise term sum_{j != i} k_ij Q_j, (H, W, C), for one image.

  unary: (H, W, C) log-probabilities (the negative unary energy); image: (H, W, D) in the units
  of theta_beta.
  """
  h, w, c = unary.shape
  n = h * w
  gy = _gaussian_matrix(h, theta_gamma)
  gx = _gaussian_matrix(w, theta_gamma)
  yy, xx = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing='ij'
  )
  features = jnp.concatenate(
    [jnp.stack([yy, xx], -1) / theta_alpha, image.astype(jnp.float32) / theta_beta], axis=-1
  ).reshape(n, -1)  # (N, 2 + D)

  if w_appearance == 0.0:

    def appearance(q):
      return q  # cancels with the self-interaction below

  elif n <= _FULL_KERNEL_PIXELS:
    kernel = _bilateral_kernel(features, features)  # (N, N), built once

    def appearance(q):  # q: (N, C)
      return kernel @ q

  else:

    def appearance(q):
      # Rebuilt block by block in every iteration: memory R x N instead of N x N.
      return lax.map(
        lambda row: _bilateral_kernel(row[None], features)[0] @ q,
        features,
        batch_size=_ROWS_PER_BLOCK,
      )

  def pairwise(q):  # (H, W, C) -> (H, W, C), self-interaction (k_ii = 1 in both kernels) removed
    smooth = jnp.einsum('hk,kwc->hwc', gy, q)
    smooth = jnp.einsum('wk,hkc->hwc', gx, smooth)
    app = appearance(q.reshape(n, c)).reshape(h, w, c)
    return w_appearance * (app - q) + w_smoothness * (smooth - q)

  def step(message, _):
    q = jax.nn.softmax(unary + message, axis=-1)
    return pairwise(q), None

  message, _ = lax.scan(step, jnp.zeros_like(unary), None, length=num_iterations)
  return message


def dense_crf(
  logits: jax.Array,
  images: jax.Array,
  *,
  num_iterations: int = NUM_ITERATIONS,
  w_appearance: float = W_APPEARANCE,
  theta_alpha: float = THETA_ALPHA,
  theta_beta: float = THETA_BETA,
  w_smoothness: float = W_SMOOTHNESS,
  theta_gamma: float = THETA_GAMMA,
  image_scale: float = 1.0,
  downsample: int = 1,
  max_pixels: int = MAX_PIXELS,
) -> jax.Array:
  """Refines per-pixel logits with a fully connected CRF (Krähenbühl & Koltun 2011; DeepLab).

  jit-able (all keyword arguments are static Python numbers); shapes are checked at trace time.

  Args:
    logits: (B, H, W, C) network scores; the unary energy is -log softmax(logits).
    images: (B, H, W, D) the images the scores belong to (D = 3 for RGB), same H and W (crop the
      image with `segmentation.center_crop` for a valid-padding U-Net). `images * image_scale` must
      be in 0..255 units, the scale of DeepLab's theta_beta = 3: image_scale=255 for images in
      [0, 1]; undo a mean/std normalisation before calling.
    num_iterations: mean-field iterations (DeepLab: 10).
    w_appearance, theta_alpha, theta_beta: weight, spatial std (pixels) and colour std (0..255
      units) of the appearance (bilateral) kernel. theta_alpha is for ~500-pixel images: see
      `scaled_theta_alpha`.
    w_smoothness, theta_gamma: weight and spatial std (pixels) of the smoothness kernel.
    image_scale: factor bringing `images` to 0..255.
    downsample: run the CRF on images and scores resized by 1/downsample (thetas in original
      pixels are divided by it) and upsample its pairwise term bilinearly; for images larger than
      `max_pixels`.
    max_pixels: largest number of pixels per image (after downsampling) for the exact dense
      appearance kernel.

  Returns:
    (B, H, W, C) float32 refined log-probabilities log Q (argmax: the labels; exp: the marginals).
    With both weights 0 this is log softmax(logits).
  """
  if logits.ndim != 4 or images.ndim != 4 or logits.shape[:3] != images.shape[:3]:
    raise UserError(
      f'dense_crf wants logits (B, H, W, C) and images (B, H, W, 3) of the same B, H, W; got '
      f'{tuple(logits.shape)} and {tuple(images.shape)} (a valid-padding U-Net: center-crop the '
      'images to the logits with cnn_jax.ops.segmentation.center_crop)'
    )
  if downsample < 1 or num_iterations < 0:
    raise UserError(
      f'dense_crf: downsample={downsample} and num_iterations={num_iterations}; expected '
      'downsample >= 1 and num_iterations >= 0'
    )
  _, h, w, c = logits.shape
  small = (math.ceil(h / downsample), math.ceil(w / downsample))
  if small[0] * small[1] > max_pixels:
    need = downsample
    while math.ceil(h / need) * math.ceil(w / need) > max_pixels:
      need += 1
    raise UserError(
      f'dense_crf: {h}x{w} images'
      + (f' downsampled by {downsample} ({small[0]}x{small[1]})' if downsample > 1 else '')
      + f' have {small[0] * small[1]} pixels, more than the {max_pixels} that the exact dense '
      'appearance kernel (pixels^2 entries per iteration) allows; pass '
      f'downsample={need} (the CRF then runs at {math.ceil(h / need)}x{math.ceil(w / need)})'
    )
  unary = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  mean_field = partial(
    _mean_field,
    num_iterations=num_iterations,
    w_appearance=w_appearance,
    theta_alpha=theta_alpha / downsample,
    theta_beta=theta_beta,
    w_smoothness=w_smoothness,
    theta_gamma=theta_gamma / downsample,
  )
  pixels = images.astype(jnp.float32) * image_scale

  def one_image(args):
    u, image = args
    if downsample == 1:
      return u + mean_field(u, image)
    u_small = jax.image.resize(u, (*small, c), 'linear')
    image_small = jax.image.resize(image, (*small, image.shape[-1]), 'linear')
    message = mean_field(jax.nn.log_softmax(u_small, axis=-1), image_small)
    return u + jax.image.resize(message, (h, w, c), 'linear')

  # One image at a time: the appearance kernel of one image is the memory peak.
  refined = lax.map(one_image, (unary, pixels))
  return jax.nn.log_softmax(refined, axis=-1)
