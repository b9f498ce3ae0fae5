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
"""

from __future__ import annotations

import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lib.train_step import AXIS


def maybe_initialize_distributed(config) -> None:
  """``jax.distributed.initialize()`` for multi-host runs (coordinator from the env)."""
  if config.get("multihost"):
    jax.distributed.initialize()
    logging.info("Process %d of %d, %d local devices, %d in all.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(num_devices: int = 0) -> Mesh:
  """1-D mesh over the first ``num_devices`` devices (all when 0)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are visible.")
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
    if self.kind == "pmap":  # a leading device axis; pmap shards it over the devices
      n = len(self.local_devices)
      return jax.tree_util.tree_map(lambda x: jnp.stack([x] * n), state)
    return jax.device_put(state, self.replicated)

  def get_state(self, state):
    """The state as one (unreplicated) copy, e.g. for checkpoints and evaluation."""
    if self.kind == "pmap":
      return jax.tree_util.tree_map(lambda x: x[0], state)
    return state

  def put_batch(self, local_batch: dict):
    """This process's slice of the global batch -> device arrays."""
    if self.kind == "pmap":
      n = len(self.local_devices)
      return jax.tree_util.tree_map(lambda x: x.reshape((n, -1) + x.shape[1:]), local_batch)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(self.sharded, x), local_batch)

  def get_metrics(self, metrics):
    return jax.tree_util.tree_map(lambda x: x[0], metrics) if self.kind == "pmap" else metrics

  # -- compilation
  def compile_step(self, per_device_step: Callable, donate_state: bool = True) -> Callable:
    """``(state, batch) -> (state, metrics)`` over the mesh, the state donated."""
    if self.kind == "pmap":
      return jax.pmap(per_device_step, axis_name=AXIS, devices=self.local_devices,
                      donate_argnums=(0,) if donate_state else ())
    # check_vma=False gives pmap's semantics, which the per-device steps are written
    # for: gradients w.r.t. the replicated parameters stay per-device until the step's
    # explicit psum. With varying-manual-axes checking on, JAX would insert that psum
    # itself when differentiating, and the explicit one would sum a second time.
    sharded = jax.shard_map(per_device_step, mesh=self.mesh, in_specs=(P(), P(AXIS)),
                            out_specs=(P(), P()), check_vma=False)
    return jax.jit(sharded, donate_argnums=(0,) if donate_state else ())

  def compile_eval(self, eval_fn: Callable) -> Callable:
    """``(variables, batch) -> outputs`` with the batch sharded (GSPMD), outputs gathered."""
    jitted = jax.jit(eval_fn, out_shardings=self.replicated)

    def run(variables, batch):
      variables = jax.device_put(variables, self.replicated)
      batch = jax.tree_util.tree_map(
          lambda x: jax.make_array_from_process_local_data(self.sharded, x), batch)
      return jitted(variables, batch)
    return run
