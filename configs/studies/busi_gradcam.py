"""Study 1, breast ultrasound: does a segmentation head (multi-task learning) make the
classifier better and Grad-CAM look at the lesion, and how easily is Grad-CAM
manipulated by imperceptible perturbations?

  python study.py --config=configs/studies/busi_gradcam.py:cpu --workdir=runs/study_busi_gradcam_cpu

``:cpu`` ResNet-18 at 128 px (5 folds x 2 seeds x 2 models on 2 CPU cores: hours, resumable),
``:full`` ResNet-50 at 224 px in bf16 for a GPU.
"""

from configs.studies import common
from configs.studies.common import claim, explanation, model


def get_config(variant: str = "cpu"):
  c = common.base("busi_gradcam", variant, "Breast ultrasound (BUSI): Grad-CAM of a multi-task "
                  "ResNet under attack",
                  "A ResNet with a lesion-segmentation head (multi-task learning) classifies "
                  "benign vs malignant lesions with higher sensitivity and specificity than "
                  "the plain classifier. Imperceptible perturbations that maximise a "
                  "differentiable Grad-CAM dissimilarity change the map drastically while "
                  "keeping the predicted class (or flipping it).")
  v = common.model_variant(variant)
  c.models = (model("plain", f"configs/busi_baseline.py:{v}"),
              model("mtl", f"configs/busi_mtl.py:{v}"))
  c.attacks = (
      explanation("grad_cam", mode="keep", steps=20),
      explanation("grad_cam", mode="flip", steps=20),
      explanation("grad_cam", "top_k", steps=20),
      explanation("grad_cam", "center_of_mass", steps=20),
      explanation("grad_cam", "targeted", steps=20),
  )
  c.eps = (0.004,)
  c.methods = ("grad_cam",)
  keep, flip = "grad_cam-keep-20@0.004", "grad_cam-flip-20@0.004"
  c.metrics = common.CLASSIFICATION + (
      "mean:grad_cam:lesion_energy", "mean:grad_cam:pointing_game",
      f"mean:{keep}:kept", f"median:{keep}:spearman", f"mean:{keep}:top_k_intersection",
      f"mean:{keep}:lesion_energy_adv", f"mean:{flip}:kept", f"median:{flip}:spearman",
      "median:grad_cam-top_k-20@0.004:spearman", "mean:grad_cam-top_k-20@0.004:top_k_intersection",
      "mean:grad_cam-center_of_mass-20@0.004:com_shift_px",
      "median:grad_cam-targeted-20@0.004:spearman")
  c.comparisons = (("mtl", "plain"),)
  c.claims = (
      claim("MTL raises sensitivity", "sensitivity", "mtl", "plain"),
      claim("MTL raises specificity", "specificity", "mtl", "plain"),
      claim("MTL raises AUC", "auc", "mtl", "plain"),
      claim("MTL moves Grad-CAM onto the lesion", "mean:grad_cam:lesion_energy", "mtl", "plain"),
  )
  if variant == "test":
    c.attacks = (explanation("grad_cam", mode="keep", steps=3),)
    c.metrics = common.CLASSIFICATION + ("mean:grad_cam:lesion_energy",
                                         "median:grad_cam-keep-3@0.004:spearman")
  return common.scale(c, variant, cpu_epochs=30)
