"""Cost of an adversarial training step: standard : FGSM-RS : PGD-k : TRADES-k, one run.

  .venv/bin/python bench/adv_train_step.py [--arch resnet18 --size 128 --batch 16 --steps 7]

Each variant is the same ``train_step`` (lib/train_step.py) compiled through the
data-parallel wrapper on one device with a different ``adv.method``; the variants are
timed alternately (round-robin) after warm-up and the medians compared with the
standard step. For k attack steps the expected ratio is about k + 1 (the attack is k
forward/backward passes of the same model, in eval mode, plus the training pass);
FGSM-RS is k = 1. Prints a markdown table and appends JSON to bench/results_adv_step.json.
"""

import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import benchutil  # noqa: E402

from configs import common  # noqa: E402
from lib import experiment, parallel, train_step, xla_cpu  # noqa: E402


def compile_train_steps(arch: str, size: int, batch_size: int, variants: dict, *,
                        seg_head: bool = False, in_channels: int = 1, mean=None, std=None,
                        variables=None, im2col_max_pixels: int = 64,
                        dtype: str = "float32"):
  """``(steps, state, batch)``: ``{name: compiled step}`` for ``{name: (adv.method, k)}``,
  all from the same initial state (random, or ``variables``) and one random batch;
  ``dtype`` is the model's compute dtype (``model.dtype``)."""
  rng = np.random.default_rng(0)
  b, s = batch_size, size
  batch = {"image": rng.uniform(size=(b, s, s, in_channels)).astype(np.float32),
           "mask": (rng.uniform(size=(b, s, s)) > 0.8).astype(np.float32),
           "label": rng.integers(0, 2, b).astype(np.int32), "has_mask": np.ones(b, np.float32)}
  par = parallel.DataParallel(parallel.make_mesh(1), "shard_map")
  steps, state = {}, None
  for name, (method, k) in variants.items():
    c = common.base_config()
    c.model.name, c.image_size, c.batch_size = arch, s, b
    c.model.seg_head, c.model.in_channels, c.model.dtype = seg_head, in_channels, dtype
    if mean is not None:
      c.model.mean, c.model.std = tuple(mean), tuple(std)
    c.data.name = "busi" if seg_head else "synthetic_lesions"
    c.adv.method, c.adv.steps = method, max(k, 1)
    model = experiment.build_model(c, bn_axis_name=train_step.AXIS,
                                   im2col_max_pixels=im2col_max_pixels)
    if state is None:
      state = experiment.init_state(c, model, 10)
      if variables is not None:
        state = train_step.TrainState.create(variables, state.tx, state.rng)
    steps[name] = par.compile_step(functools.partial(
        train_step.train_step, model=model, class_weights=jnp.ones(2), loss_config=c.loss,
        adv_config=c.adv, steps_per_epoch=10), donate_state=False)
  return steps, par.put_state(state), (batch, par.put_batch(batch))


def main():
  p = benchutil.parser(batch=16, steps=7)
  p.add_argument("--seg_head", action="store_true")
  args = p.parse_args()
  s, b = args.size, args.batch
  variants = {"standard": ("none", 0), "fgsm_rs": ("fgsm_rs", 1),
              f"pgd-{args.steps}": ("pgd", args.steps), f"trades-{args.steps}": ("trades", args.steps)}
  fns, state, (_, put) = compile_train_steps(args.arch, s, b, variants, seg_head=args.seg_head)
  first = {}
  for name, fn in fns.items():
    t0 = time.time()
    jax.block_until_ready(fn(state, put))
    first[name] = time.time() - t0
  times = {name: [] for name in fns}
  for _ in range(args.repeats):  # round-robin, so drifts in machine load hit all variants
    for name, fn in fns.items():
      t0 = time.time()
      jax.block_until_ready(fn(state, put))
      times[name].append(time.time() - t0)
  base = statistics.median(times["standard"])
  rows = [{"variant": n, "attack_steps": variants[n][1], "first_call_s": first[n],
           "median_s": statistics.median(t), "ratio": statistics.median(t) / base,
           "expected_ratio": variants[n][1] + 1} for n, t in times.items()]
  print(f"Train step, {args.arch} at {s} px, batch {b}, seg_head={args.seg_head}, "
        f"{jax.default_backend()} ({os.cpu_count()} cores), jax {jax.__version__}\n")
  print("| variant | attack steps k | first call (s) | median (s) | ratio to standard | k + 1 |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['attack_steps']} | {r['first_call_s']:.1f} | {r['median_s']:.2f} "
          f"| {r['ratio']:.2f} | {r['expected_ratio']} |")
  benchutil.append_record("results_adv_step.json", args, rows)


if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
