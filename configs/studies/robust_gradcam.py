"""Study 4, the question none of the studies asked: does adversarial training make
Grad-CAM harder to manipulate? The Grad-CAM attacks of study 1 on the models of study 3.

  python study.py --config=configs/studies/robust_gradcam.py:cpu --workdir=runs/study_robust_gradcam_cpu

It reuses study 3's training runs (``runs_dir``; trained there if missing) and measures,
per held-out fold, how much the ``keep`` and ``flip`` attacks change the Grad-CAM map
(median Spearman, top-k intersection, lesion energy after the attack) across eps.
"""

from configs.studies import common, robust_saliency
from configs.studies.common import claim, explanation

EPS = (0.002, 0.004, 0.008)


def get_config(variant: str = "cpu"):
  c = common.base("robust_gradcam", variant, "Does adversarial training protect Grad-CAM?",
                  "(Not claimed by the studies; asked here.) Adversarially trained models' "
                  "Grad-CAM maps change less under the breast-ultrasound study's Grad-CAM "
                  "attacks than a standard model's.")
  epochs = {"cpu": 15, "test": 2}.get(variant, 40)
  c.models = robust_saliency.models(variant, epochs)
  c.runs_dir = f"runs/study_robust_saliency_{variant}"
  steps = 3 if variant == "test" else 20
  c.attacks = (explanation("grad_cam", mode="keep", steps=steps),
               explanation("grad_cam", mode="flip", steps=steps))
  c.eps = EPS
  metric = []
  for mode in ("keep", "flip"):
    for e in EPS:
      a = f"grad_cam-{mode}-{steps}@{e:g}"
      metric += [f"median:{a}:spearman", f"mean:{a}:top_k_intersection", f"mean:{a}:kept"]
  c.metrics = common.CLASSIFICATION + tuple(metric)
  c.comparisons = (("pgd", "standard"), ("pgd_ft", "standard"), ("first_layers", "standard"))
  c.claims = (claim("PGD-AT Grad-CAM keeps more of its map under the keep attack at 0.004",
                    f"median:grad_cam-keep-{steps}@0.004:spearman", "pgd", "standard"),)
  return common.scale(c, variant, cpu_epochs=epochs)
