"""Stem convolution (7x7, stride 2, 64 filters) forward and input gradient on XLA:CPU:
``lax.conv_general_dilated`` directly vs the polyphase form (space-to-depth of the input,
then a stride-1 convolution with the kernel's four phases), batch 64 at 128 px, for 1
(grayscale) and 3 input channels.

  .venv/bin/python bench/stem_s2d.py

Checks that both give the same outputs and input gradients, then times them alternately
(medians of 5). Written to test whether the strided stem's input gradient is what makes
SmoothGrad and IG slower than captum (bench/RESULTS.md, "Where we lose").
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _dn(x, w):
  return lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))


def xla_conv(x, w, pads):
  return lax.conv_general_dilated(x, w, (2, 2), pads, dimension_numbers=_dn(x, w))


def s2d_conv(x, w, pads, s=2):
  """The same strided convolution as a stride-1 one on the s x s phases of the input."""
  kh, kw, cin, cout = w.shape
  (pt, pb), (pl, pr) = pads
  oh = (x.shape[1] + pt + pb - kh) // s + 1
  ow = (x.shape[2] + pl + pr - kw) // s + 1
  mh, mw = -(-kh // s), -(-kw // s)            # kernel taps per phase
  th, tw = oh + mh - 1, ow + mw - 1            # phase-grid rows and columns used
  x = jnp.pad(x, ((0, 0), (pt, s * th - x.shape[1] - pt), (pl, s * tw - x.shape[2] - pl), (0, 0)))
  b = x.shape[0]
  x = x.reshape(b, th, s, tw, s, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, th, tw, s * s * cin)
  w = jnp.pad(w, ((0, s * mh - kh), (0, s * mw - kw), (0, 0), (0, 0)))
  w = w.reshape(mh, s, mw, s, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(
      mh, mw, s * s * cin, cout)
  return lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=_dn(x, w))


def main():
  rng = np.random.default_rng(0)
  pads = [(3, 3), (3, 3)]
  for cin in (1, 3):
    x = jnp.asarray(rng.normal(size=(64, 128, 128, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(7, 7, cin, 64)) * 0.1, jnp.float32)
    g = jnp.asarray(rng.normal(size=(64, 64, 64, 64)), jnp.float32)
    fns = {}
    for name, f in (("xla", xla_conv), ("s2d", s2d_conv)):
      fwd = jax.jit(lambda x, w, f=f: f(x, w, pads))
      dx = jax.jit(lambda x, w, f=f: jax.vjp(lambda x: f(x, w, pads), x)[1](g)[0])
      fns[name] = {"forward": fwd, "input gradient": dx}
    for kind in ("forward", "input gradient"):
      a, b = (fns[n][kind](x, w) for n in ("xla", "s2d"))
      assert float(jnp.abs(a - b).max()) < 1e-4 * float(jnp.abs(a).max()), kind
    times = {(n, k): [] for n in fns for k in fns[n]}
    for _ in range(5):
      for (n, k) in times:
        t0 = time.time()
        jax.block_until_ready(fns[n][k](x, w))
        times[n, k].append(time.time() - t0)
    print(f"{cin} input channel(s): " + ", ".join(
        f"{n} {k} {statistics.median(v):.3f} s" for (n, k), v in times.items()))


if __name__ == "__main__":
  main()
