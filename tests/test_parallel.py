"""One data-parallel step on 8 fake CPU devices equals the single-device step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from lib import experiment, parallel, train_step


@pytest.fixture(scope="module")
def setup():
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set in conftest)")
  c = default.get_config("test")
  c.warmup_epochs = 0.0  # a non-zero learning rate at step 0
  c.optimizer = "sgd"    # Adam's first step is ~lr*sign(g): it magnifies float noise of tiny g
  model = experiment.build_model(c, bn_axis_name=train_step.AXIS)
  state = experiment.init_state(c, model, steps_per_epoch=4)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(16, 32, 32, 1)).astype(np.float32),
           "mask": (rng.uniform(size=(16, 32, 32)) > 0.8).astype(np.float32),
           "label": rng.integers(0, 2, 16).astype(np.int32),
           "has_mask": np.ones(16, np.float32)}
  step = functools.partial(train_step.train_step, model=model,
                           class_weights=jnp.array([0.7, 1.6]), loss_config=c.loss)
  return state, batch, step


def _run(kind, num_devices, state, batch, step):
  par = parallel.DataParallel(parallel.make_mesh(num_devices), kind)
  fn = par.compile_step(step, donate_state=False)
  new_state, metrics = fn(par.put_state(state), par.put_batch(batch))
  return jax.device_get(par.get_state(new_state)), jax.device_get(par.get_metrics(metrics))


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_sharded_step_equals_single_device_step(setup, kind):
  state, batch, step = setup
  ref_state, ref_metrics = _run("shard_map", 1, state, batch, step)
  got_state, got_metrics = _run(kind, 8, state, batch, step)
  for key in ("loss", "ce", "bce", "dice_loss", "accuracy"):
    np.testing.assert_allclose(got_metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-6)
  flat_ref = jax.tree_util.tree_leaves_with_path(ref_state.params)
  flat_got = jax.tree_util.tree_leaves(got_state.params)
  for (path, a), b in zip(flat_ref, flat_got):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  # Cross-replica BatchNorm: running statistics equal the global-batch ones.
  for a, b in zip(jax.tree_util.tree_leaves(ref_state.batch_stats),
                  jax.tree_util.tree_leaves(got_state.batch_stats)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  assert int(got_state.step) == 1
  # The step really moved the parameters.
  moved = [not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(ref_state.params),
                                                 jax.tree_util.tree_leaves(state.params))]
  assert np.mean(moved) > 0.5  # not the convs before zero-initialised residual BN scales


def test_map_batches_pads_shards_and_trims():
  """One evaluation helper: padded batches, sharded over 1 or 8 devices, outputs gathered
  and trimmed; the numbers do not depend on the batch size or the device count."""
  if jax.device_count() < 8:
    pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set in conftest)")
  arrays = {"x": np.arange(21, dtype=np.float32).reshape(21, 1) * np.ones((1, 3), np.float32),
            "y": np.arange(21, dtype=np.int32)}

  def fn(scale, batch, start):
    return {"sum": batch["x"].sum(-1) * scale, "y": batch["y"],
            "start": jnp.broadcast_to(start, batch["y"].shape)}

  results = []
  for devices, batch_size in ((1, 4), (8, 8), (8, 16)):
    mesh = parallel.make_mesh(devices)
    out = parallel.map_batches(parallel.jit_batched(fn, mesh, 1), arrays, batch_size=batch_size,
                               mesh=mesh, args=(np.float32(2.0),),
                               prepare=lambda b: {**b, "x": b["x"] + 1})
    assert out["sum"].shape == (21,)
    np.testing.assert_array_equal(out["y"], arrays["y"])
    np.testing.assert_array_equal(out["start"], np.arange(21) // batch_size * batch_size)
    results.append(out["sum"])
  np.testing.assert_array_equal(results[0], (np.arange(21) + 1) * 3 * 2.0)
  np.testing.assert_array_equal(results[1], results[0])
  np.testing.assert_array_equal(results[2], results[0])
  with pytest.raises(ValueError, match="not divisible"):
    mesh = parallel.make_mesh(8)
    parallel.map_batches(parallel.jit_batched(fn, mesh, 1), arrays, batch_size=12, mesh=mesh,
                         args=(np.float32(1.0),))


def test_progress_bar_counts_images_and_one_switch_turns_it_off(monkeypatch, capsys):
  """Issue 26: long batched work shows images/s and an ETA; MEDROBUST_PROGRESS=0 (what
  --progress=false sets) turns every bar off, and off a terminal none is shown unasked."""
  mesh = parallel.make_mesh(1)
  fn = parallel.jit_batched(lambda batch, start: batch["x"] * 2, mesh, 0)
  arrays = {"x": np.arange(10, dtype=np.float32)}
  monkeypatch.setenv("MEDROBUST_PROGRESS", "1")
  out = parallel.map_batches(fn, arrays, batch_size=4, mesh=mesh, desc="pgd-10 eps=0.004")
  np.testing.assert_array_equal(out, np.arange(10) * 2)
  err = capsys.readouterr().err
  assert "pgd-10 eps=0.004" in err and "/10 [" in err and "img/s" in err   # total: images
  monkeypatch.setenv("MEDROBUST_PROGRESS", "0")
  parallel.map_batches(fn, arrays, batch_size=4, mesh=mesh, desc="pgd-10 eps=0.004")
  assert capsys.readouterr().err == ""
  monkeypatch.delenv("MEDROBUST_PROGRESS")          # pytest's stderr is not a terminal
  parallel.map_batches(fn, arrays, batch_size=4, mesh=mesh, desc="pgd-10 eps=0.004")
  assert capsys.readouterr().err == ""
