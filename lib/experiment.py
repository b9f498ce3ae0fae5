"""Config -> data, model and (restored) state: the one place every entry point uses.

``train.py``, ``attack.py`` and ``explain.py`` all start from a config and a work
directory; the functions here build the model, the parallel wrapper and the state the
same way for each, and restore the state a run left.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional

import jax
import ml_collections

from lib import checkpoint, data, models, parallel, train_step


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
  """A fresh TrainState; its rng drives everything random in the step."""
  variables = models.init_variables(model, config.seed, config.image_size)
  tx = train_step.make_optimizer(config, steps_per_epoch)
  return train_step.TrainState.create(variables, tx, jax.random.PRNGKey(config.seed))


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


def restore_model(workdir: str, which: str = "best", config=None, **overrides):
  """``(config, model, variables)`` of a finished or running training run.

  ``which`` is ``"best"`` (by the run's validation metric) or ``"latest"``.
  ``overrides`` change model fields that keep the parameter tree, e.g.
  ``activation="softplus"`` or ``cam_layer="penultimate"``.
  """
  config = config or load_config(workdir)
  model = build_model(config, **overrides)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), best_metric=config.best_metric,
                                 best_mode=config.best_mode, async_save=False)
  step = ckpt.best_step() if which == "best" else ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}.")
  template = jax.eval_shape(lambda: init_state(config, build_model(config), 1))
  abstract_state = checkpoint.abstract(train_step.state_to_dict(template))
  state_dict, _, _ = ckpt.restore(step, abstract_state, config.model)
  ckpt.close()
  return config, model, {"params": state_dict["params"], "batch_stats": state_dict["batch_stats"]}
