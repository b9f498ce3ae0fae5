"""Test setup: 8 fake CPU devices (for the data-parallel tests), the XLA:CPU defaults of
the entry points (lib.xla_cpu.configure) and a private TFDS dir."""

import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="tfds_test_"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The XLA:CPU defaults the entry points set (lib/xla_cpu.py), appended to the flags above
# before any test creates a JAX backend: the tests run with train.py's numerics.
from lib import xla_cpu  # noqa: E402

xla_cpu.configure()

import pytest  # noqa: E402

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def shared_data(name: str) -> str:
  """Path of a real data set, or skip the test with the reason."""
  path = os.path.join(SHARED, name)
  if not os.path.exists(os.path.join(path, "manifest.csv")):
    pytest.skip(f"real data set {name!r} not found at {path} (CI has it beside the checkout)")
  return path


@pytest.fixture(scope="session")
def demo_config():
  from configs import default
  return default.get_config("test")


def tiny_training_config():
  """The demo's tiny multi-task ResNet (32 px, width 8) on 256 synthetic lesions, trained
  for 16 epochs at learning rate 1e-2: test AUC 0.90-0.93 over seeds 0-2. The earlier
  8 epochs at 3e-3 stopped on a plateau (AUC 0.55-0.96 by seed, and by CPU: float
  rounding on an AVX-512 machine picked a worse checkpoint than on AVX2), so the
  properties tested on it (an attack beats noise, PGD training helps) held on one
  machine and not on another.

  ``MEDROBUST_TEST_SEED`` changes its seed: ``tests/property_variants.sh`` runs the tests
  that train on it under several seeds and floating-point orders and prints their
  margins (issue 28)."""
  from configs import default
  c = default.get_config("test")
  c.seed = int(os.environ.get("MEDROBUST_TEST_SEED", "0"))
  c.num_devices = 1
  c.num_epochs = 16
  c.learning_rate = 1e-2
  c.data.num_train = 256
  return c


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """:func:`tiny_training_config`'s model, trained once.

  Returns ``(model, variables, x_test, y_test, workdir)``.
  """
  from lib import data, experiment, trainer
  c = tiny_training_config()
  workdir = str(tmp_path_factory.mktemp("trained"))
  trainer.train_and_evaluate(c, workdir)
  config, model, variables = experiment.restore_model(workdir)
  test = data.load_split(config.data, "test", config.image_size)
  return model, variables, data.to_model_input(test["image"], 1), test["label"], workdir
