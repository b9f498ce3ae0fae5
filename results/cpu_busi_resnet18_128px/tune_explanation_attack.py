"""Settings of the label-keeping Grad-CAM attack tried on a few BUSI test images.

  .venv/bin/python results/cpu_busi_resnet18_128px/tune_explanation_attack.py \
      --workdir=runs/busi_mtl_cpu --images=16 > results/cpu_busi_resnet18_128px/tune_explanation_attack.txt

For each setting (keyword arguments of ``lib.explanation_attacks.explanation_attack``,
plus ``eps``, ``step_fraction`` = step size / eps and ``cam_layer``), attacks the first
``--images`` test images and prints the median Spearman correlation between the clean
and the attacked Grad-CAM (real model, each explaining its predicted class), the share of
labels kept and the run time (second call, after compilation). Loops stay rolled
(``unroll=1``): unrolling 50 steps of double backpropagation did not finish compiling
in 12 minutes on 2 cores.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib import data, experiment, explanation_attacks, metrics, models, saliency, xla_cpu  # noqa: E402

SETTINGS = (
    dict(steps=30),
    dict(steps=50),
    dict(steps=100, step_fraction=0.05, step_schedule="cosine"),
    dict(steps=50, step_fraction=0.25, step_rule="adam", step_schedule="cosine"),
    dict(steps=30, restarts=3),
    dict(steps=30, ce_weight=0.0),
    dict(steps=30, distance="mse"),
    dict(steps=30, cam_layer="penultimate"),
    dict(steps=30, cam_layer="penultimate", surrogate=True),
    dict(steps=30, eps=0.008),
    dict(steps=30, eps=0.03),
)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="runs/busi_mtl_cpu")
  p.add_argument("--images", type=int, default=16)
  args = p.parse_args()
  config, model, variables = experiment.restore_model(args.workdir)
  test = data.load_split(config.data, "test", config.image_size)
  x = data.to_model_input(test["image"][:args.images], config.model.in_channels)
  print(f"{args.workdir}, first {args.images} test images; median Spearman of Grad-CAM, "
        "clean vs attacked\n")
  print("| setting | eps | median Spearman | labels kept | s |\n|---|---|---|---|---|")
  for setting in SETTINGS:
    s = dict(setting)
    eps, fraction = s.pop("eps", 0.004), s.pop("step_fraction", 0.1)
    layer, use_surrogate = s.pop("cam_layer", "last"), s.pop("surrogate", False)
    m = model.clone(cam_layer=layer)
    fns = models.model_fns(m, variables)
    surrogate_fns = models.surrogate_fns(m, variables)

    @jax.jit
    def run(x, eps):
      x_adv = explanation_attacks.explanation_attack(
          fns, x, eps=eps, step_size=fraction * eps, surrogate=use_surrogate,
          surrogate_fns=surrogate_fns, unroll=1, **s)
      y0 = saliency.predicted_class(fns.logits_fn, x)
      y1 = saliency.predicted_class(fns.logits_fn, x_adv)
      return (saliency.explain("grad_cam", fns, x, y0), saliency.explain("grad_cam", fns, x_adv, y1),
              y0 == y1)

    jax.block_until_ready(run(x, eps))
    t0 = time.time()
    m0, m1, kept = jax.device_get(run(x, eps))
    dt = time.time() - t0
    rho = np.median(metrics.spearman(m0, m1))
    print(f"| {setting} | {eps:g} | {rho:.3f} | {kept.mean():.2f} | {dt:.0f} |", flush=True)


if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
