import numpy as np
import pytest

from lib import metrics


def test_sensitivity_at_specificity_is_a_point_of_the_roc_curve():
  scores, pos = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0]
  # negatives 0.1 0.2 0.5 0.7: specificity 0.75 needs a cut at 0.5 (0.6, 0.8, 0.9 above it)
  assert metrics.sensitivity_at_specificity(scores, pos, 0.75) == 0.75
  assert metrics.sensitivity_at_specificity(scores, pos, 0.8) == 0.5    # cut at 0.7
  assert metrics.sensitivity_at_specificity(scores, pos, 0.0) == 1.0
  # the same ranking at another scale (calibration) gives the same value; the argmax does not
  shifted = np.asarray(scores) * 0.2
  assert metrics.sensitivity_at_specificity(shifted, pos, 0.75) == 0.75
  assert metrics.classification_metrics(np.stack([1 - shifted, shifted], -1),
                                        np.asarray(pos))["sensitivity"] == 0.0
  # a positive tied with the cut is called negative
  assert metrics.sensitivity_at_specificity([0.5, 0.5, 0.1], [1, 0, 0], 1.0) == 0.0
  assert np.isnan(metrics.sensitivity_at_specificity([0.1, 0.2], [1, 1], 0.9))


def test_roc_auc_hand_case_with_ties():
  # Positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5/4.
  assert metrics.roc_auc([0.8, 0.4, 0.4, 0.1], [1, 1, 0, 0]) == pytest.approx(0.875)
  assert metrics.roc_auc([0.1, 0.2, 0.9], [1, 1, 0]) == 0.0
  assert np.isnan(metrics.roc_auc([0.1, 0.2], [1, 1]))


def test_classification_metrics_hand_case():
  labels = np.array([1, 1, 1, 0, 0])
  probs = np.array([[0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.9, 0.1], [0.3, 0.7]])
  m = metrics.classification_metrics(probs, labels)
  assert m["sensitivity"] == pytest.approx(2 / 3)
  assert m["specificity"] == pytest.approx(1 / 2)
  assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert m["accuracy"] == pytest.approx(3 / 5)
  # Scores of positives 0.8, 0.6, 0.3 vs negatives 0.1, 0.7: wins 2 + 1 + 1 = 4 of 6.
  assert m["auc"] == pytest.approx(4 / 6)


def test_dice():
  a = np.zeros((2, 4, 4), bool)
  b = np.zeros((2, 4, 4), bool)
  a[0, :2] = True      # 8 pixels
  b[0, :1] = True      # 4 pixels, all inside a
  np.testing.assert_allclose(metrics.dice_score(a, b), [2 * 4 / 12, 1.0])


def test_correlations_of_constant_maps_are_defined_and_flagged():
  """Issue 27, case 6: Spearman of two identical all-zero maps was 0 ("changed"), and a
  claim "Spearman < 0.5" was judged held on such maps."""
  zero, flat = np.zeros((1, 4, 4)), np.full((1, 4, 4), 0.3)
  ramp = np.arange(16, dtype=float).reshape(1, 4, 4)
  assert metrics.spearman(zero, zero)[0] == 1.0 and metrics.pearson(zero, zero)[0] == 1.0
  assert metrics.spearman(zero, flat)[0] == 1.0            # neither ranks any pixel
  assert metrics.spearman(zero, ramp)[0] == 0.0            # defined, and flagged:
  assert metrics.constant_map(np.concatenate([zero, ramp, flat])).tolist() == [1.0, 0.0, 1.0]
  assert metrics.spearman(ramp, ramp)[0] == pytest.approx(1.0)
  assert metrics.spearman(ramp, -ramp)[0] == pytest.approx(-1.0)
  import jax
  import jax.numpy as jnp
  g = jax.grad(lambda m: metrics.pearson(m, jnp.asarray(ramp)).sum())(jnp.zeros((1, 4, 4)))
  assert np.isfinite(np.asarray(g)).all()                  # the attack objective's gradient


# ----------------------------------------------------------------------------- colour (issue 24)


def test_cielab_of_reference_colours():
  lab = metrics.rgb_to_lab(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                                     [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]))
  # White, sRGB red and green (the usual reference values, D65), black, mid-grey.
  np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-3)
  np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.01)
  np.testing.assert_allclose(lab[2], [87.73, -86.18, 83.18], atol=0.01)
  np.testing.assert_allclose(lab[3], [0.0, 0.0, 0.0], atol=1e-9)
  np.testing.assert_allclose(lab[4], [53.39, 0.0, 0.0], atol=0.01)


def test_colour_variation_correlation_worked_by_hand():
  # 4x4 image: columns 0-1 mid-grey (a* = b* = 0), columns 2-3 sRGB red (a* 80.09,
  # b* 67.20). np.gradient along x per row: one-sided at the borders (0, 0) and central
  # inside ((red - grey) / 2 at columns 1 and 2), so the colour gradient is
  # [0, g, g, 0] with g = |(80.09, 67.20)| / 2 = 52.27; nothing changes along y.
  image = np.zeros((1, 4, 4, 3))
  image[..., :2, :] = 0.5
  image[..., 2:, 0] = 1.0
  g = metrics.colour_gradient(image)[0]
  np.testing.assert_allclose(g, np.tile([0.0, 52.27, 52.27, 0.0], (4, 1)), atol=0.01)
  mask = np.ones((1, 4, 4))
  edge_map = np.tile([0.1, 0.9, 0.8, 0.0], (4, 1))[None]          # ranks like the edge
  assert metrics.colour_variation_correlation(edge_map, image, mask, 4, erode=0)[0] > 0.8
  # Spearman inside the mask by hand: map ranks per row (2, 4, 3, 1) against gradient
  # ranks (1.5, 3.5, 3.5, 1.5), each repeated over 4 rows: rho = 0.894 (= 2 / sqrt(5)).
  rho = metrics.colour_variation_correlation(edge_map, image, mask, 4, erode=0)[0]
  np.testing.assert_allclose(rho, 2 / np.sqrt(5), atol=1e-9)
  # Signs do not matter (|map|), an anti-aligned map is negative.
  np.testing.assert_allclose(metrics.colour_variation_correlation(-edge_map, image, mask, 4, 0)[0], rho)
  anti = np.tile([1.0, 0.0, 0.0, 1.0], (4, 1))[None]
  assert metrics.colour_variation_correlation(anti, image, mask, 4, erode=0)[0] == -1.0
  # Only pixels inside the mask count; too few of them, or a constant map, give NaN.
  small = np.zeros((1, 4, 4))
  small[0, 0, :2] = 1
  assert np.isnan(metrics.colour_variation_correlation(edge_map, image, small, 4, erode=0)[0])
  assert np.isnan(metrics.colour_variation_correlation(np.ones((1, 4, 4)), image, mask, 4, 0)[0])
  # By default the rim is left out (erode=2): a 4 x 4 lesion has no interior left.
  assert np.isnan(metrics.colour_variation_correlation(edge_map, image, mask, 1)[0])


def test_a_brightness_edge_is_not_colour_variation():
  image = np.zeros((1, 4, 4, 3))
  image[..., :2, :] = 0.2
  image[..., 2:, :] = 0.8                       # grey to grey: L* changes, a* b* do not
  np.testing.assert_allclose(metrics.colour_gradient(image), 0.0, atol=1e-6)
  edge_map = np.tile([0.1, 0.9, 0.8, 0.0], (4, 1))[None]
  mask = np.ones((1, 4, 4))
  assert np.isnan(metrics.colour_variation_correlation(edge_map, image, mask, 4, 0)[0])
  np.testing.assert_allclose(metrics.luminance_variation_correlation(edge_map, image, mask, 4, 0)[0],
                             2 / np.sqrt(5), atol=1e-9)


def _ssim_scipy(x, y, data_range=1.0):
  """SSIM written independently with scipy's Gaussian filter (the window of Wang et al.
  2004 and of scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``: sigma 1.5, truncated at 3.5 sigma = 11 taps, K1 0.01,
  K2 0.03, the border of 5 pixels cropped before averaging)."""
  from scipy import ndimage
  filt = lambda a: ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="reflect")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  mx, my = filt(x), filt(y)
  sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
  s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
  return s[5:-5, 5:-5].mean()


def test_ssim_matches_an_independent_implementation_on_images_that_differ():
  """Issue 26: SSIM was tested only on identical images. Here against a scipy
  implementation (scikit-image is not a dependency; its Gaussian-window SSIM is this
  formula), on an image and versions of it that differ: noise, a blur, an adversarial-sized
  perturbation and another image."""
  rng = np.random.default_rng(0)
  base = np.clip(np.cumsum(rng.normal(0, 0.05, (48, 48)), axis=1) % 1.0, 0, 1)
  others = {"noise": np.clip(base + rng.normal(0, 0.1, base.shape), 0, 1),
            "eps": np.clip(base + 0.004 * np.sign(rng.normal(size=base.shape)), 0, 1),
            "blur": __import__("scipy").ndimage.uniform_filter(base, 3),
            "other": rng.uniform(0, 1, base.shape)}
  for name, other in others.items():
    ours = float(metrics.ssim(base[None, ..., None].astype(np.float32),
                              other[None, ..., None].astype(np.float32))[0])
    assert ours == pytest.approx(_ssim_scipy(base, other), abs=2e-5), name
  assert float(metrics.ssim(base[None, ..., None].astype(np.float32),
                            others["other"][None, ..., None].astype(np.float32))[0]) < 0.2


def test_the_lesion_rim_and_the_padding_step_are_left_out_of_colour_following():
  """A lesion touching the black padding of a resized image: the step to black is the
  largest colour change in the mask, and a map that lights only that rim would look
  perfectly colour-following. Eroded by 2 px (the default), only the interior counts."""
  image = np.full((1, 12, 12, 3), [0.55, 0.36, 0.24])   # an evenly brown lesion
  image[:, :2] = 0.0                                    # black padding above it
  mask = np.zeros((1, 12, 12))
  mask[:, 2:, :] = 1                                     # the lesion reaches the padding
  rim_map = np.zeros((1, 12, 12))
  rim_map[:, 2] = 1.0                                     # lights only the row next to black
  assert metrics.colour_variation_correlation(rim_map, image, mask, 4, erode=0)[0] == 1.0
  assert np.isnan(metrics.colour_variation_correlation(rim_map, image, mask, 4)[0])
  assert metrics.lesion_interior(mask, 2)[0].sum() == 6 * 8   # rows 4-9, columns 2-9
  # Inside, a map that follows a colour blotch still scores.
  image[:, 6:8, 5:7] = [0.42, 0.47, 0.58]               # a blue-grey blotch
  blotch = metrics.colour_gradient(image)
  assert metrics.colour_variation_correlation(blotch, image, mask)[0] == 1.0
