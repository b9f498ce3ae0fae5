"""explain.py's job end to end on the trained tiny model."""

import os
import shutil

import numpy as np
import pytest

from configs import explain as explain_config
from lib import data, experiment, explain_report, report


def test_explain_writes_tables_figures_and_baselines(trained, tmp_path):
  c = explain_config.get_config("quick")
  c.checkpoints = trained[4]
  c.max_images = 16
  c.batch_size = 8
  c.figure_images = 2
  c.methods = ("gradient", "integrated_gradients", "grad_cam")
  c.ig_steps = 8
  rows = explain_report.run_explain(c, str(tmp_path))
  for name in ("summary.md", "summary.csv", "per_image.csv", "report.md", "summary.json"):
    assert os.path.getsize(tmp_path / name) > 0
  name = os.path.basename(trained[4])
  assert os.path.getsize(tmp_path / f"maps_{name}.png") > 0
  methods = {r["method"]: r for r in rows}
  assert {"gradient", "integrated_gradients", "grad_cam", "uniform map (baseline)",
          "centre point (baseline)"} <= set(methods)
  config = experiment.load_config(trained[4])
  masks = data.subset(data.load_split(config.data, "test", config.image_size), 16)["mask"]
  np.testing.assert_allclose(methods["uniform map (baseline)"]["lesion_energy"], masks.mean(), rtol=1e-6)
  for m in ("gradient", "grad_cam"):
    r = methods[m]
    assert 0 <= r["lesion_energy"] <= 1 and 0 <= r["gini"] <= 1 and 0 <= r["entropy"] <= 1
    assert 0 <= r["deletion_auc"] <= 1 and r["images_per_s"] > 0


def test_models_are_compared_with_paired_bootstrap_intervals(trained, tmp_path):
  twin = str(tmp_path / "twin")
  shutil.copytree(trained[4], twin)
  c = explain_config.get_config("quick")
  c.checkpoints = f"{trained[4]},{twin}"
  c.max_images = 8
  c.batch_size = 8
  c.figure_images = 2
  c.methods = ("grad_cam",)
  explain_report.run_explain(c, str(tmp_path / "out"))
  assert os.path.getsize(tmp_path / "out" / "compare_models.png") > 0
  rows = list(__import__("csv").DictReader(open(tmp_path / "out" / "comparison.csv")))
  twin_rows = [r for r in rows if r["model"] == "twin"]
  assert twin_rows and all(float(r[f"diff_vs_{os.path.basename(trained[4])}"]) == 0.0 for r in twin_rows)
  maps = np.load(tmp_path / "out" / "maps_twin.npz")
  assert maps["grad_cam"].shape[0] == 8
  c.figure_images = 0                                   # tables only
  explain_report.run_explain(c, str(tmp_path / "no_figures"))
  assert not [n for n in os.listdir(tmp_path / "no_figures") if n.endswith(".png")]
  assert os.path.getsize(tmp_path / "no_figures" / "summary.md") > 0


def test_bootstrap_interval_contains_the_mean():
  from lib import metrics
  v = np.random.default_rng(0).normal(1.0, 1.0, 200)
  mean, lo, hi = metrics.bootstrap_ci(v)
  assert lo < mean < hi and hi - lo < 0.5 and abs(mean - v.mean()) < 1e-12
  d, dlo, dhi = metrics.bootstrap_ci(v + 2.0, paired_with=v)
  assert d == dlo == dhi == 2.0


def test_plots_return_figures_without_pyplot_and_save_only_when_asked(tmp_path):
  """Issue 26: plot functions build Figures with the object API (no pyplot registry, no
  backend switch in a live notebook) and write a file only when given a path."""
  from matplotlib.figure import Figure
  rows = [{"model": "m", "attack": "pgd", "eps": e, "accuracy": a}
          for e, a in ((0.0, 0.9), (0.004, 0.5), (0.008, 0.2))]
  fig = report.plot_accuracy_vs_eps(rows)
  assert isinstance(fig, Figure) and fig.canvas.manager is None   # not a pyplot figure
  assert not list(tmp_path.iterdir())
  image = np.zeros((8, 8, 3), np.float32)
  grid = report.plot_map_grid([("a", image, np.ones((8, 8)), {"gradient": np.eye(8)})],
                              str(tmp_path / "grid.png"))
  assert isinstance(grid, Figure) and (tmp_path / "grid.png").stat().st_size > 0


def test_an_unknown_channel_reduction_stops_before_anything_runs():
  c = explain_config.get_config()
  explain_report.check_config(c)
  c.channels = "abs_sum"
  explain_report.check_config(c)
  c.channels = "sum"          # signed: not a magnitude map
  with pytest.raises(ValueError, match=r"channels: 'sum' is not one of 'max_abs', 'abs_sum'"):
    explain_report.check_config(c)
