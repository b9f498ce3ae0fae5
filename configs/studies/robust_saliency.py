"""Study 3, saliency of robust models (the skin-cancer study, here on BUSI and brain MRI):
gradient saliency of adversarially trained CNNs is sharper and more coherent; fine-tuning a
robust net with a small learning rate sharpens it further; robustifying only the first
layers already gives coherent maps.

  python study.py --config=configs/studies/robust_saliency.py:cpu --workdir=runs/study_robust_saliency_cpu
  python study.py --config=configs/studies/robust_saliency.py:brain_mri_cpu --workdir=runs/study_robust_saliency_brain_mri_cpu

The variant is ``[<data set>_]<scale>``: data set ``busi`` (the default: ``cpu`` is BUSI)
or ``brain_mri``, scale ``cpu`` (ResNet-18, 96 px), ``full`` (ResNet-50, 224 px, bf16,
GPU) or ``test``.

Models per fold: ``standard``; ``pgd`` (PGD-7 adversarial training, eps 0.004);
``pgd_ft`` (``pgd`` fine-tuned adversarially at learning rate 1e-5); ``first_layers``
(``standard`` with only the stem and stage 1 trained adversarially, the rest frozen).
Sharpness: total variation (lower = smoother), Gini (higher = sparser), entropy (lower =
more concentrated); coherence with the lesion: lesion energy, pointing game (BUSI only:
the brain MRI images have no tumour masks).
"""

from configs.studies import common
from configs.studies.common import claim, model

SHARPNESS = ("total_variation", "gini", "entropy")
COHERENCE = ("lesion_energy", "pointing_game")   # need lesion masks
STANDARD = {"busi": "configs/busi_baseline.py", "brain_mri": "configs/brain_mri.py",
            "ham10000": "configs/ham10000.py"}
TITLE = {"busi": "BUSI", "brain_mri": "brain MRI", "ham10000": "HAM10000"}


def parse_variant(variant: str) -> tuple[str, str]:
  """``"cpu"`` -> ``("busi", "cpu")``, ``"brain_mri_cpu"`` -> ``("brain_mri", "cpu")``."""
  dataset, _, scale = variant.rpartition("_")
  dataset = dataset or "busi"
  if dataset not in STANDARD or dataset == "ham10000":   # HAM10000: its own study config
    raise ValueError(f"Unknown variant {variant!r}: [brain_mri_]<cpu|full|test> (HAM10000: "
                     "configs/studies/robust_saliency_ham10000.py).")
  return dataset, scale


def models(scale: str, epochs: int, dataset: str = "busi"):
  s = common.model_variant(scale)
  adv = "configs/adversarial.py"
  # BUSI is adversarial.py's default data set (and these names are in the committed results)
  parts = ([dataset] if dataset != "busi" else []) + ([s] if s else [])
  suffix = "".join("," + p for p in parts)
  short = max(1, epochs // 6)
  return (
      model("standard", f"{STANDARD[dataset]}:{s}"),
      model("pgd", f"{adv}:pgd{suffix}"),
      model("pgd_ft", f"{adv}:finetune{suffix}", ("init_from", "{run:pgd}"),
            ("num_epochs", short)),
      model("first_layers", f"{adv}:first_layers{suffix}",
            ("init_from", "{run:standard}"), ("num_epochs", short)),
  )


def get_config(variant: str = "cpu"):
  dataset, scale = parse_variant(variant)
  c = common.base("robust_saliency", variant, f"Saliency of robust models ({TITLE[dataset]})",
                  "Gradient saliency of adversarially trained CNNs is sharper and more "
                  "coherent and highlights the lesion; fine-tuning a robust net with a small "
                  "learning rate sharpens it further; robustifying only the first layers "
                  "already gives coherent maps.")
  epochs = {"cpu": 15, "test": 2}.get(scale, 40)
  c.models = models(scale, epochs, dataset)
  c.methods = ("gradient", "smoothgrad")
  qualities = SHARPNESS + (COHERENCE if dataset == "busi" else ())
  c.metrics = common.CLASSIFICATION + tuple(f"mean:{m}:{q}" for m in c.methods for q in qualities)
  c.comparisons = (("pgd", "standard"), ("pgd_ft", "pgd"), ("first_layers", "standard"))
  on_lesion = (claim("PGD-AT gradient maps put more energy on the lesion",
                     "mean:gradient:lesion_energy", "pgd", "standard"),)
  c.claims = (
      claim("PGD-AT gradient maps are smoother", "mean:gradient:total_variation", "pgd",
            "standard", "less"),
      claim("PGD-AT gradient maps are more concentrated", "mean:gradient:entropy", "pgd",
            "standard", "less"),
  ) + (on_lesion if dataset == "busi" else ()) + (
      claim("fine-tuning sharpens further (smoother)", "mean:gradient:total_variation", "pgd_ft",
            "pgd", "less"),
      claim("first-layer robustness already smooths", "mean:gradient:total_variation",
            "first_layers", "standard", "less"),
  )
  return common.scale(c, scale, cpu_epochs=epochs)
