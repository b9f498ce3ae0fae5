"""Settings of the Grad-CAM explanation attack tried on the first test images of trained runs.

``--settings=tune`` (the label-keeping attack's settings tried on the 128 px multi-task
model, eps 0.004):

  .venv/bin/python results/explanation_attack_settings.py --settings=tune \
      --workdir=runs/busi_mtl_cpu --images=16 --timing \
      > results/cpu_busi_resnet18_128px/tune_explanation_attack.txt

``--settings=strength`` (is study 4's 10-step ``keep`` attack strong enough? The same
objective with 5x the steps, Adam steps and random restarts, on a standard and an
adversarially trained model of one fold; ``results/run_cpu_studies.sh`` runs it):

  .venv/bin/python results/explanation_attack_settings.py --settings=strength --images=32 \
      --workdir=runs/study_robust_saliency_cpu/standard/seed1_fold0 \
      --workdir=runs/study_robust_saliency_cpu/pgd/seed1_fold0 \
      > results/robust_gradcam_cpu/attack_strength.md

For each model and setting (keyword arguments of
``lib.explanation_attacks.explanation_attack``, plus ``eps``, ``step_fraction`` = step size
/ eps and ``cam_layer``), attacks the first ``--images`` test images (of a cross-validation
run: its held-out fold) and prints, as the studies measure it (``lib.sweep.map_image_metrics``:
each map explains its own prediction), the median Spearman correlation between the clean
and the attacked Grad-CAM, their top-5 % intersection, the share of labels kept and, with
``--timing``, the run time of a second call (after compilation). Loops stay rolled
(``unroll=1``): unrolling 50 steps of double backpropagation did not finish compiling in 12
minutes on 2 cores.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from lib import data, experiment, explanation_attacks, models, saliency, sweep  # noqa: E402

SETTINGS = {
    "tune": (
        dict(steps=30),
        dict(steps=50),
        dict(steps=100, step_fraction=0.05, step_schedule="cosine"),
        dict(steps=50, step_fraction=0.25, step_rule="adam", step_schedule="cosine"),
        dict(steps=30, restarts=3),
        dict(steps=30, ce_weight=0.0),
        dict(steps=30, kind="mse"),
        dict(steps=30, cam_layer="penultimate"),
        dict(steps=30, cam_layer="penultimate", surrogate=True),
        dict(steps=30, eps=0.008),
        dict(steps=30, eps=0.03),
    ),
    # study 4's attack (10 signed steps of eps/4, busi_gradcam.py) and stronger ones
    "strength": tuple(dict(s, eps=eps) for eps in (0.008, 0.031) for s in (
        dict(steps=10, step_fraction=0.25),
        dict(steps=50, step_fraction=0.1),
        dict(steps=50, step_fraction=0.25, step_rule="adam", step_schedule="cosine"),
        dict(steps=50, step_fraction=0.1, restarts=3),
    )),
}


def attack_fn(model, variables, setting: dict):
  """A jitted ``x -> (clean probs, adversarial probs, clean map, adversarial map)``."""
  s = dict(setting)
  eps, fraction = s.pop("eps", 0.004), s.pop("step_fraction", 0.1)
  layer, use_surrogate = s.pop("cam_layer", "last"), s.pop("surrogate", False)
  m = model.clone(cam_layer=layer)
  fns = models.model_fns(m, variables)
  surrogate = models.surrogate_fns(m, variables) if use_surrogate else None

  @jax.jit
  def run(x):
    x_adv = explanation_attacks.explanation_attack(
        fns, x, eps=eps, step_size=fraction * eps, surrogate=surrogate, unroll=1, **s)
    y0 = saliency.predicted_class(fns.logits_fn, x)
    y1 = saliency.predicted_class(fns.logits_fn, x_adv)
    return (jax.nn.softmax(fns.logits_fn(x)), jax.nn.softmax(fns.logits_fn(x_adv)),
            saliency.explain("grad_cam", fns, x, y0), saliency.explain("grad_cam", fns, x_adv, y1))
  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", action="append", help="a train.py run (repeat for several)")
  p.add_argument("--settings", choices=sorted(SETTINGS), default="tune")
  p.add_argument("--images", type=int, default=16)
  p.add_argument("--timing", action="store_true", help="time a second call of each setting")
  args = p.parse_args()
  print(f"First {args.images} test images of each run; Grad-CAM of each image's own "
        "prediction, clean vs attacked (median Spearman, mean top-5 % intersection, share "
        f"of labels kept); settings `{args.settings}`.\n")
  print("| run | setting | eps | median Spearman | top-5 % intersection | labels kept |"
        + (" s |" if args.timing else "") + "\n|---|---|---|---|---|---|"
        + ("---|" if args.timing else ""))
  for workdir in args.workdir or ["runs/busi_mtl_cpu"]:
    config, model, variables = experiment.restore_model(workdir)
    test = data.load_split(config.data, "test", config.image_size)
    x = data.to_model_input(test["image"][:args.images], config.model.in_channels)
    for setting in SETTINGS[args.settings]:
      run = attack_fn(model, variables, setting)
      t0 = time.time()
      if args.timing:
        jax.block_until_ready(run(x))
        t0 = time.time()
      p0, p1, m0, m1 = jax.device_get(run(x))
      dt = time.time() - t0
      q = sweep.map_image_metrics(m0, m1, p0, p1)
      shown = {k: v for k, v in setting.items() if k != "eps"}
      print(f"| {workdir} | {shown} | {setting.get('eps', 0.004):g} | "
            f"{np.median(q['spearman']):.3f} | {q['top_k_intersection'].mean():.2f} | "
            f"{q['kept'].mean():.2f} |" + (f" {dt:.0f} |" if args.timing else ""), flush=True)


if __name__ == "__main__":
  main()
