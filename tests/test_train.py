"""End to end: train.py's loop on the synthetic data set, resumption, failure modes."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default
from lib import checkpoint, experiment, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  c = default.get_config("test")
  c.num_devices = 1
  c.update(overrides)
  return c


def _params(workdir):
  _, _, variables = experiment.restore_model(workdir, "latest")
  return jax.device_get(variables)


def _assert_same_tree(a, b):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  metrics = trainer.train_and_evaluate(_config(), workdir)
  return workdir, metrics


def test_run_writes_metrics_report_and_figures(full_run):
  workdir, metrics = full_run
  for name in ("config.json", "metrics.jsonl", "test_metrics.json", "test_metrics.csv",
               "test_metrics.md", "report.md", "training_curves.png", "test_predictions.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  for key in ("auc", "sensitivity", "specificity", "balanced_accuracy", "dice", "accuracy"):
    assert 0.0 <= metrics[key] <= 1.0
  log = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert sum("val_auc" in r for r in log) == 3       # one validation per epoch
  assert any("train_images_per_s" in r for r in log)


def test_interrupted_and_resumed_run_ends_with_the_same_parameters(full_run, tmp_path):
  workdir, metrics = full_run
  resumed = str(tmp_path / "resumed")
  # Stop mid epoch 2: the last checkpoint is the end of epoch 1 (step 4); steps 5-6 are lost.
  trainer.train_and_evaluate(_config(), resumed, stop_after_step=6)
  assert checkpoint.RunCheckpoints(os.path.join(resumed, "checkpoints")).latest_step() == 4
  metrics_resumed = trainer.train_and_evaluate(_config(), resumed)
  _assert_same_tree(_params(workdir), _params(resumed))
  # Same seed, same metrics.
  assert metrics_resumed == metrics


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
  workdir = str(tmp_path)
  trainer.train_and_evaluate(_config(), workdir, stop_after_step=4)
  before = _params(workdir)
  with pytest.raises(trainer.NonFiniteLossError, match=r"step 5 .*checkpoints/4"):
    trainer.train_and_evaluate(_config(learning_rate=float("nan")), workdir)
  ckpt = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [4]
  _assert_same_tree(before, _params(workdir))


def test_the_kept_checkpoint_is_the_best_by_best_metric_or_else_the_last(tmp_path):
  for best_metric, kept in (("val_auc", 2), ("", 3)):   # '' (configs): keep the last one
    ckpt = checkpoint.RunCheckpoints(str(tmp_path / (best_metric or "last")), keep=1,
                                   best_metric=best_metric, async_save=False)
    for step, auc in ((1, 0.5), (2, 0.9), (3, 0.7)):
      ckpt.save(step, {"w": np.zeros(2)}, {"epoch": step}, {}, {"val_auc": auc})
    ckpt.wait()
    assert ckpt.best_step() == kept and ckpt.latest_step() == 3
    ckpt.close()


def test_checkpoint_of_another_architecture_is_named(tmp_path):
  workdir = str(tmp_path)
  trainer.train_and_evaluate(_config(), workdir, stop_after_step=4)
  other = _config()
  other.model.width = 16
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"(?s)width=8.*width=16"):
    trainer.train_and_evaluate(other, workdir)


def test_sigkill_and_restart_of_train_py(full_run, tmp_path):
  """The real thing: SIGKILL the process after its first checkpoint, run the command again."""
  workdir = str(tmp_path / "killed")
  cmd = [sys.executable, "train.py", "--config=configs/default.py:test", f"--workdir={workdir}",
         "--config.num_devices=1"]
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  first = os.path.join(workdir, "checkpoints", "4")
  deadline = time.time() + 300
  while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(first)
  subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
  _assert_same_tree(_params(full_run[0]), _params(workdir))


def test_a_checkpoint_choice_typo_is_an_error_not_the_latest(tmp_path):
  # `--config.which=Best` used to evaluate the latest checkpoint without a word (issue 27)
  for fn in (experiment.restore_model, experiment.checkpoint_id):
    with pytest.raises(ValueError, match=r"which='Best': choose one of best, latest"):
      fn(str(tmp_path), "Best")
  assert experiment.check_which("latest") == "latest"
  # attack.py and explain.py stop before they write anything
  from configs import attack_sweep, explain
  from lib import explain_report, sweep
  for job, config in ((sweep.run_sweep, attack_sweep.get_config()),
                      (explain_report.run_explain, explain.get_config())):
    config.which, config.checkpoints = "Best", str(tmp_path)
    with pytest.raises(ValueError, match="choose one of best, latest"):
      job(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
