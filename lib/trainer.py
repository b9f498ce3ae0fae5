"""The training loop of ``train.py``: data, sharded steps, evaluation, checkpoints.

``train_and_evaluate(config, workdir)`` resumes automatically from the latest checkpoint
in ``workdir`` (state, data-iterator position and rng), evaluates on the validation
split every ``eval_every_epochs``, keeps the best checkpoint by ``best_metric`` and
finally evaluates the best checkpoint on the test split, writing
``metrics.jsonl``, TensorBoard events, ``test_metrics.json``, ``report.md`` and figures.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lib import (adversarial, attacks, checkpoint, checks, data, files, experiment, metrics, models, parallel,
                 report, train_step)


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradient became NaN or infinite; the run stopped."""


def robust_accuracy_fn(eval_model, adv):
  """``(variables, x, y) -> (clean accuracy, PGD accuracy, classes predicted)`` under
  PGD-``check_steps`` at the training eps (eval mode, random start): the per-epoch check
  for catastrophic overfitting, where FGSM training suddenly stops giving robustness to
  PGD (Wong et al. 2020, Sec. 5)."""

  @jax.jit
  def fn(variables, x, y):
    logits_fn = models.model_fns(eval_model, variables).logits_fn
    x_adv = attacks.pgd(logits_fn, x, y, eps=adv.eps, step_size=adv.eps / 4,
                        steps=adv.check_steps, key=jax.random.PRNGKey(0))
    logits = logits_fn(x)
    pred = jnp.argmax(logits, -1)
    classes = (jnp.bincount(pred, length=logits.shape[-1]) > 0).sum()
    return (pred == y).mean(), (jnp.argmax(logits_fn(x_adv), -1) == y).mean(), classes
  return fn


class OverfittingMonitor:
  """Flags catastrophic overfitting: the held-out PGD accuracy falls ``overfit_drop`` below
  its best *and* below ``overfit_ratio`` x the clean accuracy on the same images.

  The second condition and skipping epochs whose clean predictions are all one class keep
  early training from raising false alarms: a network that predicts one class for every
  image is "robust" (its PGD accuracy equals its clean accuracy, the class share), and
  small medical data sets swing between such states in the first epochs (seen on BUSI,
  where the check stopped PGD training at epoch 4 before these rules). Nor does it judge
  (or remember) an epoch while eps still ramps up (``adv.ramp_epochs``): the model then
  trains at a smaller eps than the check attacks with, and a near-constant classifier's
  "best" PGD accuracy from those epochs stopped two ResNet-50 runs at 224 px at epochs 4
  and 8 of a 10-epoch ramp (results/oncology_robustness_busi_full/notes.md).

  Its memory (``best``) travels in each checkpoint's metadata, so a resumed run judges a
  collapse against the PGD accuracy it had before the interruption.
  """

  def __init__(self, adv):
    self.adv, self.best = adv, -1.0

  def update(self, clean: float, robust: float, epoch: int, classes: int = 2) -> bool:
    """True when training should stop."""
    adv = self.adv
    if epoch <= adv.get("ramp_epochs", 0):
      logging.info("Overfitting check skipped at epoch %d: eps still ramps up "
                   "(adv.ramp_epochs=%d).", epoch, adv.ramp_epochs)
      return False
    if classes < 2:
      logging.info("Overfitting check skipped at epoch %d: one class predicted for every "
                   "held-out image.", epoch)
      return False
    collapsed = robust < self.best - adv.overfit_drop and robust < adv.overfit_ratio * clean
    self.best = max(self.best, robust)
    if collapsed:
      logging.warning(
          "Catastrophic overfitting at epoch %d: PGD-%d accuracy on held-out images fell to "
          "%.3f from %.3f (clean %.3f; adv.overfit_drop=%.2f, adv.overfit_ratio=%.2f). %s",
          epoch, adv.check_steps, robust, self.best, clean, adv.overfit_drop, adv.overfit_ratio,
          "Stopping; this epoch's weights are not saved, so the run keeps its best (or last) "
          "checkpoint from before the collapse." if adv.overfit_stop else
          "Continuing (adv.overfit_stop=False).")
      return adv.overfit_stop
    return False


def evaluate(eval_fn, variables, arrays: dict, config, mesh, *, return_predictions: bool = False):
  """Metrics of a model on one split (and, optionally, its predictions); ``eval_fn`` from
  :func:`compile_eval`."""
  has_masks = data.DATASETS[config.data.name].has_masks
  in_channels = config.model.in_channels
  probs, mask_probs = parallel.map_batches(
      eval_fn, {"image": arrays["image"]}, batch_size=config.eval_batch_size, mesh=mesh,
      args=(variables,), prepare=lambda b: {"image": data.to_model_input(b["image"], in_channels)})
  out = metrics.classification_metrics(probs, arrays["label"])
  if mask_probs is not None and has_masks:
    out.update(metrics.segmentation_metrics(mask_probs, arrays["mask"],
                                            np.ones(len(probs), np.float32)))
  if return_predictions:
    return out, probs, mask_probs
  return out


# Validation metrics that need images of every class (or of both, for binary tasks).
NEEDS_EVERY_CLASS = ("val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy")


def check_classes(train_labels, val_labels, class_names, config) -> None:
  """Stops when a class has no training images (its class weight would be made up and the
  model never sees it), or no validation images while ``best_metric`` needs every class
  (AUC, sensitivity... are undefined, and the "best" checkpoint would silently be the
  latest). Names the data set, the split and the counts."""
  where = f"{config.data.name} (label set {config.data.label_set!r}" + (
      f", fold {config.data.fold} of {config.data.folds})" if config.data.get("folds") else ")")
  for split, labels in (("train", train_labels), ("val", val_labels)):
    counts = np.bincount(np.asarray(labels), minlength=len(class_names))
    missing = [n for n, c in zip(class_names, counts) if c == 0]
    if not missing:
      continue
    counted = ", ".join(f"{n} {c}" for n, c in zip(class_names, counts))
    if split == "train":
      raise data.DataError(f"The train split of {where} has no images of {missing} ({counted}): "
                           "check the manifest's labels or choose another label_set.")
    if config.best_metric in NEEDS_EVERY_CLASS:
      raise data.DataError(
          f"The val split of {where} has no images of {missing} ({counted}), so "
          f"{config.best_metric} is undefined and the kept checkpoint would be the latest: "
          "use --config.best_metric=val_accuracy (or '' for the last checkpoint), or a split "
          "with every class in val.")


def compile_eval(eval_model, mesh):
  """``(variables, batch, start) -> (probs, mask probs or None)`` for :func:`evaluate`."""
  return parallel.jit_batched(
      lambda variables, batch, start: train_step.eval_step(variables, batch, model=eval_model),
      mesh, 1)


def _check_finite(pending: list, start_step: int, last_ckpt: Optional[int], workdir: str):
  """Raises NonFiniteLossError naming the first bad step among ``pending`` metrics."""
  fetched = jax.device_get(pending)
  for i, m in enumerate(fetched):
    if not bool(m["finite"]):
      step = start_step + i + 1
      raise NonFiniteLossError(
          f"Non-finite loss or gradient at step {step} (loss={float(m['loss'])}). The run "
          f"stopped; nothing after step {last_ckpt} was saved, and the last good checkpoint "
          f"is {os.path.join(workdir, 'checkpoints', str(last_ckpt)) if last_ckpt else 'none'}. "
          "Lower the learning rate, enable grad_clip, or check the input data, and start "
          "afresh (another --workdir, or --config.existing_run=restart): the loss may have "
          "diverged before it became non-finite, so resuming from that checkpoint in this "
          "work dir can fail again.")
  return fetched


STOPPED = "stopped.json"


def read_stop(workdir: str) -> Optional[dict]:
  """The record :func:`_train` writes when the overfitting check stopped a run
  (``<workdir>/stopped.json``: the step it stopped at, the checkpoint kept from before, the
  PGD accuracies), or None."""
  path = os.path.join(workdir, STOPPED)
  return files.read_json(path) if os.path.exists(path) else None


def train_and_evaluate(config, workdir: str, *, stop_after_step: Optional[int] = None) -> dict:
  """Trains, evaluates and reports; returns the test metrics of the best checkpoint.

  ``stop_after_step`` ends the run early after that step (as if the process had been
  killed there), for the resumption tests.
  """
  workdir = os.path.abspath(workdir)
  checks.check_train_config(config)          # before anything is written or built
  # A data error stops before the work dir is touched (a second train.py on a busy work
  # dir loads the data before the lock refuses it: the price of that order).
  train, val = load_training_data(config)
  if config.model.get("stats_from", "") == "train":
    config = copy.deepcopy(config)           # the caller's config stays reusable
    resolve_normalisation(config, train)
  with files.WorkdirLock(workdir, "train.py"):
    experiment.prepare_workdir(config, workdir)
    return _train(config, workdir, stop_after_step, train, val)


def load_training_data(config) -> tuple[dict, dict]:
  """The run's training images (``data.train_subset`` of them when set: a stratified
  subset, the same for every run of a fold) and its validation images, checked to hold
  every class."""
  t0 = time.time()
  train = data.load_split(config.data, "train", config.image_size)
  if config.data.get("train_subset", 0):
    train = data.subset(train, config.data.train_subset, seed=config.data.get("fold_seed", 0))
  val = data.load_split(config.data, "val", config.image_size)
  logging.info("Data %s: %d train, %d val images at %d px (%.1f s).", config.data.name,
               len(train["label"]), len(val["label"]), config.image_size, time.time() - t0)
  check_classes(train["label"], val["label"], data.class_names(config.data), config)
  return train, val


def resolve_normalisation(config, train: dict) -> None:
  """``model.stats_from="train"``: the model's per-channel normalisation (``model.mean``,
  ``model.std``) becomes the statistics of this run's training images
  (:func:`lib.data.channel_stats`: each fold of a cross-validation its own, never its
  held-out images), written into the config and so into ``config.json``, from which the
  model is rebuilt for evaluation. Resuming computes the same values."""
  if config.model.get("stats_from", "") != "train":
    return
  mean, std = data.channel_stats(train["image"])   # a grayscale set: one value each
  if not all(s > 0 for s in std):
    raise ValueError(f"model.stats_from='train': a channel of the {len(train['label'])} "
                     f"training images of {config.data.name} is constant (std {std}): give "
                     "--config.model.mean and --config.model.std instead.")
  checks.check_channels(config.data.name, len(mean), config.model.in_channels, mean, std)
  config.model.mean, config.model.std = mean, std
  logging.info("Normalisation from the %d training images: mean %s, std %s.",
               len(train["label"]), mean, std)


def _train(config, workdir: str, stop_after_step: Optional[int], train: dict, val: dict) -> dict:
  class_names = data.class_names(config.data)
  par = experiment.build_parallel(config)
  logging.info("Mesh of %d %s device(s), wrapper %s.", par.num_devices,
               jax.devices()[0].platform, par.kind)
  steps_per_epoch = len(train["label"]) // config.batch_size
  total_steps = config.num_epochs * steps_per_epoch

  model = experiment.build_model(config, bn_axis_name=train_step.AXIS)
  eval_model = experiment.build_model(config)
  state = experiment.init_state(config, model, steps_per_epoch, par.mesh)
  class_weights = train_step.class_weight_vector(config, train["label"], config.model.num_classes)
  logging.info("Model %s (seg_head=%s): %.2f M parameters; class weights %s.", config.model.name,
               config.model.seg_head, sum(x.size for x in jax.tree_util.tree_leaves(state.params)) / 1e6,
               np.round(np.asarray(class_weights), 3).tolist())

  ckpt = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.checkpoint_keep,
                                 best_metric=config.best_metric, best_mode=config.best_mode,
                                 async_save=config.async_checkpointing)
  train_iter = data.train_iterator(train, config, process_index=jax.process_index(),
                                   process_count=jax.process_count())
  meta = {"architecture": checkpoint.architecture(config.model), "class_names": list(class_names)}
  start, saved_meta = ckpt.latest_step(), {}
  if start is not None:   # a corrupt latest checkpoint: warned about, the one before is used
    template = checkpoint.abstract(train_step.state_to_dict(state), par.replicated)
    start, state_dict, data_state, saved_meta = ckpt.restore_newest_good(template, config.model)
    state = train_step.state_from_dict(state, state_dict)
    train_iter.set_state(data_state)
    logging.info("Resumed from %s at step %d.", ckpt.directory, start)
  start = start or 0

  state = par.put_state(state)
  adv = config.get("adv")
  adversarial_training = adv is not None and adv.method != "none"
  if adv is not None:
    adversarial.check_config(adv)
  step_fn = par.compile_step(functools.partial(
      train_step.train_step, model=model, class_weights=class_weights, loss_config=config.loss,
      adv_config=adv, steps_per_epoch=steps_per_epoch, trainable=tuple(config.get("trainable", ()))))
  eval_fn = compile_eval(eval_model, par.mesh)
  writer = report.MetricWriter(workdir)
  stopped = read_stop(workdir) if adversarial_training and adv.overfit_stop else None
  if stopped:
    logging.info("This run stopped at step %d (catastrophic overfitting, %s); evaluating the "
                 "checkpoint it kept from before (step %s). To train on regardless, set "
                 "--config.adv.overfit_stop=False.", stopped["step"],
                 os.path.join(workdir, STOPPED), stopped["kept_step"])
  if adversarial_training:
    robust_fn, monitor = robust_accuracy_fn(eval_model, adv), OverfittingMonitor(adv)
    monitor.best = float((saved_meta or {}).get("overfit_best", -1.0))   # restored with the weights
    check_x = data.to_model_input(val["image"][:adv.check_images], config.model.in_channels)
    check_y = val["label"][:adv.check_images]
    logging.info("Adversarial training: %s at eps %g (%s BatchNorm while attacking).",
                 adv.method, adv.eps, adv.bn_mode)

  pending, pending_start, last_ckpt = [], start, start or None
  t_log, n_log = time.time(), 0
  for step in range(total_steps if stopped else start, total_steps):
    batch = next(train_iter)
    state, m = step_fn(state, par.put_batch(batch))
    pending.append(par.get_metrics(m))
    n_log += 1
    done = step + 1
    end_of_epoch = done % steps_per_epoch == 0
    if done % config.log_every_steps == 0 or end_of_epoch or done == stop_after_step:
      fetched = _check_finite(pending, pending_start, last_ckpt, workdir)
      dt = (time.time() - t_log) / n_log
      last = fetched[-1]
      writer.write(done, {"loss": float(last["loss"]), "accuracy": float(last["accuracy"]),
                          "grad_norm": float(last["grad_norm"]), "step_time": dt,
                          "images_per_s": config.batch_size / dt}, prefix="train_")
      logging.info("step %d/%d epoch %.2f loss %.4f acc %.3f | %.3f s/step, %.1f img/s, ETA %.1f min",
                   done, total_steps, done / steps_per_epoch, float(last["loss"]),
                   float(last["accuracy"]), dt, config.batch_size / dt,
                   dt * (total_steps - done) / 60)
      pending, pending_start, t_log, n_log = [], done, time.time(), 0
    epoch = done // steps_per_epoch
    if end_of_epoch and (epoch % config.eval_every_epochs == 0 or done == total_steps):
      host_state = par.get_state(state)
      val_metrics = evaluate(eval_fn, host_state.variables, val, config, par.mesh)
      val_metrics = {f"val_{k}": v for k, v in val_metrics.items()}
      overfitted = False
      if adversarial_training:
        clean, robust, classes = robust_fn(host_state.variables, check_x, check_y)
        val_metrics["val_check_accuracy"] = float(clean)
        val_metrics["val_pgd_accuracy"] = float(robust)
        overfitted = monitor.update(float(clean), float(robust), epoch, int(classes))
      writer.write(done, {**val_metrics, "epoch": epoch})
      logging.info("epoch %d val: %s", epoch, _fmt(val_metrics))
      if overfitted and last_ckpt is not None:
        # The collapsed weights are not saved: with best_metric '' (keep the last) or a
        # metric blind to robustness (val_auc) they would be the checkpoint the run keeps.
        _record_stop(workdir, done, epoch, last_ckpt, val_metrics, monitor.best)
        break
      ckpt.save(done, train_step.state_to_dict(host_state), train_iter.get_state(),
                {**meta, "overfit_best": monitor.best} if adversarial_training else meta,
                metrics=val_metrics)
      last_ckpt = done
      if overfitted:   # nothing saved before it (cannot happen after a judged epoch)
        _record_stop(workdir, done, epoch, done, val_metrics, monitor.best)
        break
    if stop_after_step is not None and done >= stop_after_step:
      ckpt.prune()
      ckpt.close()
      writer.close()
      return {}
  ckpt.wait()
  writer.close()
  return final_test(config, workdir, ckpt, eval_fn, par, state, class_names)


def _record_stop(workdir: str, step: int, epoch: int, kept_step: int, val_metrics: dict,
                 best: float) -> None:
  if jax.process_index() == 0:
    files.atomic_json(os.path.join(workdir, STOPPED), {
        "reason": "catastrophic overfitting", "step": step, "epoch": epoch,
        "kept_step": kept_step, "val_pgd_accuracy": val_metrics["val_pgd_accuracy"],
        "val_check_accuracy": val_metrics["val_check_accuracy"], "best_val_pgd_accuracy": best})
  parallel.sync("stop recorded")


def final_test(config, workdir, ckpt, eval_fn, par, state, class_names) -> dict:
  """Restores the best checkpoint, evaluates it on test, writes report and figures."""
  ckpt.prune()   # also those written before an interruption (orbax's policy misses them)
  best = ckpt.best_step()
  template = checkpoint.abstract(train_step.state_to_dict(par.get_state(state)), par.replicated)
  others = [s for s in sorted(ckpt.all_steps(), reverse=True) if s != best]
  best, state_dict, _, _ = ckpt.restore_newest_good(template, config.model, [best] + others)
  ckpt.close()
  variables = {"params": state_dict["params"], "batch_stats": state_dict["batch_stats"]}
  test = data.load_split(config.data, "test", config.image_size)
  test_metrics, probs, mask_probs = evaluate(eval_fn, variables, test, config, par.mesh,
                                             return_predictions=True)
  test_metrics = {"best_step": int(best), **test_metrics}
  if jax.process_index() != 0:
    parallel.sync("final_test written")
    return test_metrics
  logging.info("test (step %d, %s): %s", best, kept_by(config, workdir), _fmt(test_metrics))
  files.atomic_json(os.path.join(workdir, "test_metrics.json"), test_metrics)
  report.MetricWriter(workdir).write(best, {f"test_{k}": v for k, v in test_metrics.items()})
  log = report.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  report.plot_training_curves(log, os.path.join(workdir, "training_curves.png"))
  order = np.argsort([f"{l}{i}" for i, l in zip(test["id"], test["label"])])
  pick = np.concatenate([order[test["label"][order] == c][:4] for c in range(len(class_names))])
  images = data.to_model_input(test["image"][pick])
  report.plot_predictions(images, test["mask"][pick] if config.model.seg_head else None,
                          test["label"][pick], probs[pick],
                          None if mask_probs is None else mask_probs[pick], class_names,
                          os.path.join(workdir, "test_predictions.png"))
  write_report(config, workdir, test_metrics)
  parallel.sync("final_test written")   # a caller (a study) may read them next
  return test_metrics


def write_report(config, workdir, test_metrics) -> None:
  rows = [{"metric": k, "value": float(v) if isinstance(v, float) else v}
          for k, v in test_metrics.items()]
  table = report.write_table(rows, os.path.join(workdir, "test_metrics"))
  files.atomic_write(os.path.join(workdir, "report.md"), (
      f"# {config.data.name}: {config.model.name}"
      f"{' + segmentation head' if config.model.seg_head else ''}, {config.image_size} px\n\n"
      f"Test split, {kept_by(config, workdir)}:\n\n{table}\n"
      "![training curves](training_curves.png)\n\n![test predictions](test_predictions.png)\n"))


def kept_by(config, workdir: str = "") -> str:
  """Which checkpoint a run keeps: the best by ``config.best_metric``, or the last one (of
  those saved before the overfitting check stopped it, if it did)."""
  kept = f"best checkpoint by `{config.best_metric}`" if config.best_metric else "last checkpoint"
  stop = read_stop(workdir) if workdir else None
  if stop:
    kept += (f" saved before catastrophic overfitting stopped training at step {stop['step']} "
             f"(PGD accuracy {stop['val_pgd_accuracy']:.3f} from "
             f"{stop['best_val_pgd_accuracy']:.3f})")
  return kept


def _fmt(m: dict) -> str:
  return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items())
