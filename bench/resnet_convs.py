"""Where a ResNet's input gradient spends its time: every distinct convolution of
torchvision's ResNet (v1.5), forward and input gradient, ours vs torch, one shape at a time.

  bench/.venv-peers/bin/python bench/resnet_convs.py [--arch resnet50 --size 224 --batch 8]

Times each shape alternately (ours, torch, ours, ...) after warm-up and prints a markdown
table: milliseconds per call, times the number of such convolutions in the network, so the
rows add up to the convolutions' share of one FGSM step (one forward + one input gradient).
The input gradient is what an attack or a saliency map takes; ``--weight_grad`` adds a
second table with the weight gradient, what a train step adds (bench/RESULTS.md).
Our convolutions go through ``lib.xla_cpu.conv_general_dilated`` with im2col for maps of at
most 64 pixels, as in ``bench/peers.py``.
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

from lib import xla_cpu  # noqa: E402

def resnet_convs(arch: str, size: int):
  """Every distinct convolution of torchvision's ResNet ``arch`` at ``size`` px input:
  (name, count, input map, in channels, out channels, kernel, stride)."""
  bottleneck = arch in ("resnet50", "resnet101")
  blocks = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet50": (3, 4, 6, 3),
            "resnet101": (3, 4, 23, 3)}[arch]
  counts = {}

  def add(name, *shape):
    counts[(name,) + shape] = counts.get((name,) + shape, 0) + 1

  add("stem 7x7/2", size, 3, 64, 7, 2)
  hw, cin = size // 4, 64
  for i, n in enumerate(blocks):
    width = 64 * 2**i
    out = 4 * width if bottleneck else width
    for j in range(n):
      s = 2 if (i > 0 and j == 0) else 1
      tag = f"l{i + 1}"
      if bottleneck:
        add(f"{tag} 1x1 {cin}->{width}", hw, cin, width, 1, 1)
        add(f"{tag} 3x3{'/2' if s == 2 else ''} {width}", hw, width, width, 3, s)
        add(f"{tag} 1x1 {width}->{out}", hw // s, width, out, 1, 1)
      else:
        add(f"{tag} 3x3{'/2' if s == 2 else ''} {cin}->{width}", hw, cin, width, 3, s)
        add(f"{tag} 3x3 {width}", hw // s, width, width, 3, 1)
      if j == 0 and (s != 1 or cin != out):
        add(f"{tag} 1x1{'/2' if s == 2 else ''} {cin}->{out} (ds)", hw, cin, out, 1, s)
      hw, cin = hw // s, out
  return [(k[0], n) + k[1:] for k, n in counts.items()]


def _median_alternating(fns, repeats):
  for fn in fns:
    fn()
  times = [[] for _ in fns]
  for _ in range(repeats):
    for t, fn in zip(times, fns):
      t0 = time.perf_counter()
      fn()
      t.append(time.perf_counter() - t0)
  return [1000 * statistics.median(t) for t in times]


def _ours(b, hw, cin, cout, k, s, rng, im2col):
  x = jnp.asarray(rng.standard_normal((b, hw, hw, cin)), jnp.float32)
  w = jnp.asarray(0.05 * rng.standard_normal((k, k, cin, cout)), jnp.float32)
  dn = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))
  pad = [(k // 2, k // 2)] * 2
  conv = lambda z, w: xla_cpu.conv_general_dilated(z, w, (s, s), pad, dimension_numbers=dn,
                                                   im2col_max_pixels=im2col)
  g = jnp.ones(jax.eval_shape(conv, x, w).shape, jnp.float32)
  fwd = jax.jit(conv)  # everything is an argument: nothing for XLA to constant-fold
  bwd = jax.jit(lambda z, w, g: jax.vjp(lambda z: conv(z, w), z)[1](g)[0])
  wgrad = jax.jit(lambda z, w, g: jax.vjp(lambda w: conv(z, w), w)[1](g)[0])
  return ((lambda: fwd(x, w).block_until_ready()), (lambda: bwd(x, w, g).block_until_ready()),
          (lambda: wgrad(x, w, g).block_until_ready()))


def _torch(b, hw, cin, cout, k, s, rng):
  import torch
  x = torch.tensor(rng.standard_normal((b, cin, hw, hw)), dtype=torch.float32)
  w = torch.tensor(0.05 * rng.standard_normal((cout, cin, k, k)), dtype=torch.float32)
  conv = lambda z: torch.nn.functional.conv2d(z, w, stride=s, padding=k // 2)

  def fwd():
    with torch.no_grad():
      conv(x)

  def bwd():
    z = x.detach().requires_grad_(True)
    y = conv(z)
    torch.autograd.grad(y, z, torch.ones_like(y))

  def wgrad():
    v = w.detach().requires_grad_(True)
    y = torch.nn.functional.conv2d(x, v, stride=s, padding=k // 2)
    torch.autograd.grad(y, v, torch.ones_like(y))
  return fwd, bwd, wgrad


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="resnet50")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--im2col_max_pixels", type=int, default=64)
  p.add_argument("--weight_grad", action="store_true",
                 help="also time the weight gradient (what a train step adds), one more table")
  args = p.parse_args()
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
  except ImportError:
    torch = None
  rng = np.random.default_rng(0)
  print(f"{args.arch} at {args.size} px; {jax.default_backend()} ({os.cpu_count()} cores), "
        f"jax {jax.__version__}"
        + (f", torch {torch.__version__}" if torch else "") + f"; batch {args.batch}, "
        f"im2col up to {args.im2col_max_pixels} px maps; ms per call (x count = in the net)\n")
  # torch's autograd needs the forward before the input gradient, so its column holds
  # both; ours is the input gradient alone (XLA drops the unused forward)
  print("| conv | count | ours fwd | torch fwd | ours input grad | torch fwd + input grad "
        "| grad / fwd (ours) | torch / ours (grad) |")
  print("|---|---|---|---|---|---|---|---|")
  tot = np.zeros(4)
  wtot = np.zeros(2)
  wrows = []
  for name, n, hw, cin, cout, k, s in resnet_convs(args.arch, args.size):
    ours = _ours(args.batch, hw, cin, cout, k, s, rng, args.im2col_max_pixels)
    peer = _torch(args.batch, hw, cin, cout, k, s, rng) if torch else ()
    fns = list(ours[:2]) + list(peer[:2])
    ms = _median_alternating(fns, args.repeats) + [float("nan")] * (4 - len(fns))
    of, ob, tf, tb = ms[0], ms[1], ms[2], ms[3]
    tot += n * np.array([of, tf, ob, tb])
    print(f"| {name} | {n} | {of:.1f} | {tf:.1f} | {ob:.1f} | {tb:.1f} | {ob / of:.1f} "
          f"| {tb / ob:.2f} |", flush=True)
    if args.weight_grad:
      wms = _median_alternating([ours[2]] + list(peer[2:]), args.repeats) + [float("nan")]
      wtot += n * np.array(wms[:2])
      wrows.append(f"| {name} | {n} | {wms[0]:.1f} | {wms[1]:.1f} | {wms[1] / wms[0]:.2f} |")
  print(f"| **total x count** | | {tot[0]:.0f} | {tot[1]:.0f} | {tot[2]:.0f} | {tot[3]:.0f} "
        f"| {tot[2] / tot[0]:.1f} | {tot[3] / tot[2]:.2f} |")
  if wrows:
    # torch's autograd again needs the forward: its column is forward + weight gradient
    print("\nWeight gradient (what a train step adds), ms per call\n\n| conv | count | ours "
          "weight grad | torch fwd + weight grad | torch / ours |\n|---|---|---|---|---|")
    print("\n".join(wrows))
    print(f"| **total x count** | | {wtot[0]:.0f} | {wtot[1]:.0f} | {wtot[1] / wtot[0]:.2f} |")

if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
