"""One projected-gradient engine and the named attacks built on it.

Every attack here maximises a per-example loss of the perturbed image inside a norm
ball around the clean image and inside the valid pixel range [0, 1]:

    x_{k+1} = Proj_{B(x, eps) ∩ [0,1]^n}( x_k + step(∇_x L(x_k)) )

The engine, :func:`projected_gradient`, takes one kind of objective,
``objective(x_adv, t) -> (loss, score, feasible)``, all (B,): the gradient follows
``loss``, each example's returned image is its best iterate by ``(feasible, score)`` and
``t = k / steps`` is the attack's progress. :func:`class_objective` wraps the class
losses (``"ce"`` cross-entropy, ``"margin"`` Carlini & Wagner 2017, ``"dlr"`` difference
of logits ratio, Croce & Hein 2020) into one (``feasible``: the attack succeeded), and
:func:`loss_objective` any ``x -> (B,)`` loss; the explanation attacks
(lib/explanation_attacks.py) are objectives too. The engine is parameterised by
  * the norm (``"linf"``, ``"l2"``),
  * the budget ``eps`` and the number of ``steps``,
  * a :class:`Step` rule: ``"sign"``, ``"normalized"`` (L2-normalised gradient),
    ``"momentum"`` (MI-FGSM, Dong et al. 2018), ``"adam"``, ``"apgd"`` (the step-size
    schedule with checkpoints of Croce & Hein 2020), its size and schedule,
  * :class:`Start`: at ``x``, random in the ball or a given point, restarts (per example
    the best over restarts is kept), the clean image as a candidate answer,
  * and whether the best iterate or the last one is returned.

``eps`` and the step size are traced, so a sweep over eps compiles once. ``steps`` and
``restarts`` are static (they set the loop lengths).

The named attacks (FGSM, BIM, PGD, MI-FGSM, APGD, uniform noise) are registered in
:data:`ATTACKS` with their parameters (lib/registry.py): a new attack is one decorated
function here or in your own module, and ``attack.py`` sweeps, labels, resume keys and
study columns follow from it (docs/EXTENDING.md).

Loops are ``lax.scan``s, rolled by default (``unroll`` option). On XLA:CPU a convolution's
input gradient inside a rolled loop body used to run about 10x slower than at top level
(docs/DESIGN.md, "XLA:CPU findings"), so attack loops were unrolled; the cause was the
kernel layout of JAX's transposed convolution, which :func:`lib.xla_cpu.conv_general_dilated`
avoids, and with it the rolled loop is as fast or faster and compiles in less time
(bench/RESULTS.md). A model of your own on CPU should build its convolutions with that
function (``nn.Conv(..., conv_general_dilated=xla_cpu.conv_general_dilated)``) or pass
``unroll=steps``.

Attacks are model-agnostic: they take ``logits_fn(x) -> logits``, any JAX function of
images in [0, 1]. Our models provide it in eval mode (BatchNorm running statistics, no
state update) through :func:`lib.models.model_fns`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from lib import registry

Array = jax.Array
# objective(x_adv, t) -> (loss, score, feasible), each (B,): see the module docstring.
Objective = Callable[[Array, Array], tuple]

NORMS = ("linf", "l2")
STEP_RULES = ("sign", "normalized", "momentum", "adam", "apgd")
STEP_SCHEDULES = ("constant", "cosine")
_TINY = 1e-12


# ----------------------------------------------------------------------------- losses


def cross_entropy(logits, y):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]


def margin(logits, y):
  """Carlini & Wagner's margin: max_{i != y} z_i - z_y (positive = misclassified)."""
  z_y = jnp.take_along_axis(logits, y[:, None], axis=1)[:, 0]
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  return others.max(axis=1) - z_y


def dlr(logits, y):
  """Difference of logits ratio (Croce & Hein 2020, eq. 5), invariant to logit scale.

  -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3). It needs at least three classes; with
  two, z_pi3 does not exist and the ratio degenerates to +-1, so the margin divided by
  the logit spread |z_1 - z_2| + 1 is used instead (scale-invariant up to the +1).
  """
  m = margin(logits, y)
  ordered = jnp.sort(logits, axis=1)[:, ::-1]
  if logits.shape[1] >= 3:
    return m / (ordered[:, 0] - ordered[:, 2] + _TINY)
  return m / (ordered[:, 0] - ordered[:, 1] + 1.0)


def targeted_dlr(logits, y, target):
  """Targeted difference of logits ratio (Croce & Hein 2020, APGD-T), maximised:
  (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2). The reference needs four classes (with fewer
  it stops with an index error); here three classes use the untargeted denominator
  z_pi1 - z_pi3, and two classes, where the only target is the other class and the attack
  is the untargeted one, the margin over the logit spread as in :func:`dlr`."""
  pick = lambda c: jnp.take_along_axis(logits, c[:, None], axis=1)[:, 0]
  gain = pick(target) - pick(y)
  ordered = jnp.sort(logits, axis=1)[:, ::-1]
  k = logits.shape[1]
  if k >= 4:
    return gain / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + _TINY)
  if k == 3:
    return gain / (ordered[:, 0] - ordered[:, 2] + _TINY)
  return gain / (ordered[:, 0] - ordered[:, 1] + 1.0)


CLASS_LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def _class_loss_fn(loss: Union[str, Callable]) -> Callable:
  if callable(loss):
    return loss
  if loss not in CLASS_LOSSES:
    raise ValueError(f"Unknown class loss {loss!r}; choose from {sorted(CLASS_LOSSES)}.")
  return CLASS_LOSSES[loss]


def logits_of(model) -> Callable[[Array], Array]:
  """``x -> logits`` of a :class:`lib.models.ModelFns` or of a plain logits function."""
  return getattr(model, "logits_fn", model)


def class_objective(logits_fn, y, loss: Union[str, Callable] = "ce",
                    targeted: bool = False) -> Objective:
  """The engine's objective of a class loss: ``loss`` away from ``y`` (towards it when
  ``targeted``) is both what the gradient follows and the score; ``feasible`` is the
  attack's success (misclassified, or classified as the target), so per example a
  successful iterate is kept over a higher-loss unsuccessful one. One forward pass gives
  all three."""
  fn, sign = _class_loss_fn(loss), (-1.0 if targeted else 1.0)

  def objective(x, t):
    del t
    logits = logits_fn(x)
    value = sign * fn(logits, y)
    pred = jnp.argmax(logits, axis=-1)
    return value, value, (pred == y) if targeted else (pred != y)
  return objective


def loss_objective(loss_fn: Callable[[Array], Array]) -> Objective:
  """The engine's objective of a plain per-example loss ``x -> (B,)`` (every iterate
  feasible, the score is the loss): e.g. TRADES' KL term in adversarial training."""
  def objective(x, t):
    del t
    value = loss_fn(x)
    return value, value, jnp.ones(value.shape, bool)
  return objective


# ----------------------------------------------------------------------------- geometry


def _per_example(fn, x):
  """``fn(flat, axis=1)`` per example, broadcastable against ``x`` (B, 1, 1, ...)."""
  return fn(x.reshape(x.shape[0], -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))


def _l2(a):
  """Per-example L2 norm, broadcastable against ``a``."""
  return _per_example(lambda f, axis: jnp.sqrt((f ** 2).sum(axis=axis)), a)


def _l2_normalise(a):
  return a / jnp.maximum(_l2(a), _TINY)


def lp_norm(delta, norm: str):
  """Per-example norm, shape (B,)."""
  if norm == "linf":
    return jnp.abs(delta.reshape(delta.shape[0], -1)).max(axis=1)
  return _l2(delta).reshape(-1)


def project(x, x_adv, eps, norm: str):
  """Projection onto the eps-ball around ``x`` (per example) intersected with [0, 1]."""
  delta = x_adv - x
  eps = _broadcast(eps, x)
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(_l2(delta), _TINY))
  return jnp.clip(x + delta, 0.0, 1.0)


def _broadcast(v, x):
  v = jnp.asarray(v, x.dtype)
  return v.reshape(v.shape + (1,) * (x.ndim - v.ndim)) if v.ndim else v


def random_start(key, x, eps, norm: str):
  """Uniform in the L-inf ball, or uniform in the L2 ball (direction x radius^(1/d))."""
  if norm == "linf":
    d = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * _broadcast(eps, x)
  else:
    k1, k2 = jax.random.split(key)
    g = _l2_normalise(jax.random.normal(k1, x.shape, x.dtype))
    dim = np.prod(x.shape[1:])
    r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    d = g * r * _broadcast(eps, x)
  return project(x, x + d, eps, norm)


def _ascent_direction(g, norm: str):
  """Steepest ascent for the norm: sign(g) for L-inf, g / ||g||_2 for L2."""
  if norm == "linf":
    return jnp.sign(g)
  return _l2_normalise(g)


# ----------------------------------------------------------------------------- the engine


@dataclasses.dataclass(frozen=True)
class Step:
  """How the engine steps. ``rule``: ``"sign"`` (steepest ascent for the norm:
  FGSM/BIM/PGD), ``"normalized"`` (the same for L2; for L-inf the L2-normalised gradient),
  ``"momentum"`` (MI-FGSM with decay ``momentum``), ``"adam"`` (Adam's bias-corrected
  m / sqrt(v) as the direction, the image-space optimiser of Dombrowski et al. 2019),
  ``"apgd"`` (Croce & Hein's schedule; ``size`` is ignored, the first step is 2 eps).
  ``size``: the step (scalar or (B,), traced; None: eps). ``schedule``: ``"constant"`` or
  ``"cosine"`` (decays from ``size`` to 0)."""
  rule: str = "sign"
  size: Any = None
  schedule: str = "constant"
  momentum: float = 1.0

  def __post_init__(self):
    if self.rule not in STEP_RULES:
      raise ValueError(f"step rule must be one of {STEP_RULES}, got {self.rule!r}")
    if self.schedule not in STEP_SCHEDULES:
      raise ValueError(f"step schedule must be one of {STEP_SCHEDULES}, got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class Start:
  """Where the engine starts. ``random``: uniformly in the ball (needs ``key``);
  ``x_init``: a given first iterate instead (projected onto the ball; e.g. per-example
  random starts that do not depend on how the batch is split over devices,
  lib/adversarial.py); ``restarts``: independent runs, per example the best is kept;
  ``clean_candidate``: the clean image competes as an answer (explanation attacks: it
  keeps its label by definition, so a returned image never does worse than none)."""
  random: bool = False
  restarts: int = 1
  x_init: Any = None
  clean_candidate: bool = False


def projected_gradient(objective: Objective, x: Array, *, eps, steps: int, norm: str = "linf",
                       step: Step = Step(), start: Start = Start(), key: Optional[Array] = None,
                       keep_best: bool = True, unroll: int = 1) -> Array:
  """Maximises an objective over the eps-ball around ``x`` intersected with [0, 1].

  Args:
    objective: ``(x_adv, t) -> (loss, score, feasible)``, each (B,), with ``t = k / steps``
      in [0, 1] (to anneal something over the attack, e.g. a softplus surrogate's beta).
      Each example's values must depend on that example only (true of any model in eval
      mode). The gradient follows ``loss``; the returned iterate is each example's best by
      ``(feasible, score)`` in lexicographic order. :func:`class_objective` and
      :func:`loss_objective` make one from a class loss or a plain loss.
    x: clean images in [0, 1].
    eps: budget (scalar or per-example (B,); traced).
    steps: number of gradient steps (static).
    norm: "linf" or "l2".
    step: the :class:`Step` rule, size and schedule.
    start: the :class:`Start`: random or given first iterate, restarts, clean candidate.
    key: PRNG key for random starts (restart r > 0 uses ``fold_in(key, r)``).
    keep_best: return each example's best iterate (else the last one).
    unroll: loop unrolling of the ``lax.scan`` (1: rolled; see the module docstring).

  Returns:
    adversarial images, same shape as ``x``, inside the ball and [0, 1].
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if start.random and key is None:
    raise ValueError("A random start needs a PRNG key (key=jax.random.key(0)).")
  if step.rule == "apgd" and start.clean_candidate:
    raise ValueError("step rule 'apgd' keeps its own best point; no clean_candidate.")
  eps = jnp.asarray(eps, x.dtype)
  step_size = jnp.asarray(eps if step.size is None else step.size, x.dtype)

  def loss_grad_aux(xa, t):
    """(loss, grad, score, feasible) at ``xa``."""
    def total(z):
      loss, score, feasible = objective(z, t)
      return loss.sum(), (loss, score, feasible)
    (_, (loss, score, feasible)), g = jax.value_and_grad(total, has_aux=True)(xa)
    return loss, g, score, feasible

  def one_run(start_key):
    if start.x_init is not None:
      x0 = project(x, start.x_init, eps, norm)
    else:
      x0 = random_start(start_key, x, eps, norm) if start.random else x
    if step.rule == "apgd":
      zero = jnp.zeros((), x.dtype)
      return _apgd(lambda xa: loss_grad_aux(xa, zero), x, x0, eps, steps, norm, unroll)
    if start.clean_candidate:
      _, score, feasible = objective(x, jnp.zeros((), x.dtype))
      init = (x, score, feasible)
    else:  # any evaluated iterate beats this placeholder
      init = (x0, jnp.full((x.shape[0],), -jnp.inf, x.dtype), jnp.zeros((x.shape[0],), bool))
    return _pgd(loss_grad_aux, objective, x, x0, init, eps, step_size, steps, norm, step,
                keep_best, unroll)

  # Restart r > 0 starts from fold_in(key, r): restart 0 is the single-start run, so more
  # restarts never do worse than one.
  best = one_run(key)
  for r in range(1, start.restarts):  # few restarts: a Python loop keeps the body unrolled
    cand = one_run(jax.random.fold_in(key, r) if key is not None else None)
    better = _lexicographic_better(cand[2], cand[1], best[2], best[1])
    best = tuple(jnp.where(_broadcast(better, c), c, b) for c, b in zip(cand, best))
  return best[0]


def _lexicographic_better(feasible, score, best_feasible, best_score):
  """A feasible candidate beats an infeasible one; otherwise the higher score wins."""
  return (feasible & ~best_feasible) | ((feasible == best_feasible) & (score > best_score))


def _pgd(loss_grad_aux, objective, x, x0, init, eps, step_size, steps, norm, step: Step,
         keep_best, unroll, adam_b1=0.9, adam_b2=0.999):
  """FGSM / BIM / PGD / MI-FGSM / Adam iterations; returns (x_adv, score, feasible)."""

  def body(carry, k):
    xa, m, v, bx, bs, bf = carry
    t = k.astype(x.dtype) / steps
    _, g, score, feasible = loss_grad_aux(xa, t)
    better = _lexicographic_better(feasible, score, bf, bs)
    bx = jnp.where(_broadcast(better, x), xa, bx)
    bs = jnp.where(better, score, bs)
    bf = jnp.where(better, feasible, bf)
    if step.rule == "momentum":  # MI-FGSM: accumulate L1-normalised gradients
      m = step.momentum * m + g / jnp.maximum(
          _per_example(lambda a, axis: jnp.abs(a).sum(axis=axis), g), _TINY)
      direction = _ascent_direction(m, norm)
    elif step.rule == "adam":
      m = adam_b1 * m + (1 - adam_b1) * g
      v = adam_b2 * v + (1 - adam_b2) * g ** 2
      kk = k.astype(x.dtype) + 1
      direction = (m / (1 - adam_b1 ** kk)) / (jnp.sqrt(v / (1 - adam_b2 ** kk)) + 1e-12)
      if norm == "l2":
        direction = _ascent_direction(direction, "l2")
    elif step.rule == "normalized":
      direction = _ascent_direction(g, "l2")
    else:
      direction = _ascent_direction(g, norm)
    alpha = _broadcast(step_size, x)
    if step.schedule == "cosine":
      alpha = alpha * 0.5 * (1 + jnp.cos(jnp.pi * t))
    xa = project(x, xa + alpha * direction, eps, norm)
    return (xa, m, v, bx, bs, bf), None

  zeros = jnp.zeros_like(x)
  carry = (x0, zeros, zeros) + tuple(init)
  (xa, _, _, bx, bs, bf), _ = jax.lax.scan(body, carry, jnp.arange(steps), unroll=unroll)
  _, score, feasible = objective(xa, jnp.asarray(1.0, x.dtype))
  if not keep_best:
    return xa, score, feasible
  better = _lexicographic_better(feasible, score, bf, bs)
  return (jnp.where(_broadcast(better, x), xa, bx), jnp.where(better, score, bs),
          jnp.where(better, feasible, bf))

def apgd_checkpoints(steps: int) -> np.ndarray:
  """Iterations where APGD may halve its step: p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2)."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  return np.unique(np.ceil(np.round(np.asarray(p[:-1]) * steps, 6)).astype(int))


def _apgd(loss_grad_aux, x, x0, eps, steps, norm, unroll, alpha=0.75, rho=0.75):
  """APGD (Croce & Hein 2020, Algorithm 1): momentum 0.75, step 2 eps halved at
  checkpoints where the loss stopped improving, restart from the highest-loss point.
  Returns ``(x_adv, score, feasible)``: each example's best iterate by ``(feasible, score)``,
  so an iterate that succeeded is returned even when a later one has a higher loss (as
  AutoAttack's reference returns its last misclassified iterate)."""
  checkpoints = apgd_checkpoints(steps)
  is_ckpt = np.zeros(steps + 1, bool)
  is_ckpt[checkpoints[checkpoints <= steps]] = True
  prev_ckpt = np.zeros(steps + 1, np.int32)  # iteration of the previous checkpoint
  last = 0
  for k in range(steps + 1):
    prev_ckpt[k] = last
    if is_ckpt[k] and k > 0:
      last = k
  b = x.shape[0]
  eta0 = 2.0 * jnp.broadcast_to(eps, (b,)).astype(x.dtype)

  losses0, g0, score0, feas0 = loss_grad_aux(x0)
  x1 = project(x, x0 + _broadcast(eta0, x) * _ascent_direction(g0, norm), eps, norm)
  losses1, g1, score1, feas1 = loss_grad_aux(x1)
  better = losses1 > losses0
  first = _lexicographic_better(feas1, score1, feas0, score0)
  state = dict(
      ret_x=jnp.where(_broadcast(first, x), x1, x0), ret_score=jnp.where(first, score1, score0),
      ret_feasible=jnp.where(first, feas1, feas0),
      x=x1, x_prev=x0, g=g1, loss=losses1,
      best_x=jnp.where(_broadcast(better, x), x1, x0), best_loss=jnp.maximum(losses1, losses0),
      best_g=jnp.where(_broadcast(better, x), g1, g0),
      eta=eta0, n_increase=better.astype(jnp.int32),
      eta_at_ckpt=eta0, best_at_ckpt=losses0)

  def body(s, inputs):
    k, ckpt, since = inputs
    eta = _broadcast(s["eta"], x)
    z = project(x, s["x"] + eta * _ascent_direction(s["g"], norm), eps, norm)
    # x1 above was the plain first step; from here on momentum alpha = 0.75.
    xn = project(x, s["x"] + alpha * (z - s["x"]) + (1 - alpha) * (s["x"] - s["x_prev"]), eps, norm)
    loss_n, g_n, score_n, feas_n = loss_grad_aux(xn)
    ret = _lexicographic_better(feas_n, score_n, s["ret_feasible"], s["ret_score"])
    improved = loss_n > s["loss"]
    better = loss_n > s["best_loss"]
    best_x = jnp.where(_broadcast(better, x), xn, s["best_x"])
    best_g = jnp.where(_broadcast(better, x), g_n, s["best_g"])
    best_loss = jnp.maximum(loss_n, s["best_loss"])
    n_increase = s["n_increase"] + improved.astype(jnp.int32)
    # Checkpoint conditions (eq. 3 and 4 of the paper).
    cond1 = n_increase < rho * since
    cond2 = (s["eta_at_ckpt"] == s["eta"]) & (s["best_at_ckpt"] == best_loss)
    halve = ckpt & (cond1 | cond2)
    eta_new = jnp.where(halve, s["eta"] / 2.0, s["eta"])
    # After halving, restart from the best point (with its stored gradient).
    h = _broadcast(halve, x)
    new = dict(ret_x=jnp.where(_broadcast(ret, x), xn, s["ret_x"]),
               ret_score=jnp.where(ret, score_n, s["ret_score"]),
               ret_feasible=jnp.where(ret, feas_n, s["ret_feasible"]),
               x=jnp.where(h, best_x, xn), x_prev=jnp.where(h, best_x, s["x"]),
               g=jnp.where(h, best_g, g_n), loss=jnp.where(halve, best_loss, loss_n),
               best_x=best_x, best_g=best_g, best_loss=best_loss, eta=eta_new,
               n_increase=jnp.where(ckpt, 0, n_increase),
               eta_at_ckpt=jnp.where(ckpt, s["eta"], s["eta_at_ckpt"]),
               best_at_ckpt=jnp.where(ckpt, best_loss, s["best_at_ckpt"]))
    return new, None

  ks = np.arange(1, steps)
  since = (ks + 1 - prev_ckpt[ks + 1]).astype(np.float32)
  inputs = (jnp.asarray(ks), jnp.asarray(is_ckpt[ks + 1]), jnp.asarray(since))
  state, _ = jax.lax.scan(body, state, inputs, unroll=unroll)
  return state["ret_x"], state["ret_score"], state["ret_feasible"]



# ----------------------------------------------------------------------------- named attacks
# Registered with their parameters (lib/registry.py): the keyword-only arguments but
# ``eps``, ``key`` and ``surrogate_fns`` (which the caller supplies) are what a sweep's
# config entry may set. ``family`` says how the gradient-masking checks treat an attack:
# "single_step" (the reference iterative attacks must beat), "iterative", "gradient_free"
# (Square: much stronger than PGD means masked gradients), "baseline" (random noise, which
# every attack must beat), "explanation" (not checked: it keeps labels).

ATTACKS = registry.Registry("attack", fixed=("eps", "key", "surrogate_fns"))
FAMILIES = ("single_step", "iterative", "gradient_free", "baseline", "explanation")
_CLASS_LABEL = ("{loss}?", "{norm}?")
_ITERATIVE_LABEL = ("{steps}",) + _CLASS_LABEL


def register_attack(name: str, *, family: str = "iterative", label=_ITERATIVE_LABEL,
                    renamed=None, replace: bool = False):
  """Decorator: registers ``fn(model, x, y, *, eps, [key], **params) -> x_adv`` as attack
  ``name`` for ``attack.py`` sweeps and studies (``model``: a logits function or a
  :class:`lib.models.ModelFns`). ``label`` templates make its table name (lib/registry.py);
  ``family`` is one of :data:`FAMILIES`; ``renamed``: old parameter name -> new one, so
  an old config stops with the new name."""
  if family not in FAMILIES:
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
  return ATTACKS.register(name, label=label, family=family, renamed=dict(renamed or {}),
                          replace=replace)


def _step_size(eps, step_size, factor):
  return factor * eps if step_size is None else step_size


def _key(key):
  return jax.random.PRNGKey(0) if key is None else key


@register_attack("fgsm", family="single_step", label=_CLASS_LABEL)
def fgsm(model, x, y, *, eps, norm: str = "linf", targeted: bool = False, loss="ce"):
  """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps."""
  return projected_gradient(class_objective(logits_of(model), y, loss, targeted), x, eps=eps,
                            steps=1, norm=norm, step=Step(size=eps), keep_best=False)


@register_attack("bim")
def bim(model, x, y, *, eps, steps: int, step_size=None, step_size_factor: float = 0.25,
        norm: str = "linf", targeted: bool = False, loss="ce", unroll: int = 1):
  """Basic Iterative Method (Kurakin et al. 2017): iterated FGSM from x, last iterate;
  the step is ``step_size``, or ``step_size_factor`` x eps."""
  return projected_gradient(class_objective(logits_of(model), y, loss, targeted), x, eps=eps,
                            steps=steps, norm=norm,
                            step=Step(size=_step_size(eps, step_size, step_size_factor)),
                            keep_best=False, unroll=unroll)


@register_attack("pgd", label=_ITERATIVE_LABEL + ("r{restarts}?",))
def pgd(model, x, y, *, eps, steps: int, step_size=None, step_size_factor: float = 0.25,
        norm: str = "linf", random_start: bool = True, restarts: int = 1, key=None,
        targeted: bool = False, loss="ce", unroll: int = 1):
  """Projected Gradient Descent (Madry et al. 2018): random start in the ball, ``steps``
  steepest-ascent steps of ``step_size`` (or ``step_size_factor`` x eps), per example the
  best iterate over steps and restarts (a successful one first)."""
  return projected_gradient(class_objective(logits_of(model), y, loss, targeted), x, eps=eps,
                            steps=steps, norm=norm,
                            step=Step(size=_step_size(eps, step_size, step_size_factor)),
                            start=Start(random=random_start, restarts=restarts), key=_key(key),
                            unroll=unroll)


@register_attack("mifgsm")
def mifgsm(model, x, y, *, eps, steps: int, step_size=None, step_size_factor: float = 0.25,
           decay: float = 1.0, norm: str = "linf", targeted: bool = False, loss="ce",
           unroll: int = 1):
  """Momentum Iterative FGSM (Dong et al. 2018): sign of the accumulated L1-normalised
  gradient, decay ``decay``, last iterate."""
  return projected_gradient(class_objective(logits_of(model), y, loss, targeted), x, eps=eps,
                            steps=steps, norm=norm,
                            step=Step("momentum", _step_size(eps, step_size, step_size_factor),
                                      momentum=decay),
                            keep_best=False, unroll=unroll)


@register_attack("apgd", label=_ITERATIVE_LABEL + ("r{restarts}?",))
def apgd(model, x, y, *, eps, steps: int = 100, norm: str = "linf", loss="ce",
         restarts: int = 1, key=None, targeted: bool = False, unroll: int = 1):
  """Auto-PGD (Croce & Hein 2020): APGD-CE (``loss="ce"``) or APGD-DLR (``"dlr"``),
  parameter-free step size with checkpoints, best iterate, optional random restarts."""
  return projected_gradient(class_objective(logits_of(model), y, loss, targeted), x, eps=eps,
                            steps=steps, norm=norm, step=Step("apgd"),
                            start=Start(random=restarts > 1, restarts=restarts), key=_key(key),
                            unroll=unroll)


def apgd_targeted(model, x, y, *, eps, steps: int = 100, targets: int = 9, norm: str = "linf",
                  key=None, unroll: int = 1, active=None):
  """APGD-T (Croce & Hein 2020, AutoAttack's second attack): APGD on the targeted DLR loss
  (:func:`targeted_dlr`) towards the most likely wrong class of the clean image, then the
  second most likely, ... (``targets`` of them, at most K - 1), each run from a random
  start in the ball; per example the first image that is misclassified (as any wrong
  class), else the clean image. The targets are one ``lax.while_loop`` (one compiled
  body) that stops once every example is misclassified, as the reference runs each target
  only on the examples still robust. ``active`` (bool
  (B,)): the examples to attack (e.g. those APGD-CE left robust); the others are returned
  unchanged. With two classes this is one APGD run towards the other class."""
  logits_fn = logits_of(model)
  clean = logits_fn(x)
  wrong = jnp.where(jax.nn.one_hot(y, clean.shape[1], dtype=bool), -jnp.inf, clean)
  order = jnp.argsort(-wrong, axis=1)      # most likely wrong class first
  key = _key(key)
  done = jnp.argmax(clean, -1) != y
  if active is not None:
    done = done | ~active

  def run(state):
    i, x_adv, done = state
    target = order[:, i]

    def objective(xa, t):
      del t
      logits = logits_fn(xa)
      value = targeted_dlr(logits, y, target)
      return value, value, jnp.argmax(logits, -1) != y
    cand = projected_gradient(objective, x, eps=eps, steps=steps, norm=norm, step=Step("apgd"),
                              start=Start(random=True), key=jax.random.fold_in(key, i),
                              unroll=unroll)
    hit = ~done & (jnp.argmax(logits_fn(cand), -1) != y)
    return i + 1, jnp.where(_broadcast(hit, x), cand, x_adv), done | hit

  n = min(targets, clean.shape[1] - 1)   # one compiled body for every target
  _, x_adv, _ = jax.lax.while_loop(lambda st: (st[0] < n) & ~jnp.all(st[2]), run,
                                   (jnp.int32(0), x, done))
  return x_adv


@register_attack("apgd_t", label=("{steps}", "t{targets}", "{norm}?"))
def apgd_t(model, x, y, *, eps, steps: int = 100, targets: int = 9, norm: str = "linf",
           key=None, unroll: int = 1):
  """APGD-T on every example (:func:`apgd_targeted`), as a sweep entry."""
  return apgd_targeted(model, x, y, eps=eps, steps=steps, targets=targets, norm=norm, key=key,
                       unroll=unroll)


@register_attack("noise", family="baseline", label=("{norm}?",))
def uniform_noise(model, x, y, *, eps, norm: str = "linf", key=None):
  """Random perturbation uniform in the ball: the baseline every attack must beat."""
  del model, y
  return random_start(_key(key), x, eps, norm)


# Square and AutoAttack live beside this module and register themselves on import.
from lib import autoattack as _autoattack  # noqa: E402,F401  pylint: disable=wrong-import-position
