"""XLA:CPU's convolution vs im2col + matmul (lib/xla_cpu.conv_general_dilated) on the map
sizes of a ResNet's stages, forward and input gradient, and a whole ResNet-18 forward.

  .venv/bin/python bench/small_map_conv.py [--repeats 3] [--sizes 48,64,80,96] [--only_resnet]

Shows why convolutions with small output maps take the im2col path on CPU: XLA picks a
very slow algorithm for many channels on few pixels. Prints a markdown table.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lib import models, xla_cpu  # noqa: E402

CASES = [  # (batch, map size, channels, stride): ResNet stages 3-4 at 64-224 px inputs
    (64, 2, 512, 1), (16, 4, 512, 1), (16, 4, 512, 2), (8, 7, 512, 1), (16, 8, 256, 1),
    (16, 16, 128, 1)]


def _median_ms(fn, x, repeats):
  jax.block_until_ready(fn(x))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    times.append(time.perf_counter() - t0)
  return 1000 * statistics.median(times)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--sizes", default="64", help="input sizes of the whole-ResNet rows, e.g. "
                 "48,64,80,96 (where XLA's own convolutions stop being slow)")
  p.add_argument("--only_resnet", action="store_true", help="skip the single-convolution table")
  args = p.parse_args()
  rng = np.random.default_rng(0)
  print(f"{jax.default_backend()} ({os.cpu_count()} cores), jax {jax.__version__}\n")
  print("| batch x map x channels, stride | XLA fwd (ms) | im2col fwd | XLA input grad | im2col input grad |")
  print("|---|---|---|---|---|")
  for b, hw, c, s in ([] if args.only_resnet else CASES):
    x = jnp.asarray(rng.standard_normal((b, hw, hw, c)), jnp.float32)
    w = jnp.asarray(0.01 * rng.standard_normal((3, 3, c, c)), jnp.float32)
    dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
    row = []
    for impl in (jax.lax.conv_general_dilated,
                 lambda *a, **k: xla_cpu.conv_general_dilated(*a, **k, im2col_max_pixels=10**6)):
      conv = lambda z, impl=impl: impl(z, w, (s, s), [(1, 1), (1, 1)], dimension_numbers=dn)
      row.append((_median_ms(jax.jit(conv), x, args.repeats),
                  _median_ms(jax.jit(jax.grad(lambda z, conv=conv: (conv(z) ** 2).sum())), x,
                             args.repeats)))
    print(f"| {b} x {hw}x{hw} x {c}, {s} | {row[0][0]:.1f} | {row[1][0]:.1f} | {row[0][1]:.1f} "
          f"| {row[1][1]:.1f} |")
  print("\n| ResNet-18 (RGB), batch 64 | forward (s) | input gradient (s) |\n|---|---|---|")
  for size in [int(v) for v in args.sizes.split(",")]:
    x = jnp.asarray(rng.uniform(size=(64, size, size, 3)), jnp.float32)
    for label, px in (("XLA convolutions", 0), ("im2col for maps <= 64 px", 64)):
      m = models.ResNet18(in_channels=3, im2col_max_pixels=px)
      v = models.init_variables(m, 0, size)
      f = lambda z, m=m, v=v: m.apply(v, z, method=models.ResNet.logits)
      fwd = _median_ms(jax.jit(f), x, args.repeats) / 1000
      grad = _median_ms(jax.jit(jax.grad(lambda z, f=f: f(z)[:, 0].sum())), x, args.repeats) / 1000
      print(f"| {size} px, {label} | {fwd:.2f} | {grad:.2f} |", flush=True)

if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
