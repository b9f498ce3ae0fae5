"""Explanation attacks on the trained tiny model: label kept, budget kept, stronger than noise
and than a class attack, the softplus surrogate, and each objective moving its own measure."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import attacks, explanation_attacks as ea, metrics, models, saliency

EPS = 0.03     # the tiny 32 px model needs a larger budget than BUSI's 0.004 to move its maps
STEPS = 10


@pytest.fixture(scope="module")
def setup(trained):
  """The trained tiny model and test images whose clean Grad-CAM is not all zero (a
  ReLU-ed CAM can be, and then no rank correlation is defined)."""
  model, variables, x, y, _ = trained
  fns = models.model_fns(model, variables)
  visible = _maps(fns, x).reshape(len(x), -1).max(1) > 0
  return model, variables, fns, x[np.flatnonzero(visible)[:24]]


def _maps(fns, x, method="grad_cam"):
  target = jnp.argmax(fns.logits_fn(x), -1)
  return np.asarray(saliency.explain(method, fns, x, target, key=jax.random.PRNGKey(0)))


def _attack(fns, x, eps=EPS, **kw):
  kw.setdefault("steps", STEPS)
  kw.setdefault("ce_weight", 0.0)
  kw.setdefault("unroll", 1)
  run = jax.jit(functools.partial(ea.explanation_attack, fns, eps=eps, step_size=eps / 4, **kw))
  return run(x)


def test_keep_mode_never_changes_the_label_and_stays_in_the_ball(setup):
  _, _, fns, x = setup
  eps = 0.1  # large enough that the unconstrained objective flips labels
  x_adv = np.asarray(_attack(fns, x, eps=eps, mode="keep"))
  pred = lambda z: np.asarray(jnp.argmax(fns.logits_fn(z), -1))
  np.testing.assert_array_equal(pred(x_adv), pred(x))
  assert np.abs(x_adv - np.asarray(x)).max() <= eps + 1e-6
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  # ... and the objective did flip some labels along the way (the constraint did work):
  free = _attack(fns, x, eps=eps, mode="flip", ce_weight=1.0)
  assert (pred(free) != pred(x)).any()


def test_grad_cam_attack_beats_noise(setup):
  _, _, fns, x = setup
  m0 = _maps(fns, x)
  attacked = _maps(fns, _attack(fns, x, mode="keep"))
  noise = _maps(fns, attacks.uniform_noise(None, x, None, eps=EPS, key=jax.random.PRNGKey(3)))
  d = lambda m: 1.0 - metrics.pearson(m0, m)
  # margin 0.65-1.23 over seeds 0-4 and the floating-point variants of
  # tests/property_variants.sh (2026-11-30): the threshold 0.1 has room
  margin = float(d(attacked).mean() - d(noise).mean())
  print(f"MARGIN grad_cam_attack_over_noise {margin:.3f} (threshold 0.1)")
  assert margin > 0.1, (d(attacked).mean(), d(noise).mean())
  # Per image, the returned map is at least as far as the clean one (it is a candidate).
  assert (d(attacked) >= -1e-6).all()
  # No comparison with PGD here: whether a class attack of the same budget moves the
  # clean class's Grad-CAM more or less than the map attack is a property of the model,
  # not of the code. Over seeds 0-2 of this fixture on one CPU, the map attack's median
  # Spearman minus PGD's at eps 0.02 ranged from -0.6 to +0.37 (pre-ReLU maps), and on
  # another CPU the ReLU-ed CAM of the clean class was all zero after PGD, where rank
  # correlation is undefined (issue 28). The studies measure map changes on real models.


def test_softplus_surrogate_finds_stronger_attacks_on_gradient_saliency(setup):
  model, variables, fns, x = setup
  m0 = _maps(fns, x, "gradient")
  relu = _maps(fns, _attack(fns, x, method="gradient"), "gradient")
  soft = _maps(fns, _attack(fns, x, method="gradient",
                            surrogate=True, surrogate_fns=models.surrogate_fns(model, variables),
                            beta=10.0),
               "gradient")
  d = lambda m: 1.0 - metrics.pearson(m0, m)
  assert d(soft).mean() > d(relu).mean() + 0.05, (d(soft).mean(), d(relu).mean())


@pytest.mark.parametrize("objective", ["top_k", "center_of_mass", "targeted"])
def test_each_objective_moves_its_own_measure(setup, objective):
  _, _, fns, x = setup
  y0 = jnp.argmax(fns.logits_fn(x), -1)
  raw_cam = lambda z: saliency.grad_cam(fns.features_fn, fns.head_fn, z, y0, relu=False)
  m0 = raw_cam(x)                          # what the attack's objective sees (keep mode)
  measure = ea.map_objective(objective, m0, top_k=0.1)
  x_adv = _attack(fns, x, objective=objective, top_k=0.1, step_rule="adam",
                  step_schedule="cosine")
  before = np.asarray(measure(m0))
  after = np.asarray(measure(raw_cam(x_adv)))
  assert (after >= before - 1e-5).all()    # the clean image is a candidate: never worse
  assert after.mean() > before.mean() + 0.02


def test_annealed_beta_and_flip_mode_run(setup):
  model, variables, fns, x = setup
  x_adv = _attack(fns, x[:4], mode="flip", ce_weight=1.0, method="gradient", steps=3,
                  surrogate=True, surrogate_fns=models.surrogate_fns(model, variables),
                  beta=2.0, beta_final=20.0)
  assert np.isfinite(np.asarray(x_adv)).all()


def test_map_measures():
  m = jnp.zeros((1, 8, 8)).at[0, 1, 6].set(1.0)
  np.testing.assert_allclose(ea.center_of_mass(m), [[1.5 / 8, 6.5 / 8]], atol=1e-6)
  blob = ea.displaced_blob(m)
  r, c = np.unravel_index(np.argmax(np.asarray(blob[0])), (8, 8))
  assert r >= 4 and c < 4                  # the quadrant farthest from (top, right)
  region = ea.top_k_region(m, 1 / 64)
  assert int(region.sum()) == 1 and float(ea.mass_in(m, region)[0]) == pytest.approx(1.0)
  assert float(ea.dissimilarity(m, m)[0]) == pytest.approx(0.0, abs=1e-6)
  assert float(ea.dissimilarity(m, m, "mse")[0]) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="objective"):
    ea.map_objective("nope", m)


def test_engine_returns_best_feasible_iterate():
  """The engine keeps the best *feasible* iterate, the clean image included."""
  x = jnp.full((2, 4, 4, 1), 0.5)

  def objective(xa, t):
    del t
    s = xa.mean(axis=(1, 2, 3)) - 0.5                # grows as x moves up
    feasible = jnp.asarray([True, False]) | (s < 0.01)
    return s, s, feasible

  out = attacks.projected_gradient(objective, x, eps=0.1, steps=10, step=attacks.Step(size=0.02),
                                   start=attacks.Start(clean_candidate=True))
  s = np.asarray(out.mean(axis=(1, 2, 3)) - 0.5)
  assert s[0] == pytest.approx(0.1, abs=1e-6)        # always feasible: goes to the boundary
  assert 0.0 <= s[1] < 0.01                          # stops where feasibility ends
  for rule in ("adam", "sign"):
    out = attacks.projected_gradient(
        attacks.loss_objective(lambda z: (z.mean(axis=(1, 2, 3)) - 0.5)), x, eps=0.1, steps=6,
        step=attacks.Step(rule, 0.05, "cosine"))
    assert np.abs(np.asarray(out) - 0.5).max() <= 0.1 + 1e-6
