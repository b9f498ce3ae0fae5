"""AutoAttack's pieces (lib/autoattack.py, APGD-T in lib/attacks.py): the schedules and
losses against the reference definitions, the cascade's bookkeeping, and strength on the
trained tiny model. Ball, pixel range and eps = 0 are checked for every registered attack
in tests/test_attacks.py."""

import jax
import jax.numpy as jnp
import numpy as np

from lib import attacks, autoattack, models


def test_square_schedule_matches_the_reference():
  """Side of the square on 32 x 32 images at the iterations where p halves (the values of
  fra31/auto-attack's p_selection with p_init = 0.8, unrescaled)."""
  its = [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001]
  assert [int(s) for s in autoattack.square_side(np.asarray(its), 32, 32, rescale=False, xp=np)] == \
      [29, 29, 20, 20, 14, 14, 10, 10, 7, 7, 5, 5, 4, 4, 3]
  sides = autoattack.square_side(np.arange(5000), 32, 32, rescale=False, norm="l2", xp=np)
  assert set(np.unique(sides)) == {3, 5, 7, 11, 15, 21, 29} and (sides % 2 == 1).all()
  assert autoattack.square_fraction(9000, xp=np) == 0.8 / 512
  assert autoattack.square_fraction(2500, queries=5000, rescale=True, xp=np) == 0.8 / 128
  # The Square paper's code maps any budget onto the 10000 iterations: 1000 queries end
  # at p_init / 512 (sides 1 on 32 px) where AutoAttack's unrescaled 1000 stop at p_init / 16.
  assert autoattack.square_fraction(999, queries=1000, xp=np) == 0.8 / 512
  assert autoattack.square_fraction(999, queries=1000, rescale=False, xp=np) == 0.8 / 16


def test_eta_pattern_is_a_unit_norm_pair_of_opposite_blobs():
  for side in (3, 5, 8, 29):
    eta = autoattack.eta_pattern(side)
    assert eta.shape == (side, side) and np.isclose((eta ** 2).sum(), 1.0)
    top = side // 2
    assert (eta[:top] > 0).all() and (eta[top:] < 0).all()
    assert np.unravel_index(np.abs(eta[:top]).argmax(), eta[:top].shape)[1] == side // 2


def test_targeted_dlr_is_the_reference_formula_and_falls_back_below_four_classes():
  z = jax.random.normal(jax.random.PRNGKey(0), (6, 7))
  y, t = jnp.arange(6) % 7, (jnp.arange(6) + 3) % 7
  zs = np.sort(np.asarray(z), axis=1)
  want = (np.asarray(z)[np.arange(6), t] - np.asarray(z)[np.arange(6), y]) / (
      zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)
  np.testing.assert_allclose(attacks.targeted_dlr(z, y, t), want, rtol=1e-5)
  two = z[:, :2]
  y2 = jnp.argmax(two, -1)
  np.testing.assert_allclose(attacks.targeted_dlr(two, y2, 1 - y2), attacks.dlr(two, y2),
                             rtol=1e-6)   # two classes: the untargeted loss
  assert np.isfinite(attacks.targeted_dlr(z[:, :3], y % 3, (y + 1) % 3)).all()


def _linear(seed=0, classes=4, shape=(8, 8, 3)):
  w = jax.random.normal(jax.random.PRNGKey(seed), (int(np.prod(shape)), classes)) * 0.5
  return lambda x: x.reshape(x.shape[0], -1) @ w


def test_square_counts_queries_keeps_its_best_and_leaves_inactive_examples_alone():
  f = _linear()
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 3))
  y = jnp.argmax(f(x), -1)
  active = jnp.arange(16) % 4 != 0
  for norm, eps in (("linf", 0.1), ("l2", 1.5)):
    x_adv, used = autoattack.square_attack(f, x, y, eps=eps, norm=norm, queries=200,
                                           key=jax.random.PRNGKey(2), active=active)
    assert (np.asarray(used)[~np.asarray(active)] == 0).all()
    np.testing.assert_array_equal(x_adv[~active], x[~active])
    assert (np.asarray(used) <= 201).all() and (np.asarray(used)[np.asarray(active)] >= 1).all()
    fooled = np.asarray(jnp.argmax(f(x_adv), -1) != y)
    # an example that took every query was never fooled; one fooled stopped counting
    assert not (fooled & (np.asarray(used) == 201)).any()
    assert fooled[np.asarray(active)].mean() > 0.5
    assert float(attacks.lp_norm(x_adv - x, norm).max()) <= eps * (1 + 1e-5)
  # Each query runs the network only on the examples not yet fooled (the smallest bucket
  # that holds them): the same search as on the whole batch.
  assert autoattack.bucket_sizes(16) == (16, 8, 4, 2, 1) and autoattack.bucket_sizes(24) == (24, 12, 6, 3)
  rows = jnp.arange(16) % 5 == 0
  part = autoattack.compacted_logits(f, x, rows, autoattack.bucket_sizes(16))
  np.testing.assert_allclose(np.asarray(part)[np.asarray(rows)], np.asarray(f(x))[np.asarray(rows)],
                             rtol=1e-5, atol=1e-6)
  assert not np.asarray(part)[~np.asarray(rows)].any()
  for compact in (True, False):
    out = autoattack.square_attack(f, x, y, eps=0.1, queries=200, key=jax.random.PRNGKey(2),
                                   active=active, compact=compact)
    if compact:
      first = out
  np.testing.assert_array_equal(first[1], out[1])
  np.testing.assert_allclose(first[0], out[0], atol=1e-6)
  # eps 0 (a sweep's clean column): nothing to search, no query spent
  x0, used0 = autoattack.square_attack(f, x, y, eps=0.0, queries=200, key=jax.random.PRNGKey(2))
  np.testing.assert_array_equal(x0, x)
  assert int(np.asarray(used0).max()) == 0


def test_autoattack_cascade_is_at_least_as_strong_as_its_first_stage_and_skips_misclassified():
  f = _linear(classes=5)
  x = jax.random.uniform(jax.random.PRNGKey(3), (24, 8, 8, 3))
  y = jnp.argmax(f(x), -1).at[:4].set((jnp.argmax(f(x[:4]), -1) + 1) % 5)   # 4 misclassified
  key, eps = jax.random.PRNGKey(4), 0.01
  wrong = lambda xa: np.asarray(jnp.argmax(f(xa), -1) != y)
  x_aa = autoattack.autoattack(f, x, y, eps=eps, key=key, version="fast")
  np.testing.assert_array_equal(x_aa[:4], x[:4])      # never attacked, count as not robust
  first = attacks.projected_gradient(attacks.class_objective(f, y, "ce"), x, eps=eps, steps=50,
                                     step=attacks.Step("apgd"), start=attacks.Start(random=True),
                                     key=jax.random.fold_in(key, 0))
  assert (wrong(x_aa) >= wrong(first)).all()
  # where the cascade did not break an image, it returns it clean
  kept = ~wrong(x_aa)
  np.testing.assert_array_equal(np.asarray(x_aa)[kept], np.asarray(x)[kept])
  # APGD-T with 4 targets breaks at least what it breaks with one
  one = attacks.apgd_targeted(f, x, y, eps=eps, steps=20, targets=1, key=key)
  four = attacks.apgd_targeted(f, x, y, eps=eps, steps=20, targets=4, key=key)
  assert (wrong(four) >= wrong(one)).all()
  # only the active examples are attacked (AutoAttack passes those APGD-CE left robust)
  active = jnp.arange(24) % 3 == 0
  part = attacks.apgd_targeted(f, x, y, eps=eps, steps=20, targets=4, key=key, active=active)
  np.testing.assert_array_equal(np.asarray(part)[~np.asarray(active)], np.asarray(x)[~np.asarray(active)])
  np.testing.assert_array_equal(wrong(part)[np.asarray(active)], wrong(four)[np.asarray(active)])


def test_square_and_autoattack_on_the_trained_model(trained):
  """Square beats noise of the same size; AutoAttack (fast) is at least as strong as PGD-10
  and as Square alone on the demo's tiny ResNet."""
  model, variables, x, y, _ = trained
  f = jax.jit(models.model_fns(model, variables).logits_fn)
  acc = lambda xa: float((np.argmax(f(xa), -1) == y).mean())
  key, eps = jax.random.PRNGKey(0), 0.01
  a_noise = acc(attacks.uniform_noise(f, x, y, eps=eps, key=key))
  a_square = acc(autoattack.square(f, x, y, eps=eps, queries=300, key=key))
  a_pgd = acc(attacks.pgd(f, x, y, eps=eps, steps=10, key=key))
  a_aa = acc(autoattack.autoattack(f, x, y, eps=eps, version="fast", key=key))
  assert a_square < a_noise
  assert a_aa <= a_pgd + 1.0 / len(y) and a_aa <= a_square
