"""Study 2, oncology robustness: FGSM, BIM, PGD (and APGD) at small eps break standard
classifiers of two imaging modalities; iterative adversarial training restores accuracy
under attack.

  python study.py --config=configs/studies/oncology_robustness.py:busi_cpu --workdir=runs/study_oncology_robustness_busi_cpu
  python study.py --config=configs/studies/oncology_robustness.py:brain_mri_cpu --workdir=runs/study_oncology_robustness_brain_mri_cpu

The variant is ``<data set>_<scale>``: data set ``busi`` or ``brain_mri``, scale ``cpu``
(ResNet-18, 96 px) or ``full`` (ResNet-50, 224 px, bf16, GPU).
"""

from configs.studies import common
from configs.studies.common import attack, claim, model

DATA = {"busi": "configs/busi_baseline.py", "brain_mri": "configs/brain_mri.py"}
EPS = (0.001, 0.002, 0.004, 0.008)


def get_config(variant: str = "busi_cpu"):
  dataset, _, scale = variant.rpartition("_")
  if dataset not in DATA:
    raise ValueError(f"Unknown variant {variant!r}: <busi|brain_mri>_<cpu|full|test>.")
  c = common.base("oncology_robustness", variant, f"Oncology robustness ({dataset}): naive vs "
                  "iterative adversarial training",
                  "FGSM, BIM and PGD at eps = 0.004 (pixels in [0, 1]) drop the accuracy of "
                  "CT, mammogram and MRI classifiers to 6-26 %; iterative adversarial "
                  "training lifts accuracy under attack to 63-87 %.")
  cfg = f"{DATA[dataset]}:{common.model_variant(scale)}"
  epochs = {"cpu": 15, "test": 2}.get(scale, 40)
  c.models = (
      model("standard", cfg),
      model("iterative", cfg, ("adv.method", "iterative"), ("adv.mix_ratio", 0.5),
            ("adv.eps", 0.004), ("adv.steps", 7), ("adv.ramp_epochs", epochs // 4)),
  )
  c.attacks = (attack("fgsm"), attack("bim", steps=10, step_size_factor=0.25),
               attack("pgd", steps=10, step_size_factor=0.25),
               attack("apgd", steps=20, loss="ce"))
  c.eps = EPS
  c.map_metrics = False
  names = ("fgsm", "bim-10", "pgd-10", "apgd-20")
  c.metrics = common.CLASSIFICATION + tuple(
      f"mean:{a}@{e:g}:adv_correct" for a in names for e in EPS)
  c.comparisons = (("iterative", "standard"),)
  c.claims = tuple(claim(f"adversarial training raises accuracy under {a} at eps 0.004",
                         f"mean:{a}@0.004:adv_correct", "iterative", "standard")
                   for a in names[:3])
  if scale == "test":
    c.attacks, c.eps = (attack("fgsm"), attack("pgd", steps=3, step_size_factor=0.25)), (0.004, 0.008)
    c.metrics = common.CLASSIFICATION + ("mean:fgsm@0.004:adv_correct", "mean:fgsm@0.008:adv_correct",
                                         "mean:pgd-3@0.004:adv_correct", "mean:pgd-3@0.008:adv_correct")
    c.claims = (claim("AT raises PGD accuracy", "mean:pgd-3@0.004:adv_correct", "iterative",
                      "standard"),)
  return common.scale(c, scale, cpu_epochs=epochs)
