import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lib import models, xla_cpu

IMAGENET = dict(in_channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def tiny():
  """A tiny bottleneck ResNet with seg head and its variables (shared: init compiles)."""
  m = models.ResNetTinyBottleneck(seg_head=True)
  return m, models.init_variables(m, 0, 32)


@pytest.mark.parametrize("arch,expected", [
    (models.ResNet18, 11_689_512), (models.ResNet34, 21_797_672),
    (models.ResNet50, 25_557_032), (models.ResNet101, 44_549_160)])
def test_parameter_counts_match_torchvision(arch, expected):
  # torchvision.models.resnetXX(num_classes=1000): sum(p.numel() for p in m.parameters()).
  m = arch(num_classes=1000, **IMAGENET)
  v = jax.eval_shape(lambda: models.init_variables(m, 0, 224))
  assert models.count_params(v["params"]) == expected


@pytest.mark.parametrize("cam_layer,stride", [("last", 32), ("penultimate", 16), ("dilated", 16)])
def test_model_fns_split_network_at_cam_layer(tiny, cam_layer, stride):
  m = models.ResNetTinyBottleneck(seg_head=True, cam_layer=cam_layer)
  fns = models.model_fns(m, tiny[1])   # dilation and cut point keep the parameter tree
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 32, 32, 1))
  a = jax.jit(fns.features_fn)(x)
  assert a.shape[:3] == (3, 32 // stride, 32 // stride)
  np.testing.assert_allclose(jax.jit(fns.head_fn)(a), jax.jit(fns.logits_fn)(x), atol=1e-5)
  logits, mask_logits = jax.jit(fns.predict_fn)(x)
  assert logits.shape == (3, 2) and mask_logits.shape == (3, 32, 32)


def test_surrogate_shares_the_parameter_tree(tiny):
  m, v = tiny
  smooth = models.ResNetTinyBottleneck(seg_head=True, activation="softplus", softplus_beta=5.0)
  v2 = jax.eval_shape(lambda: models.init_variables(smooth, 0, 32))
  assert jax.tree_util.tree_structure(v2) == jax.tree_util.tree_structure(v)
  x = jnp.full((1, 32, 32, 1), 0.5)
  relu_out = jax.jit(models.model_fns(m, v).logits_fn)(x)
  smooth_out = jax.jit(models.model_fns(smooth, v).logits_fn)(x)
  assert np.isfinite(np.asarray(smooth_out)).all()
  assert not np.allclose(relu_out, smooth_out)


def test_softplus_approaches_relu_for_large_beta():
  x = jnp.linspace(-2, 2, 101)
  np.testing.assert_allclose(models.make_activation("softplus", 1e3)(x), jax.nn.relu(x), atol=1e-3)


def test_bfloat16_compute_keeps_float32_params(tiny):
  m = models.ResNetTinyBottleneck(seg_head=True, dtype=jnp.bfloat16)
  v = tiny[1]
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v["params"]))
  logits, mask_logits = jax.jit(m.apply)(v, jnp.ones((2, 32, 32, 1)) * 0.3)
  assert logits.dtype == jnp.float32 and mask_logits.dtype == jnp.float32
  ref = jax.jit(tiny[0].apply)(v, jnp.ones((2, 32, 32, 1)) * 0.3)[0]
  np.testing.assert_allclose(logits, ref, atol=0.1)


def test_wrong_channel_count_is_reported(tiny):
  m, v = tiny
  with pytest.raises(ValueError, match=r"\(B, H, W, 1\)"):
    jax.eval_shape(functools.partial(m.apply, v), jnp.ones((1, 32, 32, 3)))


def test_normalisation_is_inside_the_model(tiny):
  m, v = tiny
  normalised = models.ResNetTinyBottleneck(seg_head=True, mean=(0.5,), std=(0.25,))
  plain = models.ResNetTinyBottleneck(seg_head=True, mean=(0.0,), std=(1.0,))
  x = jax.random.uniform(jax.random.PRNGKey(2), (2, 32, 32, 1))
  # Same output as a model without normalisation fed the normalised image.
  np.testing.assert_allclose(jax.jit(normalised.apply)(v, x)[0],
                             jax.jit(plain.apply)(v, (x - 0.5) / 0.25)[0], atol=1e-5)


@pytest.mark.parametrize("kernel,stride,dilation,padding", [
    (3, 1, 1, [(1, 1), (1, 1)]), (3, 2, 1, [(1, 1), (1, 1)]), (3, 1, 2, [(2, 2), (2, 2)]),
    (1, 2, 1, "VALID"), (3, 2, 1, "SAME"), (7, 2, 1, [(3, 3), (3, 3)])])
def test_im2col_convolution_equals_xla_with_gradients(kernel, stride, dilation, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((3, 6, 6, 5)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 5, 4)), jnp.float32)
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  def run(impl):
    def f(x, w):
      y = impl(x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
               dimension_numbers=dn)
      return (y ** 2).sum(), y
    (_, y), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w)
    return y, grads
  im2col = functools.partial(xla_cpu.conv_general_dilated, im2col_max_pixels=64)  # opt-in
  y0, g0 = run(jax.lax.conv_general_dilated)
  y1, g1 = run(im2col)
  np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4)
  for a, b in zip(g1, g0):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
  # and it really took the im2col path (no convolution left in the program)
  jaxpr = str(jax.make_jaxpr(lambda x, w: im2col(
      x, w, (stride, stride), padding, rhs_dilation=(dilation, dilation),
      dimension_numbers=dn))(x, w))
  assert "conv_general_dilated" not in jaxpr


def test_im2col_is_opt_in_in_the_function_as_in_the_model():
  # the same default (0: XLA's convolution, canonical gradients) in both places; the
  # models module keeps the function's old name
  assert models.conv_general_dilated is xla_cpu.conv_general_dilated
  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  jaxpr = str(jax.make_jaxpr(lambda x, w: xla_cpu.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=dn))(x, w))
  assert "conv_general_dilated" in jaxpr
  assert models.ResNet18().im2col_max_pixels == 0


@pytest.mark.parametrize("kernel,stride,dilation,padding,size", [
    (1, 1, 1, "VALID", 9), (1, 2, 1, "VALID", 9), (1, 2, 1, "VALID", 8),
    (1, 1, 1, [(1, 1), (0, 2)], 9), (3, 1, 1, [(1, 1), (1, 1)], 9),
    (3, 2, 1, [(1, 1), (1, 1)], 9), (3, 2, 1, [(1, 1), (1, 1)], 8), (3, 2, 1, "SAME", 10),
    (3, 1, 2, [(2, 2), (2, 2)], 10), (7, 2, 1, [(3, 3), (3, 3)], 17)])
def test_canonical_convolution_gradients_equal_jax_to_second_order(kernel, stride, dilation,
                                                                   padding, size):
  """The custom VJP (explicit transposed kernel; 1x1 gradients as matrix products) gives
  JAX's gradients, and its own gradient too (the Grad-CAM attacks differentiate through
  input gradients)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 4)), jnp.float32)
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  def loss(impl):
    return lambda x, w: jnp.sin(impl(x, w, (stride, stride), padding,
                                     rhs_dilation=(dilation, dilation),
                                     dimension_numbers=dn)).sum()
  ours = functools.partial(xla_cpu.conv_general_dilated, im2col_max_pixels=0)
  for order in (1, 2):
    def value(impl):
      f = loss(impl)
      if order == 2:  # the squared norm of the input gradient, differentiated again
        f = lambda x, w, f=f: (jax.grad(f)(x, w) ** 2).sum()
      return jax.grad(f, argnums=(0, 1))(x, w)
    for a, b in zip(value(ours), value(jax.lax.conv_general_dilated)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.abs(b).max()))
  if jax.default_backend() == "cpu":  # and the custom rule is what ran
    assert "custom_vjp" in str(jax.make_jaxpr(loss(ours))(x, w))


def test_small_map_convolutions_change_nothing_but_the_program(tiny):
  model, variables = tiny
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 1)), jnp.float32)
  model, xla = model.clone(im2col_max_pixels=64), model.clone(im2col_max_pixels=0)
  np.testing.assert_allclose(model.apply(variables, x, method=models.ResNet.logits),
                             xla.apply(variables, x, method=models.ResNet.logits), rtol=1e-5,
                             atol=1e-5)
  count = lambda m: str(jax.make_jaxpr(
      lambda x: m.apply(variables, x, method=models.ResNet.logits))(x)).count("conv_general_dilated")
  assert count(model) < count(xla)
