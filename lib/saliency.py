"""Explanations: gradient saliency family and Grad-CAM family, batched and differentiable.

All methods are pure JAX on image batches in [0, 1] (NHWC), jit-able, and differentiable
in ``x`` (so explanation attacks can take ``jax.grad`` through them; for ReLU networks
use the softplus surrogate of lib/models.py to get non-zero second derivatives).

Model-agnostic signatures (docs/DESIGN.md):
  * gradient methods take ``logits_fn(x) -> logits`` and return attributions shaped
    like ``x``;
  * CAM methods take ``features_fn(x) -> A`` (B, h, w, c) and ``head_fn(A) -> logits``
    and return maps (B, H, W) at input resolution (bilinear upsampling), or the raw
    (B, h, w) CAM with ``upsample=False``.
``target=None`` explains the predicted class; an int array (B,) explains given classes.
The target class is never differentiated through (it is a ``stop_gradient``-ed argmax).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lib import registry

Array = jax.Array
_TINY = 1e-12


def predicted_class(logits_fn, x) -> Array:
  return jax.lax.stop_gradient(jnp.argmax(logits_fn(x), axis=-1))


def _target(logits_fn, x, target):
  return predicted_class(logits_fn, x) if target is None else jnp.asarray(target)


def _class_score(logits, target):
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


def _score_grad(logits_fn, x, target):
  """d logit_target / dx, per example (the batch sum decouples in eval mode)."""
  return jax.grad(lambda xx: _class_score(logits_fn(xx), target).sum())(x)


# ----------------------------------------------------------------------------- gradients


def gradient(logits_fn, x, target=None) -> Array:
  """Vanilla gradient (Simonyan et al. 2014): d z_target / d x."""
  return _score_grad(logits_fn, x, _target(logits_fn, x, target))


def gradient_x_input(logits_fn, x, target=None) -> Array:
  """Gradient x input (Shrikumar et al. 2016)."""
  return x * gradient(logits_fn, x, target)


def _weighted_gradient_sums(logits_fn, target, point_fn, params, weights, chunk: int,
                            shift=None):
  """``sum_i w_i d_i`` and ``sum_i w_i d_i^2`` with ``d_i = grad(point_fn(params[i])) - shift``:
  the one loop behind SmoothGrad and Integrated Gradients. The points are evaluated
  ``chunk`` at a time (``vmap``) inside a rolled ``scan`` (padded with zero weights), so
  memory does not grow with their number."""
  pad = (-len(weights)) % chunk
  params = jnp.concatenate([params, jnp.zeros((pad,) + params.shape[1:], params.dtype)])
  weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])
  sample = point_fn(params[0])
  shift = jnp.zeros_like(sample) if shift is None else shift

  def body(acc, batch):
    p, w = batch
    d = jax.vmap(lambda pi: _score_grad(logits_fn, point_fn(pi), target))(p) - shift
    return (acc[0] + jnp.tensordot(w, d, axes=1), acc[1] + jnp.tensordot(w, d ** 2, axes=1)), None

  zeros = jnp.zeros_like(sample)
  sums, _ = jax.lax.scan(body, (zeros, zeros), (
      params.reshape((-1, chunk) + params.shape[1:]), weights.reshape(-1, chunk)))
  return sums


def smoothgrad(logits_fn, x, target=None, *, key, samples: int = 16, sigma: float = 0.1,
               mode: str = "mean", batch_samples: int = 4) -> Array:
  """SmoothGrad (Smilkov et al. 2017): gradients averaged over Gaussian noise.

  ``sigma`` is in pixel units (the data range is 1, so it is also the paper's noise
  level sigma / (x_max - x_min)). The noisy copies are evaluated ``batch_samples`` at a
  time (``vmap``) inside a ``scan``, so memory does not grow with ``samples``. ``mode``:
  ``"mean"`` (SmoothGrad), ``"squared"`` (SmoothGrad-squared, mean of g^2, Hooker et al.
  2019) or ``"var"`` (VarGrad, variance of g, Adebayo et al. 2018). The target is the
  class of the clean image. ``sigma = 0`` gives the plain gradient.
  """
  if mode not in ("mean", "squared", "var"):
    raise ValueError(f"mode must be 'mean', 'squared' or 'var', got {mode!r}")
  target = _target(logits_fn, x, target)
  noise = sigma * jax.random.normal(key, (samples,) + x.shape, x.dtype)
  # VarGrad sums squares of g - c with c the clean gradient (one more gradient), which
  # keeps E[(g - c)^2] - E[g - c]^2 free of cancellation
  shift = _score_grad(logits_fn, x, target) if mode == "var" else jnp.zeros_like(x)
  s1, s2 = _weighted_gradient_sums(logits_fn, target, lambda n: x + n, noise,
                                   jnp.full((samples,), 1.0 / samples, x.dtype),
                                   max(1, min(batch_samples, samples)), shift)
  if mode == "mean":
    return s1 + shift
  if mode == "squared":
    return s2
  return jnp.maximum(s2 - s1 ** 2, 0.0)


def integrated_gradients(logits_fn, x, target=None, *, steps: int = 64,
                         baseline: Optional[Array] = None, batch_points: int = 8) -> Array:
  """Integrated Gradients (Sundararajan et al. 2017) with the trapezoidal rule.

  (x - x') * integral_0^1 d z_target(x' + a (x - x')) / dx da over ``steps`` intervals;
  the baseline x' defaults to black (zeros). Path points are evaluated ``batch_points``
  at a time (``vmap``) inside a ``scan``. Completeness: the attributions sum to
  z(x) - z(x') up to the quadrature error.
  """
  target = _target(logits_fn, x, target)
  baseline = jnp.zeros_like(x) if baseline is None else jnp.broadcast_to(baseline, x.shape)
  alphas = jnp.linspace(0.0, 1.0, steps + 1, dtype=x.dtype)
  weights = jnp.ones(steps + 1, x.dtype).at[0].set(0.5).at[-1].set(0.5) / steps
  total, _ = _weighted_gradient_sums(logits_fn, target, lambda a: baseline + a * (x - baseline),
                                     alphas, weights, batch_points)
  return (x - baseline) * total


# ----------------------------------------------------------------------------- CAMs


def _cam_gradients(features_fn, head_fn, x, target):
  a = features_fn(x)
  if target is None:
    target = jax.lax.stop_gradient(jnp.argmax(head_fn(a), axis=-1))
  g = jax.grad(lambda aa: _class_score(head_fn(aa), jnp.asarray(target)).sum())(a)
  return a, g


def _finish_cam(cam, x, upsample: bool, relu: bool = True):
  if relu:
    cam = jax.nn.relu(cam)
  if not upsample:
    return cam
  return jax.image.resize(cam, (cam.shape[0],) + x.shape[1:3], "bilinear")


def grad_cam(features_fn, head_fn, x, target=None, *, upsample: bool = True,
             relu: bool = True) -> Array:
  """Grad-CAM (Selvaraju et al. 2017): ReLU(sum_c alpha_c A_c), alpha_c the spatial mean
  of d y_target / d A_c. With a global-average-pool + linear head, alpha_c is the class's
  output weight / (h w), so Grad-CAM equals CAM (Zhou et al. 2016) up to scale.
  ``relu=False`` returns the map before its final ReLU."""
  a, g = _cam_gradients(features_fn, head_fn, x, target)
  weights = g.mean(axis=(1, 2))                           # (B, c)
  return _finish_cam(jnp.einsum("bhwc,bc->bhw", a, weights), x, upsample, relu)


def grad_cam_pp(features_fn, head_fn, x, target=None, *, upsample: bool = True,
                relu: bool = True) -> Array:
  """Grad-CAM++ (Chattopadhay et al. 2018, eq. 19 with the exponential output, as in
  the authors' and pytorch-grad-cam's implementations):
  alpha = g^2 / (2 g^2 + sum_ij A g^3), w_c = sum_ij alpha ReLU(g). ``relu=False``: the
  map before its final ReLU."""
  a, g = _cam_gradients(features_fn, head_fn, x, target)
  g2, g3 = g ** 2, g ** 3
  denom = 2.0 * g2 + a.sum(axis=(1, 2), keepdims=True) * g3
  alpha = jnp.where(g != 0, g2 / jnp.where(denom != 0, denom, 1.0), 0.0)
  weights = (alpha * jax.nn.relu(g)).sum(axis=(1, 2))
  return _finish_cam(jnp.einsum("bhwc,bc->bhw", a, weights), x, upsample, relu)


# ----------------------------------------------------------------------------- post-processing


def reduce_channels(attr: Array, mode: str = "max_abs") -> Array:
  """(B, H, W, C) attributions -> (B, H, W) maps: ``max_abs`` (max over channels of |g|,
  Simonyan et al.), ``abs_sum``, ``sum`` (signed) or ``abs`` (C = 1)."""
  if attr.ndim == 3:
    return attr
  if mode == "max_abs":
    return jnp.abs(attr).max(axis=-1)
  if mode == "abs_sum":
    return jnp.abs(attr).sum(axis=-1)
  if mode == "sum":
    return attr.sum(axis=-1)
  if mode == "abs":
    return jnp.abs(attr[..., 0])
  raise ValueError(f"Unknown channel reduction {mode!r}")


def normalize(maps: Array) -> Array:
  """Per-example min-max scaling to [0, 1] (0 where a map is constant)."""
  flat = maps.reshape(maps.shape[0], -1)
  lo = flat.min(axis=1, keepdims=True)
  hi = flat.max(axis=1, keepdims=True)
  return ((flat - lo) / jnp.maximum(hi - lo, _TINY)).reshape(maps.shape)


def clip_percentile(maps: Array, q: float = 99.0) -> Array:
  """Clips each map at its q-th percentile and rescales to [0, 1] (for display)."""
  flat = maps.reshape(maps.shape[0], -1)
  hi = jnp.percentile(flat, q, axis=1, keepdims=True)
  lo = flat.min(axis=1, keepdims=True)
  return (jnp.clip(flat, lo, hi) - lo).reshape(maps.shape) / jnp.maximum(hi - lo, _TINY).reshape(
      (-1,) + (1,) * (maps.ndim - 1))


# ----------------------------------------------------------------------------- registry
# Every method as one registered function ``(fns, x, target, *, key, **options) -> (B, H, W)``
# with the paper's post-processing (|.| max over channels for gradient methods, ReLU-ed
# CAMs; not normalised). ``fns`` is a :class:`lib.models.ModelFns` (``logits_fn``, and
# ``features_fn``/``head_fn`` for CAMs). Metadata: ``family`` ("gradient" or "cam") and
# ``attackable`` (explanation attacks may target it; lib/explanation_attacks.py). A CAM
# takes ``relu`` (False: the map before its final ReLU, which explanation attacks use).

METHODS = registry.Registry("explanation method", fixed=("key",))


def register_method(name: str, *, family: str = "gradient", attackable: bool = False,
                    replace: bool = False):
  """Decorator: registers an explanation method for ``explain.py``, studies and (with
  ``attackable``) explanation attacks. Its keyword-only arguments but ``key`` are options
  that configs pass by name (``smoothgrad_samples``, ``ig_steps``, ...)."""
  if family not in ("gradient", "cam"):
    raise ValueError(f"family must be 'gradient' or 'cam', got {family!r}")
  return METHODS.register(name, family=family, attackable=attackable, replace=replace)


# The gradient methods' option ``channels``: how an RGB attribution becomes one map
# (:func:`reduce_channels`; the maps are magnitudes, so the signed ``sum`` is not offered).
CHANNEL_REDUCTIONS = ("max_abs", "abs_sum")


@register_method("gradient", attackable=True)
def _gradient_map(fns, x, target, *, channels: str = "max_abs"):
  return reduce_channels(gradient(fns.logits_fn, x, target), channels)


@register_method("gradient_x_input")
def _gradient_x_input_map(fns, x, target, *, channels: str = "max_abs"):
  return reduce_channels(gradient_x_input(fns.logits_fn, x, target), channels)


def _smoothgrad_map(mode):
  def method(fns, x, target, *, key, smoothgrad_samples: int = 16, smoothgrad_sigma: float = 0.1,
             channels: str = "max_abs"):
    return reduce_channels(smoothgrad(fns.logits_fn, x, target, key=key, samples=smoothgrad_samples,
                                      sigma=smoothgrad_sigma, mode=mode), channels)
  method.__doc__ = f"SmoothGrad family, mode {mode!r} (:func:`smoothgrad`)."
  return method


register_method("smoothgrad", attackable=True)(_smoothgrad_map("mean"))
register_method("smoothgrad_sq")(_smoothgrad_map("squared"))
register_method("vargrad")(_smoothgrad_map("var"))


@register_method("integrated_gradients")
def _integrated_gradients_map(fns, x, target, *, ig_steps: int = 64, channels: str = "max_abs"):
  return reduce_channels(integrated_gradients(fns.logits_fn, x, target, steps=ig_steps), channels)


@register_method("grad_cam", family="cam", attackable=True)
def _grad_cam_map(fns, x, target, *, relu: bool = True):
  return grad_cam(fns.features_fn, fns.head_fn, x, target, relu=relu)


@register_method("grad_cam_pp", family="cam", attackable=True)
def _grad_cam_pp_map(fns, x, target, *, relu: bool = True):
  return grad_cam_pp(fns.features_fn, fns.head_fn, x, target, relu=relu)


def explain(method: str, fns, x, target=None, *, key=None, **options) -> Array:
  """One (B, H, W) map per image for a registered method (:data:`METHODS`), with the
  paper's post-processing: |.| max over channels for gradient methods (``channels=
  "abs_sum"``: the sum of |.| over channels instead), ReLU-ed CAMs; not normalised.
  ``options`` (``smoothgrad_samples``, ``smoothgrad_sigma``, ``ig_steps``, ``channels``,
  ...) go to the methods that take them; others ignore them."""
  entry = METHODS[method]
  return entry(fns, x, target, key=key,
               params={k: v for k, v in options.items() if k in entry.params})
