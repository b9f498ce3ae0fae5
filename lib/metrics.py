"""Metrics of classifiers and segmentations (host-side numpy).

Binary tasks treat class index 1 as positive (malignant, tumour): sensitivity is its
recall (true-positive rate), specificity the recall of the others (true-negative rate).
ROC AUC is the Mann-Whitney U statistic with ties counted one half (Hanley & McNeil
1982); for more than two classes the macro average of one-vs-rest AUCs.
"""

from __future__ import annotations

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
