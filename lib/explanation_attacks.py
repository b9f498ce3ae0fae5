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

Objectives are registered in :data:`OBJECTIVES` (one decorated function ``clean maps ->
(map -> (B,))``; :func:`register_objective`), map methods come from
:data:`lib.saliency.METHODS` (those marked ``attackable``), and the attack itself is the
registered attack ``"explanation"`` of :data:`lib.attacks.ATTACKS`, so sweeps and
studies take new objectives and methods by name.

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

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from lib import attacks, metrics, registry, saliency

Array = jax.Array

MODES = ("keep", "flip")
_TINY = 1e-12


def map_methods() -> tuple:
  """The explanation methods an explanation attack may target."""
  return saliency.METHODS.names(attackable=True)


# ----------------------------------------------------------------------------- map measures
# Differentiable; Pearson, cosine and centre of mass are lib/metrics.py's (one
# implementation for jitted objectives and host-side tables).

pearson = metrics.pearson
cosine = metrics.cosine


def _flat(m):
  return m.reshape(m.shape[0], -1)


def _unit_mean(m):
  f = _flat(m)
  return f / (f.mean(1, keepdims=True) + _TINY)


DISSIMILARITIES = ("pearson", "cosine", "mse")


def dissimilarity(a, b, distance: str = "pearson") -> Array:
  """``1 - pearson``, ``1 - cosine`` or ``mse`` of the maps scaled to mean 1, per example."""
  if distance == "pearson":
    return 1.0 - pearson(a, b)
  if distance == "cosine":
    return 1.0 - cosine(a, b)
  if distance == "mse":
    return ((_unit_mean(a) - _unit_mean(b)) ** 2).mean(1)
  raise ValueError(f"Unknown map distance {distance!r}; use one of {DISSIMILARITIES}.")


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
  return metrics.center_of_mass(jnp.asarray(m), fraction=True)


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
# ``objective(m0, *, kind, top_k, target_map) -> (m -> (B,))`` to maximise, given the clean
# maps ``m0`` (fixed); each takes the options it needs.

OBJECTIVES = registry.Registry("explanation objective")


def register_objective(name: str, *, replace: bool = False):
  """Decorator: registers ``fn(m0, **options) -> (m -> (B,))``, a differentiable measure of
  how far the attacked map ``m`` got from the clean maps ``m0`` (higher = better attack);
  options among ``distance``, ``top_k``, ``target_map``."""
  return OBJECTIVES.register(name, replace=replace)


@register_objective("dissimilarity")
def _dissimilarity(m0, *, distance: str = "pearson"):
  """A distance between the clean and the attacked map (the BUSI Grad-CAM attack)."""
  return lambda m: dissimilarity(m, m0, distance)


@register_objective("top_k")
def _top_k(m0, *, top_k: float = 0.05):
  """Mass outside the clean map's top-k pixels (Ghorbani et al. 2019, "top-k attack")."""
  region = top_k_region(m0, top_k)
  return lambda m: 1.0 - mass_in(m, region)


@register_objective("center_of_mass")
def _center_of_mass(m0):
  """Distance between the maps' centres of mass in image sizes (Ghorbani et al. 2019)."""
  c0 = center_of_mass(m0)
  return lambda m: jnp.sqrt(((center_of_mass(m) - c0) ** 2).sum(1) + _TINY)


@register_objective("targeted")
def _targeted(m0, *, distance: str = "pearson", target_map=None):
  """Minus the distance to a target map (default :func:`displaced_blob`; Dombrowski et
  al. 2019, "manipulated explanations")."""
  target = displaced_blob(m0) if target_map is None else jax.lax.stop_gradient(target_map)
  return lambda m: -dissimilarity(m, target, distance)


def map_objective(objective: str, m0, **options) -> Callable[[Array], Array]:
  """``m -> (B,)`` to maximise, given the clean maps ``m0`` (fixed); ``options`` (``distance``,
  ``top_k``, ``target_map``) go to the objectives that take them."""
  entry = OBJECTIVES[objective]
  return entry(jax.lax.stop_gradient(m0),
               params={k: v for k, v in options.items() if k in entry.params})


def _maps_and_logits(method, fns, x, target, key, samples, sigma):
  """The map of ``method`` for classes ``target`` (None: the prediction) and the logits.

  CAMs come *before* their final ReLU: a CAM that is negative everywhere is ReLU-ed to a
  blank map, which has zero correlation with anything, so on the ReLU-ed map every
  dissimilarity has a degenerate optimum that blanks the map instead of moving it (seen
  on the tiny test model). On the raw CAM, a constant shift changes no correlation. One
  forward pass serves the CAM and the logits."""
  entry = saliency.METHODS[method]
  if entry.meta["family"] == "cam":
    a = fns.features_fn(x)
    shared = dataclasses.replace(fns, features_fn=lambda _: a)
    return entry(shared, x, target, params={"relu": False}), fns.head_fn(a)
  m = saliency.explain(method, fns, x, target, key=key, smoothgrad_samples=samples,
                       smoothgrad_sigma=sigma)
  return m, fns.logits_fn(x)


def explanation_objective(fns, x, y0, *, method: str = "grad_cam",
                          objective: str = "dissimilarity", mode: str = "keep",
                          distance: str = "pearson", ce_weight: float = 1.0, top_k: float = 0.05,
                          target_map=None, surrogate_fns=None, beta: float = 10.0,
                          beta_final: Optional[float] = None, key=None,
                          smoothgrad_samples: int = 4, smoothgrad_sigma: float = 0.1):
  """The engine's ``(x_adv, t) -> (loss, score, feasible)`` for one explanation attack.

  ``loss`` (what the gradient follows) is the objective of the surrogate's map (or the
  model's, without ``surrogate_fns``) -/+ ``ce_weight`` x CE(y0); ``score`` is the objective
  of the real model's map and ``feasible`` whether the real model keeps (``keep``) or
  leaves (``flip``) y0. ``surrogate_fns(beta) -> ModelFns`` gives the softplus copy; beta
  goes geometrically from ``beta`` to ``beta_final`` as t goes from 0 to 1.
  """
  if method not in map_methods():
    raise ValueError(f"Explanation attacks target {map_methods()}, not {method!r}.")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  key = jax.random.PRNGKey(0) if key is None else key  # SmoothGrad: the same noise every step
  explain = lambda f, xx, target: _maps_and_logits(method, f, xx, target, key,
                                                   smoothgrad_samples, smoothgrad_sigma)
  m0, _ = explain(fns, x, y0)
  measure = map_objective(objective, m0, distance=distance, top_k=top_k, target_map=target_map)
  map_target = y0 if mode == "keep" else None
  ce_sign = -1.0 if mode == "keep" else 1.0

  def objective_fn(x_adv, t):
    m, logits = explain(fns, x_adv, map_target)
    if surrogate_fns is not None:
      b = beta if beta_final is None else beta * (beta_final / beta) ** t
      m_grad, logits_grad = explain(surrogate_fns(b), x_adv, map_target)
    else:
      m_grad, logits_grad = m, logits
    loss = measure(m_grad) + ce_sign * ce_weight * attacks.cross_entropy(logits_grad, y0)
    kept = jnp.argmax(logits, -1) == y0
    feasible = kept if mode == "keep" else ~kept
    return loss, jax.lax.stop_gradient(measure(m)), feasible

  return objective_fn


def _label(p) -> list:
  """``grad_cam-keep-50``, ``gradient-top_k-30-softplus``, ``grad_cam-keep-50-adam-r3``..."""
  dissim = p["objective"] == "dissimilarity"
  parts = [p["method"], p["mode"] if dissim else p["objective"]]
  if not dissim and p["mode"] != "keep":
    parts.append(p["mode"])
  if p["distance"] != "pearson":
    parts.append(p["distance"])
  parts.append(str(p["steps"]))
  if p["step_rule"] != "sign":
    parts.append(p["step_rule"])
  if p["surrogate"]:
    parts.append("softplus")
  if p["norm"] != "linf":
    parts.append(p["norm"])
  if p["restarts"] > 1:
    parts.append(f"r{p['restarts']}")
  return parts


@attacks.register_attack("explanation", family="explanation", label=_label,
                         renamed={"kind": "distance"})
def explanation_attack(fns, x, y=None, *, eps, steps: int, step_size=None,
                       step_size_factor: float = 0.25, method: str = "grad_cam",
                       objective: str = "dissimilarity", mode: str = "keep",
                       distance: str = "pearson", ce_weight: float = 1.0, top_k: float = 0.05,
                       target_map=None, surrogate: bool = False, surrogate_fns=None,
                       beta: float = 10.0, beta_final: Optional[float] = None,
                       step_rule: str = "sign", step_schedule: str = "constant",
                       random_init: bool = True, restarts: int = 1, key=None,
                       norm: str = "linf", smoothgrad_samples: int = 4,
                       smoothgrad_sigma: float = 0.1, unroll: int = 1) -> Array:
  """Perturbs ``x`` within eps so that the ``method`` map changes (see the module doc).

  ``fns`` are the real model's :class:`lib.models.ModelFns` (``logits_fn`` and, for CAMs,
  ``features_fn``/``head_fn``); y0 is its prediction on ``x`` (``y`` is not used: the
  attack keeps or flips the model's own prediction). ``surrogate``: take the gradient
  through the softplus copy ``surrogate_fns(beta) -> ModelFns``
  (:func:`lib.models.surrogate_fns`). The step is ``step_size`` or ``step_size_factor`` x
  eps; the rest are the engine's options (:func:`lib.attacks.projected_gradient`).
  """
  del y
  if surrogate and surrogate_fns is None:
    raise ValueError("surrogate=True needs surrogate_fns (lib.models.surrogate_fns(model, "
                     "variables)).")
  key = jax.random.PRNGKey(0) if key is None else key
  y0 = saliency.predicted_class(fns.logits_fn, x)
  objective_fn = explanation_objective(
      fns, x, y0, method=method, objective=objective, mode=mode, distance=distance,
      ce_weight=ce_weight,
      top_k=top_k, target_map=target_map, surrogate_fns=surrogate_fns if surrogate else None,
      beta=beta, beta_final=beta_final, key=jax.random.fold_in(key, 1),
      smoothgrad_samples=smoothgrad_samples, smoothgrad_sigma=smoothgrad_sigma)
  size = step_size_factor * eps if step_size is None else step_size
  return attacks.projected_gradient(
      objective_fn, x, eps=eps, steps=steps, norm=norm,
      step=attacks.Step(step_rule, size, step_schedule),
      start=attacks.Start(random=random_init, restarts=restarts, clean_candidate=True),
      key=key, unroll=unroll)
