"""Adversarial training (the oncology and skin-cancer studies' remedies) of a plain classifier.

The variant names the method, optionally the data set (``busi``, the default,
``brain_mri`` or ``ham10000``) and ``,cpu`` for the data set's CPU scale (ResNet-18 at 128
px; HAM10000: 64 px, configs/ham10000.py, on every mel + nv training image: PGD-7 costs 8
passes per image, about an hour on 2 cores; ``--config.data.train_subset=1600`` trains on
a stratified subset, as the HAM10000 robust-saliency study does):

  python train.py --config=configs/adversarial.py:pgd,cpu       --workdir=runs/busi_pgd_cpu
  python train.py --config=configs/adversarial.py:iterative,cpu --workdir=runs/busi_iter_cpu
  python train.py --config=configs/adversarial.py:fgsm_rs,cpu   --workdir=runs/busi_fgsm_cpu
  python train.py --config=configs/adversarial.py:trades,cpu    --workdir=runs/busi_trades_cpu
  # robust fine-tuning with a small learning rate (sharper saliency, skin-cancer study)
  python train.py --config=configs/adversarial.py:finetune,cpu \\
      --config.init_from=runs/busi_pgd_cpu --workdir=runs/busi_pgd_ft_cpu
  # robustify only the first stages of a standard model (the rest frozen)
  python train.py --config=configs/adversarial.py:first_layers,cpu \\
      --config.init_from=runs/busi_baseline_cpu --workdir=runs/busi_first_cpu
  # transplant a robust model's first stages into a standard one, fine-tune the rest clean
  python train.py --config=configs/adversarial.py:transplant,cpu \\
      --config.init_from=runs/busi_baseline_cpu --config.transplant_from=runs/busi_pgd_cpu \\
      --workdir=runs/busi_transplant_cpu
  # any of them on brain MRI or HAM10000 (melanoma vs nevus, RGB)
  python train.py --config=configs/adversarial.py:pgd,brain_mri,cpu --workdir=runs/brain_pgd_cpu
  python train.py --config=configs/adversarial.py:pgd,ham10000,cpu --workdir=runs/ham_pgd_cpu

Each starts from the data set's plain classifier (``busi_baseline.py``, ``brain_mri.py``,
``ham10000.py``);
on BUSI ``--config.model.seg_head=True`` adds the segmentation head (its loss is taken on
clean images). The best checkpoint is chosen by validation AUC; ``val_pgd_accuracy`` (PGD
on a held-out batch) is logged every epoch.
"""

from configs import brain_mri, busi_baseline, ham10000

DATA = {"busi": busi_baseline.get_config, "brain_mri": brain_mri.get_config,
        "ham10000": ham10000.get_config}

FIRST_STAGES = ("stem", "stage1")
LATER_STAGES = ("stage2", "stage3", "stage4", "fc", "decoder")


def get_config(variant: str = "pgd"):
  parts = [p for p in variant.split(",") if p]
  cpu = "cpu" in parts
  datasets = [p for p in parts if p in DATA] or ["busi"]
  methods = [p for p in parts if p != "cpu" and p not in DATA] or ["pgd"]
  if len(methods) != 1 or len(datasets) != 1:
    raise ValueError(f"Name one method and at most one data set ({', '.join(DATA)}) in the "
                     f"variant, e.g. ':pgd,cpu' or ':pgd,brain_mri,cpu'; got {variant!r}.")
  method = methods[0]
  c = DATA[datasets[0]]("cpu" if cpu else "")
  c.adv.eps = 0.004                      # the oncology study's budget, pixels in [0, 1]
  c.adv.steps = 7
  c.adv.step_size_factor = 0.25
  if method in ("pgd", "fgsm_rs", "trades"):
    c.adv.method = method
  elif method == "iterative":          # mixed clean/adversarial batches, eps ramped up
    c.adv.method = "iterative"
    c.adv.mix_ratio = 0.5
    # A reference: --config.num_epochs=20 ramps over 5 epochs, not a quarter of the default.
    c.adv.ramp_epochs = c.get_ref("num_epochs") // 4
  elif method == "finetune":           # from a (robust) run, small learning rate, adversarial
    c.adv.method = "pgd"
    c.learning_rate = 1e-5
    c.warmup_epochs = 0.0
    c.num_epochs = 10
  elif method == "first_layers":       # adversarial training of the first stages only
    c.adv.method = "pgd"
    c.trainable = FIRST_STAGES
    c.learning_rate = 1e-4
    c.num_epochs = 10
  elif method == "transplant":         # robust first stages, the rest fine-tuned on clean data
    c.adv.method = "none"
    c.transplant_stages = FIRST_STAGES
    c.trainable = LATER_STAGES
    c.learning_rate = 1e-4
    c.num_epochs = 10
  else:
    raise ValueError(f"Unknown method {method!r}: pgd, iterative, fgsm_rs, trades, finetune, "
                     "first_layers or transplant.")
  return c
