"""Data parallelism: a 1-D device mesh and the wrapper of per-device steps.

A per-device step ``f(state, batch) -> (state, metrics)`` reduces over the ``"batch"``
axis with ``lax.psum``/``pmean``. :class:`DataParallel` wraps it

* with ``jax.shard_map`` on a 1-D mesh (default): the state is replicated
  (``PartitionSpec()``), the batch sharded along its first axis; inputs and outputs are
  global ``jax.Array``s, so the same code runs on one host or many;
* with ``jax.pmap`` (``config.parallel = "pmap"``): the state carries a leading device
  axis and the batch is reshaped to (devices, per-device batch, ...). pmap has been in
  maintenance mode since JAX 0.8; it is kept for comparison and older setups.

Both give the same numbers as one device on the same global batch (tests/test_parallel.py).

Evaluation (validation, test, attack sweeps, explanations, studies) goes through one
helper, :func:`map_batches`: fixed-size padded batches of host-global arrays, sharded
over the mesh as global ``jax.Array``s, per-example outputs gathered and trimmed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lib import progress
from lib.train_step import AXIS


MULTIHOST = ("auto", "on", "off")


def several_processes_requested(env=None) -> bool:
  """Whether the environment starts this process as one of several: the variables of a
  launch by hand or by :mod:`lib.launch` (``JAX_COORDINATOR_ADDRESS``), a SLURM step of
  several tasks (``srun``) or an Open MPI job of several ranks (``mpirun``)."""
  env = os.environ if env is None else env
  return ("JAX_COORDINATOR_ADDRESS" in env
          or (int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_STEP_NODELIST" in env)
          or int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1)


def initialize_distributed(mode: str = "auto", env=None) -> bool:
  """Joins this process to a multi-process job (``jax.distributed.initialize``) when
  ``mode`` is ``on``, or ``auto`` and :func:`several_processes_requested`; returns whether
  it did. Must run before the first JAX computation (:func:`lib.cli.run` calls it).

  * By hand (or :mod:`lib.launch`): ``JAX_COORDINATOR_ADDRESS=host:port`` (process 0's
    host), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; JAX itself reads only the
    first, so the other two are read here and passed on.
  * SLURM (``srun``), Open MPI (``mpirun``): JAX detects everything
    (``JAX_COORDINATOR_PORT`` changes SLURM's port, picked from the job id).
  * Cloud TPU pod slices: ``--multihost=on`` on every worker; JAX detects the rest.
  """
  env = os.environ if env is None else env
  if mode not in MULTIHOST:
    raise ValueError(f"--multihost must be one of {MULTIHOST}, got {mode!r}")
  if mode == "off" or (mode == "auto" and not several_processes_requested(env)):
    return False
  kwargs = {}
  if "JAX_COORDINATOR_ADDRESS" in env:
    missing = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']} is set but "
                       f"{' and '.join(missing)} not: set all three on every process (the "
                       "process id from 0 to the number of processes - 1), or use "
                       "python -m lib.launch, SLURM's srun or --multihost=off.")
    try:
      kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(env["JAX_NUM_PROCESSES"]),
                    process_id=int(env["JAX_PROCESS_ID"]))
    except ValueError:
      raise ValueError(f"JAX_NUM_PROCESSES={env['JAX_NUM_PROCESSES']!r} and JAX_PROCESS_ID="
                       f"{env['JAX_PROCESS_ID']!r} must be whole numbers.") from None
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d, %d local devices, %d in all.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def sync(name: str) -> None:
  """Waits until every process of a multi-process job reaches the point named ``name``
  (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def agree(ok: bool) -> bool:
  """Process 0's ``ok`` on every process (a decision one process makes for all, such as
  whether it got the work-dir lock)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def exists(path: str) -> bool:
  """Whether ``path`` exists, as process 0 sees it, on every process: decisions that
  depend on files (skip a finished run) must be the same in all processes, or one of them
  waits forever in a collective the others skipped."""
  return agree(os.path.exists(path))


def make_mesh(num_devices: int = 0) -> Mesh:
  """1-D mesh over ``num_devices`` devices (all when 0): the first ones, or in a job of
  several processes the first ``num_devices / processes`` of every process (each process
  feeds and reads its own devices, so each needs some)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are visible.")
    processes = jax.process_count()
    if processes > 1:
      if num_devices % processes:
        raise ValueError(
            f"num_devices={num_devices} cannot be split over the {processes} processes of this "
            f"job (each feeds its own devices): use 0 (all {len(devices)} devices) or a "
            f"multiple of {processes}.")
      per_process = num_devices // processes
      devices = [d for p in range(processes)
                 for d in [d for d in devices if d.process_index == p][:per_process]]
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (AXIS,))


class DataParallel:
  """Places states and batches on a mesh and compiles per-device steps for it."""

  def __init__(self, mesh: Mesh, kind: str = "shard_map"):
    if kind not in ("shard_map", "pmap"):
      raise ValueError(f"parallel must be 'shard_map' or 'pmap', got {kind!r}")
    self.mesh = mesh
    self.kind = kind
    self.replicated = NamedSharding(mesh, P())
    self.sharded = NamedSharding(mesh, P(AXIS))
    self.devices = list(mesh.devices.flat)
    self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  def check_batch_size(self, batch_size: int) -> None:
    if batch_size % self.num_devices:
      raise ValueError(f"Global batch size {batch_size} is not divisible by the "
                       f"{self.num_devices} devices of the mesh; change batch_size or num_devices.")

  # -- placement
  def put_state(self, state):
    if self.kind == "pmap":  # a leading axis of this process's devices; pmap splits it
      n = len(self.local_devices)
      return jax.tree_util.tree_map(lambda x: np.stack([_local_copy(x)] * n), state)
    return jax.device_put(state, self.replicated)

  def get_state(self, state):
    """The state as one copy replicated over the mesh, e.g. for checkpoints and evaluation.
    Under pmap that is the first local device's copy (all are equal: the step averages
    gradients and BatchNorm statistics over every device of every process), placed on the
    mesh so that the same evaluation and checkpoint code serves both wrappers."""
    if self.kind == "pmap":
      return jax.tree_util.tree_map(lambda x: self.replicate(_local_copy(x, 0)), state)
    return state

  def replicate(self, host_value):
    """A host value (identical in every process) as an array replicated over the mesh."""
    host_value = np.asarray(host_value)
    return jax.make_array_from_callback(host_value.shape, self.replicated,
                                        lambda index: host_value[index])

  def put_batch(self, local_batch: dict):
    """This process's slice of the global batch -> device arrays."""
    if self.kind == "pmap":
      n = len(self.local_devices)
      return jax.tree_util.tree_map(lambda x: x.reshape((n, -1) + x.shape[1:]), local_batch)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self.sharded, x), local_batch)

  def get_metrics(self, metrics):
    """The step's metrics, still on the device (no host round trip per step)."""
    if self.kind != "pmap":
      return metrics
    return jax.tree_util.tree_map(
        lambda x: x[0] if x.is_fully_addressable else x.addressable_shards[0].data[0], metrics)

  # -- compilation
  def compile_step(self, per_device_step: Callable, donate_state: bool = True) -> Callable:
    """``(state, batch) -> (state, metrics)`` over the mesh, the state donated."""
    if self.kind == "pmap":
      # devices: the mesh's devices of *every* process (pmap's multi-process contract:
      # the same list everywhere, each process feeding its own devices), so psum/pmean
      # reduce over all of them. With devices=local_devices each process trained a model
      # of its own (issue 21).
      return jax.pmap(per_device_step, axis_name=AXIS, devices=self.devices,
                      donate_argnums=(0,) if donate_state else ())
    # check_vma=False gives pmap's semantics, which the per-device steps are written
    # for: gradients w.r.t. the replicated parameters stay per-device until the step's
    # explicit psum. With varying-manual-axes checking on, JAX would insert that psum
    # itself when differentiating, and the explicit one would sum a second time.
    sharded = jax.shard_map(per_device_step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())


def _local_copy(x, index=None):
  """``x`` as a host numpy array read from this process's devices only: the whole of a
  replicated array, or (``index`` given) row ``index`` of pmap's per-device axis."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    shard = x.addressable_shards[0]
    if index is None:
      return np.asarray(shard.data)
    return np.asarray(shard.data).reshape(x.shape[1:])   # pmap: one row per device
  x = np.asarray(x)
  return x if index is None else x[index]


# ----------------------------------------------------------------------------- evaluation


def padded_batches(n: int, batch_size: int):
  """``(start, index)`` of every batch of ``n`` items; the last one is padded by repeating
  the final item, so every batch has one shape (one compilation)."""
  for start in range(0, n, batch_size):
    yield start, np.minimum(np.arange(start, start + batch_size), n - 1)


def jit_batched(fn: Callable, mesh: Mesh, num_args: int) -> Callable:
  """``fn(*args, batch, start)`` jitted for :func:`map_batches`: the ``num_args`` leading
  arguments (weights, eps, keys...) and ``start`` (the batch's first index, int32)
  replicated, ``batch`` (a pytree of (B, ...) arrays) sharded along its first axis over
  ``mesh``, the outputs gathered (replicated) so every process can read them."""
  replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  return jax.jit(fn, in_shardings=(replicated,) * num_args + (sharded, replicated),
                 out_shardings=replicated)


def global_batch(mesh: Mesh, batch):
  """A host-global batch (every process holds all of it) as global arrays sharded over
  ``mesh``: each process places only the rows its devices hold."""
  sharding = NamedSharding(mesh, P(AXIS))
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx]), batch)


def iterate_batches(fn: Callable, arrays: dict, *, batch_size: int, mesh: Mesh, args=(),
                    prepare: Callable = lambda b: b, desc: str = "",
                    pad: dict | None = None) -> Iterator[tuple]:
  """``(start, index, outputs, seconds)`` per batch of :func:`map_batches` (outputs on the
  host, padded rows included; ``seconds``: the call until its outputs were ready, without
  preparing inputs or copying outputs), for callers that time or stream batches. With
  ``desc``, a progress bar in images (:mod:`lib.progress`). ``pad``: values that the rows
  padding the last batch take instead of the repeated item's, per key (e.g.
  ``{"label": -1}``: no label, so the worst-case attacks count them as broken)."""
  if batch_size % mesh.size:
    raise ValueError(f"Batch size {batch_size} is not divisible by the {mesh.size} devices "
                     "of the mesh; change batch_size or num_devices.")
  n = len(next(iter(arrays.values())))
  with progress.bar(n, desc) if desc else progress.silent() as shown:
    for start, idx in padded_batches(n, batch_size):
      rows = {k: v[idx] for k, v in arrays.items()}
      padding = np.arange(start, start + batch_size) >= n
      for k, value in (pad or {}).items():
        rows[k] = np.where(padding.reshape((-1,) + (1,) * (rows[k].ndim - 1)), value, rows[k])
      batch = global_batch(mesh, prepare(rows))
      t0 = time.perf_counter()
      out = jax.block_until_ready(fn(*args, batch, np.int32(start)))
      seconds = time.perf_counter() - t0
      shown.update(min(batch_size, n - start))
      yield start, idx, jax.device_get(out), seconds


def map_batches(fn: Callable, arrays: dict, *, batch_size: int, mesh: Mesh, args=(),
                prepare: Callable = lambda b: b, desc: str = "", pad: dict | None = None):
  """Runs ``fn(*args, batch, start)`` (from :func:`jit_batched`) over ``arrays`` (a dict of
  host-global numpy arrays with one leading axis, e.g. a split) in padded batches of
  ``batch_size``; ``prepare`` turns a dict of rows into ``fn``'s batch (e.g. uint8 images
  to model inputs). Returns ``fn``'s per-example outputs (any pytree of (B, ...) arrays)
  concatenated over batches and trimmed to the number of examples, as numpy, on every
  process. The numbers do not depend on the batch size or the number of devices when
  ``fn`` is per-example. ``desc``: a progress bar (:mod:`lib.progress`); ``pad``: see
  :func:`iterate_batches`."""
  n = len(next(iter(arrays.values())))
  outs = [o for _, _, o, _ in iterate_batches(fn, arrays, batch_size=batch_size, mesh=mesh,
                                            args=args, prepare=prepare, desc=desc, pad=pad)]
  return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[:n], *outs)
