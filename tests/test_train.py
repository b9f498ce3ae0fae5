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
from lib import checkpoint, checks, data, experiment, trainer

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
  nan = _config(existing_run="continue")        # a NaN learning rate is refused up front
  nan.loss.mask_weight = float("nan")
  with pytest.raises(trainer.NonFiniteLossError, match=r"(?s)step 5 .*checkpoints/4.*afresh"):
    trainer.train_and_evaluate(nan, workdir)
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
  other = _config(existing_run="continue")   # past the settings check, to the checkpoint
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
    with pytest.raises(ValueError, match=r"which: 'Best' is not one of 'best', 'latest' "
                                         r"\(did you mean 'best'\?\)"):
      fn(str(tmp_path), "Best")
  assert checks.check_which("latest") == "latest"
  # attack.py and explain.py stop before they write anything
  from configs import attack_sweep, explain
  from lib import explain_report, sweep
  for job, config in ((sweep.run_sweep, attack_sweep.get_config()),
                      (explain_report.run_explain, explain.get_config())):
    config.which, config.checkpoints = "Best", str(tmp_path)
    with pytest.raises(ValueError, match="is not one of 'best', 'latest'"):
      job(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_finished_run_is_a_record(full_run, tmp_path):
  """Re-running train.py on a finished run with another setting used to overwrite its
  config.json, test_metrics.json and report.md (issue 27, case 1)."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(full_run[0], workdir)
  before = {n: open(os.path.join(workdir, n)).read()
            for n in ("config.json", "test_metrics.json", "report.md")}
  with pytest.raises(ValueError, match=r"(?s)other settings:.*image_size: 32 -> 48.*existing_run"):
    trainer.train_and_evaluate(_config(image_size=48), workdir)
  other = _config()
  other.model.width = 16
  with pytest.raises(ValueError, match=r"model.width: 8 -> 16"):
    trainer.train_and_evaluate(other, workdir)
  for name, text in before.items():
    assert open(os.path.join(workdir, name)).read() == text, name
  # The same settings (or ones that change no number) resume: nothing to train.
  assert trainer.train_and_evaluate(_config(log_every_steps=1), workdir) == full_run[1]
  # restart: the old run is moved aside whole, and a new one trains.
  restarted = trainer.train_and_evaluate(_config(num_epochs=1, existing_run="restart"), workdir)
  assert restarted["best_step"] == 4
  assert json.load(open(os.path.join(workdir + ".replaced-1", "test_metrics.json"))) == full_run[1]
  assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 1


def test_config_mistakes_stop_before_anything_is_built(tmp_path):
  """Typos and impossible values name the field and the choices, before data or model
  (issue 27, case 14)."""
  cases = [({"best_metric": "val_acc"}, r"best_metric: 'val_acc' is not one of .*did you mean"),
           ({"num_epochs": 0}, r"num_epochs: 0 must be an integer >= 1"),
           ({"optimizer": "adam"}, r"optimizer: 'adam' is not one of 'adamw', 'sgd'"),
           ({"learning_rate": float("nan")}, r"learning_rate: nan must be > 0"),
           ({"parallel": "pmapp"}, r"did you mean 'pmap'")]
  for overrides, match in cases:
    with pytest.raises(ValueError, match=match):
      trainer.train_and_evaluate(_config(**overrides), str(tmp_path / "w"))
  c = _config()
  c.adv.method, c.adv.eps = "pgdd", 0.004
  with pytest.raises(ValueError, match=r"adv.method: 'pgdd'.*did you mean 'pgd'"):
    trainer.train_and_evaluate(c, str(tmp_path / "w"))
  c.adv.method, c.adv.eps = "pgd", 8
  with pytest.raises(ValueError, match=r"adv.eps: eps 8 is above 1.*8/255 = 0.0314"):
    trainer.train_and_evaluate(c, str(tmp_path / "w"))
  c = _config()
  c.data.name = "bussi"
  with pytest.raises(ValueError, match=r"Unknown data set 'bussi' \(did you mean 'busi'\?\)"):
    trainer.train_and_evaluate(c, str(tmp_path / "w"))
  c = _config()
  c.model.name = "resnet19"
  with pytest.raises(ValueError, match=r"model.name: 'resnet19'.*did you mean 'resnet18'"):
    trainer.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_a_class_without_images_stops_training_with_the_counts():
  """Issue 27, case 7: a one-class manifest trained with a made-up class weight and NaN AUCs,
  and "best by val_auc" silently became the latest checkpoint."""
  c = _config()
  names = ("benign", "malignant")
  trainer.check_classes(np.array([0, 1, 1]), np.array([0, 1]), names, c)   # fine
  with pytest.raises(ValueError, match=r"train split of synthetic_lesions .* no images of "
                                       r"\['malignant'\] \(benign 3, malignant 0\)"):
    trainer.check_classes(np.array([0, 0, 0]), np.array([0, 1]), names, c)
  with pytest.raises(ValueError, match=r"val split .*val_auc is undefined.*best_metric=val_accuracy"):
    trainer.check_classes(np.array([0, 1]), np.array([0, 0]), names, c)
  c.best_metric = "val_accuracy"
  trainer.check_classes(np.array([0, 1]), np.array([0, 0]), names, c)      # accuracy is defined


@pytest.mark.parametrize("damage", ["truncate", "delete_manifest"])
def test_a_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(full_run, tmp_path,
                                                                          caplog, damage):
  """Issue 27, case 10: a truncated file stopped the run with a raw tensorstore error, a
  deleted manifest.ocdbt with "does not fit the model"; deleting the step by hand resumed
  bit-identically. The run now does that itself, keeping the broken step aside."""
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(), workdir, stop_after_step=9)   # checkpoints 4 and 8
  step_dir = os.path.join(workdir, "checkpoints", "8")
  if damage == "truncate":
    victims = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(step_dir, "state"))
               for f in fs if os.path.getsize(os.path.join(d, f)) > 1000]
    for v in victims:
      with open(v, "r+b") as f:
        f.truncate(os.path.getsize(v) // 2)
  else:
    victims = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs
               if f == "manifest.ocdbt"]
    for v in victims:
      os.remove(v)
  assert victims
  with caplog.at_level("WARNING"):
    metrics = trainer.train_and_evaluate(_config(), workdir)
  assert any("checkpoints/8 is incomplete or corrupt" in r.getMessage() for r in caplog.records)
  assert os.path.isdir(os.path.join(workdir, "checkpoints.corrupt", "8"))    # kept aside
  _assert_same_tree(_params(full_run[0]), _params(workdir))                 # resumed from 4
  assert metrics == full_run[1]


def test_checkpoints_from_before_an_interruption_are_pruned(full_run, tmp_path):
  """Issue 27, case 13 (and issue 21, point 6): keep=2 left 4, 8 and 12 after a resume."""
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(_config(), workdir, stop_after_step=6)
  trainer.train_and_evaluate(_config(), workdir)
  uninterrupted = sorted(os.listdir(os.path.join(full_run[0], "checkpoints")))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == uninterrupted
  steps = sorted(int(s) for s in uninterrupted if s.isdigit())
  ckpt = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"), best_metric="val_auc")
  assert set(steps) == {8, 12, ckpt.best_step()}        # the latest two and the best


def test_a_run_made_before_a_field_existed_resumes_when_the_field_keeps_its_old_behaviour():
  """Fields added later (colour jitter, train_subset) must not make every earlier run "a
  run made with other settings" (a study stopped mid-run could not resume)."""
  new = {"data": {"augment": {"hue": 0.0, "saturation": 0.0, "hflip": True}, "train_subset": 0}}
  old = {"data": {"augment": {"hflip": True}}}
  assert experiment.config_differences(old, new) == []
  new["data"]["augment"]["hue"] = 0.05
  assert experiment.config_differences(old, new) == ["data.augment.hue: 0.0 -> 0.05"]


def test_normalisation_from_the_runs_own_training_images(tmp_path):
  """``model.stats_from="train"`` (issue 24): the model normalises by the statistics of the
  run's training images (its fold's, never the held-out ones); they reach config.json, so
  evaluation rebuilds the same model, and resuming computes the same values."""
  def skin():
    c = _config()
    c.data.name, c.model.in_channels, c.model.stats_from = "synthetic_skin", 3, "train"
    return c

  c = skin()
  train, _ = trainer.load_training_data(c)
  x = train["image"].astype(np.float64) / 255.0
  workdir = str(tmp_path / "run")
  trainer.train_and_evaluate(c, workdir, stop_after_step=1)
  assert c.model.stats_from == "train" and c.model.mean == ()   # the caller's is untouched
  saved = experiment.load_config(workdir)
  np.testing.assert_allclose(saved.model.mean, x.mean((0, 1, 2)), atol=6e-5)
  np.testing.assert_allclose(saved.model.std, x.std((0, 1, 2)), atol=6e-5)
  assert len(set(saved.model.mean)) == 3         # RGB: one value per channel
  model = experiment.build_model(saved)           # as evaluation rebuilds it
  assert model.mean == tuple(saved.model.mean) and model.std == tuple(saved.model.std)
  # A resumed run computes the same values: not "a run made with other settings".
  trainer.train_and_evaluate(skin(), workdir, stop_after_step=2)
  # Given values and stats_from together are a contradiction, named before anything runs.
  both = skin()
  both.model.mean, both.model.std = (0.5, 0.5, 0.5), (0.2, 0.2, 0.2)
  with pytest.raises(ValueError, match="stats_from='train' computes model.mean"):
    checks.check_train_config(both)
  bad = skin()
  bad.model.stats_from = "val"
  with pytest.raises(ValueError, match="model.stats_from: 'val' is not one of"):
    checks.check_train_config(bad)
  # A grayscale set: one value, also for a 3-channel (ImageNet) stem.
  g = _config()
  g.model.stats_from, g.model.in_channels = "train", 3
  trainer.resolve_normalisation(g, trainer.load_training_data(g)[0])
  assert len(g.model.mean) == 1 and len(g.model.std) == 1
  flat = {"image": np.full((4, 8, 8, 1), 7, np.uint8), "label": np.zeros(4)}
  with pytest.raises(ValueError, match="is constant"):
    trainer.resolve_normalisation(_config(model={**_config().model, "stats_from": "train"}),
                                  flat)


def test_channel_stats_in_chunks_equals_the_whole_array():
  x = np.random.default_rng(0).integers(0, 256, (11, 5, 4, 3), dtype=np.uint8)
  mean, std = data.channel_stats(x, chunk=3)
  f = x.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, f.mean((0, 1, 2)), atol=6e-5)
  np.testing.assert_allclose(std, f.std((0, 1, 2)), atol=6e-5)
