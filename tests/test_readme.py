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
