"""Work-arounds for JAX's CPU backend (XLA:CPU); nothing here changes other backends.

Two of them, measured on the 2-core AMD EPYC (AVX2) we benchmark on (bench/RESULTS.md):

* :func:`configure` sets one ``XLA_FLAGS`` default: convolutions on XLA's Eigen path and
  only matrix products on YNNPACK. It must run before JAX creates its CPU backend, so
  importing :mod:`lib` does not do it: the entry points (``lib/cli.py``, hence
  ``train.py``, ``attack.py``, ``explain.py``, ``study.py``), the CPU benchmarks in
  ``bench/`` and the test suite call it first thing. A notebook or script of your own
  gets the same numbers with, before its first JAX computation::

      import lib.xla_cpu
      lib.xla_cpu.configure()

* :func:`conv_general_dilated` is ``lax.conv_general_dilated`` with gradients in the
  layout XLA:CPU runs fast (and, opt-in, im2col + matmul for small maps). Our ResNets
  build their convolutions with it (:class:`lib.models.ResNet`); a model of your own gets
  the same with ``nn.Conv(..., conv_general_dilated=xla_cpu.conv_general_dilated)``.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_DEFAULT = "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
# jaxlib versions checked to have YNN_FLAG (an unknown flag in XLA_FLAGS aborts the process)
_YNN_JAXLIB = ((0, 10, 2), (0, 13, 0))


def _jaxlib_version() -> Optional[Tuple[int, ...]]:
  try:
    from importlib import metadata  # pylint: disable=import-outside-toplevel
    return tuple(int(p) for p in metadata.version("jaxlib").split(".")[:3])
  except Exception:  # pylint: disable=broad-except  # not installed / odd version string
    return None


def _ynn_flag_exists() -> bool:
  version = _jaxlib_version()
  return version is not None and _YNN_JAXLIB[0] <= version < _YNN_JAXLIB[1]


def backend_initialized() -> Optional[bool]:
  """Whether JAX has already created its backends, i.e. has read ``XLA_FLAGS`` (XLA parses
  it once, when the first backend is created; ``import jax`` does not). Creates none itself:
  it asks JAX's own record (``jax._src.xla_bridge.backends_are_initialized``, private API,
  checked on jax 0.10.2); None where that is missing (another JAX version): unknown."""
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except Exception:  # pylint: disable=broad-except  # private API gone or changed
    return None


def configure() -> Tuple[str, ...]:
  """Adds this project's XLA:CPU defaults to ``XLA_FLAGS``; returns the flags it added.

  What: ``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``,
  i.e. XLA:CPU runs convolutions on its Eigen path and only matrix products on YNNPACK
  (jaxlib 0.10 sends convolutions to YNNPACK too).

  Why: on the 2-core AMD EPYC (AVX2) we benchmark on, YNNPACK's convolutions are 1.3-1.6x
  slower than Eigen's for ResNet shapes: an FGSM step of ResNet-18 at 128 px went from 0.58
  to 0.41 s, of ResNet-50 at 224 px from 1.85 to 1.28 s (bench/RESULTS.md,
  bench/resnet_convs.py, bench/xla_cpu_fixes.py). It changes CPU results at float rounding
  level only, and nothing on other backends.

  When: the flag is added only for jaxlib 0.10.2-0.12 (where it was checked to exist; an
  unknown flag aborts the process) and only if ``XLA_FLAGS`` does not mention it already,
  so calling this again changes nothing (idempotent) and a value you set wins. Other flags
  in ``XLA_FLAGS`` are kept; the new one is appended.

  Opt out: set the flag yourself, e.g. jaxlib's own choice
  ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION``,
  or do not call this (importing :mod:`lib` does not).

  It must run before the process's first JAX computation (XLA reads ``XLA_FLAGS`` once,
  when JAX creates its backends); ``import jax`` alone is fine. If the backends already
  exist (:func:`backend_initialized`), the flag is still written to the environment (child
  processes inherit it) and a warning says it does not apply to this process. Where JAX's
  record of that is unavailable, no warning can be given.

  Returns:
    the ``flag=value`` strings added to ``XLA_FLAGS``; empty if none was.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if YNN_FLAG in flags:
    return ()
  if not _ynn_flag_exists():
    return ()
  added = (f"{YNN_FLAG}={YNN_DEFAULT}",)
  os.environ["XLA_FLAGS"] = " ".join((flags, *added)).strip()
  if backend_initialized():
    logging.getLogger(__name__).warning(
        "lib.xla_cpu.configure() ran after JAX created its backends: %s is set in XLA_FLAGS "
        "for child processes but does not apply to this one (call configure() before the "
        "first JAX computation).", " ".join(added))
  return added


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, *, im2col_max_pixels: int = 0):
  """``lax.conv_general_dilated`` with two XLA:CPU work-arounds (same parameters, same
  results up to float rounding; other backends always use XLA's convolution as it is).

  1. Opt-in (``im2col_max_pixels > 0``; default 0 = off, as :class:`lib.models.ResNet`'s):
     a convolution whose output maps have at most ``im2col_max_pixels`` pixels runs as
     im2col + one matrix product. XLA:CPU picks a very slow algorithm for many channels on
     small maps: measured on 2 cores, a 3x3 512-channel convolution of 64 maps of 2x2 took
     2.6 s against 35 ms as im2col + matmul (forward; 4.7 s vs 78 ms with its input
     gradient), a strided one from 4x4 maps 1.2 s vs 10 ms for the input gradient, 7x7 maps
     131 vs 30 ms; from 16x16 maps on, XLA's own convolution is faster, so 64 is the
     measured break-even. The patches are strided slices of the padded input, so gradients
     are slices, pads and matrix products, which XLA:CPU runs well. Off by default because
     it changes float rounding (bench/small_map_conv.py).
  2. Every other NHWC convolution gets the gradients of :func:`_canonical_conv`, which
     XLA:CPU runs on its fast convolution path (see there).
  """
  lhs_dilation = tuple(lhs_dilation or (1, 1))
  rhs_dilation = tuple(rhs_dilation or (1, 1))
  nhwc = (lhs.ndim == 4 and dimension_numbers == jax.lax.conv_dimension_numbers(
      lhs.shape, rhs.shape, _NHWC))
  if (jax.default_backend() != "cpu" or not nhwc or feature_group_count != 1 or
      lhs_dilation != (1, 1)):
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision)
  kh, kw, cin, cout = rhs.shape
  dilated = ((kh - 1) * rhs_dilation[0] + 1, (kw - 1) * rhs_dilation[1] + 1)
  pads = tuple(tuple(p) for p in (
      jax.lax.padtype_to_pads(lhs.shape[1:3], dilated, window_strides, padding)
      if isinstance(padding, str) else padding))
  h = (lhs.shape[1] + sum(pads[0]) - dilated[0]) // window_strides[0] + 1
  w = (lhs.shape[2] + sum(pads[1]) - dilated[1]) // window_strides[1] + 1
  if h * w > im2col_max_pixels:
    return _canonical_conv(lhs, rhs, tuple(window_strides), pads, rhs_dilation, precision)
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  (sh, sw), (dh, dw), b = window_strides, rhs_dilation, lhs.shape[0]
  cols = [jax.lax.slice(x, (0, i * dh, j * dw, 0),
                        (b, i * dh + sh * (h - 1) + 1, j * dw + sw * (w - 1) + 1, cin),
                        (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  return jnp.matmul(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides, pads, rhs_dilation, precision, lhs_dilation=(1, 1)):
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, _NHWC)
  return jax.lax.conv_general_dilated(x, w, strides, pads, lhs_dilation=lhs_dilation,
                                      rhs_dilation=rhs_dilation, dimension_numbers=dn,
                                      precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _canonical_conv(x, w, strides, pads, rhs_dilation, precision):
  """An NHWC/HWIO convolution whose gradients XLA:CPU runs on its fast path.

  JAX's own input gradient is a convolution with the kernel's input and output features
  swapped in the dimension numbers (``01oi``); XLA:CPU runs that layout on a generic path,
  so inside an attack ResNet-50's input gradient at 224 px took twice its forward pass
  (bench/resnet_convs.py, bench/RESULTS.md). Here the input gradient is the transposed
  convolution written with an explicitly flipped and transposed HWIO kernel
  (:func:`_transposed_conv`); the weight gradient is JAX's.
  """
  return _conv(x, w, strides, pads, rhs_dilation, precision)


def _canonical_conv_fwd(x, w, strides, pads, rhs_dilation, precision):
  return _canonical_conv(x, w, strides, pads, rhs_dilation, precision), (x, w)


def _canonical_conv_bwd(strides, pads, rhs_dilation, precision, res, g):
  x, w = res
  dx = _transposed_conv(g, w, strides, pads, rhs_dilation, precision, x.shape[1:3])
  _, w_vjp = jax.vjp(lambda v: _conv(x, v, strides, pads, rhs_dilation, precision), w)
  return dx.astype(x.dtype), w_vjp(g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _transposed_conv(g, w, strides, pads, rhs_dilation, precision, in_hw):
  """The input gradient of :func:`_canonical_conv`: the transposed convolution (stride ->
  input dilation) with the kernel flipped and its feature axes swapped, padded so that the
  output has the input's size ``in_hw``. Its own gradient (double backprop, the Grad-CAM
  attacks) is the forward convolution again, so that too stays on XLA:CPU's fast path."""
  kh, kw = w.shape[:2]
  tpads = []
  for i, k in enumerate((kh, kw)):
    keff = (k - 1) * rhs_dilation[i] + 1
    lo = keff - 1 - pads[i][0]
    tpads.append((lo, in_hw[i] + keff - 1 - ((g.shape[1 + i] - 1) * strides[i] + 1) - lo))
  wt = jnp.flip(w, (0, 1)).swapaxes(2, 3)
  return _conv(g, wt, (1, 1), tpads, rhs_dilation, precision, lhs_dilation=strides)


def _transposed_conv_fwd(g, w, strides, pads, rhs_dilation, precision, in_hw):
  return _transposed_conv(g, w, strides, pads, rhs_dilation, precision, in_hw), (g, w)


def _transposed_conv_bwd(strides, pads, rhs_dilation, precision, in_hw, res, ct):
  # <transposed_conv(g, w), ct> = <g, conv(ct, w)>: the adjoint is the forward convolution
  g, w = res
  dg = _canonical_conv(ct, w, strides, pads, rhs_dilation, precision)
  _, w_vjp = jax.vjp(lambda v: _conv(ct, v, strides, pads, rhs_dilation, precision), w)
  return dg.astype(g.dtype), w_vjp(g)[0]


_transposed_conv.defvjp(_transposed_conv_fwd, _transposed_conv_bwd)
_canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)
