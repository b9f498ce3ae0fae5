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

from lib import checkpoint, checks, data, files, models, parallel, torch_weights, train_step


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


def init_state(config, model, steps_per_epoch: int, mesh=None) -> train_step.TrainState:
  """A fresh TrainState; its rng drives everything random in the step.

  The weights are random, or those of ``config.init_from`` (fine-tuning) or of the
  torchvision ResNet file ``config.init_from_torch`` (lib/torch_weights.py), with the
  modules ``config.transplant_stages`` then taken from ``config.transplant_from``
  (restored onto ``mesh``, default all devices).
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
                              variables, config, mesh)
    logging.info("Weights from %s (%s checkpoint).", config.init_from, config.init_from_which)
  if config.get("transplant_from"):
    variables = transplant(variables, _weights_from(config.transplant_from, "best", variables, config, mesh),
                           config.transplant_stages)
    logging.info("Modules %s transplanted from %s.", list(config.transplant_stages),
                 config.transplant_from)
  return train_step.TrainState.create(variables, state.tx, state.rng)


def fresh_state(config, model, steps_per_epoch: int) -> train_step.TrainState:
  """Randomly initialised weights and a new optimiser state."""
  variables = models.init_variables(model, config.seed, config.image_size)
  tx = train_step.make_optimizer(config, steps_per_epoch)
  return train_step.TrainState.create(variables, tx, jax.random.PRNGKey(config.seed))


def _weights_from(workdir: str, which: str, like, config, mesh=None) -> dict:
  """The variables of another run, checked against this run's architecture."""
  other_config, _, other = restore_model(workdir, which, mesh=mesh)
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
  if not files.is_writer():
    return
  os.makedirs(workdir, exist_ok=True)
  files.atomic_write(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


# Settings that do not change a run's numbers: a run may be resumed with other values.
NUMERICS_FREE = ("log_every_steps", "async_checkpointing", "data.num_threads", "data.data_dir",
                 "multihost", "checkpoint_keep", "eval_batch_size", "existing_run")
EXISTING_RUN = ("refuse", "continue", "restart")
# Fields added after runs were made, with the value that reproduces such a run: a
# config.json without the field is the same run as one with this value.
ADDED_FIELDS = {"data.augment.saturation": 0.0, "data.augment.hue": 0.0,
                "data.train_subset": 0, "model.stats_from": ""}


def _flatten(tree, prefix: str = "") -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_differences(old: dict, new: dict) -> list[str]:
  """``field: old -> new`` for every setting that differs (and changes numbers)."""
  a, b = ({**ADDED_FIELDS, **_flatten(c)} for c in (old, new))
  return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if k not in NUMERICS_FREE and a.get(k) != b.get(k)]


def prepare_workdir(config, workdir: str) -> None:
  """Writes ``config.json`` into a train.py work dir, after checking that the dir does not
  hold a run made with other settings (``config.existing_run``):

  * ``refuse`` (default): stop, naming the settings that differ. Re-running a finished run
    with another setting used to overwrite its ``config.json``, ``test_metrics.json`` and
    ``report.md`` with the new setting's numbers (or, with another architecture, leave a
    ``config.json`` that no longer loads the checkpoints);
  * ``continue``: resume the run's checkpoints with the new settings (e.g. more epochs);
    the old config is kept as ``config.previous-<n>.json``;
  * ``restart``: move the old run aside to ``<workdir>.replaced-<n>`` and start afresh.
  """
  checks.choice(config.get("existing_run", "refuse"), EXISTING_RUN, "existing_run")
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    old = files.read_json(path)
    differences = config_differences(old, json.loads(config.to_json_best_effort()))
    mode = config.get("existing_run", "refuse")
    if differences and mode == "refuse":
      raise ValueError(
          f"{workdir} holds a run made with other settings:\n  " + "\n  ".join(differences[:20])
          + ("\n  ..." if len(differences) > 20 else "")
          + "\nUse another --workdir, or --config.existing_run=continue (resume its checkpoints "
          "with these settings) or --config.existing_run=restart (move it aside and start afresh).")
    if differences and jax.process_index() == 0:
      if mode == "continue":
        kept = _free_name(os.path.join(workdir, "config.previous-{}.json"))
        os.replace(path, kept)
        logging.warning("Continuing %s with other settings (old config kept as %s):\n  %s",
                        workdir, kept, "\n  ".join(differences))
      else:
        moved = _free_name(workdir.rstrip("/") + ".replaced-{}")
        os.makedirs(moved)
        for entry in os.listdir(workdir):   # all but the lock this job holds
          if entry != files.LOCK_NAME:
            os.replace(os.path.join(workdir, entry), os.path.join(moved, entry))
        logging.warning("Moved the earlier run in %s to %s; starting afresh.", workdir, moved)
  save_config(config, workdir)    # process 0 writes (lib.files.is_writer)
  parallel.sync("prepare_workdir")  # the others read the work dir once it is ready


def _free_name(template: str) -> str:
  n = 1
  while os.path.exists(template.format(n)):
    n += 1
  return template.format(n)


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


def _open_checkpoint(workdir: str, which: str, config):
  """The run's checkpointer and the step ``which`` (``best`` or ``latest``) names."""
  checks.check_which(which, "which")
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
  checks.check_which(which, "which")
  ckpt, step = _open_checkpoint(workdir, which, load_config(workdir))
  ckpt.close()
  return f"{os.path.abspath(workdir)}@{step}"


def restore_model(workdir: str, which: str = "best", config=None, mesh=None, **overrides):
  """``(config, model, variables)`` of a finished or running training run.

  ``which`` is ``"best"`` (by the run's validation metric) or ``"latest"``. The variables
  are replicated over ``mesh`` (default :func:`lib.checkpoint.replicated`).
  ``overrides`` change model fields that keep the parameter tree, e.g.
  ``activation="softplus"`` or ``cam_layer="penultimate"``.
  """
  checks.check_which(which, "which")
  config = config or load_config(workdir)
  model = build_model(config, **overrides)
  ckpt, step = _open_checkpoint(workdir, which, config)
  if step is None:
    raise FileNotFoundError(f"No checkpoint in {ckpt.directory}.")
  template = jax.eval_shape(lambda: fresh_state(config, build_model(config), 1))
  abstract_state = checkpoint.abstract(train_step.state_to_dict(template),
                                       checkpoint.replicated(mesh))
  state_dict, _, _ = ckpt.restore(step, abstract_state, config.model)
  ckpt.close()
  return config, model, {"params": state_dict["params"], "batch_stats": state_dict["batch_stats"]}
