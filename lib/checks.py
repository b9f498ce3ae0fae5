"""Config checks that run before anything is written or built.

Every entry point checks its whole config first (``train.py``: :func:`check_train_config`;
``attack.py`` and studies: :func:`lib.sweep.check_attacks` and :func:`check_eps`;
``explain.py``: :func:`lib.explain_report.check_config`), so a typo or an impossible value
stops with a message naming the field, the value and what is allowed, instead of after the
data set was built and the model compiled, or never (a silently wrong result).
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import Iterable

# The metrics a validation pass logs (lib/trainer.py): ``val_`` + these.
VAL_METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "dice",
               "check_accuracy", "pgd_accuracy")
CHECKPOINT_CHOICES = ("best", "latest")
NETWORK_STRIDE = 32   # every ResNet here: the last stage's maps are image_size / 32


def choice(value, choices: Iterable, where: str):
  """``value`` if it is one of ``choices``, else a ValueError naming both (and the closest)."""
  choices = tuple(choices)
  if value in choices:
    return value
  close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
  hint = f" (did you mean {close[0]!r}?)" if close else ""
  raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}{hint}.")


def at_least(value, low, where: str, *, integer: bool = True):
  ok = isinstance(value, int) if integer else isinstance(value, (int, float))
  if not ok or isinstance(value, bool) or not math.isfinite(value) or value < low:
    kind = "an integer" if integer else "a number"
    raise ValueError(f"{where}: {value!r} must be {kind} >= {low}.")
  return value


def check_eps(eps, where: str = "eps") -> float:
  """An attack budget in pixel units: a finite number in [0, 1] (images are in [0, 1]).
  Values above 1 that look like 0-255 units get a hint (8 -> 8/255 = 0.0314)."""
  try:
    value = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: {eps!r} is not a number.") from None
  if not math.isfinite(value) or value < 0:
    raise ValueError(f"{where}: eps {eps!r} must be a finite number >= 0 (pixels are in [0, 1]).")
  if value > 1:
    hint = (f" It looks like 0-255 units: use {value:g}/255 = {value / 255:.4f}."
            if value <= 255 else "")
    raise ValueError(f"{where}: eps {value:g} is above 1, but pixels are in [0, 1].{hint}")
  return value


def check_which(which: str, where: str = "--config.which") -> str:
  """``best`` or ``latest`` (a typo such as ``Best`` used to load the latest silently)."""
  return choice(which, CHECKPOINT_CHOICES, where)


def check_channels(dataset: str, channels: int, in_channels: int, mean=(), std=()) -> None:
  """A model must take the data set's channels: an RGB data set needs ``in_channels=3``
  (a grayscale one may feed a 3-channel model: its channel is repeated). A per-channel
  ``mean``/``std`` has one value or ``in_channels`` values, and both have the same length."""
  if channels == 3 and in_channels != 3:
    raise ValueError(f"Data set {dataset!r} is RGB (3 channels) but model.in_channels="
                     f"{in_channels}: set --config.model.in_channels=3.")
  mean, std = tuple(mean or ()), tuple(std or ())
  if len(mean) != len(std):
    raise ValueError(f"model.mean {mean} and model.std {std} must have the same length.")
  if mean and len(mean) not in (1, in_channels):
    raise ValueError(f"model.mean {mean} has {len(mean)} values but model.in_channels="
                     f"{in_channels}: give 1 or {in_channels}.")
  if any(not s > 0 for s in std):
    raise ValueError(f"model.std {std}: every value must be > 0.")


def check_train_config(config) -> None:
  """Every field of a ``train.py`` config that can be checked without data: names against
  their registries and choices, ranges, and the combinations that cannot work. Warns
  (does not stop) when images are smaller than the network's total stride."""
  # Imported here: lib.checks itself stays importable without JAX.
  from lib import adversarial, data, models  # pylint: disable=import-outside-toplevel
  dc, mc = config.data, config.model
  spec = data.DATASETS[dc.name]
  names = data.class_names(dc)
  choice(dc.get("resize", "pad"), ("pad", "stretch"), "data.resize")
  if dc.get("folds", 0):
    at_least(dc.folds, 2, "data.folds")
    if not 0 <= dc.fold < dc.folds:
      raise ValueError(f"data.fold: {dc.fold!r} must be in 0..{dc.folds - 1} (data.folds={dc.folds}).")
  choice(mc.name, models.ARCHITECTURES, "model.name")
  choice(mc.cam_layer, models.CAM_LAYERS, "model.cam_layer")
  choice(mc.activation, ("relu", "softplus"), "model.activation")
  choice(mc.dtype, models.DTYPES, "model.dtype")
  choice(mc.in_channels, (1, 3), "model.in_channels")
  check_channels(dc.name, spec.channels, mc.in_channels, mc.get("mean", ()), mc.get("std", ()))
  if choice(mc.get("stats_from", ""), ("", "train"), "model.stats_from") and (
      mc.get("mean") or mc.get("std")):
    raise ValueError(f"model.stats_from='train' computes model.mean and model.std from the "
                     f"training images, but they are given ({tuple(mc.mean)}, {tuple(mc.std)}): "
                     "set --config.model.mean='()' --config.model.std='()' or "
                     "--config.model.stats_from=''.")
  if mc.num_classes != len(names):
    raise ValueError(f"model.num_classes={mc.num_classes} but label set {dc.label_set!r} of "
                     f"{dc.name} has {len(names)} classes {names}.")
  if mc.seg_head and not spec.has_masks:
    raise ValueError(f"model.seg_head=True but {dc.name} has no lesion masks: set "
                     "--config.model.seg_head=False.")
  at_least(config.image_size, 1, "image_size")
  if config.image_size < NETWORK_STRIDE:
    logging.warning("image_size %d is below the network's total stride (%d): the last "
                    "stage sees 1x1 maps and Grad-CAM has one pixel.", config.image_size,
                    NETWORK_STRIDE)
  at_least(config.num_epochs, 1, "num_epochs")
  at_least(config.batch_size, 1, "batch_size")
  at_least(config.eval_batch_size, 1, "eval_batch_size")
  at_least(config.eval_every_epochs, 1, "eval_every_epochs")
  at_least(config.checkpoint_keep, 1, "checkpoint_keep")
  choice(config.optimizer, ("adamw", "sgd"), "optimizer")
  if not config.learning_rate > 0:
    raise ValueError(f"learning_rate: {config.learning_rate!r} must be > 0.")
  choice(config.parallel, ("shard_map", "pmap"), "parallel")
  valid = ("",) + tuple(f"val_{m}" for m in VAL_METRICS)
  choice(config.best_metric, valid, "best_metric")
  choice(config.best_mode, ("max", "min"), "best_mode")
  if config.best_metric == "val_dice" and not mc.seg_head:
    raise ValueError("best_metric='val_dice' needs model.seg_head=True (no masks are predicted).")
  choice(config.get("init_from_which", "best"), CHECKPOINT_CHOICES, "init_from_which")
  adv = config.get("adv")
  if adv is not None:
    choice(adv.method, adversarial.METHODS, "adv.method")
    choice(adv.bn_mode, adversarial.BN_MODES, "adv.bn_mode")
    if adv.method != "none":
      check_eps(adv.eps, "adv.eps")
      if adv.method in ("pgd", "iterative", "trades"):
        at_least(adv.steps, 1, "adv.steps")
      at_least(adv.check_steps, 1, "adv.check_steps")
    if config.best_metric == "val_pgd_accuracy" and adv.method == "none":
      raise ValueError("best_metric='val_pgd_accuracy' is measured only in adversarial training "
                       "(adv.method != 'none').")
