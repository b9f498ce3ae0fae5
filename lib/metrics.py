"""Metrics of classifiers and segmentations (host-side numpy).

Binary tasks treat class index 1 as positive (malignant, tumour): sensitivity is its
recall (true-positive rate), specificity the recall of the others (true-negative rate).
ROC AUC is the Mann-Whitney U statistic with ties counted one half (Hanley & McNeil
1982); for more than two classes the macro average of one-vs-rest AUCs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  n_pos, n_neg = positives.sum(), (~positives).sum()
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(scores, kind="mergesort")
  ranks = np.empty(len(scores), np.float64)
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  avg = first + (counts - 1) / 2.0 + 1.0
  ranks[order] = np.repeat(avg, counts)
  return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def dice_score(pred_mask: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-image Dice of binary masks (1 where both are empty)."""
  pred_mask, mask = pred_mask.astype(bool), mask.astype(bool)
  inter = (pred_mask & mask).sum(axis=(1, 2))
  total = pred_mask.sum(axis=(1, 2)) + mask.sum(axis=(1, 2))
  return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """accuracy, sensitivity, specificity, balanced accuracy and ROC AUC."""
  probs, labels = np.asarray(probs), np.asarray(labels)
  num_classes = probs.shape[-1]
  pred = probs.argmax(-1)
  out = {"accuracy": float((pred == labels).mean()), "n": int(len(labels))}
  recalls = [float((pred[labels == c] == c).mean()) for c in range(num_classes) if (labels == c).any()]
  out["balanced_accuracy"] = float(np.mean(recalls))
  pos = labels == 1
  out["sensitivity"] = float((pred[pos] == 1).mean()) if pos.any() else float("nan")
  out["specificity"] = float((pred[~pos] != 1).mean()) if (~pos).any() else float("nan")
  if num_classes == 2:
    out["auc"] = roc_auc(probs[:, 1], pos)
  else:
    out["auc"] = float(np.nanmean([roc_auc(probs[:, c], labels == c) for c in range(num_classes)]))
  return out


def segmentation_metrics(mask_probs: np.ndarray, masks: np.ndarray, has_mask: np.ndarray) -> dict:
  sel = np.asarray(has_mask) > 0
  if not sel.any():
    return {}
  return {"dice": float(dice_score(mask_probs[sel] > 0.5, masks[sel] > 0.5).mean())}


# ----------------------------------------------------------------------------- imperceptibility
# jnp functions of image batches in [0, 1] (NHWC), per example, jit-able.


def linf_distance(x, x_adv):
  return jnp.abs((x_adv - x).reshape(x.shape[0], -1)).max(axis=1)


def l2_distance(x, x_adv):
  return jnp.sqrt(((x_adv - x) ** 2).reshape(x.shape[0], -1).sum(axis=1))


def psnr(x, x_adv, data_range: float = 1.0):
  """Peak signal-to-noise ratio in dB (inf for identical images)."""
  mse = ((x_adv - x) ** 2).reshape(x.shape[0], -1).mean(axis=1)
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def _gaussian_blur(x, size: int = 11, sigma: float = 1.5):
  """Separable Gaussian filter per channel, 'VALID' as in Wang et al.'s reference code."""
  t = jnp.arange(size, dtype=x.dtype) - (size - 1) / 2
  k = jnp.exp(-t ** 2 / (2 * sigma ** 2))
  k = k / k.sum()
  c = x.shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")
  kh = jnp.tile(k.reshape(size, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(k.reshape(1, size, 1, 1), (1, 1, 1, c))
  x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
  return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def ssim(x, y, data_range: float = 1.0):
  """Mean structural similarity per example (Wang et al. 2004): 11x11 Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over pixels and channels."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
  sxx = _gaussian_blur(x * x) - mu_x ** 2
  syy = _gaussian_blur(y * y) - mu_y ** 2
  sxy = _gaussian_blur(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
  return s.reshape(s.shape[0], -1).mean(axis=1)


def perturbation_metrics(x, x_adv) -> dict:
  """L-inf and L2 norms, PSNR and SSIM of a perturbation, per example."""
  return {"linf": linf_distance(x, x_adv), "l2": l2_distance(x, x_adv),
          "psnr": psnr(x, x_adv), "ssim": ssim(x, x_adv)}
