"""Throughput of our own steps on one accelerator: images/s, compile time and MFU.

  python bench/gpu/throughput.py --arch resnet50 --size 224 --batch 256 --dtype bfloat16 \
      --out $OUT/throughput.json

Every row is one compiled function on a random batch (``--channels`` channels, ImageNet
normalisation inside the model, random weights), timed as the median of ``--repeats``
calls after the first (whose time, compilation included, is ``first_s``):

  train_standard   the study's train step (lib/train_step.py: AdamW, BatchNorm in train
                   mode, class weights) through the data-parallel wrapper on one device
  train_pgd-k      the same step with PGD-k adversarial examples (Madry et al. 2018)
  eval             logits, BatchNorm running statistics
  pgd-10           PGD L-inf, 10 steps, eps 0.004, random start (lib/attacks.pgd)
  apgd-20          APGD-CE, 20 steps (Croce & Hein 2020)
  grad_cam         Grad-CAM at the last stage, upsampled (Selvaraju et al. 2017)
  smoothgrad-16    SmoothGrad, 16 noisy copies (Smilkov et al. 2017)
  ig-32            Integrated Gradients, 32 intervals (Sundararajan et al. 2017)
  cam_keep-10      the Grad-CAM ``keep`` attack, 10 steps of double backprop
                   (lib/explanation_attacks.explanation_attack)

FLOPs come from XLA's cost analysis of the lowered HLO for the rows without loops
(``flops_source: xla``: the standard train step, eval, Grad-CAM), and for the others from
the forward pass's cost times the forward-equivalents counted by hand (``counted``:
forward + backward = 3 forwards, so a train step is 3 and a PGD-k train step 3 + 2k; a
PGD or APGD step, a SmoothGrad sample and an IG point 2 (forward + input gradient); a
Grad-CAM attack step about 2 too, since the CAM's own gradient goes only through the
pooling and the linear head, so its double backprop adds little): XLA's cost analysis
counts a loop's body once, not once per iteration. MFU is FLOPs per second over
``--peak_tflops`` (the H200's dense bf16 peak, 989 TFLOP/s, by default). Rows are
appended to ``--out`` (JSON) as they finish, so a run stopped at its time limit keeps what
it measured; ``--budget`` seconds stops it from starting a row after that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import adv_train_step  # noqa: E402
from configs import common  # noqa: E402
from lib import attacks, experiment, explanation_attacks, models, saliency  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Forward passes of one row's work per image, for the counted FLOPs (forward = 1).
PASSES = {"train": 3, "eval": 1, "pgd": 2, "apgd": 2, "grad_cam": 1, "smoothgrad": 2,
          "ig": 2, "cam_keep": 2}
LOOP_FREE = ("train_standard", "eval", "grad_cam")


def xla_flops(fn, *args) -> float | None:
  """FLOPs of one call of the jitted ``fn`` by XLA's cost analysis of the lowered,
  not yet optimised HLO (None if unknown). Not the compiled module's: on GPUs the
  convolutions there are cuDNN custom calls that the analysis cannot see (the first H200
  run reported 57 MFLOPs for a ResNet-50 forward pass instead of 7.9 GFLOPs)."""
  try:
    cost = fn.lower(*args).cost_analysis()
  except Exception:  # pylint: disable=broad-except  # not every backend or wrapper has it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def time_fn(fn, repeats: int) -> tuple[float, float]:
  """(first call incl. compilation, median of ``repeats`` more), seconds."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times)


class Bench:
  """The model, weights and one batch shared by every row."""

  def __init__(self, args):
    self.args = args
    c = common.base_config()
    c.model.name, c.model.dtype, c.model.in_channels = args.arch, args.dtype, args.channels
    c.model.mean, c.model.std = (MEAN, STD) if args.channels == 3 else ((), ())
    c.image_size = args.size
    self.model = experiment.build_model(c)
    self.variables = models.init_variables(self.model, 0, args.size)
    self.fns = models.model_fns(self.model, self.variables)
    rng = np.random.default_rng(0)
    b, s = args.batch, args.size
    self.x = jnp.asarray(rng.uniform(size=(b, s, s, args.channels)).astype(np.float32))
    self.y = jnp.asarray(rng.integers(0, 2, b).astype(np.int32))
    self.forward_flops = xla_flops(jax.jit(self.fns.logits_fn), self.x)

  def rows(self):
    """``(name, kind, passes multiplier, jitted fn, args)`` of every row, lazily."""
    a, fns, x, y, eps = self.args, self.fns, self.x, self.y, self.args.eps
    for method, k in (("none", 0), ("pgd", a.adv_steps)):
      name = "train_standard" if method == "none" else f"train_pgd-{k}"
      yield name, "train", 1 + k * PASSES["pgd"] / PASSES["train"], lambda m=method, k=k: \
          self._train(m, k)
    key = jax.random.PRNGKey(0)
    yield "eval", "eval", 1, lambda: (jax.jit(fns.logits_fn), (x,))
    yield f"pgd-{a.steps}", "pgd", a.steps, lambda: (jax.jit(lambda x, y: attacks.pgd(
        fns.logits_fn, x, y, eps=eps, step_size=eps / 4, steps=a.steps, key=key)), (x, y))
    yield f"cam_keep-{a.steps}", "cam_keep", a.steps, lambda: (jax.jit(
        lambda x: explanation_attacks.explanation_attack(
            fns, x, eps=eps, step_size=eps / 4, steps=a.steps, method="grad_cam")), (x,))
    yield "grad_cam", "grad_cam", 1, lambda: (jax.jit(lambda x: saliency.grad_cam(
        fns.features_fn, fns.head_fn, x)), (x,))
    yield f"smoothgrad-{a.samples}", "smoothgrad", a.samples, lambda: (jax.jit(
        lambda x: saliency.smoothgrad(fns.logits_fn, x, key=key, samples=a.samples,
                                      batch_samples=a.batch_samples)), (x,))
    yield f"ig-{a.ig_steps}", "ig", a.ig_steps + 1, lambda: (jax.jit(
        lambda x: saliency.integrated_gradients(fns.logits_fn, x, steps=a.ig_steps,
                                                batch_points=a.batch_samples)), (x,))
    yield "apgd-20", "apgd", 20, lambda: (jax.jit(lambda x, y: attacks.apgd(
        fns.logits_fn, x, y, eps=eps, steps=20)), (x, y))

  def flops(self, name, kind, passes, fn, fargs, median_s) -> dict:
    """``flops`` of one call, its source, TFLOP/s and MFU (see the module doc)."""
    flops, source = (xla_flops(fn, *fargs) if name in LOOP_FREE else None), "xla"
    if flops is None and self.forward_flops:
      flops, source = self.forward_flops * passes * PASSES[kind], "counted"
    peak = self.args.peak_tflops * 1e12
    return {"flops": flops, "flops_source": source if flops else None,
            "tflops_per_s": flops / median_s / 1e12 if flops else None,
            "mfu": flops / median_s / peak if flops else None}

  def _train(self, method: str, k: int):
    a = self.args
    steps, state, (_, batch) = adv_train_step.compile_train_steps(
        a.arch, a.size, a.batch, {"s": (method, k)}, in_channels=a.channels,
        mean=MEAN if a.channels == 3 else None, std=STD if a.channels == 3 else None,
        variables=self.variables, im2col_max_pixels=0, dtype=a.dtype)
    return steps["s"], (state, batch)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", default="resnet50")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--channels", type=int, default=3)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--eps", type=float, default=0.004)
  p.add_argument("--steps", type=int, default=10, help="PGD and Grad-CAM attack steps")
  p.add_argument("--adv_steps", type=int, default=7, help="PGD steps of the adversarial train step")
  p.add_argument("--samples", type=int, default=16, help="SmoothGrad samples")
  p.add_argument("--ig_steps", type=int, default=32)
  p.add_argument("--batch_samples", type=int, default=4,
                 help="noisy copies / path points per vmapped chunk (SmoothGrad, IG)")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--peak_tflops", type=float, default=989.0)
  p.add_argument("--only", default="", help="comma-separated row names or kinds")
  p.add_argument("--budget", type=float, default=0, help="seconds; 0: no limit")
  p.add_argument("--out", default="", help="JSON file, rewritten after every row")
  p.add_argument("--recount", default="", help="a throughput.json: recompute its FLOPs and MFU "
                 "here (lowering only, any backend) from its arguments and timings, write "
                 "<file>.recounted.json and print the table")
  args = p.parse_args(argv)
  if args.recount:
    return recount(args.recount)
  t_start = time.time()
  bench = Bench(args)
  record = {"args": vars(args), "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
            "python": platform.python_version(), "forward_flops": bench.forward_flops,
            "rows": []}
  print(f"{args.arch} {args.size} px batch {args.batch} {args.dtype} on "
        f"{record['device']} ({record['backend']}), forward {bench.forward_flops or 0:.3g} "
        "FLOPs per batch (XLA)", flush=True)
  only = set(filter(None, args.only.split(",")))
  for name, kind, passes, build in bench.rows():
    if only and name not in only and kind not in only:
      continue
    if args.budget and time.time() - t_start > args.budget:
      print(f"{name}: not started, budget of {args.budget:.0f} s spent", flush=True)
      break
    row = {"name": name}
    try:
      fn, fargs = build()
      first, median = time_fn(lambda: fn(*fargs), args.repeats)
      row.update(first_s=first, median_s=median, images_per_s=args.batch / median)
      row.update(bench.flops(name, kind, passes, fn, fargs, median))
      flops, source = row["flops"], row["flops_source"]
      print(f"{name:16s} first {first:7.2f} s  median {median * 1e3:9.2f} ms  "
            f"{row['images_per_s']:9.1f} img/s" +
            (f"  {row['tflops_per_s']:7.1f} TFLOP/s  MFU {row['mfu']:.1%} ({source})"
             if flops else ""), flush=True)
    except Exception as e:  # pylint: disable=broad-except  # one failed row keeps the others
      row["error"] = f"{type(e).__name__}: {e}"[:2000]
      print(f"{name}: FAILED {row['error']}", flush=True)
    record["rows"].append(row)
    if args.out:
      with open(args.out + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
      os.replace(args.out + ".tmp", args.out)
  print("\n" + markdown(record))
  return 0 if all("error" not in r for r in record["rows"]) else 1


def recount(path: str) -> int:
  """FLOPs and MFU of a recorded run recomputed on this machine (the first H200 run's were
  taken from the compiled module, which misses cuDNN's convolutions); timings unchanged."""
  with open(path) as f:
    record = json.load(f)
  bench = Bench(argparse.Namespace(**record["args"]))
  built = {name: (kind, passes, build) for name, kind, passes, build in bench.rows()}
  record["forward_flops"] = bench.forward_flops
  for row in record["rows"]:
    if "error" not in row:
      kind, passes, build = built[row["name"]]
      fn, fargs = build()
      row.update(bench.flops(row["name"], kind, passes, fn, fargs, row["median_s"]))
  out = path.removesuffix(".json") + ".recounted.json"
  with open(out, "w") as f:
    json.dump(record, f, indent=2)
  print(markdown(record))
  return 0


def markdown(record) -> str:
  lines = ["| row | first call (s) | median (ms) | images/s | TFLOP/s | MFU |",
           "|---|---|---|---|---|---|"]
  for r in record["rows"]:
    if "error" in r:
      lines.append(f"| {r['name']} | failed: {r['error'][:120]} | | | | |")
      continue
    tf = f"{r['tflops_per_s']:.1f}" if r.get("tflops_per_s") else ""
    mfu = f"{r['mfu']:.1%} ({r['flops_source']})" if r.get("mfu") else ""
    lines.append(f"| {r['name']} | {r['first_s']:.1f} | {r['median_s'] * 1e3:.1f} | "
                 f"{r['images_per_s']:.0f} | {tf} | {mfu} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
