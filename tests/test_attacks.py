"""Attack engine: properties on random inputs, analytic cases, a trained tiny model."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lib import attacks, models

B, H = 4, 16


def _small_net(seed=0):
  """A hand-written conv net: model-agnostic attacks take any logits_fn."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  w = jax.random.normal(k1, (3, 3, 1, 8)) * 0.5
  v = jax.random.normal(k2, (8, 3))

  def logits_fn(x):
    h = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.tanh(h).mean(axis=(1, 2)) @ v * 5.0
  return logits_fn


NET = _small_net()
X = jax.random.uniform(jax.random.PRNGKey(1), (B, H, H, 1))
Y = jnp.argmax(NET(X), -1)


@functools.lru_cache(maxsize=None)
def _compiled(name, norm):
  def run(x, y, eps, key):
    kw = {"eps": eps, "norm": norm}
    if name in ("bim", "pgd", "mifgsm"):
      kw.update(step_size=eps / 3, steps=5)
    if name == "pgd":
      kw.update(key=key, restarts=2)
    if name == "apgd":
      kw.update(steps=6, key=key)
    if name == "apgd_t":
      kw.update(steps=6, targets=2, key=key)
    if name == "square":
      kw.update(queries=30, key=key)
    if name == "autoattack":
      kw.update(version="fast", key=key)
    return attacks.ATTACKS[name].fn(NET, x, y, **kw)
  return jax.jit(run)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(sorted(attacks.ATTACKS)), norm=st.sampled_from(attacks.NORMS),
       eps=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_result_stays_in_the_ball_and_the_pixel_range(name, norm, eps, seed):
  x = jax.random.uniform(jax.random.PRNGKey(seed), (B, H, H, 1))
  x_adv = _compiled(name, norm)(x, Y, jnp.float32(eps), jax.random.PRNGKey(seed + 1))
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  assert float(attacks.lp_norm(x_adv - x, norm).max()) <= eps * (1 + 1e-5) + 1e-6
  if eps == 0.0:
    np.testing.assert_array_equal(x_adv, x)


@pytest.mark.parametrize("name", sorted(attacks.ATTACKS))
def test_eps_zero_returns_the_input(name):
  x_adv = _compiled(name, "linf")(X, Y, jnp.float32(0.0), jax.random.PRNGKey(0))
  np.testing.assert_array_equal(x_adv, X)


def test_fgsm_on_a_linear_model_is_the_analytic_solution():
  # Small weights: with saturated softmax (p_y == 1.0 in float32) the cross-entropy
  # gradient loses its w_y part, a known float32 masking that the margin loss avoids.
  w = 0.05 * np.random.default_rng(0).normal(size=(H * H, 2)).astype(np.float32)
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = np.random.default_rng(1).uniform(0.2, 0.8, size=(B, H, H, 1)).astype(np.float32)
  y = np.array([0, 1, 0, 1])
  # d CE / d x = W (p - e_y); for two classes its sign is sign(w_other - w_y).
  other = 1 - y
  direction = np.sign(w[:, other] - w[:, y]).T.reshape(x.shape)
  expected = np.clip(x + 0.05 * direction, 0, 1)
  got = attacks.fgsm(logits_fn, x, y, eps=0.05)
  np.testing.assert_allclose(got, expected, atol=1e-6)
  # L2: a step of length eps along the gradient (nothing is clipped here).
  g = (w[:, other] - w[:, y]).T
  expected2 = x + 0.5 * (g / np.linalg.norm(g, axis=1, keepdims=True)).reshape(x.shape)
  np.testing.assert_allclose(attacks.fgsm(logits_fn, x, y, eps=0.5, norm="l2"), expected2, atol=1e-5)


def test_targeted_attack_reaches_the_target_on_an_easy_case():
  w = np.random.default_rng(0).normal(size=(H * H, 3)).astype(np.float32)
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = np.full((B, H, H, 1), 0.5, np.float32)
  target = (np.argmax(logits_fn(x), -1) + 1) % 3
  x_adv = attacks.pgd(logits_fn, x, target, eps=0.3, step_size=0.05, steps=20, targeted=True)
  assert (np.argmax(logits_fn(x_adv), -1) == target).all()


def test_apgd_checkpoints_follow_the_paper():
  # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020).
  assert attacks.apgd_checkpoints(100).tolist() == [0, 22, 41, 57, 70, 80, 87, 93, 99]


# ----------------------------------------------------------------------------- trained model


def test_attacks_leave_the_model_state_alone(trained):
  model, variables, x, y, _ = trained
  before = jax.tree_util.tree_map(np.array, variables)
  fns = models.model_fns(model, variables)
  logits_before = np.asarray(jax.jit(fns.logits_fn)(x))
  attacks.pgd(fns.logits_fn, x, y, eps=0.01, step_size=0.003, steps=3)
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(variables)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(logits_before, np.asarray(jax.jit(fns.logits_fn)(x)))
  # Eval mode: an example's logits do not depend on the rest of the batch.
  np.testing.assert_allclose(jax.jit(fns.logits_fn)(x[:1]), logits_before[:1], atol=1e-5)


def test_iterative_attacks_are_at_least_as_strong_as_fgsm(trained):
  model, variables, x, y, _ = trained
  fns = models.model_fns(model, variables)
  acc = lambda xa: float((np.argmax(fns.logits_fn(xa), -1) == y).mean())
  eps = 0.01
  a_fgsm = acc(attacks.fgsm(fns.logits_fn, x, y, eps=eps))
  a_pgd = acc(attacks.pgd(fns.logits_fn, x, y, eps=eps, step_size=eps / 4, steps=10))
  a_apgd = acc(attacks.apgd(fns.logits_fn, x, y, eps=eps, steps=10))
  assert a_pgd <= a_fgsm and a_apgd <= a_fgsm
  assert a_pgd < acc(x)


def test_restarts_never_do_worse_than_one_start(trained):
  model, variables, x, y, _ = trained
  fns = models.model_fns(model, variables)
  loss = lambda xa: np.asarray(attacks.cross_entropy(fns.logits_fn(xa), y))
  wrong = lambda xa: np.argmax(fns.logits_fn(xa), -1) != y
  key = jax.random.PRNGKey(3)
  one = attacks.pgd(fns.logits_fn, x, y, eps=0.004, step_size=0.002, steps=3, key=key)
  three = attacks.pgd(fns.logits_fn, x, y, eps=0.004, step_size=0.002, steps=3, key=key, restarts=3)
  # Per example: a success stays a success, and without success the loss does not drop.
  assert (wrong(three) >= wrong(one)).all()
  same = wrong(three) == wrong(one)
  assert (loss(three)[same] >= loss(one)[same] - 1e-5).all()
