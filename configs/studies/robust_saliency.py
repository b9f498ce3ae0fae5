"""Study 3, saliency of robust models (the skin-cancer study, here on BUSI): gradient
saliency of adversarially trained CNNs is sharper and more coherent; fine-tuning a robust
net with a small learning rate sharpens it further; robustifying only the first layers
already gives coherent maps.

  python study.py --config=configs/studies/robust_saliency.py:cpu --workdir=runs/study_robust_saliency_cpu

Models per fold: ``standard``; ``pgd`` (PGD-7 adversarial training, eps 0.004);
``pgd_ft`` (``pgd`` fine-tuned adversarially at learning rate 1e-5); ``first_layers``
(``standard`` with only the stem and stage 1 trained adversarially, the rest frozen).
Sharpness: total variation (lower = smoother), Gini (higher = sparser), entropy (lower =
more concentrated); coherence with the lesion: lesion energy, pointing game.
"""

from configs.studies import common
from configs.studies.common import claim, model

QUALITIES = ("total_variation", "gini", "entropy", "lesion_energy", "pointing_game")


def models(scale: str, epochs: int):
  s = common.model_variant(scale)
  adv = "configs/busi_adversarial.py"
  short = max(1, epochs // 6)
  return (
      model("standard", f"configs/busi_baseline.py:{s}"),
      model("pgd", f"{adv}:pgd{',' + s if s else ''}"),
      model("pgd_ft", f"{adv}:finetune{',' + s if s else ''}", ("init_from", "{run:pgd}"),
            ("num_epochs", short)),
      model("first_layers", f"{adv}:first_layers{',' + s if s else ''}",
            ("init_from", "{run:standard}"), ("num_epochs", short)),
  )


def get_config(variant: str = "cpu"):
  c = common.base("robust_saliency", variant, "Saliency of robust models (BUSI)",
                  "Gradient saliency of adversarially trained CNNs is sharper and more "
                  "coherent and highlights the lesion; fine-tuning a robust net with a small "
                  "learning rate sharpens it further; robustifying only the first layers "
                  "already gives coherent maps.")
  epochs = {"cpu": 15, "test": 2}.get(variant, 40)
  c.models = models(variant, epochs)
  c.methods = ("gradient", "smoothgrad")
  c.metrics = common.CLASSIFICATION + tuple(f"mean:{m}:{q}" for m in c.methods for q in QUALITIES)
  c.comparisons = (("pgd", "standard"), ("pgd_ft", "pgd"), ("first_layers", "standard"))
  c.claims = (
      claim("PGD-AT gradient maps are smoother", "mean:gradient:total_variation", "pgd",
            "standard", "less"),
      claim("PGD-AT gradient maps are more concentrated", "mean:gradient:entropy", "pgd",
            "standard", "less"),
      claim("PGD-AT gradient maps put more energy on the lesion", "mean:gradient:lesion_energy",
            "pgd", "standard"),
      claim("fine-tuning sharpens further (smoother)", "mean:gradient:total_variation", "pgd_ft",
            "pgd", "less"),
      claim("first-layer robustness already smooths", "mean:gradient:total_variation",
            "first_layers", "standard", "less"),
  )
  return common.scale(c, variant, cpu_epochs=epochs)
