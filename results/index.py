"""Writes results/README.md: one compact section per cross-validated study (its verdicts and
each model's cross-validated AUC and balanced accuracy with 95 % CIs), read from the
committed study folders, then the single-split records.

  python results/index.py            # after a study's summary changed

No JAX: it reads each study's README.md ("Did it hold?" table, repetitions) and models.csv.
"""

from __future__ import annotations

import csv
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
HEADLINE = ("auc", "balanced_accuracy")
SINGLE_SPLIT = {  # folders of fixed-split runs: one split, no CI
    "cpu_busi_resnet18_128px": "BUSI, ResNet-18 at 128 px, fixed test split (108 images)",
    "oncology_robustness_busi_full": "study 2 on a GPU at full scale (ResNet-50, 224 px)",
    "gpu_h200_2026-11-30": "GPU benchmarks and runs on a lent H200",
}


def _verdicts(readme: str) -> list[str]:
  """The rows of the README's "Did it hold?" table (claim, metric, compared, value, CI, p,
  verdict), without the metric column."""
  rows, inside = [], False
  for line in readme.splitlines():
    if line.startswith("## Did it hold?"):
      inside = True
    elif inside and line.startswith("## "):
      break
    elif inside and line.startswith("| ") and not line.startswith("| claim"):
      cells = [c.strip() for c in line.strip("|").split("|")]
      if len(cells) == 7:
        rows.append("| " + " | ".join(cells[:1] + cells[2:5] + cells[6:]) + " |")
  return rows


def _models(path: str) -> list[str]:
  with open(path, newline="") as f:
    rows = [r for r in csv.DictReader(f) if r["metric"] in HEADLINE]
  out = []
  for model in dict.fromkeys(r["model"] for r in rows):
    cells = []
    for metric in HEADLINE:
      r = next((r for r in rows if r["model"] == model and r["metric"] == metric), None)
      if r is None or not r["mean"]:
        cells.append("")
        continue
      ci = (f" ({float(r['ci_low']):.2f} .. {float(r['ci_high']):.2f})"
            if r.get("ci_low") and r["ci_low"] != "nan" else "")
      cells.append(f"{float(r['mean']):.3f}{ci}")
    oof = next((r for r in rows if r["model"] == model and r["metric"] == "auc"), {})
    cells.append(f"{float(oof['oof']):.3f}" if oof.get("oof") else "")
    out.append(f"| {model} | " + " | ".join(cells) + " |")
  return out


def study_section(name: str) -> str:
  folder = os.path.join(HERE, name)
  with open(os.path.join(folder, "README.md")) as f:
    readme = f.read()
  title = readme.splitlines()[0].lstrip("# ").strip()
  done = re.search(r"(\d+) of (\d+) repetitions complete", readme)
  status = (f"{done.group(1)} of {done.group(2)} repetitions complete" if done else "")
  missing = re.search(r"(\d+) run\(s\) not evaluated yet", readme)
  if missing:
    status += f", {missing.group(1)} runs still to evaluate (partial)"
  lines = [f"### [{title}]({name}/README.md)", "", f"`{name}`: {status}.", ""]
  verdicts = _verdicts(readme)
  if missing:   # a study summarised before verdicts carried the mark themselves
    verdicts = [v if "(provisional" in v else
                v[:-2] + f" (provisional: {missing.group(1)} run(s) missing) |" for v in verdicts]
  if verdicts:
    lines += ["| claim | compared | value | 95 % CI | verdict |", "|---|---|---|---|---|",
              *verdicts, ""]
  models = _models(os.path.join(folder, "models.csv"))
  if models:
    lines += ["| model | AUC, mean over fold runs (95 % CI) | balanced accuracy | AUC out-of-fold |",
              "|---|---|---|---|", *models, ""]
  return "\n".join(lines)


def studies() -> list[str]:
  return sorted(d for d in os.listdir(HERE)
                if os.path.exists(os.path.join(HERE, d, "models.csv"))
                and os.path.exists(os.path.join(HERE, d, "README.md")))


def main() -> str:
  parts = [
      "# Results",
      "",
      "Written by `python results/index.py` from the committed study folders. **Cross-validated "
      "studies first**: group-aware, label-stratified 5-fold cross-validation over every "
      "labelled image, repeated with two seeds, each model evaluated on the folds it did not "
      "see; a mean over fold runs with the corrected resampled-t 95 % CI (Nadeau & Bengio "
      "2003), and the pooled out-of-fold AUC. These are the numbers to quote: on images "
      "withheld from this repository, a fixed-split model's test AUC (0.958) fell to 0.82, "
      "where the study's cross-validated AUC (0.81-0.83) had been right. Each study's folder "
      "has its README (claims, how it was measured, command, versions, wall time), tables, "
      "figures and per-image records. A study marked partial is still running "
      "(`bash results/run_cpu_studies.sh round`).",
      "",
      "## Cross-validated studies (CPU scale: ResNet-18 at 96 px, HAM10000 at 64 px)",
      "",
  ]
  parts += [study_section(name) for name in studies()]
  with open(os.path.join(HERE, "discussion.md")) as f:
    discussion = f.read().split("\n", 2)[2]   # without its own header line
  parts += ["## What the studies found (discussion, written by hand: results/discussion.md)",
            "", discussion.strip(), "",
            "## Single split (no confidence intervals: differences of a few points are noise)",
            ""]
  for name, what in SINGLE_SPLIT.items():
    if os.path.isdir(os.path.join(HERE, name)):
      readme = os.path.join(name, "README.md")
      link = readme if os.path.exists(os.path.join(HERE, readme)) else name + "/"
      parts.append(f"- [`{name}`]({link}): {what}.")
  text = "\n".join(parts).rstrip() + "\n"
  with open(os.path.join(HERE, "README.md"), "w") as f:
    f.write(text)
  return text


if __name__ == "__main__":
  main()
