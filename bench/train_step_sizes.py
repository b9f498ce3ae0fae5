"""ResNet-18 train step on XLA:CPU at 64, 96 and 128 px, batch 32, with and without the
im2col path for small maps: the measurement behind the studies' CPU scale (96 px).

  .venv/bin/python bench/train_step_sizes.py [--batch 32 --repeats 4] > bench/train_step_sizes.txt

Every variant is compiled first and then timed alternately (round-robin), medians
reported; output in bench/train_step_sizes.txt.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import benchutil  # noqa: E402
from adv_train_step import compile_train_steps  # noqa: E402
from lib import xla_cpu  # noqa: E402

# (image size, im2col_max_pixels): 0 = XLA's convolution everywhere.
VARIANTS = ((64, 0), (64, 64), (96, 0), (96, 144), (128, 0), (128, 64))


def main():
  p = benchutil.parser(batch=32, steps=0)
  p.set_defaults(repeats=4)
  args = p.parse_args()
  fns = {}
  for size, px in VARIANTS:
    steps, state, (_, batch) = compile_train_steps(args.arch, size, args.batch,
                                                   {"standard": ("none", 0)}, im2col_max_pixels=px)
    fns[size, px] = (steps["standard"], state, batch)
    jax.block_until_ready(steps["standard"](state, batch))     # compile
  times = {k: [] for k in fns}
  for _ in range(args.repeats):
    for k, (fn, state, batch) in fns.items():
      t0 = time.time()
      jax.block_until_ready(fn(state, batch))
      times[k].append(time.time() - t0)
  print(f"{args.arch} train step, batch {args.batch}, {jax.default_backend()} "
        f"({os.cpu_count()} cores), jax {jax.__version__}, medians of {args.repeats}\n")
  print("| image size | im2col up to (pixels) | step (s) | images/s |")
  print("|---|---|---|---|")
  for (size, px), t in times.items():
    m = statistics.median(t)
    print(f"| {size} | {px or 'off'} | {m:.2f} | {args.batch / m:.1f} |")


if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
