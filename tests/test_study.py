"""study.py: cross-validated studies, their statistics and their reports."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from configs.studies import (busi_gradcam, busi_gradcam_map_attacks, common, oncology_autoattack,
                             oncology_robustness, robust_gradcam, robust_saliency,
                             robust_saliency_ham10000, robust_saliency_last)
from lib import report, study, trainer


def test_corrected_t_matches_the_formula_and_is_wider_than_the_naive_interval():
  d = np.array([0.02, 0.05, -0.01, 0.04, 0.03, 0.00, 0.06, 0.02, 0.01, 0.03])
  ci = study.corrected_t(d, test_fraction=0.25)
  mean, hi, p = ci.value, ci.high, ci.p
  se = np.sqrt((1 / 10 + 0.25) * d.var(ddof=1))
  assert mean == pytest.approx(d.mean())
  assert hi - mean == pytest.approx(stats.t.ppf(0.975, 9) * se)
  assert p == pytest.approx(2 * stats.t.sf(d.mean() / se, 9))
  naive = stats.ttest_1samp(d, 0.0)
  assert p > naive.pvalue                     # overlapping training sets: less certainty
  assert study.corrected_t([0.1, 0.1, 0.1], 0.25).p == 0.0


def test_intervals_of_proportions_stay_in_their_range_and_verdicts_do_not_change():
  # Five folds spread widely: the t interval of a sensitivity (0.59) leaves [0, 1].
  sens = [0.05, 0.95, 0.50, 0.90, 0.55]
  raw = study.corrected_t(sens, test_fraction=0.25)
  assert raw.low < 0.0 or raw.high > 1.0
  rng = np.random.default_rng(1)
  recs = {}
  other = [0.95, 0.05, 0.50, 0.10, 0.45]        # model b: differences -0.9 .. 0.9
  for fold, (s, o) in enumerate(zip(sens, other)):
    for model, shift, share in (("a", 0.0, s), ("b", 0.3, o)):
      hit = (np.arange(20) < round(20 * share)).astype(float)   # adv_correct: a 0/1 column
      recs[model, 0, fold] = {"id": [str(i) for i in range(20)], "adv_correct": hit,
                              "tv": rng.normal(5, 3, 20) + 10 * shift}
  rows = study.summary_rows(recs, {"a": [], "b": []}, ["a", "b"],
                            ("mean:adv_correct", "mean:tv"), (("a", "b"),), folds=5, n_boot=10)
  own = {(r["metric"], r["model"]): r for r in rows.models}
  prop = own["mean:adv_correct", "a"]
  assert prop["mean"] == pytest.approx(raw.value, abs=0.03)
  assert 0.0 <= prop["ci_low"] < prop["mean"] < prop["ci_high"] <= 1.0
  assert prop["ci_low"] == 0.0 or prop["ci_high"] == 1.0
  tv = own["mean:tv", "a"]                  # not a proportion: the t interval as it is
  assert (tv["ci_low"], tv["ci_high"]) == pytest.approx(
      (lambda e: (e.low, e.high))(study.corrected_t(
          [recs["a", 0, f]["tv"].mean() for f in range(5)], 0.25)))
  assert study.metric_range("mean:tv", recs.values()) == (-np.inf, np.inf)
  assert study.metric_range("auc", ()) == (0.0, 1.0)
  assert study.metric_range("sensitivity_at_specificity:0.9", ()) == (0.0, 1.0)
  assert study.metric_range("median:pgd-10@0.004:spearman", ()) == (-1.0, 1.0)
  assert study.metric_range("mean:gradient:lesion_energy", ()) == (0.0, 1.0)
  assert study.metric_range("mean:gradient:entropy", ()) == (-np.inf, np.inf)
  raw_diff = study.corrected_t(np.subtract(sens, other), test_fraction=0.25)
  assert raw_diff.low < -1.0 and raw_diff.high > 1.0
  diff = next(r for r in rows.comparisons if r["metric"] == "mean:adv_correct")
  assert diff["diff"] == pytest.approx(raw_diff.value)
  assert (diff["ci_low"], diff["ci_high"]) == (-1.0, 1.0)
  # The claimed boundaries lie inside the range, so cutting changes no verdict.
  for b in (0.1, 0.5, 0.9):
    for direction in ("greater", "less"):
      claim = dict(text="", metric="mean:adv_correct", a="a", b=b, direction=direction)
      cut = study.judge(claim, rows.comparisons, rows.models)["verdict"]
      uncut = study.judge(claim, [], [dict(prop, ci_low=raw.low, ci_high=raw.high)])["verdict"]
      assert cut == uncut


def test_group_bootstrap_resamples_groups_and_pairs_images():
  rng = np.random.default_rng(0)
  n = 200
  groups = [f"g{i // 4}" for i in range(n)]             # 50 groups of 4 identical images
  per_group = rng.random(50)
  rec = {"id": [str(i) for i in range(n)], "group": groups,
         "x": np.repeat(per_group, 4)}
  fn = study.metric_fn("mean:x")
  one = study.group_bootstrap([rec], fn, n_boot=400)
  assert one.value == pytest.approx(per_group.mean()) and np.isnan(one.p)
  # 50 independent values, not 200: the interval is that of the group means.
  se = per_group.std(ddof=1) / np.sqrt(50)
  assert (one.high - one.low) == pytest.approx(2 * 1.96 * se, rel=0.25)
  same = study.group_bootstrap([rec], fn, paired=[rec], n_boot=100)
  assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
  shifted = dict(rec, x=rec["x"] + 0.1)
  d = study.group_bootstrap([shifted], fn, paired=[rec], n_boot=100)
  assert d.value == pytest.approx(0.1) and d.low == pytest.approx(0.1) and d.p == 0.0


def test_metric_names_and_claims():
  rec = {"id": ["a", "b", "c", "d"], "group": list("abcd"), "label": np.array([0., 0., 1., 1.]),
         "prob": np.array([0.1, 0.6, 0.4, 0.9]), "s": np.array([1., 2., 3., 10.])}
  idx = np.arange(4)
  assert study.metric_fn("auc")(rec, idx) == pytest.approx(0.75)
  assert study.metric_fn("sensitivity")(rec, idx) == pytest.approx(0.5)
  assert study.metric_fn("median:s")(rec, idx) == pytest.approx(2.5)
  # negatives 0.1, 0.6: specificity 1 needs a cut at 0.6, above which is one positive of two
  assert study.metric_fn("sensitivity_at_specificity:1.0")(rec, idx) == pytest.approx(0.5)
  assert study.metric_fn("sensitivity_at_specificity:0.5")(rec, idx) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="Unknown metric"):
    study.metric_fn("max:s")
  rows = [{"metric": "auc", "a": "m", "b": "p", "diff": 0.05, "ci_low": 0.01, "ci_high": 0.09,
           "p_corrected_t": 0.02}]
  up = dict(text="", metric="auc", a="m", b="p", direction="greater")
  assert study.judge(up, rows)["verdict"] == "held"
  assert study.judge(dict(up, direction="less"), rows)["verdict"] == "reversed"
  rows[0]["ci_low"] = -0.01
  assert study.judge(up, rows)["verdict"].startswith("not shown")
  assert study.judge(dict(up, metric="gini"), rows)["verdict"] == "not measured"
  one = [dict(rows[0], ci_low=float("nan"), ci_high=float("nan"))]
  assert study.judge(up, one)["verdict"] == "too few runs for a CI"
  own = [{"metric": "auc", "model": "m", "mean": 0.8, "ci_low": 0.75, "ci_high": 0.85}]
  assert study.judge(dict(up, b=0.7), rows, own)["verdict"] == "held"
  assert study.judge(dict(up, b=0.8), rows, own)["verdict"].startswith("not shown")
  assert study.judge(dict(up, b=0.9, direction="greater"), rows, own)["verdict"] == "reversed"


def test_statistics_and_records_import_without_jax():
  """The numbers of a study can be recomputed from its committed records without JAX."""
  code = ("import sys, lib.study.statistics, lib.study.records; "
          "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if 'jax' in m)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


def _committed_study_configs():
  """Every variant of every committed study config, loaded as study.py loads it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  files = sorted(f for f in os.listdir(os.path.join(root, "configs", "studies"))
                 if f.endswith(".py") and f not in ("__init__.py", "common.py"))
  variants = [d + s for d in ("", "busi_", "brain_mri_") for s in ("cpu", "full", "test")]
  out = {}
  for f in files:
    for v in variants:
      try:
        out[f"configs/studies/{f}:{v}"] = study.load_train_config(f"configs/studies/{f}:{v}")
      except ValueError as e:
        assert "Unknown variant" in str(e), (f, v, e)
    assert any(k.startswith(f"configs/studies/{f}:") for k in out), f
  return out


def test_every_committed_study_config_names_only_what_it_measures():
  configs = _committed_study_configs()
  assert len(configs) >= 8 * 3
  for spec, s in configs.items():
    study.check_study_config(s)   # raises with the bad names
    assert {c.metric for c in s.claims} <= set(s.metrics), spec


def test_a_misspelt_metric_is_refused_before_anything_is_written(tmp_path):
  s = busi_gradcam.get_config("test")
  s.results_dir = str(tmp_path / "results")
  good = s.copy_and_resolve_references()
  study.check_study_config(good)
  s.metrics = s.metrics + ("mean:fgsm@0.04:adv_correct", "median:grad_cam-keep-3@0.004:spearmann",
                           "sensitivity_at_specificity:90", "mean:grad_cam:gin")
  s.claims = s.claims + (common.claim("typo", "aucc", "mtl", "plain"),
                         common.claim("unknown model", "auc", "mtl", "plian"))
  s.comparisons = (("mtl", "plain"), ("mtl", "pllain"))
  s.curves = ("adv_corect",)
  with pytest.raises(ValueError) as e:
    study.run_study(s, str(tmp_path / "runs"))
  msg = str(e.value)
  for bad, where, close in (
      ("mean:fgsm@0.04:adv_correct", "metrics[9]", "mean:fgsm@0.004:adv_correct"),
      ("median:grad_cam-keep-3@0.004:spearmann", "metrics[10]",
       "median:grad_cam-keep-3@0.004:spearman"),
      ("sensitivity_at_specificity:90", "metrics[11]", "sensitivity_at_specificity:0.9"),
      ("mean:grad_cam:gin", "metrics[12]", "mean:grad_cam:gini"),
      ("aucc", "claims[5] ('typo').metric", "auc"),
      ("plian", "claims[6] ('unknown model').b", "plain"),
      ("pllain", "comparisons[1]", "plain"),
      ("adv_corect", "curves[0]", "adv_correct")):
    line = next((ln for ln in msg.splitlines() if ln.strip().startswith(repr(bad))), "")
    assert f"in {where}" in line and repr(close) in line, (bad, msg)
  assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()
  # What is measured depends on the study: no map metrics, no masks, the attack's own eps.
  bare = good.copy_and_resolve_references()
  bare.map_metrics = False
  bare.metrics = ("mean:fgsm@0.004:kept",)
  with pytest.raises(ValueError, match="'mean:fgsm@0.004:kept' in metrics.0."):
    study.check_study_config(bare)
  assert "mean:grad_cam-keep-3@0.008:spearman" not in [
      f"mean:{c}" for c in study.measured_columns(good)]   # its own eps: 0.004 only
  assert "grad_cam:pointing_game" not in study.measured_columns(good, has_masks=False)


@pytest.mark.parametrize("variant", ["cpu", "full"])
def test_every_study_config_builds_every_model_config(variant, tmp_path):
  configs = [busi_gradcam.get_config(variant), robust_saliency.get_config(variant),
             robust_gradcam.get_config(variant),
             oncology_robustness.get_config(f"busi_{variant}"),
             oncology_robustness.get_config(f"brain_mri_{variant}"),
             robust_saliency.get_config(f"brain_mri_{variant}"),
             robust_saliency_last.get_config(variant),
             busi_gradcam_map_attacks.get_config(variant),
             oncology_autoattack.get_config(f"busi_{variant}")]
  for s in configs:
    for m, seed, fold in study.all_runs(s):
      c = study.train_config_for(s, m, seed, fold, str(tmp_path))
      assert (c.data.folds, c.data.fold, c.data.fold_seed, c.seed) == (5, fold, seed, seed)
      if variant == "cpu":
        assert c.model.name == "resnet18" and c.image_size == 96
      else:
        assert c.model.name == "resnet50" and c.model.dtype == "bfloat16"
    for metric in s.metrics:
      study.metric_fn(metric)
    assert {c.metric for c in s.claims} <= set(s.metrics), s.name
  last = configs[6]   # the pre-specified follow-up: fresh seeds, PGD-AT keeps its last step
  assert last.seeds == (2, 3) and [m.name for m in last.models] == ["standard", "pgd"]
  assert [study.train_config_for(last, m, 2, 0, str(tmp_path)).best_metric
          for m in last.models] == ["val_auc", ""]
  ft = study.train_config_for(configs[1], configs[1].models[2], 1, 3, str(tmp_path))
  assert ft.init_from == os.path.join(str(tmp_path), "pgd", "seed1_fold3")
  shared = study.train_config_for(configs[2], configs[2].models[2], 0, 0, str(tmp_path))
  assert shared.init_from == os.path.join("runs/study_robust_saliency_" + variant, "pgd",
                                          "seed0_fold0")
  brain = study.train_config_for(configs[5], configs[5].models[3], 0, 1, str(tmp_path))
  assert brain.data.name == "brain_mri" and brain.trainable == ("stem", "stage1")
  assert not any("lesion" in m for m in configs[5].metrics)   # no tumour masks
  worst = configs[8]   # study 2's own runs, attacked with AutoAttack and the eps cascade
  assert study.run_dir(worst, "w", "iterative", 0, 1) == os.path.join(
      "runs/study_oncology_robustness_busi_" + variant, "iterative", "seed0_fold1")
  assert worst.eps_cascade and not worst.map_metrics and [m.name for m in worst.models] == [
      m.name for m in configs[3].models]
  from lib.study import runs   # the evaluation passes the cascade on to the sweep
  assert runs._attack_config(worst).eps_cascade and not runs._attack_config(configs[3]).eps_cascade
  for bad in (oncology_robustness, robust_saliency):
    with pytest.raises(ValueError, match="Unknown variant"):
      bad.get_config("ct_cpu")


@pytest.mark.parametrize("variant", ["cpu", "full"])
def test_the_ham10000_saliency_study_builds_rgb_runs_with_the_colour_metric(variant, tmp_path):
  s = robust_saliency_ham10000.get_config(variant)
  study.check_study_config(s)
  assert [m.name for m in s.models] == ["standard", "pgd", "pgd_ft", "first_layers"]
  assert "mean:gradient:colour_rho" in s.metrics
  assert "gradient:colour_rho" in study.measured_columns(s)
  assert "baseline:uniform_lesion_energy" in study.measured_columns(s)
  runs = {m.name: study.train_config_for(s, m, 1, 2, str(tmp_path)) for m in s.models}
  for c in runs.values():
    assert (c.data.name, c.data.label_set, c.model.in_channels) == ("ham10000", "melanoma", 3)
    assert (c.data.folds, c.data.fold, c.data.fold_seed) == (5, 2, 1)
    if variant == "cpu":
      assert (c.model.name, c.image_size, c.data.train_subset) == ("resnet18", 64, 1600)
    else:
      assert (c.model.name, c.image_size, c.data.train_subset) == ("resnet50", 224, 0)
  assert runs["pgd"].adv.method == "pgd" and runs["standard"].adv.method == "none"
  assert runs["pgd_ft"].init_from == os.path.join(str(tmp_path), "pgd", "seed1_fold2")
  assert runs["first_layers"].trainable == ("stem", "stage1")


def test_an_rgb_study_measures_colour_following_and_the_baselines(tmp_path):
  """One model of the HAM10000 study at its test scale (generated RGB lesions)."""
  s = robust_saliency_ham10000.get_config("test")
  s.models = s.models[:1]
  s.comparisons, s.claims = (), ()
  s.metrics = ("auc", "mean:gradient:colour_rho", "mean:baseline:uniform_lesion_energy")
  s.results_dir = str(tmp_path / "results")
  compiled = dict(study._COMPILED)      # study 1's test counts its own compilations
  try:
    out = study.run_study(s, str(tmp_path / "runs"))
  finally:
    study._COMPILED.clear()
    study._COMPILED.update(compiled)
  recs = study.read_records(str(tmp_path / "results" / "per_image_standard_seed0.csv"))
  assert set(recs) - {"id", "group", "fold"} == set(study.measured_columns(s))
  rho = np.asarray(recs["gradient:colour_rho"], float)
  # NaN: lesions with fewer than 16 pixels left inside a 2-px rim (small ones at 32 px)
  assert np.isfinite(rho).mean() > 0.75 and np.all(np.abs(rho[np.isfinite(rho)]) <= 1)
  area = np.asarray(recs["baseline:uniform_lesion_energy"], float)
  assert np.all((0 < area) & (area < 1))
  rows = {r["metric"]: r for r in out["models"]}
  assert rows["mean:baseline:uniform_lesion_energy"]["mean"] == pytest.approx(area.mean(), rel=0.05)


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
  """Study 1 at its test scale (2 tiny models x 2 folds on synthetic lesions), run once."""
  tmp = tmp_path_factory.mktemp("study")
  s = busi_gradcam.get_config("test")
  s.results_dir = str(tmp / "results")
  return s, tmp, study.run_study(s, str(tmp / "runs"))


def test_a_study_runs_end_to_end_and_resumes(study_run):
  s, tmp, out = study_run
  res = tmp / "results"
  for name in ("README.md", "models.csv", "models.md", "comparisons.csv", "per_run.csv",
               "metrics.png", "study_config.json", "per_image_mtl_seed0.csv",
               "examples_mtl_grad_cam-keep-3.png", "examples_plain_fgsm.png", "maps.png",
               "adv_correct_vs_eps.png"):
    assert os.path.getsize(res / name) > 0, name
  assert not out["missing"]
  # One compilation per (architecture, attack, with or without figure images), and one
  # forward per architecture, not per run.
  assert len(study._COMPILED) == 2 * 2 * 2 + 2
  rows = {(r["model"], r["metric"]): r for r in out["models"]}
  assert rows["mtl", "auc"]["runs"] == 2 and rows["mtl", "auc"]["images"] == 80
  for r in out["models"]:
    assert r["ci_low"] <= r["mean"] <= r["ci_high"]
    if "oof" in r:
      assert r["oof_low"] <= r["oof"] <= r["oof_high"]
  le = rows["plain", "mean:grad_cam:lesion_energy"]
  assert 0.0 <= le["mean"] <= 1.0
  for model in ("plain", "mtl"):   # an attack never raises accuracy above clean
    assert rows[model, "mean:fgsm@0.008:adv_correct"]["mean"] <= rows[model, "accuracy"]["mean"]
  assert {v["verdict"] for v in out["verdicts"]} <= {"held", "reversed", "not shown (CI includes it)"}
  # Every image is out-of-fold exactly once per repetition.
  recs = study.read_records(str(res / "per_image_plain_seed0.csv"))
  assert len(set(recs["id"])) == 80 and "grad_cam-keep-3@0.004:spearman" in recs
  # The metric-name check knows exactly the columns an evaluation writes.
  assert set(recs) - {"id", "group", "fold"} == set(study.measured_columns(s))
  # The checkpoint each run kept, with its validation metrics (from the run's own log).
  kept = {(r["model"], r["fold"]): r for r in study.checkpoint_selection(s, str(tmp / "runs"), str(res))}
  assert sorted(kept) == [("mtl", 0), ("mtl", 1), ("plain", 0), ("plain", 1)]
  for (model, fold), r in kept.items():
    rd = study.run_dir(s, str(tmp / "runs"), model, 0, fold)
    logged = [e for e in report.read_jsonl(os.path.join(rd, "metrics.jsonl"))
              if e["step"] == r["best_step"] and "val_auc" in e]
    assert r["best_metric"] == "val_auc" and 0 < r["best_step"] <= r["last_step"]
    assert r["val_auc"] == logged[-1]["val_auc"] == max(
        e["val_auc"] for e in report.read_jsonl(os.path.join(rd, "metrics.jsonl")) if "val_auc" in e)
  # A run the overfitting check stopped says where (its kept checkpoint is from before).
  stopped = os.path.join(study.run_dir(s, str(tmp / "runs"), "plain", 0, 1), trainer.STOPPED)
  with open(stopped, "w") as f:
    json.dump({"step": 99, "kept_step": kept["plain", 1]["best_step"]}, f)
  rows = {(r["model"], r["fold"]): r for r in study.checkpoint_selection(s, str(tmp / "runs"), str(res))}
  assert rows["plain", 1]["stopped_at"] == 99 and "stopped_at" not in rows["plain", 0]
  assert "stopped_at" in open(res / "checkpoints.csv").readline()
  os.remove(stopped)
  readme = (res / "README.md").read_text()
  assert "checkpoints.md" in readme
  assert "Did it hold?" in readme and s.command in readme and "1 of 1 repetitions" in readme
  # Resuming redoes nothing: no run is retrained, no evaluation recomputed.
  stamps = {p: os.path.getmtime(p) for p in (tmp / "runs").glob("*/*/per_image.csv")}
  assert len(stamps) == 4
  (res / "notes.md").write_text("Hand-written discussion.")
  again = study.run_study(s, str(tmp / "runs"))
  assert {p: os.path.getmtime(p) for p in stamps} == stamps
  assert again["models"] == out["models"]
  assert "Hand-written discussion." in (res / "README.md").read_text()


def test_figures_are_redrawn_from_a_chosen_repetition_without_touching_records(study_run):
  s, tmp, _ = study_run
  runs = tmp / "runs"
  records = {p: p.read_bytes() for p in runs.glob("*/*/per_image.csv")}
  redraw = s.copy_and_resolve_references()
  redraw.stages, redraw.figure_seed = ("figures", "summarise"), 0
  redraw.results_dir = str(tmp / "redrawn")
  study.run_study(redraw, str(runs))
  redrawn = {p.name for p in (tmp / "redrawn").glob("*.png")}
  drawn_first = {p.name for p in (tmp / "results").glob("examples_*.png")} | {"maps.png"}
  assert drawn_first <= redrawn
  assert {p: p.read_bytes() for p in runs.glob("*/*/per_image.csv")} == records
  assert json.loads((tmp / "redrawn" / "figures.json").read_text()) == {"seed": 0, "fold": 0}
  assert "fold 0 of repetition (seed) 0" in (tmp / "redrawn" / "README.md").read_text()
  redraw.figure_seed = 1                                            # never trained
  with pytest.raises(FileNotFoundError, match="repetition 1 .*figure_seed"):
    study.run_study(redraw, str(runs))
  redraw.stages = ("summarize",)
  with pytest.raises(ValueError, match="Unknown stage.*summarise"):
    study.run_study(redraw, str(runs))


def test_partial_study_is_summarised_with_what_is_missing(study_run):
  s, tmp, _ = study_run
  s = s.copy_and_resolve_references()
  s.seeds, s.stages = (0, 1), ("summarise",)       # the second repetition was never run
  s.results_dir = str(tmp / "partial")
  out = study.run_study(s, str(tmp / "runs"))
  assert out["missing"] == [f"{m}/seed1_fold{f}" for f in (0, 1) for m in ("plain", "mtl")]
  readme = (tmp / "partial" / "README.md").read_text()
  assert "1 of 2 repetitions complete" in readme and "plain/seed1_fold0" in readme
  verdict_rows = [l for l in readme.split("## Did it hold?")[1].split("## ")[0].splitlines()
                  if l.startswith("| ") and not l.startswith("| claim")]
  assert verdict_rows and all("(provisional: 4 run(s) missing) |" in l for l in verdict_rows)
  rows = {(r["model"], r["metric"]): r for r in out["models"]}
  assert rows["mtl", "auc"]["runs"] == 2 and rows["mtl", "auc"]["images"] == 80


def test_a_study_sharing_runs_keeps_its_own_records(study_run):
  """Study 4 evaluates study 3's runs with other attacks: its per-image records go to its
  own work dir, the shared runs' records stay as they were, and no run is retrained."""
  s, tmp, _ = study_run
  shared = tmp / "runs"
  before = {p: p.read_bytes() for p in shared.glob("*/*/per_image.csv")}
  other = s.copy_and_resolve_references()
  other.runs_dir, other.results_dir = str(shared), str(tmp / "other_results")
  other.attacks, other.methods, other.map_metrics = (common.attack("fgsm"),), (), False
  other.eps = (0.002,)
  other.metrics = common.CLASSIFICATION + ("mean:fgsm@0.002:adv_correct",)
  other.claims, other.curves = (), ("adv_correct",)
  out = study.run_study(other, str(tmp / "other_runs"))
  assert not out["missing"]
  assert {p: p.read_bytes() for p in shared.glob("*/*/per_image.csv")} == before
  mine = sorted((tmp / "other_runs").glob("*/*/per_image.csv"))
  assert len(mine) == 4 and not list((tmp / "other_runs").glob("*/*/checkpoints"))
  recs = study.read_records(str(mine[0]))
  assert "fgsm@0.002:adv_correct" in recs and "grad_cam-keep-3@0.004:spearman" not in recs


def test_a_summarised_repetition_outlives_its_work_dir(study_run, tmp_path):
  """The results directory is the durable record: with the work dir gone (another machine,
  a later session), a summary takes the committed per-image records, split back into their
  folds (also from files written before they had a ``fold`` column), and the recorded wall
  time, and reports the same numbers."""
  s, tmp, out = study_run
  results = tmp_path / "results"
  shutil.copytree(tmp / "results", results)
  again = s.copy_and_resolve_references()
  again.results_dir, again.stages = str(results), ("summarise",)

  def summary():
    got = study.run_study(again, str(tmp_path / "gone"))
    assert not got["missing"]
    for r, expected in zip(got["models"], out["models"], strict=True):
      assert r.keys() == expected.keys() and r["runs"] == expected["runs"]
      assert [r[k] for k in ("mean", "oof")] == pytest.approx(
          [expected[k] for k in ("mean", "oof")], nan_ok=True)
    return got

  summary()
  assert (results / "checkpoints.csv").read_bytes() == (tmp / "results" / "checkpoints.csv").read_bytes()
  resumed = again.copy_and_resolve_references()
  resumed.stages = ("train", "evaluate", "summarise")      # nothing committed is redone
  assert not study.run_study(resumed, str(tmp_path / "gone"))["missing"]
  written = [p for p in (tmp_path / "gone").rglob("*") if p.name != ".lock"]   # the job's lock
  assert not written
  fresh = (tmp / "results" / "README.md").read_text().split("Wall time")[1]
  assert (results / "README.md").read_text().split("Wall time")[1] == fresh
  summary_files = {p: p.read_bytes() for p in results.iterdir()}
  one_pass = again.copy_and_resolve_references()
  one_pass.stages = ("train", "evaluate")                  # no summary asked for: none written
  assert study.run_study(one_pass, str(tmp_path / "gone")) == {}
  assert {p: p.read_bytes() for p in results.iterdir()} == summary_files
  for path in results.glob("per_image_*.csv"):       # the files of the first summaries
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    assert {r["fold"] for r in rows} == {"0.0", "1.0"}
    with open(path, "w", newline="") as f:
      w = csv.DictWriter(f, [k for k in rows[0] if k != "fold"], extrasaction="ignore")
      w.writeheader()
      w.writerows(rows)
  summary()
  # A repetition half done when its work dir went: the evaluated fold is kept, the other
  # one is reported missing (and would be trained by the next train + evaluate pass).
  path = results / "per_image_mtl_seed0.csv"
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, list(rows[0]))
    w.writeheader()
    w.writerows(r for r in rows if r["fold"] == "0.0")
  partial = study.run_study(again, str(tmp_path / "gone"))
  assert partial["missing"] == ["mtl/seed0_fold1"]
  kept = study.read_records(str(path))
  assert set(kept["fold"]) == {0.0} and len(kept["id"]) == sum(r["fold"] == "0.0" for r in rows)


def test_committed_records_of_other_settings_are_refused_not_reused(study_run, tmp_path):
  """Issue 27, case 5: a study with another grid reused the committed records (training and
  evaluating nothing) and rewrote study_config.json with settings its tables did not show."""
  from configs.studies import common
  s, tmp, _ = study_run
  results = tmp_path / "results"
  shutil.copytree(tmp / "results", results)
  before = (results / "study_config.json").read_bytes()
  other = s.copy_and_resolve_references()
  other.results_dir = str(results)
  other.attacks = tuple(s.attacks) + (common.attack("pgd", steps=2),)
  with pytest.raises(ValueError, match=r"per_image_\w+_seed0.csv holds this study's records "
                                       r"made with other settings.*pgd-2@"):
    study.run_study(other, str(tmp_path / "fresh"))
  assert (results / "study_config.json").read_bytes() == before
  assert not (tmp_path / "fresh").exists()
  assert study.results_path(other) == str(results)
  other.results_dir = "results/x"                       # relative: under the repository
  assert study.results_path(other) == os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "x")


def test_an_interrupted_evaluation_resumes_at_the_next_attack(study_run, tmp_path, monkeypatch):
  """An evaluation stopped between two attacks (a session's end during hours of AutoAttack)
  keeps the finished attack's columns and runs only the rest; the result is the same as an
  uninterrupted evaluation's, the time counts both parts, the figure is redrawn, and the
  partial files go once per_image.csv is written. A partial made with other settings or of
  other images is not taken."""
  from lib import experiment, sweep
  from lib.study import runs

  class SessionEnded(Exception):
    pass

  s, tmp, _ = study_run
  rd = study.run_dir(s, str(tmp / "runs"), "plain", 0, 1)
  labels = [sweep.attack_label(a) for a in s.attacks]
  real, calls, stop = sweep.run_attack_grid, [], [True]

  def stopping(*args, **kwargs):
    label = sweep.attack_label(args[4])
    if label == labels[1] and stop:          # once
      stop.clear()
      calls.append("stopped")
      raise SessionEnded
    calls.append((label, len(args[2]["label"])))
    return real(*args, **kwargs)

  monkeypatch.setattr(sweep, "run_attack_grid", stopping)
  out, figs = tmp_path / "eval", tmp_path / "figures"
  figs.mkdir()
  n = len(study.read_records(str(study.eval_dir(str(tmp / "runs"), "plain", 0, 1)) + "/per_image.csv")["id"])
  with pytest.raises(SessionEnded):
    study.evaluate_once(s, rd, str(out), "plain", figures_to=str(figs))
  assert calls == [(labels[0], n), "stopped"]
  partial = sorted(p.name for p in out.iterdir())
  assert len(partial) == 2 and partial[0].startswith("per_image.partial-")
  assert {p.suffix for p in out.iterdir()} == {".csv", ".json"}
  first_seconds = json.loads(next(out.glob("*.json")).read_text())["seconds"]
  (figs / f"examples_plain_{labels[0]}.png").unlink()
  study.evaluate_once(s, rd, str(out), "plain", figures_to=str(figs))
  # the first attack not redone: only its figure, on the figure images
  assert calls[2:] == [(labels[0], s.figure_images)] + [(l, n) for l in labels[1:]]
  assert sorted(p.name for p in out.iterdir()) == ["eval_time.json", "per_image.csv"]
  assert (figs / f"examples_plain_{labels[0]}.png").exists()
  assert json.loads((out / "eval_time.json").read_text())["seconds"] >= first_seconds
  resumed = study.read_records(str(out / "per_image.csv"))
  whole = study.read_records(str(study.eval_dir(str(tmp / "runs"), "plain", 0, 1)) + "/per_image.csv")
  assert list(resumed) == list(whole) and resumed["id"] == whole["id"]
  for k in whole:
    if k not in ("id", "group"):
      np.testing.assert_allclose(resumed[k], whole[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # A partial of other images (another fold's) is not taken: the attack runs again.
  acfg = runs._attack_config(s)
  path = runs._partial_path(str(out), experiment.checkpoint_id(rd), s.attacks[0], acfg)
  study.write_records({"id": ["x"] * n, "group": resumed["group"]}, path)
  (tmp_path / "p.json").write_text('{"seconds": 1.0}')
  os.replace(tmp_path / "p.json", path[:-4] + ".json")
  (out / "per_image.csv").unlink()
  calls.clear()
  study.evaluate_run(s, rd, out_dir=str(out))
  assert [c[0] for c in calls] == labels
  # Other settings (here another eps grid) give another file: never taken for these.
  other = s.copy_and_resolve_references()
  other.eps = tuple(s.eps) + (0.016,)
  assert runs._partial_path(str(out), "c", s.attacks[0], runs._attack_config(other)) != \
      runs._partial_path(str(out), "c", s.attacks[0], acfg)
  assert runs._partial_path(str(out), "c@1", s.attacks[0], acfg) != \
      runs._partial_path(str(out), "c@2", s.attacks[0], acfg)
