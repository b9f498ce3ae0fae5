"""Study 3 on its own modality: saliency of robust models on HAM10000 dermoscopy (RGB),
melanoma vs melanocytic nevus. Pre-specified on 2026-12-01, before any of its runs.

  python study.py --config=configs/studies/robust_saliency_ham10000.py:cpu --workdir=runs/study_robust_saliency_ham10000_cpu

The skin-cancer study's observations: gradient saliency of adversarially trained CNNs is
sharper and more coherent, and it follows the colour variation inside the lesion; a robust
fine-tune with a small learning rate sharpens it further; robust first layers already give
coherent maps. Study 3 tested them on breast ultrasound and brain MRI (grayscale:
``robust_saliency.py``); here they are tested on dermoscopy, with the colour observation
made measurable: ``colour_rho``, the Spearman correlation inside the lesion mask between
|saliency| and the local colour gradient in CIELAB a*b*
(:func:`lib.metrics.colour_variation_correlation`; 0 for a map unrelated to colour), beside
``luminance_rho`` (the same with brightness edges, L*), its control.

Models per fold, as in study 3: ``standard`` (configs/ham10000.py), ``pgd`` (PGD-7
adversarial training at eps 0.004), ``pgd_ft`` (``pgd`` fine-tuned adversarially at
learning rate 1e-5), ``first_layers`` (``standard`` with only the stem and stage 1 trained
adversarially). Group-aware 5-fold CV by ``group`` (one lesion and its near-duplicates in
one fold) over all mel + nv images (6,645), two seeds.

Scale ``cpu``: ResNet-18 at 64 px (configs/ham10000.py:cpu), every run trained on a
stratified subset of 1,600 of its fold's training images (the same for every model of a
fold) for 12 epochs (2 for the fine-tunes): PGD-7 training costs 8 passes per image, and
the whole training set would make one PGD-AT run take an hour on 2 cores. Evaluation is on
the whole held-out fold (about 1,330 images). ``full``: ResNet-50 at 224 px on every
image, for a GPU. ``test``: a tiny network on generated RGB lesions
(:mod:`lib.datasets.synthetic_skin`), for the tests.
"""

from configs.studies import common, robust_saliency
from configs.studies.common import claim

QUALITIES = robust_saliency.SHARPNESS + robust_saliency.COHERENCE + ("colour_rho",
                                                                     "luminance_rho")
CPU_IMAGE_SIZE = 64
CPU_TRAIN_SUBSET = 1600


def get_config(variant: str = "cpu"):
  if variant not in ("cpu", "full", "test"):
    raise ValueError(f"Unknown variant {variant!r}: cpu, full or test.")
  c = common.base("robust_saliency_ham10000", variant, "Saliency of robust models (HAM10000)",
                  "Gradient saliency of adversarially trained CNNs is sharper and more "
                  "coherent and follows the colour variation inside the lesion; fine-tuning "
                  "a robust net with a small learning rate sharpens it further; robustifying "
                  "only the first layers already gives coherent maps.")
  epochs = {"cpu": 12, "test": 2}.get(variant, 30)
  c.models = robust_saliency.models(variant, epochs, "ham10000")
  c.methods = ("gradient", "smoothgrad")
  c.metrics = (common.CLASSIFICATION + ("sensitivity_at_specificity:0.9",)
               + tuple(f"mean:{m}:{q}" for m in c.methods for q in QUALITIES)
               + ("mean:baseline:uniform_lesion_energy", "mean:baseline:centre_pointing_game"))
  c.comparisons = (("pgd", "standard"), ("pgd_ft", "pgd"), ("first_layers", "standard"))
  c.claims = (
      claim("PGD-AT gradient maps are smoother", "mean:gradient:total_variation", "pgd",
            "standard", "less"),
      claim("PGD-AT gradient maps are more concentrated", "mean:gradient:entropy", "pgd",
            "standard", "less"),
      claim("PGD-AT gradient maps put more energy on the lesion",
            "mean:gradient:lesion_energy", "pgd", "standard"),
      claim("PGD-AT gradient maps follow the colour variation inside the lesion more closely",
            "mean:gradient:colour_rho", "pgd", "standard"),
      claim("fine-tuning sharpens further (smoother)", "mean:gradient:total_variation",
            "pgd_ft", "pgd", "less"),
      claim("first-layer robustness already smooths", "mean:gradient:total_variation",
            "first_layers", "standard", "less"),
  )
  common.scale(c, variant, cpu_epochs=epochs)
  if variant == "cpu":
    c.overrides += (("image_size", CPU_IMAGE_SIZE), ("data.train_subset", CPU_TRAIN_SUBSET))
  elif variant == "test":   # generated RGB lesions instead of the grayscale ones
    c.overrides += (("data.name", "synthetic_skin"), ("data.label_set", "binary"))
  return c
