"""Study 4, the question none of the studies asked: does adversarial training make
Grad-CAM harder to manipulate? The Grad-CAM attacks of study 1 on the models of study 3.

  python study.py --config=configs/studies/robust_gradcam.py:cpu --workdir=runs/study_robust_gradcam_cpu

It reuses study 3's training runs (``runs_dir``; trained there if missing) and measures,
per held-out fold, how much study 1's ``keep`` and ``flip`` attacks (same steps, step size
and eps) change the Grad-CAM map (median Spearman, top-k intersection, labels kept, lesion
energy after the attack) across eps.
"""

from configs.studies import busi_gradcam, common, robust_saliency
from configs.studies.common import claim


def get_config(variant: str = "cpu"):
  c = common.base("robust_gradcam", variant, "Does adversarial training protect Grad-CAM?",
                  "(Not claimed by the studies; asked here.) Adversarially trained models' "
                  "Grad-CAM maps change less under the breast-ultrasound study's Grad-CAM "
                  "attacks than a standard model's.")
  epochs = {"cpu": 15, "test": 2}.get(variant, 40)
  c.models = robust_saliency.models(variant, epochs)
  c.runs_dir = f"runs/study_robust_saliency_{variant}"
  # study 1's attack (busi_gradcam.py), keep and flip at each of its eps
  steps = 3 if variant == "test" else busi_gradcam.STEPS
  c.eps = (0.004, 0.008) if variant == "test" else busi_gradcam.EPS
  c.attacks = tuple(busi_gradcam.gradcam_attack("grad_cam", mode=mode, steps=steps)
                    for mode in ("keep", "flip"))
  c.methods = ("grad_cam",)
  c.metrics = common.CLASSIFICATION + ("mean:grad_cam:lesion_energy",) + (
      busi_gradcam.map_change_metrics("keep", c.eps, steps)
      + busi_gradcam.map_change_metrics("flip", c.eps, steps))
  c.curves = busi_gradcam.CURVES
  c.comparisons = (("pgd", "standard"), ("pgd_ft", "standard"), ("first_layers", "standard"))
  c.claims = tuple(
      claim(f"{m} Grad-CAM keeps more of its map under the keep attack at 0.004",
            f"median:grad_cam-keep-{steps}@0.004:spearman", m, "standard")
      for m in ("pgd", "pgd_ft", "first_layers"))
  return common.scale(c, variant, cpu_epochs=epochs)
