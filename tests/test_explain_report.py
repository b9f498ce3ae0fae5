"""explain.py's job end to end on the trained tiny model."""

import os

import numpy as np

from configs import explain as explain_config
from lib import data, experiment, explain_report


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
  masks = data.load_split(config.data, "test", config.image_size)["mask"][:16]
  np.testing.assert_allclose(methods["uniform map (baseline)"]["lesion_energy"], masks.mean(), rtol=1e-6)
  for m in ("gradient", "grad_cam"):
    r = methods[m]
    assert 0 <= r["lesion_energy"] <= 1 and 0 <= r["gini"] <= 1 and 0 <= r["entropy"] <= 1
    assert 0 <= r["deletion_auc"] <= 1 and r["images_per_s"] > 0
