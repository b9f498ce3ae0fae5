"""A study's numbers: metrics of per-image records, confidence intervals, paired tests and
the verdicts on its claims.

Per model and metric (:func:`summary_rows`):

* the mean over the k x r fold runs with the corrected resampled-t 95 % CI (Nadeau &
  Bengio 2003: the variance is inflated by ``1/(k r) + n_test/n_train`` because the
  training sets overlap; :func:`corrected_t`), and
* the pooled out-of-fold value (every image predicted once per repetition by the model
  that did not see it) with a percentile bootstrap 95 % CI over images, resampling whole
  groups (near-duplicates / patients together; :func:`group_bootstrap`). Percentile, not
  BCa: BCa's acceleration needs a jackknife over the groups (one metric evaluation per
  group: thousands of AUCs per metric and model on HAM10000), scipy's ``bootstrap`` cannot
  resample clusters, and the study's headline intervals are the corrected-t ones above;
  image-level intervals (``lib.metrics.bootstrap_ci``, explain.py) are BCa;

and for each comparison ``a - b`` the same two, paired: the corrected resampled t-test
over the fold runs and a paired group bootstrap over the out-of-fold images.

A t interval can leave the range a metric can take (a sensitivity of 0.59 from five
widely spread folds gets 0.02 .. 1.15). Corrected-t intervals of bounded metrics (the
classification metrics and the mean or median of a 0/1 column such as ``adv_correct`` or
of a fraction in [0, 1]; correlations in [-1, 1]: :data:`BOUNDED`, :func:`metric_range`)
are therefore cut to that range, those of differences to the range of a difference.
Cutting keeps the coverage (the true value always lies in the range) and cannot change a
verdict (the claimed boundaries lie inside it).

numpy and scipy only: this module imports no JAX (the tables can be recomputed from the
committed ``per_image_*.csv`` on any machine).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import stats

from lib import classifier_metrics

SENS_AT_SPEC = "sensitivity_at_specificity"
CLASSIFICATION = ("auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")


def metric_fn(name: str) -> Callable[[dict, np.ndarray], float]:
  """``records, index -> value`` of a metric name: one of :data:`CLASSIFICATION`,
  ``sensitivity_at_specificity:<s>`` (:func:`lib.metrics.sensitivity_at_specificity`), or
  ``mean:<column>`` / ``median:<column>`` of a per-image column."""
  if name.startswith(f"{SENS_AT_SPEC}:"):
    level = float(name.partition(":")[2])
    return lambda rec, idx: classifier_metrics.sensitivity_at_specificity(
        rec["prob"][idx], rec["label"][idx] == 1, level)
  if name in CLASSIFICATION:
    def classify(rec, idx):
      p = rec["prob"][idx]
      m = classifier_metrics.classification_metrics(np.stack([1 - p, p], -1),
                                                    rec["label"][idx].astype(int))
      return float(m[name])
    return classify
  how, _, column = name.partition(":")
  if how not in ("mean", "median") or not column:
    raise ValueError(f"Unknown metric {name!r}: use {CLASSIFICATION}, "
                     f"'{SENS_AT_SPEC}:<level>', 'mean:<column>' or 'median:<column>'.")
  reduce = np.nanmean if how == "mean" else np.nanmedian
  return lambda rec, idx: float(reduce(rec[column][idx]))


# The range of per-image columns by their last name part (``gradient:colour_rho``,
# ``pgd-10@0.004:spearman``): fractions and correlations.
BOUNDED = {**dict.fromkeys(("lesion_energy", "lesion_energy_clean", "lesion_energy_adv",
                            "uniform_lesion_energy", "top_k_intersection", "gini",
                            "adv_prob", "prob"), (0.0, 1.0)),
           **dict.fromkeys(("spearman", "pearson", "map_ssim", "colour_rho",
                            "luminance_rho"), (-1.0, 1.0))}


def metric_range(metric: str, records) -> tuple[float, float]:
  """The values ``metric`` can take: ``(0, 1)`` for a proportion (:data:`CLASSIFICATION`,
  sensitivity at a specificity, the mean or median of a column whose finite values in
  every one of ``records`` are 0 or 1), the :data:`BOUNDED` range of a fraction or a
  correlation, ``(-inf, inf)`` otherwise."""
  if metric in CLASSIFICATION or metric.startswith(f"{SENS_AT_SPEC}:"):
    return 0.0, 1.0
  column = metric.partition(":")[2]
  if column.rpartition(":")[2] in BOUNDED:
    return BOUNDED[column.rpartition(":")[2]]
  values = [np.asarray(r[column], np.float64) for r in records if column in r]
  if values and all(np.isin(v[np.isfinite(v)], (0.0, 1.0)).all() for v in values):
    return 0.0, 1.0
  return -np.inf, np.inf


def clipped(e: "Estimate", low: float, high: float) -> "Estimate":
  """``e`` with its interval cut to ``[low, high]`` (see the module docstring)."""
  return dataclasses.replace(e, low=float(np.clip(e.low, low, high)),
                             high=float(np.clip(e.high, low, high)))


def has_column(rec: dict, metric: str) -> bool:
  """Whether the records hold what ``metric`` is computed from."""
  return (metric in CLASSIFICATION or metric.startswith(f"{SENS_AT_SPEC}:")
          or metric.partition(":")[2] in rec)


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A value with its confidence interval ``[low, high]`` and two-sided p-value (nan where
  there is none)."""
  value: float
  low: float
  high: float
  p: float


def corrected_t(values, test_fraction: float, level: float = 0.95) -> Estimate:
  """Mean of k x r fold values with the corrected resampled t interval and two-sided
  p-value against 0 (Nadeau & Bengio 2003; Bouckaert & Frank 2004).
  ``test_fraction`` is n_test / n_train of one fold. ``value`` is the mean."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  n = len(v)
  nan = float("nan")
  if n < 2:
    return Estimate(float(v.mean()) if n else nan, nan, nan, nan)
  mean = v.mean()
  if np.ptp(v) == 0:   # every fold gave the same value
    return Estimate(float(v[0]), float(v[0]), float(v[0]), 1.0 if v[0] == 0 else 0.0)
  se = np.sqrt((1.0 / n + test_fraction) * v.var(ddof=1))
  t = stats.t.ppf(0.5 + level / 2, n - 1)
  p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
  return Estimate(float(mean), float(mean - t * se), float(mean + t * se), p)


def group_bootstrap(pooled: list[dict], fn, *, paired: list[dict] | None = None,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
  """The pooled out-of-fold value of a metric (mean over repetitions) with a percentile
  bootstrap CI that resamples whole groups; with ``paired`` (the other model's records,
  same images), of the difference, with the two-sided bootstrap p-value (nan unpaired)."""
  def value(idx_per_rep):
    vals = [fn(r, i) for r, i in zip(pooled, idx_per_rep)]
    if paired is not None:
      vals = [a - fn(r, i) for a, r, i in zip(vals, paired, idx_per_rep)]
    return float(np.mean(vals))

  members = []
  for rec in pooled:
    by = {}
    for i, g in enumerate(rec["group"]):
      by.setdefault(g, []).append(i)
    members.append(by)
  groups = sorted(members[0])
  full = [np.arange(len(r["id"])) for r in pooled]
  estimate = value(full)
  rng = np.random.default_rng(seed)
  boots = []
  for _ in range(n_boot):
    pick = [groups[j] for j in rng.integers(0, len(groups), len(groups))]
    boots.append(value([np.concatenate([by[g] for g in pick]) for by in members]))
  boots = np.asarray(boots)
  boots = boots[np.isfinite(boots)]
  a = (1 - level) / 2
  p = float(min(1.0, 2 * min((boots <= 0).mean(), (boots >= 0).mean()))) if paired else float("nan")
  return Estimate(estimate, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), p)


@dataclasses.dataclass(frozen=True)
class Summary:
  """The rows of a study's tables: ``per_run`` (model, seed, fold, metric, value),
  ``models`` (per metric and model: ``mean``, ``ci_low``, ``ci_high``, ``runs`` and, over
  complete repetitions, ``oof``, ``oof_low``, ``oof_high``, ``images``) and ``comparisons``
  (per metric and pair ``a - b``: ``diff``, its CI, ``p_corrected_t``, ``a_wins``, ``runs``
  and ``oof_diff``, ``oof_low``, ``oof_high``, ``p_bootstrap``)."""
  per_run: list[dict]
  models: list[dict]
  comparisons: list[dict]


def summary_rows(recs: dict, pooled: dict, names: list[str], metrics, comparisons, *,
                 folds: int, n_boot: int) -> Summary:
  """The numbers of a summary (see the module docstring). ``recs``: ``{(model, seed,
  fold): records}`` of every evaluated run; ``pooled``: per model, the out-of-fold records
  of each complete repetition, image-aligned across models
  (:func:`lib.study.records.out_of_fold`); ``names``: the models in table order."""
  test_fraction = 1.0 / (folds - 1)
  per_run, model_rows, comparison_rows = [], [], []
  for metric in metrics:
    fn = metric_fn(metric)
    low, high = metric_range(metric, recs.values())
    values = {}
    for (n, s, f), r in sorted(recs.items(), key=lambda kv: kv[0][1:]):
      if has_column(r, metric):
        v = fn(r, np.arange(len(r["id"])))
        values.setdefault(n, {})[s, f] = v
        per_run.append({"model": n, "seed": s, "fold": f, "metric": metric, "value": v})
    for n in names:
      if n not in values:
        continue
      ci = clipped(corrected_t(list(values[n].values()), test_fraction), low, high)
      row = {"metric": metric, "model": n, "mean": ci.value, "ci_low": ci.low,
             "ci_high": ci.high, "runs": len(values[n])}
      if pooled[n] and has_column(pooled[n][0], metric):
        oof = group_bootstrap(pooled[n], fn, n_boot=n_boot)
        row["oof"], row["oof_low"], row["oof_high"] = oof.value, oof.low, oof.high
        row["images"] = len(pooled[n][0]["id"])
      model_rows.append(row)
    for a, b in comparisons:
      if a not in values or b not in values:
        continue
      both = sorted(set(values[a]) & set(values[b]))
      diffs = [values[a][k] - values[b][k] for k in both]
      if not diffs:
        continue
      ci = clipped(corrected_t(diffs, test_fraction), low - high, high - low)
      row = {"metric": metric, "a": a, "b": b, "diff": ci.value, "ci_low": ci.low,
             "ci_high": ci.high, "p_corrected_t": ci.p,
             "a_wins": int(sum(x > 0 for x in diffs)), "runs": len(diffs)}
      if pooled[a] and has_column(pooled[a][0], metric):
        oof = group_bootstrap(pooled[a], fn, paired=pooled[b], n_boot=n_boot)
        row["oof_diff"], row["oof_low"], row["oof_high"] = oof.value, oof.low, oof.high
        row["p_bootstrap"] = oof.p
      comparison_rows.append(row)
  return Summary(per_run, model_rows, comparison_rows)


def judge(claim, comparison_rows, model_rows=()) -> dict:
  """Did a claim hold? ``claim``: ``metric``, ``a``, ``b``, ``direction``.

  ``b`` a model name: the study says ``a - b`` is > 0 (``direction="greater"``) or < 0
  (``"less"``), judged on the paired corrected-t CI of the difference. ``b`` a number: the
  study says model ``a``'s value is above / below it, judged on ``a``'s CI. Held: the CI
  excludes the claimed boundary on the claimed side; reversed: on the other side;
  otherwise not shown."""
  claim = dict(claim)
  if isinstance(claim["b"], str):
    row = next((r for r in comparison_rows if r["metric"] == claim["metric"] and
                r["a"] == claim["a"] and r["b"] == claim["b"]), None)
    value, boundary = "diff", 0.0
  else:
    row = next((r for r in model_rows if r["metric"] == claim["metric"] and
                r["model"] == claim["a"]), None)
    value, boundary = "mean", float(claim["b"])
  if row is None:
    return {**claim, "verdict": "not measured"}
  sign = 1 if claim["direction"] == "greater" else -1
  lo, hi = sorted((sign * (row["ci_low"] - boundary), sign * (row["ci_high"] - boundary)))
  if not (np.isfinite(lo) and np.isfinite(hi)):
    verdict = "too few runs for a CI"
  else:
    verdict = "held" if lo > 0 else "reversed" if hi < 0 else "not shown (CI includes it)"
  return {**claim, "verdict": verdict, "value": row[value], "ci_low": row["ci_low"],
          "ci_high": row["ci_high"], "p": row.get("p_corrected_t", float("nan"))}
