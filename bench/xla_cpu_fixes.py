"""What each XLA:CPU work-around in lib/ buys: FGSM, PGD-10 and a train step with each one
switched off in turn (the before/after figures of bench/RESULTS.md, "What each change
bought").

  .venv/bin/python bench/xla_cpu_fixes.py [--arch resnet18 --size 128 --batch 16]

The switches, each measured in its own process (``XLA_FLAGS`` is read once, when JAX
creates its CPU backend):

- ``canonical``: every NHWC convolution's gradients through ``xla_cpu._canonical_conv``
  (explicit HWIO transposed convolution) or JAX's own (``01oi`` kernel layout);
- ``eigen``: convolutions on XLA's Eigen path with only matrix products on YNNPACK (the
  ``lib.xla_cpu.configure()`` default) or on YNNPACK as jaxlib 0.10 does by default;
- ``unroll``: the attack's ``scan`` rolled (the library default) or fully unrolled.

For the library's defaults the child also times the gradient of a cross-entropy step with
BatchNorm in training mode (batch statistics) and in eval mode (running statistics), which
is what BatchNorm's reductions cost a train step. Prints a markdown table and appends the
rows to bench/results_xla_cpu_fixes.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
# (label, canonical conv gradients, Eigen convolutions, unrolled attack loop)
VARIANTS = (
    ("jaxlib defaults: JAX conv gradients, YNNPACK convolutions", False, False, False),
    ("+ canonical conv gradients", True, False, False),
    ("+ Eigen convolutions (library default)", True, True, False),
    ("library default, attack loop unrolled", True, True, True),
    ("Eigen convolutions, JAX conv gradients", False, True, False),
)


def _time(fn, repeats):
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


def child(args):
  """Runs in a process whose XLA_FLAGS the parent chose; prints one JSON line."""
  sys.path.insert(0, os.path.dirname(HERE))
  import jax
  import numpy as np
  import optax
  from lib import attacks, models, xla_cpu
  if not args.canonical:  # JAX's own gradients: the convolution without the custom VJP
    xla_cpu._canonical_conv = xla_cpu._conv  # pylint: disable=protected-access
  model = models.ARCHITECTURES[args.arch]()
  variables = models.init_variables(model, 0, args.size)
  fns = models.model_fns(model, variables)
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(args.batch, args.size, args.size, 1)).astype(np.float32)
  y = rng.integers(0, 2, args.batch).astype(np.int32)
  unroll = args.steps if args.unroll else 1
  fgsm = jax.jit(lambda x, y: attacks.fgsm(fns.logits_fn, x, y, eps=0.004))
  pgd = jax.jit(lambda x, y: attacks.pgd(fns.logits_fn, x, y, eps=0.004, step_size=0.001,
                                         steps=args.steps, unroll=unroll))
  row = {}
  for name, fn in (("fgsm", fgsm), ("pgd", pgd)):
    row[f"{name}_first_s"], row[f"{name}_s"] = _time(
        lambda: jax.block_until_ready(fn(x, y)), args.repeats)
  if args.train_step:
    for mode, train in (("train_bn", True), ("eval_bn", False)):
      def loss(params, batch_stats):
        out = model.apply({"params": params, "batch_stats": batch_stats}, x, train=train,
                          mutable=["batch_stats"] if train else False)
        logits = out[0] if train else out
        logits = logits[0] if isinstance(logits, tuple) else logits
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      grad = jax.jit(jax.grad(loss))
      p, s = variables["params"], variables["batch_stats"]
      row[f"grad_{mode}_first_s"], row[f"grad_{mode}_s"] = _time(
          lambda: jax.block_until_ready(grad(p, s)), args.repeats)
  row["xla_flags"] = os.environ.get("XLA_FLAGS", "")
  row["jax"] = jax.__version__
  print("RESULT " + json.dumps(row), flush=True)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--canonical", type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument("--unroll", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--train_step", type=int, default=0, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return child(args)
  import jax
  rows = []
  base = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if YNN_FLAG not in f)
  for label, canonical, eigen, unroll in VARIANTS:
    # explicit either way, so no variant depends on whether anything calls xla_cpu.configure()
    ynn = ("LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT" if eigen else
           "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
    env = dict(os.environ, XLA_FLAGS=f"{base} {YNN_FLAG}={ynn}".strip())
    default = canonical and eigen and not unroll
    cmd = [sys.executable, __file__, "--child", f"--arch={args.arch}", f"--size={args.size}",
           f"--batch={args.batch}", f"--steps={args.steps}", f"--repeats={args.repeats}",
           f"--canonical={int(canonical)}", f"--unroll={int(unroll)}",
           f"--train_step={int(default)}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not line:
      sys.exit(f"variant {label!r} failed:\n{out.stderr[-3000:]}")
    rows.append(dict(json.loads(line[0][7:]), variant=label))
    print(f"done: {label}", file=sys.stderr, flush=True)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  print(f"{args.arch} at {args.size} px, batch {args.batch}, PGD-{args.steps}; "
        f"{jax.default_backend()} ({os.cpu_count()} cores), jax {rows[0]['jax']}, "
        f"load average at the end {load:.2f}; seconds, median of {args.repeats} after the "
        f"first call (first call = compile + run)\n")
  print("| variant | FGSM | PGD | FGSM first | PGD first |\n|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['fgsm_s']:.2f} | {r['pgd_s']:.2f} | "
          f"{r['fgsm_first_s']:.1f} | {r['pgd_first_s']:.1f} |")
  d = next(r for r in rows if "grad_train_bn_s" in r)
  print(f"\nLoss gradient w.r.t. the weights (library defaults): BatchNorm in training mode "
        f"{d['grad_train_bn_s']:.2f} s, in eval mode {d['grad_eval_bn_s']:.2f} s.")
  sys.path.insert(0, HERE)
  import benchutil
  benchutil.append_record("results_xla_cpu_fixes.json", args, rows)


if __name__ == "__main__":
  main()
