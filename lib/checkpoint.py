"""Checkpoints with orbax ``CheckpointManager``: state, data-iterator position, metadata.

Each checkpoint holds three items: ``state`` (the TrainState as nested dicts: params,
BatchNorm statistics, optimiser state, step, rng), ``data`` (the grain iterator's state,
JSON) and ``meta`` (the model config and the validation metrics, JSON). The manager keeps
the latest ``keep`` checkpoints for resuming and the best one by a validation metric.

Saves are atomic (orbax writes to a temporary folder and renames it), so a run killed
while saving leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from lib import parallel

# Model-config fields that change the parameter tree; the others (cam_layer,
# activation, dtype) give other functions of the same parameters.
ARCHITECTURE_FIELDS = ("name", "num_classes", "in_channels", "seg_head", "width",
                       "decoder_channels")


class CheckpointMismatchError(ValueError):
  """A checkpoint written by another architecture than the one the config asks for."""


class CheckpointCorruptError(RuntimeError):
  """A checkpoint of the right architecture whose files cannot be read (truncated, missing)."""


def architecture(model_config) -> dict:
  return {k: model_config.get(k) for k in ARCHITECTURE_FIELDS}


def describe(arch: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in arch.items())


class RunCheckpoints:
  """The checkpoints of one training run in ``<workdir>/checkpoints``: saves and restores
  the train state with the data-iterator state and the architecture (a thin layer over
  orbax's ``CheckpointManager``, not orbax's ``Checkpointer``)."""

  def __init__(self, directory: str, *, keep: int = 2, best_metric: Optional[str] = None,
               best_mode: str = "max", async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.best_metric = best_metric
    self.best_mode = best_mode
    self.keep = keep
    keepers = [policies.LatestN(n=keep)]
    worst = float("-inf") if best_mode == "max" else float("inf")

    def metric(m):   # NaN ranks last: a NaN key makes sorting (and so BestN) arbitrary
      v = m.get(best_metric, float("nan"))
      return v if v == v else worst

    if best_metric:
      keepers.append(policies.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keepers),
        # best_fn makes orbax save each step's metrics (CheckpointManager.metrics reads them)
        best_fn=metric if best_metric else None,
        best_mode=best_mode, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state_dict: Any, data_state: dict, meta: dict,
           metrics: Optional[dict] = None) -> None:
    metrics = {k: float(v) for k, v in (metrics or {}).items()
               if isinstance(v, (int, float))} or None
    if self.best_metric and metrics is not None and self.best_metric not in metrics:
      raise KeyError(f"best_metric {self.best_metric!r} not among {sorted(metrics)}")
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state_dict),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave({**meta, "metrics": metrics})), metrics=metrics)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def read_meta(self, step: int) -> dict:
    """The ``meta`` item of a step (architecture, class names, metrics), through orbax."""
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def best_step(self) -> Optional[int]:
    """The retained step with the best validation metric (the latest if none has one; NaN
    counts as none), by the metrics orbax saved with each step
    (``CheckpointManager.metrics``), or for checkpoints written before orbax saved them,
    those in the step's ``meta`` item."""
    if not self.best_metric:
      return self.latest_step()
    scored = []
    for step in self.all_steps():
      try:
        metrics = self.manager.metrics(step) or self.read_meta(step).get("metrics")
      except Exception:  # pylint: disable=broad-except  # unreadable: restore_newest_good says so
        continue   # unreadable: restore_newest_good reports it
      m = (metrics or {}).get(self.best_metric)
      if m is not None and m == m:  # not NaN
        scored.append((m if self.best_mode == "max" else -m, step))
    return max(scored)[1] if scored else self.latest_step()

  def restore(self, step: int, abstract_state_dict: Any, model_config=None):
    """Restores ``(state_dict, data_state, meta)`` into the abstract tree's structure.

    With ``model_config`` the saved architecture is compared first, so a checkpoint of
    another network stops with a message naming both instead of a shape error; a checkpoint
    of the same architecture that cannot be read (a truncated or missing file) raises
    :class:`CheckpointCorruptError`.
    """
    where = os.path.join(self.directory, str(step))
    check_placement(abstract_state_dict, where)
    try:
      meta = self.read_meta(step)
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds
      raise CheckpointCorruptError(f"Checkpoint {where} is incomplete or corrupt: its "
                                   f"metadata cannot be read ({e}).") from e
    if model_config is not None and "architecture" in meta:
      want = architecture(model_config)
      if meta["architecture"] != want:
        raise CheckpointMismatchError(
            f"Checkpoint {where} was written by another architecture:\n"
            f"  checkpoint: {describe(meta['architecture'])}\n"
            f"  config:     {describe(want)}\n"
            "Use another --workdir, or a config that matches the checkpoint.")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state_dict), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except  # tensorstore raises many kinds
      if model_config is not None and "architecture" in meta:   # same network: broken files
        raise CheckpointCorruptError(
            f"Checkpoint {where} is incomplete or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300] if str(e) else ''}).") from e
      if not isinstance(e, (ValueError, KeyError, TypeError)):
        raise
      raise CheckpointMismatchError(
          f"Checkpoint {where} does not fit the model of this config "
          f"({describe(architecture(model_config)) if model_config else 'unknown'}): {e}") from e
    return restored["state"], restored["data"], restored["meta"]

  def restore_newest_good(self, abstract_state_dict: Any, model_config=None,
                          steps: Optional[list] = None):
    """``(step, state_dict, data_state, meta)`` of the newest checkpoint among ``steps``
    (default: all, newest first) that restores. A corrupt one is reported with a warning
    naming it and moved to ``<dir>.corrupt/<step>`` (kept, not deleted, and out of the way
    of the step numbers the resumed run saves again); the one before it is used. Raises
    when none restores."""
    steps = sorted(self.all_steps(), reverse=True) if steps is None else list(steps)
    problems = []
    for step in steps:
      try:
        return (step,) + tuple(self.restore(step, abstract_state_dict, model_config))
      except CheckpointCorruptError as e:
        problems.append(str(e))
        aside = os.path.join(self.directory + ".corrupt", str(step))
        if jax.process_index() == 0:   # every process finds it corrupt; one moves it
          os.makedirs(os.path.dirname(aside), exist_ok=True)
          if os.path.exists(aside):
            shutil.rmtree(aside)
          os.replace(os.path.join(self.directory, str(step)), aside)
        parallel.sync(f"corrupt checkpoint {step} moved")
        self.manager.reload()
        logging.warning("%s Moved it to %s; trying the checkpoint before it.", e, aside)
    raise CheckpointCorruptError("No checkpoint could be restored:\n  " + "\n  ".join(problems))

  def prune(self) -> list[int]:
    """Deletes the checkpoints the policy would not keep: all but the latest ``keep`` and
    the best by ``best_metric`` (read from each checkpoint's own metadata). orbax applies
    the policy as it saves, but only to checkpoints whose metrics it holds in memory, so
    those written before an interruption were never deleted (keep=2 left four). Returns
    the deleted steps."""
    self.manager.wait_until_finished()
    steps = sorted(self.all_steps())
    keep = set(steps[-self.keep:]) if self.keep else set(steps)
    if self.best_metric and steps:
      keep.add(self.best_step())
    gone = [s for s in steps if s not in keep]
    for s in gone:
      self.manager.delete(s)
    if gone:
      logging.info("Deleted checkpoints %s of %s (kept %s).", gone, self.directory, sorted(keep))
    return gone

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def replicated(mesh=None):
  """Where restored weights go: a whole copy on every device of ``mesh``. Without a mesh,
  the first device when there is one process (as a fresh ``jnp`` array would be), and a
  copy on every device of every process when there are several (each process can address
  only its own devices, so "the first device" would be another process's on all but one)."""
  if mesh is None:
    if jax.process_count() == 1:
      return jax.sharding.SingleDeviceSharding(jax.devices()[0])
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("batch",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a tree of arrays (or of ShapeDtypeStructs), for restoring into.

  ``sharding`` is where the restored arrays are placed (default :func:`replicated`).
  """
  sharding = sharding or replicated()
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def check_placement(abstract_tree, where: str) -> None:
  """Stops when the tree would be restored onto devices this process cannot address (e.g.
  another process's first device), with a message that says so: orbax fails there with
  an error about missing dtypes that reads like a corrupt checkpoint."""
  for leaf in jax.tree_util.tree_leaves(abstract_tree):
    sharding = getattr(leaf, "sharding", None)
    if sharding is not None and not sharding.addressable_devices:
      raise ValueError(
          f"Cannot restore {where} onto {sharding}: none of its devices belongs to process "
          f"{jax.process_index()} of {jax.process_count()}. Restore with a sharding over "
          "every process's devices (checkpoint.replicated(mesh)); the checkpoint is fine.")
