"""Cross-validated studies: models x seeds x group-aware folds, per-image records,
confidence intervals and paired tests.

A single split misleads on data sets of a few hundred images, so every comparison
between models is made over a repeated, group-aware, label-stratified k-fold
(:func:`lib.data.cv_assignment`; repetition ``r`` uses fold assignment ``fold_seed = r``
and training seed ``r``). A study config (``configs/studies/``) names

* ``models``: each a ``train.py`` config (``"configs/busi_mtl.py:cpu"``) with overrides;
  an override value ``"{run:NAME}"`` is the work dir of model ``NAME`` on the same seed and
  fold (fine-tuning a robust model, transplanting its stages);
* ``attacks`` (entries of ``attack.py``'s ``attacks``) at ``eps`` and saliency ``methods``
  measured on every held-out fold, image by image (:func:`evaluate_run`);
* ``metrics`` and the ``comparisons`` (and ``claims``) to report.

Stages (each resumes; a finished run or evaluation is never redone): train a run, evaluate
it on its test fold (``per_image.csv``), next run; then summarise what is there.
The summary (:func:`summarise`) reports per model and metric

* the mean over the k x r fold runs with the corrected resampled-t 95 % CI (Nadeau &
  Bengio 2003: the variance is inflated by ``1/(k r) + n_test/n_train`` because the
  training sets overlap), and
* the pooled out-of-fold value (every image predicted once per repetition by the model
  that did not see it) with a percentile bootstrap 95 % CI over images, resampling whole
  groups (near-duplicates / patients together);

and for each comparison ``a - b`` the same two, paired: the corrected resampled t-test
over the fold runs and a paired group bootstrap over the out-of-fold images.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
import platform
import re
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from scipy import stats

from lib import data, experiment, explain_report, metrics, models, parallel, report, sweep, trainer

STAGES = ("train", "evaluate", "figures", "summarise")
SENS_AT_SPEC = "sensitivity_at_specificity"
CLASSIFICATION = ("auc", "accuracy", "sensitivity", "specificity", "balanced_accuracy")
_RUN = re.compile(r"\{run:([A-Za-z0-9_\-]+)\}")


# ----------------------------------------------------------------------------- configs


def load_train_config(spec: str) -> ml_collections.ConfigDict:
  """``"configs/busi_mtl.py:cpu"`` -> that file's ``get_config("cpu")``."""
  path, _, variant = spec.partition(":")
  if not os.path.isabs(path):
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path} (from model config {spec!r}) does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      "study_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)


def run_dir(study, workdir: str, model: str, seed: int, fold: int) -> str:
  """Where one training run of the study lives (``study.runs_dir`` can point at another
  study's runs, which are then shared, not retrained)."""
  return os.path.join(study.get("runs_dir") or workdir, model, f"seed{seed}_fold{fold}")


def eval_dir(workdir: str, model: str, seed: int, fold: int) -> str:
  """Where this study's evaluation of one run goes (``per_image.csv``, ``eval_time.json``):
  always under its own work dir, so that studies sharing runs (``runs_dir``) keep their
  own records; the run directory itself when the study trained the run."""
  return os.path.join(workdir, model, f"seed{seed}_fold{fold}")


def _set(c, dotted: str, value):
  *parents, leaf = dotted.split(".")
  for p in parents:
    c = c[p]
  if leaf not in c:
    raise KeyError(f"Unknown config field {dotted!r} in a study override.")
  c[leaf] = type(c[leaf])(value) if isinstance(c[leaf], (tuple, list)) else value


def train_config_for(study, model_spec, seed: int, fold: int, workdir: str):
  """The ``train.py`` config of one (model, seed, fold) run."""
  c = load_train_config(model_spec.config)
  names = {m.name for m in study.models}

  def resolve(v):
    if not isinstance(v, str):
      return v
    for ref in _RUN.findall(v):
      if ref not in names:
        raise KeyError(f"{model_spec.name}: override refers to unknown model {ref!r}.")
    return _RUN.sub(lambda m: run_dir(study, workdir, m.group(1), seed, fold), v)

  for overrides in (study.get("overrides", ()), model_spec.get("overrides", ())):
    for k, v in overrides:
      _set(c, k, resolve(v))
  c.seed = seed
  c.data.folds, c.data.fold, c.data.fold_seed = study.folds, fold, seed
  return c


def all_runs(study):
  """``(model spec, seed, fold)`` in training order: seeds, folds, then models in the order
  given (so a model that starts from another comes after it)."""
  return [(m, s, f) for s in study.seeds for f in range(study.folds) for m in study.models]


# ----------------------------------------------------------------------------- stages


def train_run(study, m, seed: int, fold: int, workdir: str) -> str:
  """Trains one run unless it has ``test_metrics.json`` (an interrupted one resumes from
  its latest checkpoint); returns its directory."""
  rd = run_dir(study, workdir, m.name, seed, fold)
  if os.path.exists(os.path.join(rd, "test_metrics.json")):
    return rd
  logging.info("Study %s: training %s seed %d fold %d/%d -> %s", study.name, m.name, seed,
               fold + 1, study.folds, rd)
  t0 = time.time()
  trainer.train_and_evaluate(train_config_for(study, m, seed, fold, workdir), rd)
  with open(os.path.join(rd, "train_time.json"), "w") as f:
    json.dump({"seconds": time.time() - t0}, f)
  return rd


def _attack_config(study) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      eps=tuple(study.eps), batch_size=study.batch_size, seed=0, map_metrics=study.map_metrics,
      map_method=study.map_method, top_k=study.top_k))


def _explain_config(study) -> ml_collections.ConfigDict:
  from configs import explain
  c = explain.get_config()
  c.methods, c.faithfulness, c.batch_size = tuple(study.methods), False, study.batch_size
  c.smoothgrad_samples = study.smoothgrad_samples
  return c


_COMPILED: dict = {}   # attack functions compiled for one architecture, reused across runs


def evaluate_run(study, rd: str, *, out_dir: str = "", figures_to: str = "",
                 model_name: str = "") -> dict:
  """Per-image records of the run in ``rd`` on its held-out fold: ``prob`` (of the positive class)
  and ``correct``; for every attack and eps ``<attack>@<eps>:<field>`` (``adv_correct``,
  ``spearman``, ``lesion_energy_adv`` ... of :func:`lib.sweep.run_attack_grid`); for
  every saliency method ``<method>:<quality>`` (lesion energy, total variation, Gini,
  entropy of :func:`lib.explain_report.map_quality`). Written to
  ``<out_dir or rd>/per_image.csv``.
  With ``figures_to``, before/after figures of the attacks are written there."""
  config, model, variables = experiment.restore_model(rd, "best")
  arrays = data.load_split(config.data, "test", config.image_size)
  in_channels, has_masks = config.model.in_channels, data.DATASETS[config.data.name].has_masks
  key = ("probs", repr(model))   # compiled once per architecture, like the attacks
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(
        lambda v, x: jax.nn.softmax(models.model_fns(model, v).logits_fn(x), -1))
  probs_fn = _COMPILED[key]
  n, bs = len(arrays["label"]), study.batch_size
  probs = np.concatenate([
      np.asarray(probs_fn(variables, data.to_model_input(arrays["image"][idx], in_channels)))
      for _, idx in data.padded_batches(n, bs)])[:n]
  rec = {"id": list(arrays["id"]), "group": list(arrays["group"]),
         "label": arrays["label"].astype(np.float64), "prob": probs[:, -1].astype(np.float64),
         "correct": (probs.argmax(-1) == arrays["label"]).astype(np.float64)}
  acfg, mesh = _attack_config(study), parallel.make_mesh(study.get("num_devices", 0))
  class_names = data.class_names(config.data)
  for spec in study.attacks:
    per_image, t0 = {}, time.time()
    _, examples = sweep.run_attack_grid(
        model, variables, arrays, acfg, spec, mesh, sweep.CompileCounter(),
        in_channels=in_channels, keep_examples=study.figure_images if figures_to else 0,
        has_masks=has_masks, per_image=per_image, cache=_COMPILED)
    label = sweep.attack_label(spec)
    logging.info("%s: %s at %d eps in %.1f s", model_name or rd, label, len(per_image),
                 time.time() - t0)
    for eps, fields in per_image.items():
      rec.update({f"{label}@{eps:g}:{k}": v for k, v in fields.items()})
    if figures_to and examples:
      _plot_examples(study, spec, arrays, examples, class_names, figures_to, model_name)
  maps = {}
  if study.methods:
    _, _, _, per_method, maps, _ = explain_report.explain_checkpoint(
        rd, _explain_config(study), restored=(config, model, variables, arrays))
    for method, q in per_method.items():
      rec.update({f"{method}:{k}": np.asarray(v, np.float64) for k, v in q.items()})
  os.makedirs(out_dir or rd, exist_ok=True)
  write_records(rec, os.path.join(out_dir or rd, "per_image.csv"))
  return {"records": rec, "arrays": arrays, "maps": maps, "class_names": class_names}


def _plot_examples(study, spec, arrays, examples, class_names, figures_to: str,
                   model_name: str) -> None:
  """``examples_<model>_<attack>.png``: the images (or maps) of one attack before and
  after, at the eps nearest ``study.figure_eps``."""
  label = sweep.attack_label(spec)
  eps = min(examples, key=lambda e: abs(e - study.figure_eps))
  path = os.path.join(figures_to, f"examples_{model_name}_{label}.png")
  if dict(spec)["name"] == sweep.EXPLANATION:
    report.plot_map_attack(arrays, examples, class_names, path, eps,
                           title=f"{model_name} / {label}")
  else:
    report.plot_adversarial_examples(arrays, examples, class_names, path, eps)


def figure_seed(study) -> int:
  """The repetition whose first fold the figures show: ``study.figure_seed`` (-1: the last
  of ``study.seeds``)."""
  seed = study.get("figure_seed", -1)
  return study.seeds[-1] if seed == -1 else seed


def plot_figures(study, workdir: str, results_dir: str, seed: int) -> None:
  """The ``figures`` stage: redraws every ``examples_*.png`` and ``maps.png`` from fold 0 of
  repetition ``seed`` (the first evaluation of a study draws them once, from its first
  repetition). The attacks run on only the ``figure_images`` test images that
  :func:`lib.data.example_indices` picks (both classes in turn), and no records are
  written; ``figures.json`` says which runs the figures show."""
  mesh, acfg = parallel.make_mesh(study.get("num_devices", 0)), _attack_config(study)
  for m in study.models:
    rd = run_dir(study, workdir, m.name, seed, 0)
    if not os.path.exists(os.path.join(rd, "test_metrics.json")):
      raise FileNotFoundError(
          f"Figures of repetition {seed} need its fold-0 run of {m.name!r} in {rd}, which is "
          "not a finished run: train it first or pick another --config.figure_seed.")
    config, model, variables = experiment.restore_model(rd, "best")
    arrays = data.load_split(config.data, "test", config.image_size)
    arrays = data.take(arrays, data.example_indices(arrays["label"], study.figure_images))
    class_names = data.class_names(config.data)
    for spec in study.attacks:
      _, examples = sweep.run_attack_grid(
          model, variables, arrays, acfg, spec, mesh, sweep.CompileCounter(),
          in_channels=config.model.in_channels, keep_examples=len(arrays["label"]),
          has_masks=data.DATASETS[config.data.name].has_masks, cache=_COMPILED)
      _plot_examples(study, spec, arrays, examples, class_names, results_dir, m.name)
  plot_first_fold_maps(study, workdir, results_dir, seed=seed, overwrite=True)
  with open(os.path.join(results_dir, "figures.json"), "w") as f:
    json.dump({"seed": seed, "fold": 0}, f)


def write_records(rec: dict, path: str) -> None:
  keys = list(rec)
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(keys)
    for i in range(len(rec["id"])):
      w.writerow([rec[k][i] if isinstance(rec[k], list) else repr(float(rec[k][i])) for k in keys])
  os.replace(path + ".tmp", path)   # a half-written file never looks finished


def read_records(path: str) -> dict:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = {"id": [r["id"] for r in rows], "group": [r["group"] for r in rows]}
  for k in rows[0] if rows else ():
    if k not in out:
      out[k] = np.array([float(r[k]) for r in rows])
  return out


def evaluate_once(study, rd: str, out_dir: str, model_name: str, *,
                  figures_to: str = "") -> None:
  """:func:`evaluate_run` of the run in ``rd`` unless ``out_dir/per_image.csv`` exists."""
  if os.path.exists(os.path.join(out_dir, "per_image.csv")):
    return
  logging.info("Study %s: evaluating %s -> %s", study.name, rd, out_dir)
  t0 = time.time()
  evaluate_run(study, rd, out_dir=out_dir, figures_to=figures_to, model_name=model_name)
  with open(os.path.join(out_dir, "eval_time.json"), "w") as f:
    json.dump({"seconds": time.time() - t0}, f)


def plot_first_fold_maps(study, workdir: str, results_dir: str, *, seed: int | None = None,
                         overwrite: bool = False) -> None:
  """``maps.png``: the saliency maps of every model on ``figure_images`` test images (both
  classes) of the first fold of repetition ``seed`` (default the first), side by side, once
  all those runs exist; kept if already drawn unless ``overwrite``."""
  path = os.path.join(results_dir, "maps.png")
  seed = study.seeds[0] if seed is None else seed
  dirs = {m.name: run_dir(study, workdir, m.name, seed, 0) for m in study.models}
  if not study.methods or (os.path.exists(path) and not overwrite) or not all(
      os.path.exists(os.path.join(d, "test_metrics.json")) for d in dirs.values()):
    return
  config = _explain_config(study)
  config.max_images = study.figure_images
  results = {}
  for name, d in dirs.items():
    train_config, arrays, _, _, maps, _ = explain_report.explain_checkpoint(d, config)
    results[name] = {"arrays": arrays, "maps": maps,
                     "class_names": data.class_names(train_config.data)}
  report.plot_model_comparison(results, path, study.figure_images)


# ----------------------------------------------------------------------------- statistics


def metric_fn(name: str) -> Callable[[dict, np.ndarray], float]:
  """``records, index -> value`` of a metric name: one of :data:`CLASSIFICATION`,
  ``sensitivity_at_specificity:<s>`` (:func:`lib.metrics.sensitivity_at_specificity`), or
  ``mean:<column>`` / ``median:<column>`` of a per-image column."""
  if name.startswith(f"{SENS_AT_SPEC}:"):
    level = float(name.partition(":")[2])
    return lambda rec, idx: metrics.sensitivity_at_specificity(
        rec["prob"][idx], rec["label"][idx] == 1, level)
  if name in CLASSIFICATION:
    def classify(rec, idx):
      p = rec["prob"][idx]
      m = metrics.classification_metrics(np.stack([1 - p, p], -1), rec["label"][idx].astype(int))
      return float(m[name])
    return classify
  how, _, column = name.partition(":")
  if how not in ("mean", "median") or not column:
    raise ValueError(f"Unknown metric {name!r}: use {CLASSIFICATION}, "
                     f"'{SENS_AT_SPEC}:<level>', 'mean:<column>' or 'median:<column>'.")
  reduce = np.nanmean if how == "mean" else np.nanmedian
  return lambda rec, idx: float(reduce(rec[column][idx]))


def corrected_t(values, test_fraction: float, level: float = 0.95):
  """Mean of k x r fold values with the corrected resampled t interval and two-sided
  p-value against 0 (Nadeau & Bengio 2003; Bouckaert & Frank 2004).
  ``test_fraction`` is n_test / n_train of one fold. Returns ``(mean, low, high, p)``."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  n = len(v)
  if n < 2:
    return (float(v.mean()) if n else float("nan"),) + (float("nan"),) * 3
  mean = v.mean()
  if np.ptp(v) == 0:   # every fold gave the same value
    return float(v[0]), float(v[0]), float(v[0]), 1.0 if v[0] == 0 else 0.0
  se = np.sqrt((1.0 / n + test_fraction) * v.var(ddof=1))
  t = stats.t.ppf(0.5 + level / 2, n - 1)
  p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
  return float(mean), float(mean - t * se), float(mean + t * se), p


def group_bootstrap(pooled: list[dict], fn, *, paired: list[dict] | None = None,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95):
  """The pooled out-of-fold value of a metric (mean over repetitions) with a percentile
  bootstrap CI that resamples whole groups; with ``paired`` (the other model's records,
  same images), of the difference, with the two-sided bootstrap p-value.
  Returns ``(value, low, high, p)``."""
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
  return estimate, float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a)), p


def _concat(records: list[dict]) -> dict:
  """Per-image records (columns: lists of strings or arrays) one after the other."""
  return {k: (sum((r[k] for r in records), []) if isinstance(records[0][k], list)
              else np.concatenate([r[k] for r in records])) for k in records[0]}


def _take(rec: dict, idx) -> dict:
  """The rows ``idx`` of per-image records, in that order."""
  return {k: ([v[i] for i in idx] if isinstance(v, list) else v[np.asarray(idx, np.int64)])
          for k, v in rec.items()}


def _aligned(records: list[dict], order: list[str]) -> dict:
  """One repetition's out-of-fold records (its k test folds), rows in ``order`` of ids."""
  pooled = _concat(records)
  pos = {i: n for n, i in enumerate(pooled["id"])}
  return _take(pooled, [pos[i] for i in order])


def summarise(study, workdir: str, results_dir: str) -> dict:
  """Tables, figures and README of the finished runs (see the module docstring)."""
  os.makedirs(results_dir, exist_ok=True)
  recs = committed_records(study, results_dir)
  missing = []
  for m, seed, fold in all_runs(study):
    path = os.path.join(eval_dir(workdir, m.name, seed, fold), "per_image.csv")
    if os.path.exists(path):
      recs[m.name, seed, fold] = read_records(path)
    elif (m.name, seed, fold) not in recs:
      missing.append(f"{m.name}/seed{seed}_fold{fold}")
  names = [m.name for m in study.models]
  complete_reps = [s for s in study.seeds
                   if all((n, s, f) in recs for n in names for f in range(study.folds))]
  test_fraction = 1.0 / (study.folds - 1)
  per_run, model_rows, comparison_rows = [], [], []
  pooled = {}
  for n in names:
    pooled[n] = []
    for s in complete_reps:
      order = sorted(sum((recs[names[0], s, f]["id"] for f in range(study.folds)), []))
      pooled[n].append(_aligned([recs[n, s, f] for f in range(study.folds)], order))
  for metric in study.metrics:
    fn = metric_fn(metric)
    values = {}
    for (n, s, f), r in sorted(recs.items(), key=lambda kv: kv[0][1:]):
      if _has_column(r, metric):
        v = fn(r, np.arange(len(r["id"])))
        values.setdefault(n, {})[s, f] = v
        per_run.append({"model": n, "seed": s, "fold": f, "metric": metric, "value": v})
    for n in names:
      if n not in values:
        continue
      mean, lo, hi, _ = corrected_t(list(values[n].values()), test_fraction)
      row = {"metric": metric, "model": n, "mean": mean, "ci_low": lo, "ci_high": hi,
             "runs": len(values[n])}
      if pooled[n] and _has_column(pooled[n][0], metric):
        row["oof"], row["oof_low"], row["oof_high"], _ = group_bootstrap(
            pooled[n], fn, n_boot=study.n_boot)
        row["images"] = len(pooled[n][0]["id"])
      model_rows.append(row)
    for a, b in study.comparisons:
      if a not in values or b not in values:
        continue
      both = sorted(set(values[a]) & set(values[b]))
      diffs = [values[a][k] - values[b][k] for k in both]
      if not diffs:
        continue
      d, lo, hi, p = corrected_t(diffs, test_fraction)
      row = {"metric": metric, "a": a, "b": b, "diff": d, "ci_low": lo, "ci_high": hi,
             "p_corrected_t": p, "a_wins": int(sum(x > 0 for x in diffs)), "runs": len(diffs)}
      if pooled[a] and _has_column(pooled[a][0], metric):
        row["oof_diff"], row["oof_low"], row["oof_high"], row["p_bootstrap"] = group_bootstrap(
            pooled[a], fn, paired=pooled[b], n_boot=study.n_boot)
      comparison_rows.append(row)
  report.write_table(per_run, os.path.join(results_dir, "per_run"))
  model_table = report.write_table(model_rows, os.path.join(results_dir, "models"))
  comparison_table = report.write_table(comparison_rows, os.path.join(results_dir, "comparisons"))
  for n in names:     # every evaluated run, also of unfinished repetitions (durable record)
    for s in study.seeds:
      done = [f for f in range(study.folds) if (n, s, f) in recs]
      if done:
        write_records(_with_folds([recs[n, s, f] for f in done], done),
                      os.path.join(results_dir, f"per_image_{n}_seed{s}.csv"))
  plot_metrics(model_rows, study, os.path.join(results_dir, "metrics.png"))
  curves = [f"{field}_vs_eps.png" for field in study.get("curves", ("adv_correct",))
            if plot_eps_curves(model_rows, study, field,
                               os.path.join(results_dir, f"{field}_vs_eps.png"))]
  verdicts = [judge(c, comparison_rows, model_rows) for c in study.get("claims", ())]
  write_readme(study, results_dir, model_table, comparison_table, verdicts, missing,
               complete_reps, curves, workdir)
  return {"models": model_rows, "comparisons": comparison_rows, "verdicts": verdicts,
          "missing": missing}


def _with_folds(records: list[dict], folds: list[int]) -> dict:
  """The records of several folds in one, sorted by image id, with a ``fold`` column."""
  rec = _concat([dict(r, fold=np.full(len(r["id"]), f, np.float64))
                 for r, f in zip(records, folds)])
  return _take(rec, np.argsort(np.asarray(rec["id"]), kind="stable"))


def committed_records(study, results_dir: str) -> dict:
  """``{(model, seed, fold): records}`` of the runs an earlier summary committed
  (``per_image_<model>_seed<s>.csv``: every evaluated fold), split back into their folds.

  The work dir (checkpoints, per-run records) is large and need not outlive the machine;
  the results directory is the durable record. A run summarised once is therefore never
  lost, even when its repetition is not finished (one may take several sessions): a later
  summary (e.g. after the second seed ran elsewhere) takes these records for every run
  whose work dir is gone, and :func:`run_study` neither retrains nor re-evaluates those
  runs (delete the file to redo a repetition, e.g. after adding an attack to the config).
  Files written before the ``fold`` column existed get their folds from
  :func:`lib.data.cv_assignment`, a pure function of the groups, labels and seed."""
  out = {}
  for m in study.models:
    for seed in study.seeds:
      path = os.path.join(results_dir, f"per_image_{m.name}_seed{seed}.csv")
      if not os.path.exists(path):
        continue
      rec = read_records(path)
      fold = rec.pop("fold", None)
      if fold is None:
        fold = data.cv_assignment(rec["group"], rec["label"].astype(np.int64), study.folds, seed)
      fold = np.asarray(fold, np.int64)
      for f in range(study.folds):
        idx = np.flatnonzero(fold == f)
        if not len(idx):
          continue     # not evaluated when that summary was written
        out[m.name, seed, f] = _take(rec, idx)
  return out


def _has_column(rec: dict, metric: str) -> bool:
  """Whether the records hold what ``metric`` is computed from."""
  return (metric in CLASSIFICATION or metric.startswith(f"{SENS_AT_SPEC}:")
          or metric.partition(":")[2] in rec)


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


# ----------------------------------------------------------------------------- figures, README


def plot_metrics(model_rows, study, path: str) -> None:
  """One panel per metric: every model's mean over fold runs with its 95 % CI."""
  rows = [r for r in model_rows if np.isfinite(r["mean"])]
  if not rows:
    return
  plt = report._plt()
  panels = list(dict.fromkeys(r["metric"] for r in rows))
  cols = min(4, len(panels))
  nrows = -(-len(panels) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
  names = [m.name for m in study.models]
  for ax, metric in zip(axes.flat, panels):
    mine = {r["model"]: r for r in rows if r["metric"] == metric}
    xs = [i for i, n in enumerate(names) if n in mine]
    ys = [mine[names[i]]["mean"] for i in xs]
    err = [[mine[names[i]]["mean"] - mine[names[i]]["ci_low"] for i in xs],
           [mine[names[i]]["ci_high"] - mine[names[i]]["mean"] for i in xs]]
    ax.errorbar(xs, ys, yerr=np.nan_to_num(np.asarray(err)), fmt="o", capsize=4)
    ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
    ax.set_title(metric.replace(":", "\n", 1), fontsize=8)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(f"{study.name}: mean over {study.folds}-fold x {len(study.seeds)} runs, 95 % CI "
               "(corrected resampled t)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


_EPS_METRIC = re.compile(r"^(?:mean|median):(.+)@([0-9.e\-]+):(\w+)$")
_FIELD_LABELS = {"adv_correct": "accuracy under attack", "spearman": "median Spearman, clean vs "
                 "attacked map", "top_k_intersection": "top-k intersection",
                 "kept": "share of labels kept", "lesion_energy_adv": "lesion energy after attack"}


def plot_eps_curves(model_rows, study, field: str, path: str) -> bool:
  """``field`` of every attack against eps (for ``adv_correct`` the clean accuracy at eps
  0), mean and 95 % CI band per model, eps = ``study.figure_eps`` marked. False when no
  attack has the field at two eps or more."""
  curves = {}
  clean = {r["model"]: r for r in model_rows if r["metric"] == "accuracy"}
  for r in model_rows:
    m = _EPS_METRIC.match(r["metric"])
    if m and m.group(3) == field:
      curves.setdefault((r["model"], m.group(1)), []).append((float(m.group(2)), r))
  curves = {k: sorted(v, key=lambda t: t[0]) for k, v in curves.items() if len(v) > 1}
  if not curves:
    return False
  plt = report._plt()
  attacks = sorted({a for _, a in curves})
  fig, axes = plt.subplots(1, len(attacks), figsize=(4 * len(attacks), 3.4), squeeze=False)
  for ax, attack in zip(axes.flat, attacks):
    for model in [m.name for m in study.models]:
      pts = curves.get((model, attack))
      if not pts:
        continue
      if field == "adv_correct" and model in clean and pts[0][0] > 0:
        pts = [(0.0, clean[model])] + pts
      eps = [e for e, _ in pts]
      line, = ax.plot(eps, [r["mean"] for _, r in pts], "o-", label=model)
      ax.fill_between(eps, [r["ci_low"] for _, r in pts], [r["ci_high"] for _, r in pts],
                      color=line.get_color(), alpha=0.2)
    ax.axvline(study.figure_eps, color="gray", ls=":", lw=1)
    ax.set_title(attack, fontsize=9)
    ax.set_xlabel("eps (pixels in [0, 1])")
    ax.grid(alpha=0.3)
  axes.flat[0].set_ylabel(_FIELD_LABELS.get(field, field))
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def _versions() -> str:
  import flax
  import optax
  return (f"python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}, "
          f"optax {optax.__version__}, numpy {np.__version__}; {jax.devices()[0].device_kind} "
          f"x {jax.device_count()}")


def wall_times(study, workdir: str, results_dir: str) -> dict:
  """Training and evaluation seconds per repetition (``{"0": {"train": s, "eval": s}}``).

  Each run's time files in the work dir are recorded per run in
  ``results_dir/wall_time.json`` (``"model/seed0_fold3": {"train": s, "eval": s}``), which
  keeps the runs whose work dir is gone; a repetition's time is the sum of its entries
  (an entry may also cover several runs, e.g. ``"all runs/seed0_folds0-4"``)."""
  path = os.path.join(results_dir, "wall_time.json")
  runs = json.load(open(path)) if os.path.exists(path) else {}
  for m, seed, fold in all_runs(study):
    here = {}
    for stage, where in (("train", run_dir(study, workdir, m.name, seed, fold)),
                         ("eval", eval_dir(workdir, m.name, seed, fold))):
      t = os.path.join(where, f"{stage}_time.json")
      if os.path.exists(t):
        with open(t) as f:
          here[stage] = json.load(f)["seconds"]
    if here:
      key = f"{m.name}/seed{seed}_fold{fold}"
      runs[key] = {"train": 0.0, "eval": 0.0, **runs.get(key, {}), **here}
  with open(path, "w") as f:
    json.dump(runs, f, indent=1, sort_keys=True)
  return {str(seed): {stage: sum(v[stage] for k, v in runs.items() if f"/seed{seed}_" in k)
                      for stage in ("train", "eval")} for seed in study.seeds}


def checkpoint_selection(study, workdir: str, results_dir: str) -> list[dict]:
  """``checkpoints.csv`` / ``.md``: the checkpoint each run kept (``best_step`` of its
  ``last_step``, selected by the train config's ``best_metric`` on the validation part of
  its training folds) and that checkpoint's validation metrics, e.g. ``val_pgd_accuracy``
  of an adversarially trained model: was the model a study evaluates robust at all?

  Like the wall time, the rows of runs whose work dir is gone are kept from the committed
  file. Returns the rows (model, seed, fold order)."""
  path = os.path.join(results_dir, "checkpoints.csv")
  rows = {}
  if os.path.exists(path):
    with open(path, newline="") as f:
      for r in csv.DictReader(f):
        rows[r["model"], int(r["seed"]), int(r["fold"])] = {
            k: v if k in ("model", "best_metric") else
            int(v) if k in ("seed", "fold", "best_step", "last_step") else float(v)
            for k, v in r.items() if v != ""}
  for m, seed, fold in all_runs(study):
    rd = run_dir(study, workdir, m.name, seed, fold)
    if not os.path.exists(os.path.join(rd, "test_metrics.json")):
      continue
    with open(os.path.join(rd, "test_metrics.json")) as f:
      best = int(json.load(f)["best_step"])
    with open(os.path.join(rd, "config.json")) as f:
      best_metric = json.load(f).get("best_metric", "") or "last"   # '' keeps the last one
    log = report.read_jsonl(os.path.join(rd, "metrics.jsonl"))
    val = {}   # the last validation entry of the best step (a resumed run may repeat it)
    for r in log:
      if r["step"] == best and any(k.startswith("val_") for k in r):
        val = {k: v for k, v in r.items() if k.startswith("val_") and k != "val_n"}
    rows[m.name, seed, fold] = {
        "model": m.name, "seed": seed, "fold": fold, "best_metric": best_metric,
        "best_step": best, "last_step": max((int(r["step"]) for r in log), default=best), **val}
  order = {m.name: i for i, m in enumerate(study.models)}
  out = [rows[k] for k in sorted(rows, key=lambda k: (order.get(k[0], len(order)), k[1], k[2]))]
  report.write_table(out, os.path.join(results_dir, "checkpoints"))
  return out


def write_readme(study, results_dir, model_table, comparison_table, verdicts, missing,
                 complete_reps, curves: list, workdir: str) -> None:
  """README.md: claim, verdicts, tables, figures, command, versions, wall time, and a
  hand-written ``notes.md`` (discussion) when there is one."""
  per_seed = wall_times(study, workdir, results_dir)
  selected = checkpoint_selection(study, workdir, results_dir)
  seconds = {k: sum(t[k] for t in per_seed.values()) for k in ("train", "eval")}
  with open(os.path.join(results_dir, "study_config.json"), "w") as f:
    f.write(study.to_json_best_effort(indent=2))
  notes_path = os.path.join(results_dir, "notes.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  lines = [f"# {study.title}", "", f"**The study's claim.** {study.claim}", ""]
  if verdicts:
    lines += ["## Did it hold?", "", "Each claim on the mean over fold runs and its 95 % CI "
              "(a - b for two models, paired; a model's own value against a threshold).", "",
              "| claim | metric | compared | value | 95 % CI | p | verdict |",
              "|---|---|---|---|---|---|---|"]
    for v in verdicts:
      fmt = lambda k: f"{v[k]:.3f}" if isinstance(v.get(k), float) and np.isfinite(v[k]) else ""
      compared = (f"{v['a']} - {v['b']}" if isinstance(v["b"], str) else
                  f"{v['a']} {'>' if v['direction'] == 'greater' else '<'} {v['b']:g}")
      lines.append(f"| {v['text']} | `{v['metric']}` | {compared} | {fmt('value')} | "
                   f"{fmt('ci_low')} .. {fmt('ci_high')} | {fmt('p')} | **{v['verdict']}** |")
    lines.append("")
  status = (f"{len(complete_reps)} of {len(study.seeds)} repetitions complete"
            + (f"; {len(missing)} run(s) not evaluated yet: {', '.join(missing[:8])}"
               + (" ..." if len(missing) > 8 else "") if missing else ""))
  lines += [
      "## How it was measured", "",
      f"Group-aware, label-stratified {study.folds}-fold cross-validation over all labelled "
      f"images (the manifest's `group` column), repeated with seeds {tuple(study.seeds)} "
      f"(fold assignment and training); {status}. `mean` and its CI: over the fold runs, "
      "corrected resampled t (Nadeau & Bengio 2003); `oof`: pooled out-of-fold value (each "
      "image predicted by the model that did not train on it), percentile bootstrap 95 % CI "
      f"over images resampling whole groups ({study.n_boot} resamples). Comparisons are paired "
      "(same folds, same images)."
      + (" `checkpoints.md`: the checkpoint each run kept and its validation metrics."
         if selected else ""), "",
      "## Models", "", model_table, "## Comparisons (a - b)", "", comparison_table,
      "![metrics](metrics.png)", ""]
  lines += [f"![{c}]({c})" for c in curves] + [""]
  figures = sorted(f for f in os.listdir(results_dir) if f.startswith(("examples_", "maps")))
  if figures:
    shown_path = os.path.join(results_dir, "figures.json")
    shown = {"seed": study.seeds[0]}
    if os.path.exists(shown_path):
      with open(shown_path) as f:
        shown = json.load(f)
    lines += [f"Example figures: test images of fold 0 of repetition (seed) {shown['seed']}.", ""]
  lines += [f"![{f}]({f})" for f in figures] + [""]
  if notes:
    lines += ["## Discussion", "", notes.strip(), ""]
  lines += ["## Reproduce", "", "```bash", study.command, "```", "",
            f"Configs: `study_config.json` (this study), each run's `config.json` under the "
            f"work dir. Versions: {_versions()}. Wall time of all runs: training "
            f"{seconds['train'] / 3600:.2f} h, evaluation {seconds['eval'] / 3600:.2f} h ("
            + "; ".join(f"seed {k}: {t['train'] / 3600:.2f} h + {t['eval'] / 3600:.2f} h"
                        for k, t in per_seed.items() if t["train"] + t["eval"])
            + ").", ""]
  with open(os.path.join(results_dir, "README.md"), "w") as f:
    f.write("\n".join(lines))


def run_study(study, workdir: str) -> dict:
  """``study.py``'s job: the stages in ``study.stages`` (default all but ``figures``):
  ``train`` and ``evaluate`` every run not done (or committed) yet, redraw the ``figures``
  from another repetition (:func:`plot_figures`), ``summarise`` them all. Returns the
  summary (empty without ``summarise``: a pass over one seed does not overwrite the
  study's summary of all of them)."""
  results_dir = study.results_dir
  os.makedirs(results_dir, exist_ok=True)
  stages = tuple(study.get("stages", ("train", "evaluate", "summarise")))
  if unknown := set(stages) - set(STAGES):
    raise ValueError(f"Unknown stage(s) {sorted(unknown)} in --config.stages: the stages are "
                     f"{', '.join(STAGES)}.")
  committed = committed_records(study, results_dir)
  for m, seed, fold in all_runs(study):   # each run evaluated as soon as it is trained
    rd = run_dir(study, workdir, m.name, seed, fold)
    done_here = os.path.exists(os.path.join(eval_dir(workdir, m.name, seed, fold), "per_image.csv"))
    if (m.name, seed, fold) in committed and not done_here:
      continue   # summarised before and its work dir is gone: never retrained
    if "train" in stages:
      train_run(study, m, seed, fold, workdir)
    if "evaluate" in stages and os.path.exists(os.path.join(rd, "test_metrics.json")):
      first = seed == study.seeds[0] and fold == 0
      evaluate_once(study, rd, eval_dir(workdir, m.name, seed, fold), m.name,
                    figures_to=results_dir if first else "")
  if "evaluate" in stages:
    plot_first_fold_maps(study, workdir, results_dir)
  if "figures" in stages:
    plot_figures(study, workdir, results_dir, figure_seed(study))
  return summarise(study, workdir, results_dir) if "summarise" in stages else {}
