"""PGD-10 with the attack loop rolled vs unrolled (the XLA:CPU loop-body pitfall: with the
canonical-layout convolution gradients of lib/xla_cpu.py the rolled loop is no slower and
compiles faster, so the library default is rolled again; bench/RESULTS.md).

  .venv/bin/python bench/attack_unroll.py [--arch resnet18 --size 128 --batch 8]

Times compile and run of ``attacks.pgd`` on a randomly initialised ResNet, median of a
few runs after warm-up, for unroll = 1 (rolled scan, the library default) and full
unroll; prints a markdown table and appends it as JSON to bench/results_unroll.json.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import benchutil  # noqa: E402

from lib import attacks, models, xla_cpu  # noqa: E402


def main():
  p = benchutil.parser(batch=8, steps=10)
  args = p.parse_args()
  model = models.ARCHITECTURES[args.arch]()
  variables = models.init_variables(model, 0, args.size)
  fns = models.model_fns(model, variables)
  x = np.random.default_rng(0).uniform(size=(args.batch, args.size, args.size, 1)).astype(np.float32)
  y = np.zeros(args.batch, np.int32)
  rows = []
  for label, unroll in (("rolled (unroll=1, the default)", 1), ("unrolled", args.steps)):
    fn = jax.jit(lambda x, y, eps: attacks.pgd(fns.logits_fn, x, y, eps=eps, step_size=eps / 4,
                                               steps=args.steps, unroll=unroll))
    t0 = time.time()
    jax.block_until_ready(fn(x, y, 0.004))
    compile_s = time.time() - t0
    times = []
    for _ in range(args.repeats):
      t0 = time.time()
      jax.block_until_ready(fn(x, y, 0.004))
      times.append(time.time() - t0)
    rows.append({"variant": label, "unroll": unroll,
                 "compile_plus_first_s": compile_s, "median_s": statistics.median(times)})
  print(f"PGD-{args.steps}, {args.arch} at {args.size} px, batch {args.batch}, "
        f"{jax.default_backend()} ({os.cpu_count()} cores), jax {jax.__version__}\n")
  print("| variant | unroll | first call (s) | median (s) |\n|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['unroll']} | {r['compile_plus_first_s']:.1f} | {r['median_s']:.2f} |")
  benchutil.append_record("results_unroll.json", args, rows)


if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
