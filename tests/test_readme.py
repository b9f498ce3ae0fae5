"""The code examples of the README and of docs/ run (those that need no trained run), and
the commands they show name configs that build."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DOCS = ("README.md", "docs/ATTACKS.md", "docs/TRAINING.md", "docs/DATA.md", "docs/STUDIES.md")


def _read(name):
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def _blocks(name="README.md"):
  return re.findall(r"```python\n(.*?)```", _read(name), re.S)


@pytest.mark.parametrize("doc", ["README.md", "docs/ATTACKS.md"])
def test_attack_example_runs(doc):
  block = next(b for b in _blocks(doc) if "attacks.pgd" in b)
  scope = {}
  exec(block, scope)
  import numpy as np
  for name in ("x_adv", "x_aa"):
    if name in scope:
      assert np.abs(np.asarray(scope[name] - scope["x"])).max() <= 0.004 + 1e-6, name


@pytest.mark.parametrize("doc", ["README.md", "docs/ATTACKS.md"])
def test_explanation_example_runs(doc):
  block = next(b for b in _blocks(doc) if "saliency.grad_cam" in b)
  scope = {}
  exec(block, scope)
  assert scope["cam"].shape == (4, 32, 32) and scope["rho"].shape == (4,)


def test_every_relative_link_of_the_docs_resolves():
  for name in DOCS + ("docs/SCALING.md", "docs/EXTENDING.md", "docs/DESIGN.md",
                      "results/README.md", "results/discussion.md"):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _read(name)):
      path = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), target))
      assert os.path.exists(path), f"{name} links to {target}, which does not exist"


def test_every_study_command_names_a_config_that_builds():
  from lib import study
  commands = re.findall(r"study\.py --config=(configs/studies/\w+\.py:\w+) --workdir=(\S+)",
                        _read("docs/STUDIES.md"))
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
