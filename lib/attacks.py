"""One projected-gradient engine and the named attacks built on it.

Every attack here maximises a per-example loss of the perturbed image inside a norm
ball around the clean image and inside the valid pixel range [0, 1]:

    x_{k+1} = Proj_{B(x, eps) ∩ [0,1]^n}( x_k + step(∇_x L(x_k)) )

The engine, :func:`projected_gradient`, is parameterised by
  * the loss (``"ce"`` cross-entropy, ``"margin"`` Carlini & Wagner 2017, ``"dlr"``
    difference of logits ratio, Croce & Hein 2020, or any ``x -> (B,)`` function: the
    explanation attacks are such functions),
  * the norm (``"linf"``, ``"l2"``),
  * the step rule (``"sign"``, ``"normalized"`` (L2-normalised gradient), ``"momentum"``
    (MI-FGSM, Dong et al. 2018), ``"apgd"`` (the step-size schedule with checkpoints of
    Croce & Hein 2020)),
  * random start, restarts (per example the worst case over restarts is kept), targeted
    or untargeted, and whether the best iterate or the last one is returned.

``eps`` and ``step_size`` are traced, so a sweep over eps compiles once. ``steps`` and
``restarts`` are static (they set the loop lengths).

Loops are ``lax.scan``s, rolled by default (``unroll`` option). On XLA:CPU a convolution's
input gradient inside a rolled loop body used to run about 10x slower than at top level
(DESIGN.md, "measured pitfall"), so attack loops were unrolled; the cause was the kernel
layout of JAX's transposed convolution, which :func:`lib.models.conv_general_dilated` now
avoids, and with it the rolled loop is as fast or faster and compiles in less time
(bench/RESULTS.md). A model of your own on CPU should build its convolutions with that
function (``nn.Conv(..., conv_general_dilated=models.conv_general_dilated)``) or pass
``unroll=steps``.

Attacks are model-agnostic: they take ``logits_fn(x) -> logits``, any JAX function of
images in [0, 1]. Our models provide it in eval mode (BatchNorm running statistics, no
state update) through :func:`lib.models.model_fns`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
LossFn = Callable[[Array], Array]

NORMS = ("linf", "l2")
STEP_RULES = ("sign", "normalized", "momentum", "adam", "apgd")
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


CLASS_LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


def class_loss(logits_fn, y, loss: Union[str, Callable] = "ce", targeted: bool = False) -> LossFn:
  """``x -> (B,)`` loss to maximise: away from ``y``, or towards it when targeted."""
  fn = CLASS_LOSSES[loss] if isinstance(loss, str) else loss
  sign = -1.0 if targeted else 1.0
  return lambda x: sign * fn(logits_fn(x), y)


# ----------------------------------------------------------------------------- geometry


def _per_example(fn, x):
  return fn(x.reshape(x.shape[0], -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))


def lp_norm(delta, norm: str):
  """Per-example norm, shape (B,)."""
  flat = delta.reshape(delta.shape[0], -1)
  if norm == "linf":
    return jnp.abs(flat).max(axis=1)
  return jnp.sqrt((flat ** 2).sum(axis=1))


def project(x, x_adv, eps, norm: str):
  """Projection onto the eps-ball around ``x`` (per example) intersected with [0, 1]."""
  delta = x_adv - x
  eps = _broadcast(eps, x)
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = _per_example(lambda d, axis: jnp.sqrt((d ** 2).sum(axis=axis)), delta)
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(n, _TINY))
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
    g = jax.random.normal(k1, x.shape, x.dtype)
    g = g / jnp.maximum(_per_example(lambda a, axis: jnp.sqrt((a ** 2).sum(axis=axis)), g), _TINY)
    dim = np.prod(x.shape[1:])
    r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    d = g * r * _broadcast(eps, x)
  return project(x, x + d, eps, norm)


def _ascent_direction(g, norm: str):
  """Steepest ascent for the norm: sign(g) for L-inf, g / ||g||_2 for L2."""
  if norm == "linf":
    return jnp.sign(g)
  return g / jnp.maximum(_per_example(lambda a, axis: jnp.sqrt((a ** 2).sum(axis=axis)), g), _TINY)


# ----------------------------------------------------------------------------- the engine


def apgd_checkpoints(steps: int) -> np.ndarray:
  """Iterations where APGD may halve its step: p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2)."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  return np.unique(np.ceil(np.round(np.asarray(p[:-1]) * steps, 6)).astype(int))


def default_unroll(steps: int) -> int:  # pylint: disable=unused-argument
  """Loops stay rolled (1) on every backend; see the module docstring for the history."""
  return 1


def projected_gradient(loss_fn: LossFn, x: Array, *, eps, step_size, steps: int,
                       norm: str = "linf", step_rule: str = "sign", random_init: bool = False,
                       key: Optional[Array] = None, restarts: int = 1, momentum: float = 1.0,
                       keep_best: bool = True, success_fn: Optional[Callable] = None,
                       has_aux: bool = False, progress_arg: bool = False,
                       step_schedule: str = "constant", x_init: Optional[Array] = None,
                       unroll: Optional[int] = None) -> Array:
  """Maximises ``loss_fn`` (per-example, (B,)) over the eps-ball around ``x``.

  Args:
    loss_fn: ``x_adv -> (B,)`` losses to maximise (each example's loss must depend on
      that example only; true of any model in eval mode). With ``has_aux`` it returns
      ``(loss, score, feasible)``: the gradient follows ``loss``, while the returned
      iterate is each example's best by ``(feasible, score)`` in lexicographic order, the
      clean image ``x`` included as a candidate. Explanation attacks use this to return
      only label-keeping images (``feasible``) ranked by the map dissimilarity of the real
      model (``score``) while their gradient goes through a surrogate.
    x: clean images in [0, 1].
    eps, step_size: budget and step (scalars or per-example (B,) arrays; traced).
    steps: number of gradient steps (static).
    norm: "linf" or "l2".
    step_rule: "sign" (steepest ascent for the norm: FGSM/BIM/PGD), "normalized" (the
      same for L2; for L-inf the L2-normalised gradient), "momentum" (MI-FGSM with decay
      ``momentum``), "adam" (Adam's bias-corrected m / sqrt(v) as the direction, the
      image-space optimiser of Dombrowski et al. 2019), "apgd" (Croce & Hein's schedule;
      ``step_size`` is ignored, the initial step is 2 eps).
    random_init: start uniformly in the ball instead of at ``x``.
    key: PRNG key for random starts.
    restarts: independent starts; per example the best (highest loss, or successful)
      result is kept.
    keep_best: return each example's best iterate (else the last one).
    success_fn: optional ``x_adv -> (B,) bool``; among restarts a successful result
      beats an unsuccessful one before losses are compared (with ``has_aux`` the
      ``feasible`` output plays this role).
    has_aux: see ``loss_fn``.
    progress_arg: ``loss_fn`` takes a second argument ``t = k / steps`` in [0, 1] (to
      anneal something over the attack, e.g. a softplus surrogate's beta).
    step_schedule: "constant" or "cosine" (the step decays from ``step_size`` to 0).
    x_init: the first iterate (projected onto the ball), instead of ``x`` or a random
      start drawn here; e.g. per-example random starts that do not depend on how the
      batch is split over devices (lib/adversarial.py).
    unroll: loop unrolling (None: :func:`default_unroll`).

  Returns:
    adversarial images, same shape as ``x``, inside the ball and [0, 1].
  """
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if step_rule not in STEP_RULES:
    raise ValueError(f"step_rule must be one of {STEP_RULES}, got {step_rule!r}")
  if step_schedule not in STEP_SCHEDULES:
    raise ValueError(f"step_schedule must be one of {STEP_SCHEDULES}, got {step_schedule!r}")
  if random_init and key is None:
    raise ValueError("random_init needs a PRNG key (key=jax.random.key(0)).")
  if step_rule == "apgd" and (has_aux or progress_arg):
    raise ValueError("step_rule='apgd' takes a plain loss (no has_aux / progress_arg).")
  unroll = default_unroll(steps) if unroll is None else unroll
  eps = jnp.asarray(eps, x.dtype)
  step_size = jnp.asarray(step_size, x.dtype)

  def objective(xa, t):
    out = loss_fn(xa, t) if progress_arg else loss_fn(xa)
    if has_aux:
      return out
    return out, out, jnp.ones(out.shape, bool)

  def loss_grad_aux(xa, t):
    """(loss, grad, score, feasible) at ``xa``."""
    def total(z):
      loss, score, feasible = objective(z, t)
      return loss.sum(), (loss, score, feasible)
    (_, (loss, score, feasible)), g = jax.value_and_grad(total, has_aux=True)(xa)
    return loss, g, score, feasible

  def one_run(start_key):
    if x_init is not None:
      x0 = project(x, x_init, eps, norm)
    else:
      x0 = random_start(start_key, x, eps, norm) if random_init else x
    if step_rule == "apgd":
      best_x, best_loss = _apgd(lambda xa: loss_grad_aux(xa, 0.0)[:2], x, x0, eps, steps,
                                norm, unroll)
      feasible = success_fn(best_x) if success_fn is not None else jnp.ones(best_loss.shape, bool)
      return best_x, best_loss, feasible
    if has_aux:  # the clean image competes too: it keeps its label by definition
      _, score, feasible = objective(x, 0.0)
      init = (x, score, feasible)
    else:
      init = (x0, jnp.full((x.shape[0],), -jnp.inf, x.dtype), jnp.ones((x.shape[0],), bool))
    best_x, best_score, best_feasible = _pgd(
        loss_grad_aux, objective, x, x0, init, eps, step_size, steps, norm, step_rule,
        momentum, keep_best, step_schedule, unroll)
    if success_fn is not None and not has_aux:
      best_feasible = success_fn(best_x)
    return best_x, best_score, best_feasible

  # Restart r > 0 starts from fold_in(key, r): restart 0 is the single-start run, so more
  # restarts never do worse than one.
  keys = [key] + [jax.random.fold_in(key, r) if key is not None else None
                  for r in range(1, restarts)]
  best = one_run(keys[0])
  for r in range(1, restarts):  # few restarts: a Python loop keeps the body unrolled
    cand = one_run(keys[r])
    better = _lexicographic_better(cand[2], cand[1], best[2], best[1])
    best = tuple(jnp.where(_broadcast(better, c), c, b) for c, b in zip(cand, best))
  return best[0]


STEP_SCHEDULES = ("constant", "cosine")


def _lexicographic_better(feasible, score, best_feasible, best_score):
  """A feasible candidate beats an infeasible one; otherwise the higher score wins."""
  return (feasible & ~best_feasible) | ((feasible == best_feasible) & (score > best_score))


def _pgd(loss_grad_aux, objective, x, x0, init, eps, step_size, steps, norm, step_rule, mu,
         keep_best, step_schedule, unroll, adam_b1=0.9, adam_b2=0.999):
  """FGSM / BIM / PGD / MI-FGSM / Adam iterations; returns (x_adv, score, feasible)."""

  def body(carry, k):
    xa, m, v, bx, bs, bf = carry
    t = k.astype(x.dtype) / steps
    _, g, score, feasible = loss_grad_aux(xa, t)
    better = _lexicographic_better(feasible, score, bf, bs)
    bx = jnp.where(_broadcast(better, x), xa, bx)
    bs = jnp.where(better, score, bs)
    bf = jnp.where(better, feasible, bf)
    if step_rule == "momentum":  # MI-FGSM: accumulate L1-normalised gradients
      m = mu * m + g / jnp.maximum(_per_example(lambda a, axis: jnp.abs(a).sum(axis=axis), g), _TINY)
      direction = _ascent_direction(m, norm)
    elif step_rule == "adam":
      m = adam_b1 * m + (1 - adam_b1) * g
      v = adam_b2 * v + (1 - adam_b2) * g ** 2
      kk = k.astype(x.dtype) + 1
      direction = (m / (1 - adam_b1 ** kk)) / (jnp.sqrt(v / (1 - adam_b2 ** kk)) + 1e-12)
      if norm == "l2":
        direction = _ascent_direction(direction, "l2")
    elif step_rule == "normalized":
      direction = _ascent_direction(g, "l2")
    else:
      direction = _ascent_direction(g, norm)
    alpha = _broadcast(step_size, x)
    if step_schedule == "cosine":
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


def _apgd(loss_and_grad, x, x0, eps, steps, norm, unroll, alpha=0.75, rho=0.75):
  """APGD (Croce & Hein 2020, Algorithm 1): momentum 0.75, step 2 eps halved at
  checkpoints where the loss stopped improving, restart from the best point."""
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

  losses0, g0 = loss_and_grad(x0)
  x1 = project(x, x0 + _broadcast(eta0, x) * _ascent_direction(g0, norm), eps, norm)
  losses1, g1 = loss_and_grad(x1)
  better = losses1 > losses0
  state = dict(
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
    loss_n, g_n = loss_and_grad(xn)
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
    new = dict(x=jnp.where(h, best_x, xn), x_prev=jnp.where(h, best_x, s["x"]),
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
  return state["best_x"], state["best_loss"]


# ----------------------------------------------------------------------------- named attacks


def _success(logits_fn, y, targeted):
  pred = lambda xa: jnp.argmax(logits_fn(xa), axis=-1)
  return (lambda xa: pred(xa) == y) if targeted else (lambda xa: pred(xa) != y)


def fgsm(logits_fn, x, y, *, eps, norm: str = "linf", targeted: bool = False, loss="ce"):
  """Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps."""
  return projected_gradient(class_loss(logits_fn, y, loss, targeted), x, eps=eps, step_size=eps,
                            steps=1, norm=norm, keep_best=False)


def bim(logits_fn, x, y, *, eps, step_size, steps: int, norm: str = "linf",
        targeted: bool = False, loss="ce", unroll=None):
  """Basic Iterative Method (Kurakin et al. 2017): iterated FGSM from x, last iterate."""
  return projected_gradient(class_loss(logits_fn, y, loss, targeted), x, eps=eps,
                            step_size=step_size, steps=steps, norm=norm, keep_best=False,
                            unroll=unroll)


def pgd(logits_fn, x, y, *, eps, step_size, steps: int, norm: str = "linf",
        random_start: bool = True, restarts: int = 1, key=None, targeted: bool = False,
        loss="ce", unroll=None):
  """Projected Gradient Descent (Madry et al. 2018): random start in the ball, ``steps``
  steepest-ascent steps, per example the best iterate over steps and restarts."""
  if key is None:
    key = jax.random.PRNGKey(0)
  return projected_gradient(class_loss(logits_fn, y, loss, targeted), x, eps=eps,
                            step_size=step_size, steps=steps, norm=norm,
                            random_init=random_start, key=key, restarts=restarts,
                            success_fn=_success(logits_fn, y, targeted), unroll=unroll)


def mifgsm(logits_fn, x, y, *, eps, step_size, steps: int, decay: float = 1.0,
           norm: str = "linf", targeted: bool = False, loss="ce", unroll=None):
  """Momentum Iterative FGSM (Dong et al. 2018): sign of the accumulated L1-normalised
  gradient, decay ``decay``, last iterate."""
  return projected_gradient(class_loss(logits_fn, y, loss, targeted), x, eps=eps,
                            step_size=step_size, steps=steps, norm=norm, step_rule="momentum",
                            momentum=decay, keep_best=False, unroll=unroll)


def apgd(logits_fn, x, y, *, eps, steps: int = 100, norm: str = "linf", loss="ce",
         restarts: int = 1, key=None, targeted: bool = False, unroll=None):
  """Auto-PGD (Croce & Hein 2020): APGD-CE (``loss="ce"``) or APGD-DLR (``"dlr"``),
  parameter-free step size with checkpoints, best iterate, optional random restarts."""
  if key is None:
    key = jax.random.PRNGKey(0)
  return projected_gradient(class_loss(logits_fn, y, loss, targeted), x, eps=eps, step_size=eps,
                            steps=steps, norm=norm, step_rule="apgd", random_init=restarts > 1,
                            key=key, restarts=restarts,
                            success_fn=_success(logits_fn, y, targeted), unroll=unroll)


def uniform_noise(logits_fn, x, y, *, eps, norm: str = "linf", key=None):
  """Random perturbation uniform in the ball: the baseline every attack must beat."""
  del logits_fn, y
  return random_start(jax.random.PRNGKey(0) if key is None else key, x, eps, norm)


ATTACKS = {"fgsm": fgsm, "bim": bim, "pgd": pgd, "mifgsm": mifgsm, "apgd": apgd,
           "noise": uniform_noise}
