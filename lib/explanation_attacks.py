"""Explanation attacks: imperceptible perturbations that change the map, not (or also) the label.

They are objectives on the one projected-gradient engine (:func:`lib.attacks.projected_gradient`),
not new loops. Each objective is a differentiable function of the map of the perturbed
image, computed by :func:`lib.saliency.explain` (second-order: ``jax.grad`` flows through
Grad-CAM or the gradient map), compared with the map of the clean image, which is fixed:

  * ``"dissimilarity"``: a distance between the clean and the attacked map, ``1 - pearson``,
    ``1 - cosine`` or the ``mse`` of the maps scaled to mean 1 (the Grad-CAM attack of the
    breast-ultrasound study).
  * ``"top_k"``: the share of the attacked map's mass that falls outside the clean map's
    top-k pixels (Ghorbani et al. 2019, "top-k attack").
  * ``"center_of_mass"``: the distance between the maps' centres of mass, in image sizes
    (Ghorbani et al. 2019, "mass-center attack").
  * ``"targeted"``: minus the distance to a given target map, e.g. a blob away from the
    lesion (:func:`displaced_blob`), which would mislead a biopsy location (Dombrowski et
    al. 2019, "manipulated explanations").

Two modes of the label:
  * ``"keep"``: the objective minus ``ce_weight`` x the cross-entropy toward the clean
    prediction y0; the map explains y0 throughout. The engine returns, per example, the
    iterate with the highest objective *among those whose prediction is still y0* (the
    clean image is one of them), so a returned image never changes its label.
  * ``"flip"``: the objective plus ``ce_weight`` x the cross-entropy away from y0; the map
    explains the current prediction. Iterates with a flipped label are preferred, then
    the higher objective.

Softplus surrogate. A ReLU network is piecewise linear, so its gradient map is piecewise
constant in x and has zero derivative almost everywhere: an attack on gradient saliency
(or SmoothGrad) gets no signal. Following Ghorbani et al. 2019 and Dombrowski et al. 2019,
the attack's gradient is taken through a copy of the same weights with every ReLU replaced
by softplus(beta) (``surrogate``, optionally with beta annealed geometrically from ``beta``
to ``beta_final``), while the acceptance test (label kept) and the choice of the best
iterate always use the real ReLU model. Grad-CAM is different: with a global-average-pool
+ linear head, Grad-CAM's channel weights are the class's output weights divided by h w,
so Grad-CAM equals CAM, a first-order function of x whose attack needs no second
derivatives; a prototype saw no gain from the surrogate there (median Spearman 0.85 vs
0.84 at eps 0.004). The surrogate matters for gradient saliency and for nonlinear heads.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lib import attacks, saliency

Array = jax.Array

MAP_METHODS = ("grad_cam", "grad_cam_pp", "gradient", "smoothgrad")
OBJECTIVES = ("dissimilarity", "top_k", "center_of_mass", "targeted")
MODES = ("keep", "flip")
_TINY = 1e-12


# ----------------------------------------------------------------------------- map measures
# Differentiable (jnp) counterparts of lib/metrics.py's host-side map metrics.


def _flat(m):
  return m.reshape(m.shape[0], -1)


def pearson(a, b) -> Array:
  """Per-example Pearson correlation of two batches of maps."""
  a, b = _flat(a), _flat(b)
  a = a - a.mean(1, keepdims=True)
  b = b - b.mean(1, keepdims=True)
  return (a * b).sum(1) / jnp.sqrt((a ** 2).sum(1) * (b ** 2).sum(1) + _TINY)


def cosine(a, b) -> Array:
  a, b = _flat(a), _flat(b)
  return (a * b).sum(1) / jnp.sqrt((a ** 2).sum(1) * (b ** 2).sum(1) + _TINY)


def _unit_mean(m):
  f = _flat(m)
  return f / (f.mean(1, keepdims=True) + _TINY)


def dissimilarity(a, b, kind: str = "pearson") -> Array:
  """``1 - pearson``, ``1 - cosine`` or ``mse`` of the maps scaled to mean 1, per example."""
  if kind == "pearson":
    return 1.0 - pearson(a, b)
  if kind == "cosine":
    return 1.0 - cosine(a, b)
  if kind == "mse":
    return ((_unit_mean(a) - _unit_mean(b)) ** 2).mean(1)
  raise ValueError(f"Unknown dissimilarity {kind!r}; use 'pearson', 'cosine' or 'mse'.")


def top_k_region(m, k: float) -> Array:
  """(B, H*W) boolean: the ``k`` (fraction of pixels) most salient pixels of each map."""
  f = _flat(m)
  count = max(1, int(round(k * f.shape[1])))
  kth = jax.lax.top_k(f, count)[0][:, -1:]
  return f >= kth


def mass_in(m, region) -> Array:
  """Share of each non-negative map's mass inside a (B, H*W) boolean region."""
  f = jnp.maximum(_flat(m), 0.0)
  return (f * region).sum(1) / (f.sum(1) + _TINY)


def center_of_mass(m) -> Array:
  """(B, 2) centre of mass (row, col) of non-negative maps, in fractions of the image size."""
  m = jnp.maximum(m, 0.0)
  total = m.sum(axis=(1, 2)) + _TINY
  rows = (jnp.arange(m.shape[1]) + 0.5) / m.shape[1]
  cols = (jnp.arange(m.shape[2]) + 0.5) / m.shape[2]
  return jnp.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], 1)


def displaced_blob(m0, sigma: float = 0.12) -> Array:
  """A target map for the targeted attack: a Gaussian blob (std ``sigma`` image sizes)
  centred on whichever quadrant centre lies farthest from the clean map's centre of mass,
  i.e. a confident explanation pointing away from where the model looked."""
  com = center_of_mass(m0)                                         # (B, 2)
  quadrants = jnp.asarray([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]], m0.dtype)
  far = jnp.argmax(((com[:, None, :] - quadrants[None]) ** 2).sum(-1), axis=1)
  centre = quadrants[far]                                          # (B, 2)
  rows = (jnp.arange(m0.shape[1]) + 0.5) / m0.shape[1]
  cols = (jnp.arange(m0.shape[2]) + 0.5) / m0.shape[2]
  d2 = ((rows[None, :, None] - centre[:, 0, None, None]) ** 2 +
        (cols[None, None, :] - centre[:, 1, None, None]) ** 2)
  return jnp.exp(-d2 / (2 * sigma ** 2))


# ----------------------------------------------------------------------------- objectives


def map_objective(objective: str, m0, *, kind: str = "pearson", top_k: float = 0.05,
                  target_map: Optional[Array] = None) -> Callable[[Array], Array]:
  """``m -> (B,)`` to maximise, given the clean maps ``m0`` (fixed)."""
  m0 = jax.lax.stop_gradient(m0)
  if objective == "dissimilarity":
    return lambda m: dissimilarity(m, m0, kind)
  if objective == "top_k":
    region = top_k_region(m0, top_k)
    return lambda m: 1.0 - mass_in(m, region)
  if objective == "center_of_mass":
    c0 = center_of_mass(m0)
    return lambda m: jnp.sqrt(((center_of_mass(m) - c0) ** 2).sum(1) + _TINY)
  if objective == "targeted":
    target = displaced_blob(m0) if target_map is None else jax.lax.stop_gradient(target_map)
    return lambda m: -dissimilarity(m, target, kind)
  raise ValueError(f"Unknown objective {objective!r}; choose from {OBJECTIVES}.")


def _maps_and_logits(method, fns, x, target, key, samples, sigma):
  """The map of ``method`` for classes ``target`` (None: the prediction) and the logits.

  CAMs come *before* their final ReLU: a CAM that is negative everywhere is ReLU-ed to a
  blank map, which has zero correlation with anything, so on the ReLU-ed map every
  dissimilarity has a degenerate optimum that blanks the map instead of moving it (seen
  on the tiny test model). On the raw CAM, a constant shift changes no correlation."""
  if method in ("grad_cam", "grad_cam_pp"):  # one forward pass serves both
    a = fns.features_fn(x)
    cam = saliency.grad_cam if method == "grad_cam" else saliency.grad_cam_pp
    return cam(lambda _: a, fns.head_fn, x, target, relu=False), fns.head_fn(a)
  m = saliency.explain(method, fns, x, target, key=key, smoothgrad_samples=samples,
                       smoothgrad_sigma=sigma)
  return m, fns.logits_fn(x)


def explanation_loss(fns, x, y0, *, method: str = "grad_cam", objective: str = "dissimilarity",
                     mode: str = "keep", kind: str = "pearson", ce_weight: float = 1.0,
                     top_k: float = 0.05, target_map=None, surrogate=None, beta: float = 10.0,
                     beta_final: Optional[float] = None, key=None, smoothgrad_samples: int = 4,
                     smoothgrad_sigma: float = 0.1):
  """The engine's ``(x_adv, t) -> (loss, score, feasible)`` for one explanation attack.

  ``loss`` (what the gradient follows) is the objective of the surrogate's map (or the
  model's, without ``surrogate``) -/+ ``ce_weight`` x CE(y0); ``score`` is the objective
  of the real model's map and ``feasible`` whether the real model keeps (``keep``) or
  leaves (``flip``) y0. ``surrogate(beta) -> ModelFns`` gives the softplus copy; beta
  goes geometrically from ``beta`` to ``beta_final`` as t goes from 0 to 1.
  """
  if method not in MAP_METHODS:
    raise ValueError(f"Unknown map method {method!r}; choose from {MAP_METHODS}.")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  key = jax.random.PRNGKey(0) if key is None else key  # SmoothGrad: the same noise every step
  explain = lambda f, xx, target: _maps_and_logits(method, f, xx, target, key,
                                                   smoothgrad_samples, smoothgrad_sigma)
  m0, _ = explain(fns, x, y0)
  measure = map_objective(objective, m0, kind=kind, top_k=top_k, target_map=target_map)
  map_target = y0 if mode == "keep" else None
  ce_sign = -1.0 if mode == "keep" else 1.0

  def loss_fn(x_adv, t):
    m, logits = explain(fns, x_adv, map_target)
    if surrogate is not None:
      b = beta if beta_final is None else beta * (beta_final / beta) ** t
      m_grad, logits_grad = explain(surrogate(b), x_adv, map_target)
    else:
      m_grad, logits_grad = m, logits
    loss = measure(m_grad) + ce_sign * ce_weight * attacks.cross_entropy(logits_grad, y0)
    kept = jnp.argmax(logits, -1) == y0
    feasible = kept if mode == "keep" else ~kept
    return loss, jax.lax.stop_gradient(measure(m)), feasible

  return loss_fn


def explanation_attack(fns, x, *, eps, step_size, steps: int, method: str = "grad_cam",
                       objective: str = "dissimilarity", mode: str = "keep",
                       kind: str = "pearson", ce_weight: float = 1.0, top_k: float = 0.05,
                       target_map=None, surrogate=None, beta: float = 10.0,
                       beta_final: Optional[float] = None, step_rule: str = "sign",
                       step_schedule: str = "constant", random_init: bool = True,
                       restarts: int = 1, key=None, norm: str = "linf",
                       smoothgrad_samples: int = 4, smoothgrad_sigma: float = 0.1,
                       unroll=None) -> Array:
  """Perturbs ``x`` within eps so that the ``method`` map changes (see the module doc).

  ``fns`` are the real model's :class:`lib.models.ModelFns` (``logits_fn`` and, for CAMs,
  ``features_fn``/``head_fn``); y0 is its prediction on ``x``. ``surrogate``: optional
  ``beta -> ModelFns`` of the softplus copy (:func:`lib.models.surrogate_fns`). The rest
  are the engine's arguments (:func:`lib.attacks.projected_gradient`).
  """
  key = jax.random.PRNGKey(0) if key is None else key
  y0 = saliency.predicted_class(fns.logits_fn, x)
  loss_fn = explanation_loss(
      fns, x, y0, method=method, objective=objective, mode=mode, kind=kind, ce_weight=ce_weight,
      top_k=top_k, target_map=target_map, surrogate=surrogate, beta=beta, beta_final=beta_final,
      key=jax.random.fold_in(key, 1), smoothgrad_samples=smoothgrad_samples,
      smoothgrad_sigma=smoothgrad_sigma)
  return attacks.projected_gradient(
      loss_fn, x, eps=eps, step_size=step_size, steps=steps, norm=norm, step_rule=step_rule,
      step_schedule=step_schedule, random_init=random_init, key=key, restarts=restarts,
      has_aux=True, progress_arg=True, unroll=unroll)
