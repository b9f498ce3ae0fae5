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
