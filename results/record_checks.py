"""Checks behind statements in the studies' notes.md, computed from the committed records
(no work dir needed):

  .venv/bin/python results/record_checks.py attack_order results/oncology_robustness_busi_cpu
  .venv/bin/python results/record_checks.py robust_vs_smooth results/robust_saliency_brain_mri_cpu
  .venv/bin/python results/record_checks.py checkpoint_choice results/robust_saliency_cpu
  .venv/bin/python results/record_checks.py same_records results/busi_gradcam_map_attacks_cpu results/busi_gradcam_cpu
  .venv/bin/python results/record_checks.py robustness results/robust_saliency_ham10000_cpu

``attack_order``: per model, seed and eps, how many images each attack flips (correct clean,
wrong attacked) and how many one attack flips that another does not (a stronger attack
should flip a superset: a per-image form of :func:`lib.sweep.masking_checks`), and the
clean confidence. ``robust_vs_smooth``: per run, the kept PGD-AT checkpoint's validation
PGD accuracy and kept step (``checkpoints.csv``) against its gradient total variation minus
the standard model's (``per_run.csv``), with their Spearman rank correlations; and the mean
difference per seed. ``same_records``: for every per-image file the two results dirs share
(same model and seed), the largest difference in every column they share, and the mean of
each clean-map column (``*_clean``). ``robustness``: a study's models under the attack sweep
in ``<d>/robustness_check/sweep`` (its README has the command), accuracy per model and eps
over the folds, and each model against ``standard`` paired by fold (how many folds it wins).
"""
import csv
import json
import os
import sys

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from lib import study  # noqa: E402

ATTACKS = ("fgsm", "bim-10", "pgd-10", "apgd-20")
PAIRS = (("fgsm", "pgd-10"), ("pgd-10", "fgsm"), ("bim-10", "pgd-10"), ("pgd-10", "bim-10"),
         ("pgd-10", "apgd-20"), ("apgd-20", "pgd-10"))


def attack_order(d: str) -> None:
  for path in sorted(p for p in os.listdir(d) if p.startswith("per_image_")):
    r = study.read_records(os.path.join(d, path))
    c = r["correct"] > 0.5
    conf = np.maximum(r["prob"], 1 - r["prob"])
    print(f"{path}: {len(c)} images, clean accuracy {c.mean():.3f}, median confidence "
          f"{np.median(conf):.2f}, above 0.9 on {np.mean(conf > 0.9):.0%}")
    for eps in ("0.004", "0.008"):
      flip = {a: c & (r[f"{a}@{eps}:adv_correct"] < 0.5) for a in ATTACKS}
      print(f"  eps {eps}: flipped " + ", ".join(f"{a} {int(v.sum())}" for a, v in flip.items())
            + "; " + ", ".join(f"{a} not {b} {int((flip[a] & ~flip[b]).sum())}" for a, b in PAIRS))


def robust_vs_smooth(d: str, metric: str = "mean:gradient:total_variation") -> None:
  with open(os.path.join(d, "checkpoints.csv"), newline="") as f:
    ck = {(r["model"], r["seed"], r["fold"]): r for r in csv.DictReader(f)}
  with open(os.path.join(d, "per_run.csv"), newline="") as f:
    pr = {(r["model"], r["seed"], r["fold"]): float(r["value"])
          for r in csv.DictReader(f) if r["metric"] == metric}
  diffs = {(seed, fold): pr["pgd", seed, fold] - pr["standard", seed, fold]
           for (model, seed, fold) in pr if model == "pgd" and ("standard", seed, fold) in pr}
  for seed in sorted({s for s, _ in diffs}):
    v = [d for (s, _), d in diffs.items() if s == seed]
    print(f"seed {seed}: {metric} pgd - standard, mean over {len(v)} folds {np.mean(v):+.4f}, "
          f"lower in {sum(d < 0 for d in v)}")
  xs, steps, ys = [], [], []
  for (model, seed, fold), r in sorted(ck.items()):
    if model == "pgd" and (seed, fold) in diffs:
      xs.append(float(r["val_pgd_accuracy"]))
      steps.append(int(r["best_step"]))
      ys.append(diffs[seed, fold])
      print(f"seed {seed} fold {fold}: best step {r['best_step']} of {r['last_step']}, val PGD "
            f"accuracy {xs[-1]:.3f}, {metric} pgd - standard {ys[-1]:+.4f}")
  for name, x in (("val PGD accuracy", xs), ("kept step", steps)):
    rho, p = stats.spearmanr(x, ys)
    print(f"Spearman of the {name} with the difference over {len(x)} runs: {rho:.2f} (p = {p:.2f})")


def checkpoint_choice(d: str) -> None:
  """The PGD-AT runs of seed 1 at the kept (validation-AUC) checkpoint and at the last one:
  gradient total variation minus the standard model's, clean and PGD-10 accuracy at eps
  0.004 (outputs of the commands in ``<d>/checkpoint_choice/README.md``)."""
  out = os.path.join(d, "checkpoint_choice")
  with open(os.path.join(d, "per_run.csv"), newline="") as f:
    tv_standard = {int(r["fold"]): float(r["value"]) for r in csv.DictReader(f)
                   if r["model"] == "standard" and r["seed"] == "1"
                   and r["metric"] == "mean:gradient:total_variation"}
  rows = {}
  for which in ("best", "latest"):
    with open(os.path.join(out, f"explain_pgd_{which}", "summary.csv"), newline="") as f:
      for r in csv.DictReader(f):
        if r["method"] == "gradient":
          rows.setdefault(r["model"], {})[f"tv_{which}"] = float(r["total_variation"])
    with open(os.path.join(out, f"sweep_{which}", "results.json")) as f:
      for c in json.load(f)["cells"]:
        key = c["model"].replace("pgd-", "")
        if c["model"].startswith("standard-"):
          key, tag = key.replace("standard-", ""), "standard"
        else:
          tag = which
        rows.setdefault(key, {})[f"{'clean' if c['eps'] == 0 else 'pgd'}_{tag}"] = c["accuracy"]
        if c["eps"] == 0:
          rows[key][f"step_{tag}"] = int(c["checkpoint"].rsplit("@", 1)[1])
  cols = ("step", "tv - standard", "clean accuracy", "PGD-10 accuracy @ 0.004")
  print("| run | checkpoint | " + " | ".join(cols) + " |\n|---|---|" + "---|" * len(cols))
  means = {}
  for name, r in sorted(rows.items()):
    fold = int(name.rsplit("fold", 1)[1])
    for tag in ("standard", "best", "latest"):
      tv = r[f"tv_{tag}"] - tv_standard[fold] if tag != "standard" else 0.0
      vals = (r[f"step_{tag}"], tv, r[f"clean_{tag}"], r[f"pgd_{tag}"])
      means.setdefault(tag, []).append(vals[1:])
      print(f"| {name} | {tag if tag != 'standard' else 'standard (kept)'} | {vals[0]} | "
            f"{vals[1]:+.4f} | {vals[2]:.3f} | {vals[3]:.3f} |")
  for tag, v in means.items():
    m = np.mean(v, axis=0)
    print(f"| mean over {len(v)} | {tag} | | {m[0]:+.4f} | {m[1]:.3f} | {m[2]:.3f} |")


def same_records(d: str, other: str) -> None:
  for path in sorted(p for p in os.listdir(d) if p.startswith("per_image_")):
    if not os.path.exists(os.path.join(other, path)):
      continue
    a, b = (study.read_records(os.path.join(x, path)) for x in (d, other))
    assert a["id"] == b["id"], f"{path}: the two files hold other images"
    shared = sorted(k for k in a if k in b and k not in ("id", "group"))
    worst = max(float(np.nanmax(np.abs(a[k] - b[k]))) for k in shared)
    clean = {k: round(float(np.nanmean(a[k])), 4) for k in a if k.endswith("_clean")}
    print(f"{path}: {len(a['id'])} images, {len(shared)} shared columns, largest difference "
          f"{worst:g}; clean means {dict(list(clean.items())[:1])}")


def robustness(d: str) -> None:
  with open(os.path.join(d, "robustness_check", "sweep", "results.json")) as f:
    cells = json.load(f)["cells"]
  val = {}   # (model, eps, key) -> {fold run: value}
  for c in cells:
    model, run = c["model"].split("-", 1)
    for key in ("accuracy", "balanced_accuracy"):
      val.setdefault((model, c["eps"], key), {})[run] = c[key]
  models = list(dict.fromkeys(m for m, _, _ in val))
  eps = sorted({e for _, e, _ in val})
  head = [("clean" if e == 0 else f"PGD-10 @ {e:g}") for e in eps]
  print("Accuracy (balanced accuracy), mean over the fold runs:\n")
  print("| model | runs | " + " | ".join(head) + " |\n|---|---|" + "---|" * len(eps))
  for m in models:
    mean = {(e, k): np.mean(list(val[m, e, k].values()))
            for e in eps for k in ("accuracy", "balanced_accuracy")}
    print(f"| {m} | {len(val[m, eps[0], 'accuracy'])} | " + " | ".join(
        f"{mean[e, 'accuracy']:.3f} ({mean[e, 'balanced_accuracy']:.3f})" for e in eps) + " |")
  for m in models:
    if m == "standard":
      continue
    print(f"\n{m} - standard, paired by fold (higher in how many):")
    for e, h in zip(eps, head):
      parts = []
      for k in ("accuracy", "balanced_accuracy"):
        a, b = val[m, e, k], val["standard", e, k]
        diff = [a[r] - b[r] for r in sorted(set(a) & set(b))]
        parts.append(f"{k} {np.mean(diff):+.3f} ({sum(x > 0 for x in diff)} of {len(diff)})")
      print(f"- {h}: " + ", ".join(parts))


if __name__ == "__main__":
  {"attack_order": attack_order, "robust_vs_smooth": robust_vs_smooth,
   "checkpoint_choice": checkpoint_choice, "same_records": same_records,
   "robustness": robustness}[sys.argv[1]](*sys.argv[2:])
