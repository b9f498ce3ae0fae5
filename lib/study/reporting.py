"""What a study's summary writes besides its tables: the metric and eps-curve figures,
the README (claim, verdicts, tables, figures, command, versions, wall time) and the
wall-time and checkpoint-selection records of its runs."""

from __future__ import annotations

import csv
import json
import os
import platform
import re

import numpy as np

from lib import files, report, trainer
from lib.study.config import all_runs, eval_dir, run_dir


def plot_metrics(model_rows, study, path: str) -> None:
  """One panel per metric: every model's mean over fold runs with its 95 % CI."""
  rows = [r for r in model_rows if np.isfinite(r["mean"])]
  if not rows:
    return
  panels = list(dict.fromkeys(r["metric"] for r in rows))
  cols = min(4, len(panels))
  nrows = -(-len(panels) // cols)
  fig, axes = report.new_figure(nrows, cols, figsize=(3.2 * cols, 2.6 * nrows), squeeze=False)
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
  report.save_figure(fig, path, dpi=120)


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
  attacks = sorted({a for _, a in curves})
  fig, axes = report.new_figure(1, len(attacks), figsize=(4 * len(attacks), 3.4), squeeze=False)
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
  report.save_figure(fig, path, dpi=120)
  return True


def _versions() -> str:
  import flax
  import jax
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
  files.atomic_json(path, runs, indent=1, sort_keys=True)
  return {str(seed): {stage: sum(v[stage] for k, v in runs.items() if f"/seed{seed}_" in k)
                      for stage in ("train", "eval")} for seed in study.seeds}


def checkpoint_selection(study, workdir: str, results_dir: str) -> list[dict]:
  """``checkpoints.csv`` / ``.md``: the checkpoint each run kept (``best_step`` of its
  ``last_step``, selected by the train config's ``best_metric`` on the validation part of
  its training folds, among those saved before the overfitting check stopped it at
  ``stopped_at`` if it did) and that checkpoint's validation metrics, e.g. ``val_pgd_accuracy``
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
            int(v) if k in ("seed", "fold", "best_step", "last_step", "stopped_at") else float(v)
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
    stop = trainer.read_stop(rd)   # the overfitting check stopped it: kept from before
    rows[m.name, seed, fold] = {
        "model": m.name, "seed": seed, "fold": fold, "best_metric": best_metric,
        "best_step": best, "last_step": max((int(r["step"]) for r in log), default=best),
        **({"stopped_at": stop["step"]} if stop else {}), **val}
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
  files.atomic_write(os.path.join(results_dir, "study_config.json"),
                     study.to_json_best_effort(indent=2))
  notes_path = os.path.join(results_dir, "notes.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  lines = [f"# {study.title}", "", f"**The study's claim.** {study.claim}", ""]
  if verdicts:
    # A claim judged before every run is in is provisional, and says so in its own cell
    # (tables copied elsewhere, e.g. results/README.md, keep the mark).
    provisional = f" (provisional: {len(missing)} run(s) missing)" if missing else ""
    lines += ["## Did it hold?", "", "Each claim on the mean over fold runs and its 95 % CI "
              "(a - b for two models, paired; a model's own value against a threshold)."
              + (" **Provisional**: the study is not complete, and verdicts can change as "
                 "its missing runs come in." if missing else ""), "",
              "| claim | metric | compared | value | 95 % CI | p | verdict |",
              "|---|---|---|---|---|---|---|"]
    for v in verdicts:
      fmt = lambda k: f"{v[k]:.3f}" if isinstance(v.get(k), float) and np.isfinite(v[k]) else ""
      compared = (f"{v['a']} - {v['b']}" if isinstance(v["b"], str) else
                  f"{v['a']} {'>' if v['direction'] == 'greater' else '<'} {v['b']:g}")
      lines.append(f"| {v['text']} | `{v['metric']}` | {compared} | {fmt('value')} | "
                   f"{fmt('ci_low')} .. {fmt('ci_high')} | {fmt('p')} | **{v['verdict']}**{provisional} |")
    lines.append("")
  status = (f"{len(complete_reps)} of {len(study.seeds)} repetitions complete"
            + (f"; {len(missing)} run(s) not evaluated yet: {', '.join(missing[:8])}"
               + (" ..." if len(missing) > 8 else "") if missing else ""))
  lines += [
      "## How it was measured", "",
      f"Group-aware, label-stratified {study.folds}-fold cross-validation over all labelled "
      f"images (the manifest's `group` column), repeated with seeds {tuple(study.seeds)} "
      f"(fold assignment and training); {status}. `mean` and its CI: over the fold runs, "
      "corrected resampled t (Nadeau & Bengio 2003), cut to the range of a bounded metric "
      "(a proportion, a fraction, a correlation) or of its difference; `oof`: pooled "
      "out-of-fold value (each image predicted by the model that did not train on it), "
      "percentile bootstrap 95 % CI "
      f"over images resampling whole groups ({study.n_boot} resamples). Comparisons are paired "
      "(same folds, same images)."
      + (" `checkpoints.md`: the checkpoint each run kept and its validation metrics."
         if selected else "")
      + (" Attacks used the eps cascade (`eps_cascade`): at each eps only the images still "
         "classified correctly at the smaller eps were attacked, the others kept their "
         "adversarial image, so accuracy under an iterative or gradient-free attack is the "
         "worst case over the smaller eps too." if study.get("eps_cascade") and not
         study.get("map_metrics", True) else ""), "",
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
  files.atomic_write(os.path.join(results_dir, "README.md"), "\n".join(lines))
