"""Explanation methods against hand-worked cases, and their map metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import metrics, models, saliency

DN = ("NHWC", "HWIO", "NHWC")


def _net(seed=0):
  """A hand-written conv net with a nonlinear head: features A = relu(conv(x)),
  logits = mean_ij(A^2) V."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  w = jax.random.normal(k1, (3, 3, 1, 4))
  v = jax.random.normal(k2, (4, 3))
  features_fn = lambda x: jax.nn.relu(jax.lax.conv_general_dilated(x, w, (2, 2), "SAME", dimension_numbers=DN))
  head_fn = lambda a: (a ** 2).mean(axis=(1, 2)) @ v
  return features_fn, head_fn, v


X = jax.random.uniform(jax.random.PRNGKey(1), (3, 12, 12, 1))


def test_grad_cam_equals_the_formula_of_selvaraju_et_al():
  features_fn, head_fn, v = _net()
  a = np.asarray(features_fn(X), np.float64)
  logits = np.asarray(head_fn(jnp.asarray(a, jnp.float32)))
  t = logits.argmax(1)
  hw = a.shape[1] * a.shape[2]
  # dy_t/dA_ijc = 2 A_ijc V_ct / (h w); alpha_c = mean_ij of it; CAM = ReLU(sum_c alpha_c A_c).
  grads = 2 * a * np.asarray(v)[:, t].T[:, None, None, :] / hw
  alpha = grads.mean(axis=(1, 2))
  expected = np.maximum(np.einsum("bijc,bc->bij", a, alpha), 0)
  got = saliency.grad_cam(features_fn, head_fn, X, upsample=False)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  up = saliency.grad_cam(features_fn, head_fn, X)
  assert up.shape == (3, 12, 12)
  cam_pp = saliency.grad_cam_pp(features_fn, head_fn, X)
  assert cam_pp.shape == (3, 12, 12) and float(cam_pp.min()) >= 0


def test_integrated_gradients_completeness():
  features_fn, head_fn, _ = _net()
  logits_fn = lambda x: head_fn(features_fn(x))
  t = jnp.argmax(logits_fn(X), -1)
  attr = saliency.integrated_gradients(logits_fn, X, steps=64)
  score = lambda x: np.take_along_axis(np.asarray(logits_fn(x)), np.asarray(t)[:, None], 1)[:, 0]
  delta = score(X) - score(jnp.zeros_like(X))
  np.testing.assert_allclose(np.asarray(attr).sum(axis=(1, 2, 3)), delta, rtol=0.01)


def test_rgb_gradient_maps_reduce_channels_by_max_or_sum_of_magnitudes():
  """An RGB linear model: the class-1 gradient is W[..., 1], so the map is max_c |W| by
  default (Simonyan et al.) and sum_c |W| with ``channels="abs_sum"``; the option reaches
  every gradient method through :func:`saliency.explain` and a CAM ignores it."""
  w = jax.random.normal(jax.random.PRNGKey(2), (6, 6, 3, 2))
  logits_fn = lambda x: jnp.einsum("bhwc,hwck->bk", x, w)
  fns = models.ModelFns(logits_fn, None, None, None)
  x = jax.random.uniform(jax.random.PRNGKey(3), (2, 6, 6, 3))
  target = jnp.array([1, 1])
  g = np.abs(np.asarray(w[..., 1]))
  default = saliency.explain("gradient", fns, x, target)
  np.testing.assert_allclose(default, np.broadcast_to(g.max(-1), (2, 6, 6)), rtol=1e-6)
  summed = saliency.explain("gradient", fns, x, target, channels="abs_sum")
  np.testing.assert_allclose(summed, np.broadcast_to(g.sum(-1), (2, 6, 6)), rtol=1e-6)
  sg = saliency.explain("smoothgrad", fns, x, target, key=jax.random.PRNGKey(0),
                        smoothgrad_samples=2, channels="abs_sum")
  np.testing.assert_allclose(sg, summed, rtol=1e-5)      # linear: every noisy copy alike
  features_fn, head_fn, _ = _net()                        # a CAM takes no such option
  cam_fns = models.ModelFns(None, features_fn, head_fn, None)
  np.testing.assert_array_equal(saliency.explain("grad_cam", cam_fns, X, channels="abs_sum"),
                                saliency.explain("grad_cam", cam_fns, X))
  assert saliency.CHANNEL_REDUCTIONS == ("max_abs", "abs_sum")


def test_smoothgrad_with_sigma_zero_is_the_gradient():
  features_fn, head_fn, _ = _net()
  logits_fn = lambda x: head_fn(features_fn(x))
  g = saliency.gradient(logits_fn, X)
  sg = saliency.smoothgrad(logits_fn, X, key=jax.random.PRNGKey(0), samples=4, sigma=0.0)
  np.testing.assert_allclose(sg, g, rtol=1e-5, atol=1e-7)  # vmapped vs single: rounding
  var = saliency.smoothgrad(logits_fn, X, key=jax.random.PRNGKey(0), samples=4, sigma=0.0, mode="var")
  np.testing.assert_allclose(var, 0.0, atol=1e-10)


def test_smoothgrad_in_chunks_equals_all_noisy_copies_at_once():
  """Mean, mean of squares and variance of the noisy gradients, whatever the chunking
  (5 samples in chunks of 2 pads the last chunk, which must not count)."""
  features_fn, head_fn, _ = _net()
  logits_fn = lambda x: head_fn(features_fn(x))
  key = jax.random.PRNGKey(3)
  t = jnp.argmax(logits_fn(X), -1)
  noise = 0.2 * jax.random.normal(key, (5,) + X.shape)
  g = np.stack([np.asarray(saliency.gradient(logits_fn, X + n, t)) for n in noise], 0).astype(np.float64)
  for mode, expected in (("mean", g.mean(0)), ("squared", (g ** 2).mean(0)), ("var", g.var(0))):
    for chunk in (1, 2, 5):
      got = saliency.smoothgrad(logits_fn, X, key=key, samples=5, sigma=0.2, mode=mode,
                                batch_samples=chunk)
      np.testing.assert_allclose(got, expected, rtol=2e-4, atol=1e-6 * np.abs(expected).max())


def test_grad_flows_through_grad_cam_and_smoothgrad(trained):
  """The softplus surrogate of the trained tiny model (same weights, smooth activation)."""
  from lib import experiment
  model, variables, x, _, workdir = trained
  config = experiment.load_config(workdir)
  fns = models.model_fns(experiment.build_model(config, activation="softplus"), variables)
  x = jnp.asarray(x[:4])
  t = jnp.argmax(fns.logits_fn(x), -1)
  cam_loss = lambda xx: saliency.grad_cam(fns.features_fn, fns.head_fn, xx, t).sum()
  sg_loss = lambda xx: saliency.smoothgrad(fns.logits_fn, xx, t, key=jax.random.PRNGKey(0),
                                           samples=2, sigma=0.05).sum()
  assert float(cam_loss(x)) > 0  # the predicted class's CAM is not all cut by the ReLU
  for loss in (cam_loss, sg_loss):
    g = np.asarray(jax.jit(jax.grad(loss))(x))
    assert np.isfinite(g).all() and np.abs(g).max() > 0


# ----------------------------------------------------------------------------- metrics


def test_identical_maps_score_one():
  m = np.random.default_rng(0).uniform(size=(2, 16, 16))
  np.testing.assert_allclose(metrics.spearman(m, m), 1.0)
  np.testing.assert_allclose(metrics.top_k_intersection(m, m, 10), 1.0)
  np.testing.assert_allclose(metrics.pearson(m, m), 1.0)
  np.testing.assert_allclose(metrics.map_ssim(m, m), 1.0, atol=1e-5)
  assert metrics.spearman(m, -m)[0] == pytest.approx(-1.0)


def test_spearman_averages_tied_ranks():
  a = np.array([[[0.0, 0.0, 1.0, 2.0]]])
  b = np.array([[[0.0, 5.0, 6.0, 7.0]]])
  # ranks a: 1.5, 1.5, 3, 4 ; b: 1, 2, 3, 4 -> Pearson of the ranks.
  ra, rb = np.array([1.5, 1.5, 3, 4]), np.array([1, 2, 3, 4.0])
  assert metrics.spearman(a, b)[0] == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_centre_of_mass_shift_of_a_shifted_map():
  m = np.zeros((1, 20, 20))
  m[0, 4:7, 5:8] = 1.0
  shifted = np.roll(np.roll(m, 3, axis=1), 4, axis=2)
  assert metrics.center_of_mass(m)[0].tolist() == pytest.approx([5.0, 6.0])
  assert metrics.center_of_mass_shift(m, shifted)[0] == pytest.approx(5.0)


def test_quality_metrics_hand_cases():
  n = 16
  uniform = np.ones((1, 4, 4))
  point = np.zeros((1, 4, 4))
  point[0, 1, 2] = 3.0
  assert metrics.gini(uniform)[0] == pytest.approx(0.0, abs=1e-12)
  assert metrics.gini(point)[0] == pytest.approx(1 - 1 / n)
  assert metrics.entropy(uniform)[0] == pytest.approx(1.0)
  assert metrics.entropy(point)[0] == pytest.approx(0.0)
  assert metrics.total_variation(uniform)[0] == 0.0
  # One pixel of height 1 has 4 unit jumps (it is not on the border): 4 / 16.
  assert metrics.total_variation(point)[0] == pytest.approx(4 / 16)


def test_localisation_metrics_and_their_trivial_baselines():
  mask = np.zeros((2, 4, 4))
  mask[:, :2, :2] = 1                   # lesion: a quarter of the image
  m = np.zeros((2, 4, 4))
  m[0, 0, 0], m[0, 3, 3] = 3.0, 1.0     # 3/4 of the mass inside, maximum inside
  m[1, 3, 3] = 1.0                      # nothing inside
  np.testing.assert_allclose(metrics.lesion_energy(m, mask), [0.75, 0.0])
  assert metrics.pointing_game(m, mask).tolist() == [True, False]
  # Top 25 % of 16 pixels = 4 pixels: 3 inside the 4-pixel lesion -> IoU 3 / 5; none -> 0.
  m2 = m.copy()
  m2[0, 0, 1], m2[0, 1, 0] = 2.0, 1.5
  m2[1, 3, 2], m2[1, 2, 3], m2[1, 2, 2] = 0.5, 0.4, 0.3
  np.testing.assert_allclose(metrics.top_fraction_iou(m2, mask, 0.25), [3 / 5, 0.0])
  base = metrics.trivial_baselines(mask)
  np.testing.assert_allclose(base["uniform_lesion_energy"], 0.25)
  np.testing.assert_allclose(metrics.lesion_energy(np.ones((2, 4, 4)), mask), 0.25)
  assert base["centre_pointing_game"].tolist() == [False, False]


def test_deletion_and_insertion_on_a_pixel_counting_model():
  # p(class 1) rises with the mean of the pixels in the left half.
  def logits_fn(x):
    s = 20 * (x[:, :, :2, 0].mean(axis=(1, 2)) - 0.5)
    return jnp.stack([-s, s], axis=1)
  x = jnp.ones((1, 4, 4, 1))
  good = jnp.zeros((1, 4, 4)).at[:, :, :2].set(1.0)     # points at the left half
  bad = 1.0 - good
  t = jnp.array([1])
  g = metrics.deletion_insertion(logits_fn, x, good, t, steps=8)
  b = metrics.deletion_insertion(logits_fn, x, bad, t, steps=8)
  assert float(g["deletion_auc"][0]) < float(b["deletion_auc"][0])
  assert float(g["insertion_auc"][0]) > float(b["insertion_auc"][0])
