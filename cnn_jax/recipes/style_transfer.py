"""Neural style transfer (Gatys, Ecker & Bethge 2015, "A Neural Algorithm of Artistic Style").

A generated image G is optimised pixel by pixel, with a trained CNN held fixed, to minimise

  J(G) = alpha * J_content(C, G) + beta * J_style(S, G)                        (note 004)

The costs, their formulas and normalisations (the course note's and Gatys et al.'s) are array
maths in cnn_jax/ops/style.py. G starts as white noise (the note) or as the content image, and
its pixels are updated to lower J(G) ("G의 픽셀값 업데이트"): here with optax's Adam (or L-BFGS,
Gatys et al.'s optimiser).

Layers are named either by the model's feature dict (`model(x, features=True)`: 'stem',
'stage1', ..., 'pool3') or by a submodule's path ('conv4_2', 'stage2_block1', 'stage2_block1/bn1':
the output of that submodule's `__call__`, captured with flax's `capture_intermediates`). A
trailing ':relu' applies a ReLU to it: a conv module's own output is before its ReLU, while Gatys
et al. (on Caffe's in-place ReLUs) read the rectified maps, so their VGG layers are
'conv4_2:relu' and 'conv{1..5}_1:relu' here (`GATYS_VGG`). `layer_names` lists a model's names.
Features are always computed in eval mode (BatchNorm's running statistics, no dropout), so an
image's features do not depend on the rest of its batch.

Measured on the trained offline vgg11_bn (runs/offline/vgg11_bn: digits at 32x32, grey tiled to
RGB, 92.2% test accuracy after 55 steps), content 'bn3_2:relu', style 'bn{1..5}_1:relu' with
equal weights, a digit as C and orange/cyan diagonal stripes as S, G started from C, 2-core CPU
shared with another job:
- the note's normalisation makes wide layers dominate and drowns the content term: J_style^[l](S, C)
  was 193 at bn1_1 (64 channels) and 4.3e3-7.2e3 at bn3_1-bn5_1 (256-512 channels), against
  0.017-0.11 with 'gatys'. With alpha = 10, beta = 40 and 'notes', beta J_style started at 1.5e5
  and alpha J_content ended at 1.7 (Adam, 200 steps): the content was lost. With 'gatys' the two
  terms balance and the digit stays visible: J fell from 2.44 to 1.27 in 300 Adam steps (lr 0.05,
  55.7 s wall, compile included).
- L-BFGS (optax.lbfgs, zoom line search, clipping after each step) reached 1.29 in 100 steps
  (44.0 s wall): better per step, about the same per second. Adam is the default.
- style alone (alpha = 0) from white noise: J_style fell from 0.0225 to 0.0016 in 300 steps and
  stripes of S's two colours and direction appeared in G.

`extract_features` gives the activations the costs take (jnp, jit-friendly); `stylise` runs the
whole optimisation and returns host arrays; `save_png` and `save_loss_curve` write the results.
"""

import inspect
import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from cnn_jax.core.errors import UserError, close_matches
from cnn_jax.ops.style import check_normalisation, check_weights, total_cost

PyTree = Any
Features = dict[str, jax.Array]

RELU = ':relu'
INITS = ('content', 'noise')
OPTIMIZERS = ('adam', 'lbfgs')

# Gatys et al. 2015 on VGG-19 (Section 2 / Fig. 2): content on conv4_2, style on conv1_1 ...
# conv5_1, all rectified. The same names exist in this codebase's vgg16 / vgg19 (no BatchNorm).
GATYS_VGG = {
  'content_layer': 'conv4_2' + RELU,
  'style_layers': tuple(f'conv{s}_1{RELU}' for s in range(1, 6)),
}


# ---------------------------------------------------------------------------------------------
# Features of a registered backbone


def _accepts_features(model: nn.Module) -> bool:
  return 'features' in inspect.signature(type(model).__call__).parameters


def _split(layer: str) -> tuple[str, bool]:
  """('conv4_2', True) for 'conv4_2:relu'."""
  return (layer[: -len(RELU)], True) if layer.endswith(RELU) else (layer, False)


def _apply(
  model: nn.Module, variables: PyTree, x: jax.Array, paths: Any
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """({feature name: array}, {module path: output}) of one eval-mode forward pass.

  `paths`: True for every submodule, else a set of module paths to capture.
  """
  if paths is True:
    capture = True
  else:
    capture = lambda mdl, method: method == '__call__' and '/'.join(mdl.path) in paths
  kwargs = {'features': True} if _accepts_features(model) else {}
  out, state = model.apply(
    variables,
    x,
    train=False,
    capture_intermediates=capture,
    mutable=['intermediates'],
    **kwargs,
  )
  features = out if isinstance(out, dict) else {}
  captured = {}
  flat = traverse_util.flatten_dict(dict(state.get('intermediates', {})), sep='/')
  for key, outputs in flat.items():
    path = key.removesuffix('__call__').rstrip('/')
    if path and isinstance(outputs, tuple) and outputs and hasattr(outputs[-1], 'shape'):
      captured[path] = outputs[-1]  # a submodule called more than once: its last output
  return features, captured


def layer_names(
  model: nn.Module, input_shape: tuple[int, int, int], variables: PyTree | None = None
) -> list[str]:
  """Names `extract_features` accepts for `model` on (H, W, C) inputs: those with a 4-D output.

  Feature-dict names first (in the model's order), then submodule paths, sorted; each also
  accepts the ':relu' suffix. Traced with jax.eval_shape: no compute, no memory.
  """
  x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)

  def trace(x, variables):
    if variables is None:
      variables = model.init(jax.random.key(0), x, train=False)
    return _apply(model, variables, x, True)

  features, captured = jax.eval_shape(trace, x, variables)
  names = [k for k, v in features.items() if len(v.shape) == 4]
  return names + sorted(k for k, v in captured.items() if len(v.shape) == 4 and k not in names)


def check_layers(
  model: nn.Module,
  input_shape: tuple[int, int, int],
  layers: Sequence[str],
  variables: PyTree | None = None,
) -> None:
  """Raises UserError naming the first layer of `layers` that `model` lacks (no compute)."""
  known = layer_names(model, input_shape, variables)
  for layer in layers:
    name, _ = _split(layer)
    if name not in known:
      raise UserError(
        f"{type(model).__name__} has no 4-D layer '{name}' on {tuple(input_shape)} inputs; "
        f'closest: {close_matches(name, known) or "none"} '
        '(cnn_jax.recipes.style_transfer.layer_names lists them all)'
      )


def extract_features(
  model: nn.Module, variables: PyTree, x: jax.Array, layers: Sequence[str]
) -> Features:
  """{layer: (B, H_l, W_l, C_l) float32} of `model` on `x` in eval mode (jnp, jit-friendly).

  A layer is a key of the model's `features=True` dict or a submodule path (its `__call__`
  output); ':relu' appended applies a ReLU. A name that is both (VGG's 'pool3') reads the dict.
  Everything not needed for `layers` (the classifier, later stages) is dead code under jit.

  Args:
    model: a registered backbone (cnn_jax.models.create).
    variables: its {'params', 'batch_stats', ...}.
    x: (B, H, W, C) input in the model's normalisation.
    layers: names as `layer_names` lists them, with or without ':relu'.
  """
  wanted = {_split(layer)[0] for layer in layers}
  features, captured = _apply(model, variables, x, wanted)
  out = {}
  for layer in layers:
    name, relu = _split(layer)
    if name in features:
      a = features[name]
    elif name in captured:
      a = captured[name]
    else:
      raise UserError(
        f"{type(model).__name__} has no layer '{name}'; closest: "
        f'{close_matches(name, [*features, *captured]) or "none"} '
        '(cnn_jax.recipes.style_transfer.layer_names lists them all)'
      )
    if a.ndim != 4:
      raise UserError(
        f"layer '{name}' gives shape {tuple(a.shape)}; style transfer needs a (B, H, W, C) "
        'feature map (a conv layer, not a pooled or dense one)'
      )
    a = a.astype(jnp.float32)
    out[layer] = nn.relu(a) if relu else a
  return out


# ---------------------------------------------------------------------------------------------
# The optimisation


def _as_batch(image: Any, what: str) -> np.ndarray:
  image = np.asarray(image, np.float32)
  if image.ndim == 3:
    image = image[None]
  if image.ndim != 4:
    raise UserError(f'{what} image has shape {image.shape}; expected (H, W, C) or (B, H, W, C)')
  if image.size == 0 or not np.all(np.isfinite(image)):
    raise UserError(f'{what} image is empty or holds NaN / inf values')
  lo, hi = float(image.min()), float(image.max())
  if lo < 0.0 or hi > 1.0:
    raise UserError(
      f'{what} image pixels lie in [{lo:.3g}, {hi:.3g}]; give pixels in [0, 1] (uint8 / 255), '
      'before the model normalisation (stylise applies mean / std itself)'
    )
  return image


def _channel_stats(value: Any, channels: int, what: str) -> np.ndarray:
  v = np.atleast_1d(np.asarray(value, np.float32))
  if v.ndim != 1 or len(v) not in (1, channels) or not np.all(np.isfinite(v)):
    raise UserError(f'{what}={value!r}; expected one number or one per channel ({channels})')
  if what == 'std' and not np.all(v > 0):
    raise UserError(f'std={value!r}; every channel std must be > 0')
  return np.broadcast_to(v, (channels,)).copy()


def _check_options(
  *, alpha: float, beta: float, steps: int, lr: float, init: str, optimizer: str
) -> None:
  if init not in INITS:
    raise UserError(
      f"init={init!r}; expected 'content' (start from C) or 'noise' (white noise, note 004)"
    )
  if optimizer not in OPTIMIZERS:
    raise UserError(f'optimizer={optimizer!r}; expected one of {OPTIMIZERS}')
  if not isinstance(steps, int) or steps < 1:
    raise UserError(f'steps={steps!r}; expected a whole number of optimisation steps >= 1')
  if not (math.isfinite(lr) and lr > 0):
    raise UserError(f'lr={lr}; expected a learning rate > 0 (pixels in normalised units)')
  if not (math.isfinite(alpha) and math.isfinite(beta) and alpha >= 0 and beta >= 0):
    raise UserError(f'alpha={alpha}, beta={beta}; expected finite weights >= 0')
  if alpha == 0 and beta == 0:
    raise UserError('alpha and beta are both 0; J(G) would be 0 everywhere')


def _costs(
  x: jax.Array,
  variables: PyTree,
  content_features: Features,
  style_features: Features,
  *,
  model: nn.Module,
  layers: tuple[str, ...],
  cost_kwargs: dict[str, Any],
) -> dict[str, jax.Array]:
  """Scalar costs of the (B, H, W, C) normalised image x, summed over the batch."""
  generated = extract_features(model, variables, x, layers)
  costs = total_cost(content_features, style_features, generated, **cost_kwargs)
  return {k: jnp.sum(v) for k, v in costs.items()}


@partial(jax.jit, static_argnames=('costs_fn', 'tx'), donate_argnums=(0, 1))
def _adam_step(x, opt_state, variables, content_features, style_features, lo, hi, *, costs_fn, tx):
  """One optax update of the pixels, then the clip to the valid range; costs at the old x."""

  def loss(x):
    costs = costs_fn(x, variables, content_features, style_features)
    return costs['total'], costs

  (_, costs), grad = jax.value_and_grad(loss, has_aux=True)(x)
  updates, opt_state = tx.update(grad, opt_state, x)
  x = jnp.clip(optax.apply_updates(x, updates), lo, hi)
  return x, opt_state, costs


# No donation: optax's L-BFGS state holds one buffer in two places (XLA refuses to donate it twice).
@partial(jax.jit, static_argnames=('costs_fn', 'tx'))
def _lbfgs_step(x, opt_state, variables, content_features, style_features, lo, hi, *, costs_fn, tx):
  """One L-BFGS step with optax's zoom line search (it calls value_fn a few more times)."""

  def value_fn(x):
    return costs_fn(x, variables, content_features, style_features)['total']

  costs = costs_fn(x, variables, content_features, style_features)
  # Not value_and_grad_from_state: after the clip, the line search's cached value and gradient
  # belong to the unclipped point.
  value, grad = jax.value_and_grad(value_fn)(x)
  updates, opt_state = tx.update(grad, opt_state, x, value=value, grad=grad, value_fn=value_fn)
  x = jnp.clip(optax.apply_updates(x, updates), lo, hi)
  return x, opt_state, costs


def check_arguments(
  *,
  style_layers: Sequence[str],
  style_weights: Mapping[str, float] | None,
  alpha: float,
  beta: float,
  steps: int,
  lr: float,
  init: str,
  optimizer: str,
  content_lam: float | None,
  style_normalisation: str,
) -> dict[str, float]:
  """`stylise`'s checks of its options (no model, no images, no compute): a UserError naming the
  first bad one. Returns the style weights, 1 / len(style_layers) each where None."""
  _check_options(alpha=alpha, beta=beta, steps=steps, lr=lr, init=init, optimizer=optimizer)
  style_layers = tuple(style_layers)
  if not style_layers or len(set(style_layers)) != len(style_layers):
    raise UserError(f'style_layers={style_layers}; expected one or more distinct layer names')
  if style_weights is None:
    style_weights = {layer: 1.0 / len(style_layers) for layer in style_layers}
  check_weights(style_weights, style_layers)
  check_normalisation(style_normalisation)
  if content_lam is not None and not content_lam > 0:
    raise UserError(f'content_lam={content_lam}; expected a positive normaliser (or None)')
  return dict(style_weights)


def stylise(
  content: Any,
  style: Any,
  *,
  model: nn.Module,
  variables: PyTree,
  content_layer: str,
  style_layers: Sequence[str],
  style_weights: Mapping[str, float] | None = None,
  alpha: float = 10.0,
  beta: float = 40.0,
  steps: int = 200,
  lr: float = 0.05,
  init: str = 'content',
  seed: int = 0,
  mean: Any = 0.0,
  std: Any = 1.0,
  optimizer: str = 'adam',
  content_lam: float | None = None,
  style_normalisation: str = 'notes',
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """Minimises J(G) = alpha J_content(C, G) + beta J_style(S, G) over G's pixels (note 004).

  G lives in the model's input normalisation, (x - mean) / std, and is clipped after every
  update to the image of [0, 1] there. The step is jitted once; the loop makes no host sync (the
  costs are fetched at the end). All arguments are checked before anything is compiled.

  Args:
    content, style: (H, W, C) or (B, H, W, C) images in [0, 1] (before normalisation), of the
      same H, W, C; a style of batch 1 serves every content image.
    model, variables: the backbone (cnn_jax.models.create) and its trained variables; run in
      eval mode.
    content_layer: the layer l of J_content (see `layer_names`; ':relu' suffix allowed).
    style_layers: the layers of J_style.
    style_weights: {layer: lambda_l} for style_layers; None: 1 / len(style_layers) each.
    alpha, beta: J's weights (defaults 10 and 40; set them per backbone,
      the costs' scales differ by orders of magnitude between layers and networks).
    steps: optimisation steps.
    lr: Adam's learning rate, in normalised pixel units per step (ignored by L-BFGS, whose line
      search picks the step).
    init: 'content' (G starts as C) or 'noise' (uniform white noise in [0, 1], note 004).
    seed: the noise's seed.
    mean, std: the model's input normalisation, one value or one per channel (the dataset's
      DatasetSpec.mean / .std; grey datasets tiled to RGB use the grey value for all three).
    optimizer: 'adam' or 'lbfgs' (optax.lbfgs with its zoom line search).
    content_lam: J_content's lambda (None: 4 n_H n_W n_C).
    style_normalisation: 'notes' (1/(2 n_H n_W)^2) or 'gatys' (1/(2 n_H n_W n_C)^2).

  Returns:
    (image, losses): the generated image in [0, 1], shaped as `content`, as numpy; and
    {'total', 'content', 'style'}, each (steps + 1,) numpy float32 (summed over the batch):
    entry t is J of the image after t steps, so [0] is the start and [-1] the returned image.
    'content' and 'style' are the unweighted J_content and J_style.
  """
  style_layers = tuple(style_layers)
  style_weights = check_arguments(
    style_layers=style_layers,
    style_weights=style_weights,
    alpha=alpha,
    beta=beta,
    steps=steps,
    lr=lr,
    init=init,
    optimizer=optimizer,
    content_lam=content_lam,
    style_normalisation=style_normalisation,
  )
  squeeze = np.ndim(content) == 3
  c_img = _as_batch(content, 'content')
  s_img = _as_batch(style, 'style')
  if s_img.shape[1:] != c_img.shape[1:] or s_img.shape[0] not in (1, c_img.shape[0]):
    raise UserError(
      f'style image {s_img.shape} does not match content {c_img.shape}; resize the style image '
      'to the content size (e.g. jax.image.resize), same channels, batch 1 or the same batch'
    )
  channels = c_img.shape[-1]
  mean_v = _channel_stats(mean, channels, 'mean')
  std_v = _channel_stats(std, channels, 'std')
  layers = tuple(dict.fromkeys((content_layer, *style_layers)))
  check_layers(model, c_img.shape[1:], layers, variables)

  cost_kwargs = dict(
    content_layer=content_layer,
    style_weights=dict(style_weights),
    alpha=float(alpha),
    beta=float(beta),
    content_lam=content_lam,
    style_normalisation=style_normalisation,
  )
  costs_fn = partial(_costs, model=model, layers=layers, cost_kwargs=cost_kwargs)
  features = jax.jit(partial(extract_features, model), static_argnums=2)
  normalise = lambda img: jnp.asarray((img - mean_v) / std_v)
  content_features = features(variables, normalise(c_img), (content_layer,))
  style_features = features(variables, normalise(s_img), style_layers)
  lo, hi = jnp.asarray(-mean_v / std_v), jnp.asarray((1.0 - mean_v) / std_v)

  if init == 'content':
    x = normalise(c_img)
  else:
    # NumPy's generator on the host: XLA:CPU takes seconds to compile a jax.random draw.
    noise = np.random.default_rng(seed).uniform(size=c_img.shape).astype(np.float32)
    x = normalise(noise)
  if optimizer == 'adam':
    tx, step = optax.adam(lr), _adam_step
  else:
    tx, step = optax.lbfgs(), _lbfgs_step
  opt_state = tx.init(x)
  history = []
  for _ in range(steps):
    x, opt_state, costs = step(
      x, opt_state, variables, content_features, style_features, lo, hi, costs_fn=costs_fn, tx=tx
    )
    history.append(costs)
  history.append(jax.jit(costs_fn)(x, variables, content_features, style_features))
  history = jax.device_get(history)
  losses = {k: np.array([h[k] for h in history], np.float32) for k in ('total', 'content', 'style')}
  image = np.clip(np.asarray(x) * std_v + mean_v, 0.0, 1.0)
  return (image[0] if squeeze else image), losses


# ---------------------------------------------------------------------------------------------
# Output files


def save_png(image: Any, path: str) -> None:
  """Writes an (H, W, C) image in [0, 1] (C = 1 or 3) as an 8-bit PNG (values rounded)."""
  from PIL import Image

  image = np.asarray(image, np.float32)
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise UserError(f'save_png needs an (H, W, 1) or (H, W, 3) image, got shape {image.shape}')
  pixels = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format='PNG')


def save_loss_curve(losses: Mapping[str, Any], path: str, *, alpha: float, beta: float) -> None:
  """Plots alpha J_content, beta J_style and J against the step (log scale) into a PNG."""
  import matplotlib

  matplotlib.use('Agg')  # no screen on the machines this runs on
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  later = []
  for key, scale, label, line in (
    ('total', 1.0, 'J(G)', '--'),  # dashed: beta J_style often lies on it
    ('content', alpha, 'alpha J_content', '-'),
    ('style', beta, 'beta J_style', '-'),
  ):
    values = scale * np.asarray(losses[key], np.float64)
    ax.plot(np.arange(len(values)), values, line, label=label)
    later.append(values[1:])
  ax.set_yscale('log')
  # Started from C, J_content is 0 at step 0 (1e-13 in float32): the axis starts just below the
  # smallest later value, not a dozen decades below everything else.
  positive = np.concatenate(later)
  positive = positive[np.isfinite(positive) & (positive > 0)]
  if positive.size:
    ax.set_ylim(bottom=positive.min() / 2)
  ax.set_xlabel('step')
  ax.set_ylabel('cost')
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
