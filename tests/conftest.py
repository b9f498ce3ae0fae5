"""Test setup: 8 fake CPU devices (for the data-parallel tests) and a private TFDS dir."""

import os
import tempfile

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TFDS_DATA_DIR", tempfile.mkdtemp(prefix="tfds_test_"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
  """The demo's tiny multi-task ResNet trained for 8 epochs on 256 synthetic lesions.

  Returns ``(model, variables, x_test, y_test, workdir)``.
  """
  from configs import default
  from lib import data, experiment, trainer
  c = default.get_config("test")
  c.num_devices = 1
  c.num_epochs = 8
  c.data.num_train = 256
  workdir = str(tmp_path_factory.mktemp("trained"))
  trainer.train_and_evaluate(c, workdir)
  config, model, variables = experiment.restore_model(workdir)
  test = data.load_split(config.data, "test", config.image_size)
  return model, variables, data.to_model_input(test["image"], 1), test["label"], workdir
