"""Adversarial training: the sharded step, robustness gained, frozen stages, transplants."""

import functools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lib import (adversarial, attacks, checkpoint, data, experiment, models, parallel, train_step,
                 trainer)

from tests.conftest import tiny_training_config


def _config(method="pgd", **adv):
  c = default.get_config("test")
  c.num_devices = 1
  c.warmup_epochs = 0.0
  c.optimizer = "sgd"
  c.adv.method = method
  c.adv.eps = 0.03
  c.adv.steps = 3
  c.adv.update(adv)
  return c


def _batch(n=16, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": rng.uniform(size=(n, size, size, 1)).astype(np.float32),
          "mask": (rng.uniform(size=(n, size, size)) > 0.8).astype(np.float32),
          "label": rng.integers(0, 2, n).astype(np.int32),
          "has_mask": np.ones(n, np.float32)}


def _step(c, num_devices, state=None, batch=None):
  # XLA's convolutions throughout: the CPU im2col path (lib/xla_cpu.conv_general_dilated)
  # rounds differently for 2 and 16 images, and PGD's sign steps amplify that into other
  # adversarial pixels, which is float noise, not what these tests are about.
  model = experiment.build_model(c, bn_axis_name=train_step.AXIS, im2col_max_pixels=0)
  state = state if state is not None else experiment.init_state(c, model, steps_per_epoch=4)
  par = parallel.DataParallel(parallel.make_mesh(num_devices), "shard_map")
  fn = par.compile_step(functools.partial(
      train_step.train_step, model=model, class_weights=jnp.array([0.7, 1.6]), loss_config=c.loss,
      adv_config=c.adv, steps_per_epoch=4, trainable=tuple(c.trainable)), donate_state=False)
  new_state, metrics = fn(par.put_state(state), par.put_batch(batch or _batch()))
  return state, jax.device_get(par.get_state(new_state)), jax.device_get(par.get_metrics(metrics))


@pytest.mark.parametrize("method,bn_mode", [
    ("pgd", "eval"), ("trades", "eval"),
    pytest.param("fgsm_rs", "eval", marks=pytest.mark.slow),
    pytest.param("pgd", "train", marks=pytest.mark.slow)])
def test_sharded_adversarial_step_equals_single_device_step(method, bn_mode):
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices")
  c = _config(method, bn_mode=bn_mode)
  state, ref, ref_m = _step(c, 1)
  _, got, got_m = _step(c, 8, state)
  for key in ("loss", "ce", "accuracy"):
    np.testing.assert_allclose(got_m[key], ref_m[key], rtol=1e-4, atol=1e-6, err_msg=key)
  if method == "trades":
    # TRADES's inner KL starts at ~0, so its first sign steps follow gradients near zero:
    # XLA:CPU's convolutions round differently for 2 images per device than for 16, a few
    # pixels take the other sign, and single parameters move by up to 13 % (stage-1 BN
    # bias) and the whole update by 1.9 % (relative L2; the same with JAX's own convolution
    # gradients, so it is the rounding). A sharding bug (a missing all-reduce, per-device BN
    # statistics) changes the whole update, so the test is on the update as a whole.
    np.testing.assert_allclose(got_m["trades_kl"], ref_m["trades_kl"], rtol=1e-3, atol=1e-6)
    delta = lambda p: np.concatenate([np.ravel(b - a) for a, b in zip(
        jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(p))])
    d_ref, d_got = delta(ref.params), delta(got.params)
    assert np.linalg.norm(d_got - d_ref) <= 0.05 * np.linalg.norm(d_ref)
    return
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref.params),
                          jax.tree_util.tree_leaves(got.params)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_adversarial_step_differs_from_the_standard_one():
  c = _config("pgd")
  state, adv, adv_m = _step(c, 1)
  c.adv.method = "none"
  _, std, std_m = _step(c, 1, state)
  assert abs(float(adv_m["loss"]) - float(std_m["loss"])) > 1e-4


def test_eps_ramp():
  c = _config("iterative", ramp_epochs=2)
  assert float(adversarial.epsilon_at(c.adv, 0, 4)) == 0.0
  assert float(adversarial.epsilon_at(c.adv, 4, 4)) == pytest.approx(0.015)
  assert float(adversarial.epsilon_at(c.adv, 100, 4)) == pytest.approx(0.03)
  assert adversarial.num_adversarial(c.adv, 16) == 8


def test_frozen_stages_do_not_change():
  c = _config("pgd")
  c.trainable = ("stem", "stage1")
  state, new, _ = _step(c, 1)
  for col in ("params", "batch_stats"):
    before, after = getattr(state, col), getattr(new, col)
    for name in before:
      same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before[name]),
                                                      jax.tree_util.tree_leaves(after[name])))
      if name in ("stem_conv", "stem_bn", "stage1"):
        assert not same, f"{col}/{name} should have trained"
      else:
        assert same, f"{col}/{name} is frozen but changed"
  with pytest.raises(ValueError, match="not modules"):
    train_step.trainable_labels(state.params, ("stage9",))


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
  """A standard and a PGD-trained tiny model on the same synthetic data and seed."""
  runs = {}
  for method in ("none", "pgd"):
    c = tiny_training_config()
    c.adv.method = method
    c.adv.eps = 0.01
    c.adv.steps = 3
    c.adv.check_images = 16
    c.adv.check_steps = 3
    workdir = str(tmp_path_factory.mktemp(method))
    trainer.train_and_evaluate(c, workdir)
    runs[method] = workdir
  return runs


ROBUST_EPS = (0.01, 0.02, 0.03)   # the training eps and two larger budgets


def _accuracies(workdir, eps=ROBUST_EPS):
  """Clean accuracy, then PGD-10 accuracy at each eps, on the 64 held-out images (val +
  test) of the synthetic set."""
  config, model, variables = experiment.restore_model(workdir)
  splits = [data.load_split(config.data, s, config.image_size) for s in ("val", "test")]
  x = data.to_model_input(np.concatenate([s["image"] for s in splits]), 1)
  y = np.concatenate([s["label"] for s in splits])
  logits_fn = models.model_fns(model, variables).logits_fn
  out = [float((jnp.argmax(logits_fn(x), -1) == y).mean())]
  for e in eps:
    x_adv = attacks.pgd(logits_fn, x, y, eps=e, step_size=e / 4, steps=10)
    out.append(float((jnp.argmax(logits_fn(x_adv), -1) == y).mean()))
  return out


def test_pgd_training_raises_accuracy_under_attack(trained_pair):
  """PGD-trained vs standard, mean PGD-10 accuracy over eps 0.01-0.03.

  One eps alone did not hold across machines: at eps 0.01 the standard model kept 0.03 on
  one CPU and 0.27-0.44 on another (seeds 0-4, issue 28), while the PGD-trained one kept
  0.39-0.55. Averaged over three budgets the advantage was 0.073, 0.073, 0.208, 0.161,
  0.130 for seeds 0-4 and 0.073 / 0.073 / 0.057 with single-threaded Eigen, highest matmul
  precision and one device (tests/property_variants.sh, Intel Xeon, 2026-11-30); the
  threshold 0.03 is below the smallest. The fixture first shows it has what the property
  needs: a standard model that learned (clean accuracy) and that PGD breaks."""
  standard, robust = _accuracies(trained_pair["none"]), _accuracies(trained_pair["pgd"])
  assert standard[0] >= 0.7, f"fixture did not train: standard clean accuracy {standard[0]}"
  assert standard[-1] <= 0.2, f"fixture: PGD at eps 0.03 leaves the standard model {standard[-1]}"
  gain = float(np.mean(robust[1:]) - np.mean(standard[1:]))
  print(f"MARGIN pgd_training_gain {gain:.3f} (threshold 0.03; standard {standard}, "
        f"PGD-trained {robust})")
  assert gain > 0.03, (standard, robust)
  log = [json.loads(l) for l in open(os.path.join(trained_pair["pgd"], "metrics.jsonl"))]
  assert any("val_pgd_accuracy" in r for r in log)


def test_transplant_keeps_the_first_stages_bit_for_bit(trained_pair, tmp_path):
  c = default.get_config("test")
  c.num_devices = 1
  c.num_epochs = 1
  c.init_from = trained_pair["none"]
  c.transplant_from = trained_pair["pgd"]
  c.transplant_stages = ("stem", "stage1")
  c.trainable = ("stage2", "stage3", "fc", "decoder")
  c.learning_rate = 1e-3
  trainer.train_and_evaluate(c, str(tmp_path))
  _, _, got = experiment.restore_model(str(tmp_path), "latest")
  _, _, donor = experiment.restore_model(trained_pair["pgd"])
  _, _, base = experiment.restore_model(trained_pair["none"])
  for col in ("params", "batch_stats"):
    for name in [n for n in ("stem_conv", "stem_bn", "stage1") if n in donor[col]]:
      for a, b in zip(jax.tree_util.tree_leaves(got[col][name]),
                      jax.tree_util.tree_leaves(donor[col][name])):
        np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(got["params"]["stage2"]),
                                                       jax.tree_util.tree_leaves(base["params"]["stage2"]))]
  assert any(changed)                     # the rest was fine-tuned from the standard model


def test_init_from_another_architecture_is_refused(trained_pair, tmp_path):
  c = default.get_config("test")
  c.num_devices = 1
  c.model.width = 16
  c.init_from = trained_pair["none"]
  with pytest.raises(checkpoint.CheckpointMismatchError, match="width=8"):
    trainer.train_and_evaluate(c, str(tmp_path))


def test_overfitting_monitor(caplog):
  c = _config("fgsm_rs", overfit_drop=0.2, overfit_stop=True)
  m = trainer.OverfittingMonitor(c.adv)
  assert not m.update(0.8, 0.5, 1) and not m.update(0.8, 0.6, 2) and not m.update(0.8, 0.45, 3)
  # one class for every image: its "robustness" is the class share, not evidence
  assert not m.update(0.3, 0.3, 4, classes=1)
  # a fall that still keeps more than half the clean accuracy is not a collapse
  assert not m.update(0.6, 0.35, 5)
  with caplog.at_level(logging.WARNING):
    assert m.update(0.8, 0.1, 6)
  assert "Catastrophic overfitting" in caplog.text
  c.adv.overfit_stop = False
  warn_only = trainer.OverfittingMonitor(c.adv)
  warn_only.update(0.9, 0.9, 1)
  assert not warn_only.update(0.9, 0.0, 2)


def test_overfitting_monitor_waits_for_the_eps_ramp():
  # the ResNet-50 BUSI run that stopped at epoch 4 of a 10-epoch ramp: a near-constant
  # classifier's 0.61 PGD accuracy, then 0.05 with clean 0.32
  c = _config("iterative", overfit_drop=0.3, overfit_stop=True, ramp_epochs=10)
  m = trainer.OverfittingMonitor(c.adv)
  assert not m.update(0.61, 0.61, 2) and not m.update(0.32, 0.045, 4)
  assert m.best == -1.0                       # ramp epochs are not remembered either
  assert not m.update(0.8, 0.6, 11)
  assert m.update(0.8, 0.1, 12)               # after the ramp a collapse still stops


@pytest.mark.parametrize("variant", ["pgd,cpu", "iterative", "fgsm_rs,cpu", "trades", "finetune,cpu",
                                     "first_layers,cpu", "transplant,cpu", "pgd,brain_mri,cpu",
                                     "first_layers,brain_mri"])
def test_adversarial_configs(variant):
  from configs import adversarial as adversarial_configs
  c = adversarial_configs.get_config(variant)
  adversarial.check_config(c.adv)
  assert c.adv.eps == 0.004 and (c.model.name == "resnet18") == ("cpu" in variant)
  assert c.data.name == ("brain_mri" if "brain_mri" in variant else "busi")
  model = experiment.build_model(c)
  params = jax.eval_shape(lambda: models.init_variables(model, 0, 32))["params"]
  train_step.trainable_labels(params, c.trainable)   # every named stage exists


def test_iterative_ramp_follows_the_epochs_given_on_the_command_line():
  from configs import adversarial as adversarial_configs
  c = adversarial_configs.get_config("iterative,cpu")
  c.num_epochs = 20
  assert c.adv.ramp_epochs == 5


def _collapse_at(monkeypatch, collapse_epoch):
  """The overfitting check sees PGD accuracy 0.9 until ``collapse_epoch``, then 0.0 (clean
  0.9, both classes predicted): a collapse by the monitor's own rule."""
  real = trainer.OverfittingMonitor.update

  def update(self, clean, robust, epoch, classes=2):
    return real(self, 0.9, 0.0 if epoch >= collapse_epoch else 0.9, epoch, 2)

  monkeypatch.setattr(trainer.OverfittingMonitor, "update", update)


def test_a_stopped_run_keeps_the_checkpoint_from_before_the_collapse(tmp_path, monkeypatch):
  """robust_saliency_last's PGD-AT run seed 3 fold 2 (keep the last checkpoint) stopped at
  epoch 6 for catastrophic overfitting and then kept the collapsed epoch-6 weights (PGD
  accuracy 0.23) as its last checkpoint. The collapsed weights are no longer saved; the
  stop is recorded, survives a restart (the check's memory travels in the checkpoint), a
  re-run does not train past it, and overfit_stop=False trains on."""
  c = _config("pgd", check_images=16, check_steps=2)
  c.best_metric = ""                         # keep the last checkpoint
  workdir = str(tmp_path)                    # 4 steps per epoch, 3 epochs
  _collapse_at(monkeypatch, collapse_epoch=2)
  trainer.train_and_evaluate(c, workdir, stop_after_step=4)   # killed after epoch 1
  metrics = trainer.train_and_evaluate(c, workdir)             # resumed: epoch 2 collapses
  stop = trainer.read_stop(workdir)
  assert stop["step"] == 8 and stop["kept_step"] == 4 and stop["best_val_pgd_accuracy"] == 0.9
  assert metrics["best_step"] == 4
  assert checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints")).all_steps() == [4]
  assert "before catastrophic overfitting stopped training at step 8" in open(
      os.path.join(workdir, "report.md")).read()
  log = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert trainer.train_and_evaluate(c, workdir) == metrics     # nothing trained again
  assert [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][:len(log)] == log
  assert max(json.loads(l)["step"] for l in open(os.path.join(workdir, "metrics.jsonl"))) == 8
  c.adv.overfit_stop, c.existing_run = False, "continue"
  assert trainer.train_and_evaluate(c, workdir)["best_step"] == 12   # trains on to the end
