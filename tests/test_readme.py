"""The README's code examples run (those that need no trained run)."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _blocks():
  with open(os.path.join(ROOT, "README.md")) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_attack_example_runs():
  block = next(b for b in _blocks() if "attacks.pgd" in b)
  scope = {}
  exec(block, scope)
  import numpy as np
  assert np.abs(np.asarray(scope["x_adv"] - scope["x"])).max() <= 0.004 + 1e-6


def test_explanation_example_runs():
  block = next(b for b in _blocks() if "saliency.grad_cam" in b)
  scope = {}
  exec(block, scope)
  assert scope["cam"].shape == (4, 32, 32) and scope["rho"].shape == (4,)


def test_every_study_command_names_a_config_that_builds():
  from lib import study
  with open(os.path.join(ROOT, "README.md")) as f:
    commands = re.findall(r"study\.py --config=(configs/studies/\w+\.py:\w+) --workdir=(\S+)",
                          f.read())
  studies = {f"configs/studies/{f}" for f in os.listdir(os.path.join(ROOT, "configs", "studies"))
             if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert {spec.split(":")[0] for spec, _ in commands} == studies   # every study has one
  for spec, workdir in commands:
    s = study.load_train_config(spec)
    assert s.command.endswith(f"--config={spec} --workdir={workdir}")
    assert study.all_runs(s) and s.metrics


def test_results_index_lists_every_study_and_the_readme_points_there():
  """results/README.md (written by results/index.py) has a section for every committed
  cross-validated study, and the README leads its results with it."""
  import importlib.util
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("index", os.path.join(root, "results", "index.py"))
  index = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(index)
  with open(os.path.join(root, "results", "README.md")) as f:
    committed = f.read()
  for name in index.studies():
    assert f"]({name}/README.md)" in committed, f"run python results/index.py ({name} missing)"
  section = index.study_section("robust_saliency_cpu")
  assert "| claim | compared |" in section and "| pgd |" in section
  with open(os.path.join(root, "README.md")) as f:
    readme = f.read()
  assert "](results/README.md)" in readme.split("## Results", 1)[1][:600]
