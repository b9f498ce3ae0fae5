"""Config -> data, model and (restored) state: the one place every entry point uses.

``train.py``, ``attack.py`` and ``explain.py`` all start from a config and a work
directory; the functions here build the model, the parallel wrapper and the state the
same way for each, and restore the state a run left.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import ml_collections
import numpy as np

from lib import checkpoint, data, models, parallel, torch_weights, train_step


class _QuietLibraries(logging.Filter):
  """Drops orbax INFO records (dozens per checkpoint) and TFDS chatter from absl's log."""

  def filter(self, record):
    if "/orbax/" in record.pathname or "/etils/" in record.pathname:
      return record.levelno >= logging.WARNING
    if "/tensorflow_datasets/" in record.pathname:  # "custom data configuration", "no OpenCV"
      return record.levelno >= logging.ERROR
    return True


def setup_logging() -> None:
  """Quiet library logs on the absl handler; our INFO lines stay."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)


def num_classes(config) -> int:
  return len(data.class_names(config.data))


def build_model(config, **overrides) -> models.ResNet:
  """The config's model; ``bn_axis_name="batch"`` for the data-parallel train step."""
  mc = config.model
  if mc.num_classes != num_classes(config):
    raise ValueError(f"model.num_classes={mc.num_classes} but label set "
                     f"{config.data.label_set!r} of {config.data.name} has {num_classes(config)}.")
  if mc.seg_head and not data.DATASETS[config.data.name].has_masks:
    raise ValueError(f"{config.data.name} has no lesion masks: set model.seg_head=False.")
  return models.create_model(mc, **overrides)


def build_parallel(config) -> parallel.DataParallel:
  par = parallel.DataParallel(parallel.make_mesh(config.num_devices), config.parallel)
  par.check_batch_size(config.batch_size)
  par.check_batch_size(config.eval_batch_size)
  return par


def init_state(config, model, steps_per_epoch: int) -> train_step.TrainState:
  """A fresh TrainState; its rng drives everything random in the step.

  The weights are random, or those of ``config.init_from`` (fine-tuning) or of the
  torchvision ResNet file ``config.init_from_torch`` (lib/torch_weights.py), with the
  modules ``config.transplant_stages`` then taken from ``config.transplant_from``.
  """
  state = fresh_state(config, model, steps_per_epoch)
  variables = state.variables
  if config.get("init_from") and config.get("init_from_torch"):
    raise ValueError("Set init_from (a train.py run) or init_from_torch (a torchvision "
                     "file), not both.")
  if config.get("init_from_torch"):
    variables, notes = torch_weights.load_torchvision(config.init_from_torch, variables)
    logging.info("Weights from %s (torchvision layout)%s", config.init_from_torch,
                 "".join(f"\n  {n}" for n in notes))
  if config.get("init_from"):
    variables = _weights_from(config.init_from, config.get("init_from_which", "best"),
                              variables, config)
    logging.info("Weights from %s (%s checkpoint).", config.init_from, config.init_from_which)
  if config.get("transplant_from"):
    variables = transplant(variables, _weights_from(config.transplant_from, "best", variables, config),
                           config.transplant_stages)
    logging.info("Modules %s transplanted from %s.", list(config.transplant_stages),
                 config.transplant_from)
  return train_step.TrainState.create(variables, state.tx, state.rng)


def fresh_state(config, model, steps_per_epoch: int) -> train_step.TrainState:
  """Randomly initialised weights and a new optimiser state."""
  variables = models.init_variables(model, config.seed, config.image_size)
  tx = train_step.make_optimizer(config, steps_per_epoch)
  return train_step.TrainState.create(variables, tx, jax.random.PRNGKey(config.seed))


def _weights_from(workdir: str, which: str, like, config) -> dict:
  """The variables of another run, checked against this run's architecture."""
  other_config, _, other = restore_model(workdir, which)
  mine = checkpoint.architecture(config.model)
  theirs = checkpoint.architecture(other_config.model)
  same_shapes = (jax.tree_util.tree_structure(other) == jax.tree_util.tree_structure(like) and
                 all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(other),
                                                        jax.tree_util.tree_leaves(like))))
  if not same_shapes:
    raise checkpoint.CheckpointMismatchError(
        f"Cannot start from {workdir}: it holds a {checkpoint.describe(theirs)} model, "
        f"this run builds {checkpoint.describe(mine)}.")
  return other


def transplant(variables, donor, stages) -> dict:
  """``variables`` with the top-level modules ``stages`` (parameters and BatchNorm
  statistics) replaced by ``donor``'s, bit for bit (``stem`` = ``stem_conv`` + ``stem_bn``)."""
  names = {n for s in stages for n in train_step.STAGE_ALIASES.get(s, (s,))}
  unknown = names - set(variables["params"])
  if unknown:
    raise ValueError(f"transplant_stages {sorted(unknown)} are not modules of the model "
                     f"({sorted(variables['params'])}).")
  return {col: {k: (donor[col][k] if k in names else v) for k, v in tree.items()}
          for col, tree in variables.items()}


def save_config(config, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (written by train.py into its workdir)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a work directory of train.py?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def parse_checkpoints(value) -> list[str]:
  """``--config.checkpoints=RUN1,RUN2`` (train.py work dirs) as a list; stops when empty."""
  checkpoints = [c.strip() for c in str(value or "").split(",") if c.strip()]
  if not checkpoints:
    raise ValueError("No checkpoints: pass --config.checkpoints=RUN1,RUN2 (train.py work dirs).")
  return checkpoints


def check_eps(eps, where: str = "eps") -> float:
  """An attack budget in pixel units: a finite number in [0, 1] (images are in [0, 1]).
  Values above 1 that look like 0-255 units get a hint (8 -> 8/255 = 0.0314)."""
  try:
    value = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"{where}: {eps!r} is not a number.") from None
  if not np.isfinite(value) or value < 0:
    raise ValueError(f"{where}: eps {eps!r} must be a finite number >= 0 (pixels are in [0, 1]).")
  if value > 1:
    hint = (f" It looks like 0-255 units: use {value:g}/255 = {value / 255:.4f}."
            if value <= 255 else "")
    raise ValueError(f"{where}: eps {value:g} is above 1, but pixels are in [0, 1].{hint}")
  return value


CHECKPOINT_CHOICES = ("best", "latest")


def check_which(which: str) -> str:
  """``which`` if it names a checkpoint choice; else an error listing them (a typo such as
  ``Best`` used to load the latest checkpoint without a word)."""
  if which not in CHECKPOINT_CHOICES:
    raise ValueError(f"which={which!r}: choose one of {', '.join(CHECKPOINT_CHOICES)} "
                     "(the checkpoint with the best validation metric, or the last one).")
  return which


def _open_checkpoint(workdir: str, which: str, config):
  """The run's checkpointer and the step ``which`` (``best`` or ``latest``) names."""
  check_which(which)
  ckpt = checkpoint.RunCheckpoints(os.path.join(workdir, "checkpoints"), best_metric=config.best_metric,
                                 best_mode=config.best_mode, async_save=False)
  return ckpt, ckpt.best_step() if which == "best" else ckpt.latest_step()


def run_names(workdirs) -> list[str]:
  """Distinct short names for train.py work dirs, for tables and file names: each dir's last
  path component, or as many trailing components (joined by ``-``) as it takes to tell them
  apart, e.g. ``runs/x/standard/seed1_fold0`` and ``runs/x/pgd/seed1_fold0`` ->
  ``standard-seed1_fold0`` and ``pgd-seed1_fold0``. A dir given twice is an error."""
  parts = [os.path.abspath(w).split(os.sep) for w in workdirs]
  full = ["/".join(p) for p in parts]
  twice = sorted({w for w in full if full.count(w) > 1})
  if twice:
    raise ValueError(f"Work dir(s) given more than once: {', '.join(twice)}")
  for n in range(1, max((len(p) for p in parts), default=1) + 1):
    names = ["-".join(q for q in p[-n:] if q) for p in parts]
    if len(set(names)) == len(names):
      return names
  return names


def checkpoint_id(workdir: str, which: str = "best") -> str:
  """``<absolute run dir>@<step>`` of the checkpoint :func:`restore_model` would load: what
  a cached result was computed from."""
  check_which(which)
  ckpt, step = _open_checkpoint(workdir, which, load_config(workdir))
  ckpt.close()
  return f"{os.path.abspath(workdir)}@{step}"


def restore_model(workdir: str, which: str = "best", config=None, **overrides):
  """``(config, model, variables)`` of a finished or running training run.

  ``which`` is ``"best"`` (by the run's validation metric) or ``"latest"``.
  ``overrides`` change model fields that keep the parameter tree, e.g.
  ``activation="softplus"`` or ``cam_layer="penultimate"``.
  """
  check_which(which)
  config = config or load_config(workdir)
  model = build_model(config, **overrides)
  ckpt, step = _open_checkpoint(workdir, which, config)
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}.")
  template = jax.eval_shape(lambda: fresh_state(config, build_model(config), 1))
  abstract_state = checkpoint.abstract(train_step.state_to_dict(template))
  state_dict, _, _ = ckpt.restore(step, abstract_state, config.model)
  ckpt.close()
  return config, model, {"params": state_dict["params"], "batch_stats": state_dict["batch_stats"]}
