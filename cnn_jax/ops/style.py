"""Neural style transfer's costs (Gatys, Ecker & Bethge 2015; course note 004): array maths.

  J(G) = alpha * J_content(C, G) + beta * J_style(S, G)                        (note 004)

The formulas and normalisations follow the course notes (seeds/004, "[Neural Style Transfer]"):

- content cost on the activations a^[l] (n_H x n_W x n_C) of one hidden layer l:
    J_content(C, G) = 1/lambda * ||a^[l](C) - a^[l](G)||^2
  The note leaves lambda open; `content_cost` takes it as `lam` and defaults to
  lambda = 4 n_H n_W n_C (our choice: a quarter of the mean squared difference, so that the
  cost does not grow with the layer's size). Gatys et al. (eq. 1) use lambda = 2.
- style ("Gram") matrix of layer l, n_C x n_C: G_kk' = sum_i sum_j a_ijk a_ijk'.
- per-layer style cost, exactly as the note writes it (`normalisation='notes'`):
    J_style^[l](S, G) = 1/(2 n_H n_W)^2 * sum_k sum_k' (G_kk'^(S) - G_kk'^(G))^2
  Gatys et al. (eq. 4: 1/(4 N_l^2 M_l^2), N_l = n_C maps of M_l = n_H n_W positions) also
  divide by n_C^2: `normalisation='gatys'`, 1/(2 n_H n_W n_C)^2. With the
  note's form a layer's cost grows with its width, so wide layers dominate an equal weighting.
- J_style(S, G) = sum_l lambda_l J_style^[l](S, G) over several layers (Gatys et al. eq. 5, w_l;
  the note stops at the per-layer cost). The weights need not sum to 1: beta absorbs the scale.
  Default: equal weights 1/L, as Gatys et al.

Scaling the activations by k scales the content cost by k^2 and the style cost by k^4 (the Gram
matrix is quadratic in a), whichever normalisation.

Costs are jnp functions of batch-first (B, H, W, C) activations returning per-example (B,) values,
usable inside a jitted step. The features and the optimisation of G's pixels:
cnn_jax/recipes/style_transfer.py.
"""

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.core.errors import UserError

NORMALISATIONS = ('notes', 'gatys')


def _check_maps(name: str, *arrays: jax.Array) -> None:
  shapes = [tuple(a.shape) for a in arrays]
  if any(len(s) != 4 for s in shapes) or len(set(s[1:] for s in shapes)) > 1:
    raise UserError(
      f'{name} needs (B, H, W, C) activations of one shape (batch 1 broadcasts), got {shapes}'
    )


def gram_matrix(a: jax.Array) -> jax.Array:
  """Style matrix G_kk' = sum_i sum_j a_ijk a_ijk' per example (note 004; Gatys et al. eq. 3).

  Args:
    a: (B, H, W, C) activations of one layer; any float dtype (computed in float32).

  Returns:
    (B, C, C) float32 Gram matrices, unnormalised (a sum over the H * W positions).
  """
  _check_maps('gram_matrix', a)
  a = a.astype(jnp.float32)
  # HIGHEST: a GPU would otherwise run this float32 matmul in TF32 (10-bit mantissa), and the
  # style cost is a difference of two such sums.
  return jnp.einsum('bhwk,bhwl->bkl', a, a, precision=lax.Precision.HIGHEST)


def content_cost(a_c: jax.Array, a_g: jax.Array, *, lam: float | None = None) -> jax.Array:
  """J_content(C, G) = 1/lambda * ||a^[l](C) - a^[l](G)||^2 per example (note 004).

  Args:
    a_c: (B, H, W, C) (or batch 1) activations of the content image at layer l.
    a_g: (B, H, W, C) activations of the generated image at the same layer.
    lam: the note's lambda; None: 4 n_H n_W n_C (a quarter of the mean squared difference).
      Gatys et al.: 2.

  Returns:
    (B,) float32 costs; 0 where G's activations equal C's.
  """
  _check_maps('content_cost', a_c, a_g)
  _, h, w, c = a_g.shape
  if lam is None:
    lam = 4.0 * h * w * c
  elif not lam > 0:
    raise UserError(f'content_cost lam={lam}; expected a positive normaliser (or None)')
  diff = a_c.astype(jnp.float32) - a_g.astype(jnp.float32)
  return jnp.sum(jnp.square(diff), axis=(1, 2, 3)) / lam


def check_normalisation(normalisation: str) -> None:
  """A UserError unless `normalisation` is one of NORMALISATIONS."""
  if normalisation not in NORMALISATIONS:
    raise UserError(
      f'style normalisation={normalisation!r}; expected one of {NORMALISATIONS} '
      "('notes': 1/(2 n_H n_W)^2 as seeds/004 writes it, 'gatys': 1/(2 n_H n_W n_C)^2)"
    )


def _style_denominator(h: int, w: int, c: int, normalisation: str) -> float:
  """(2 n_H n_W)^2 (the note) or (2 n_H n_W n_C)^2 (Gatys et al.)."""
  check_normalisation(normalisation)
  return float((2 * h * w * (c if normalisation == 'gatys' else 1)) ** 2)


def layer_style_cost(a_s: jax.Array, a_g: jax.Array, *, normalisation: str = 'notes') -> jax.Array:
  """J_style^[l](S, G) = 1/(2 n_H n_W)^2 * sum_kk' (G_kk'^(S) - G_kk'^(G))^2 per example.

  As note 004 writes it (`normalisation='notes'`); 'gatys' divides by (2 n_H n_W n_C)^2 instead
  (Gatys et al. eq. 4, E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2).

  Args:
    a_s: (B, H, W, C) (or batch 1) activations of the style image at layer l.
    a_g: (B, H, W, C) activations of the generated image at layer l (the same H, W: the note's
      n_H n_W is one number for both images).
    normalisation: 'notes' or 'gatys'.

  Returns:
    (B,) float32 costs.
  """
  _check_maps('layer_style_cost', a_s, a_g)
  _, h, w, c = a_g.shape
  denominator = _style_denominator(h, w, c, normalisation)
  diff = gram_matrix(a_s) - gram_matrix(a_g)  # (B, C, C)
  return jnp.sum(jnp.square(diff), axis=(1, 2)) / denominator


def check_weights(weights: Mapping[str, float], layers: Sequence[str] | None = None) -> None:
  """A UserError unless the style weights are finite, >= 0, not all 0 (and, with `layers`, one
  per style layer)."""
  if not weights:
    raise UserError('style weights are empty; give at least one style layer with a weight > 0')
  if layers is not None and set(weights) != set(layers):
    raise UserError(
      f'style_weights names {sorted(weights)} but style_layers are {sorted(layers)}; '
      'give one weight per style layer'
    )
  bad = {k: v for k, v in weights.items() if not (math.isfinite(v) and v >= 0)}
  if bad:
    raise UserError(f'style weights {bad} must be finite and >= 0 (lambda_l of note 004)')
  if not sum(weights.values()) > 0:
    raise UserError('style weights are all 0; give at least one layer a weight > 0')


def style_cost(
  style_features: Mapping[str, jax.Array],
  generated_features: Mapping[str, jax.Array],
  weights: Mapping[str, float],
  *,
  normalisation: str = 'notes',
) -> jax.Array:
  """J_style(S, G) = sum_l lambda_l J_style^[l](S, G) per example (Gatys et al. eq. 5).

  Args:
    style_features: {layer: (B or 1, H, W, C)} activations of the style image.
    generated_features: {layer: (B, H, W, C)} activations of the generated image.
    weights: {layer: lambda_l >= 0}; every layer named must be in both feature dicts. They need
      not sum to 1 (Gatys et al. use 1/L each).
    normalisation: 'notes' or 'gatys' (see `layer_style_cost`).

  Returns:
    (B,) float32 costs.
  """
  check_weights(weights)
  missing = sorted(k for k in weights if k not in style_features or k not in generated_features)
  if missing:
    raise UserError(
      f'style weights name layers {missing} that the features lack (have '
      f'{sorted(generated_features)}); extract every style layer'
    )
  total = 0.0
  for layer, weight in weights.items():
    cost = layer_style_cost(
      style_features[layer], generated_features[layer], normalisation=normalisation
    )
    total = total + weight * cost
  return total


def total_cost(
  content_features: Mapping[str, jax.Array],
  style_features: Mapping[str, jax.Array],
  generated_features: Mapping[str, jax.Array],
  *,
  content_layer: str,
  style_weights: Mapping[str, float],
  alpha: float,
  beta: float,
  content_lam: float | None = None,
  style_normalisation: str = 'notes',
) -> dict[str, jax.Array]:
  """J(G) = alpha J_content(C, G) + beta J_style(S, G) (note 004; Gatys et al. eq. 7).

  Returns:
    {'total', 'content', 'style'}: (B,) float32 per example; 'content' and 'style' unweighted.
  """
  if content_layer not in content_features or content_layer not in generated_features:
    raise UserError(
      f'content_layer {content_layer!r} is missing from the features (have '
      f'{sorted(generated_features)}); extract it'
    )
  j_content = content_cost(
    content_features[content_layer], generated_features[content_layer], lam=content_lam
  )
  j_style = style_cost(
    style_features, generated_features, style_weights, normalisation=style_normalisation
  )
  return {'total': alpha * j_content + beta * j_style, 'content': j_content, 'style': j_style}
