"""Metrics of a classifier's scores: ROC AUC, sensitivity at a given specificity, and
accuracy, sensitivity, specificity, balanced accuracy at the argmax (host-side numpy).

Importable without JAX (:mod:`lib.study.statistics` computes its confidence intervals with
them in a process that never starts JAX); :mod:`lib.metrics` re-exports them.

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


def sensitivity_at_specificity(scores: np.ndarray, positives: np.ndarray,
                               specificity: float) -> float:
  """The ROC curve's sensitivity where specificity first reaches ``specificity``: an image
  is called positive when its score exceeds the cut, and the cut is the lowest one (a
  negative's score, ties called negative) that keeps that share of negatives below it.
  Unlike sensitivity at the argmax, it does not depend on where a model's scores sit, so
  two models are compared at the same specificity."""
  scores = np.asarray(scores, np.float64)
  positives = np.asarray(positives, bool)
  if positives.all() or not positives.any():
    return float("nan")
  neg = np.sort(scores[~positives])
  cuts = np.concatenate([[-np.inf], np.unique(neg)])
  reached = np.searchsorted(neg, cuts, side="right") / len(neg) >= specificity - 1e-12
  return float((scores[positives] > cuts[np.argmax(reached)]).mean())


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
  """accuracy, sensitivity, specificity, balanced accuracy and ROC AUC; for two classes
  also the sensitivity at 90 % specificity (``sensitivity_at_spec90``: the usual operating
  point of melanoma screening, comparable across models whatever their score scale).
  Sensitivity and specificity are those of class 1 (the positive: malignant, melanoma)."""
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
    out["sensitivity_at_spec90"] = sensitivity_at_specificity(probs[:, 1], pos, 0.9)
  else:
    out["auc"] = float(np.nanmean([roc_auc(probs[:, c], labels == c) for c in range(num_classes)]))
  return out
