"""HAM10000 dermoscopy, melanoma vs melanocytic nevus (the skin-cancer study's task), RGB.

  python train.py --config=configs/ham10000.py:cpu --workdir=runs/ham10000_cpu
  python train.py --config=configs/ham10000.py     --workdir=runs/ham10000      # GPU
  python train.py --config=configs/ham10000.py:cpu --config.data.label_set=malignant ...

ResNet-50 at 224 px (bf16) by default. ``:cpu`` is ResNet-18 at 64 px on all 4,651 mel +
nv training images, 15 epochs: about 10 minutes on 2 CPU cores. Why 64 px: a 200 x 150
image keeps its lesion at about 25 x 25 pixels (the median mel or nv lesion covers 21 % of
the image, 16 % of the padded square), enough for the colour structure the skin study
measures, and a ResNet-18 training step on 64 images takes about 0.5 s on 2 cores there,
with the small late-stage convolutions as im2col + matmul
(``model.im2col_max_pixels=64``): XLA:CPU's own convolution takes 1.6 s for the *forward*
pass at 48-64 px against 0.09 s as im2col (0.2 s at 96 px, where it is fine;
bench/RESULTS.md). No training subset is needed for a plain model; the robust-saliency
study trains on a subset (``data.train_subset``) because PGD-7 adversarial training costs
8 passes per image.

Label sets (``data.label_set``): ``melanoma`` (mel vs nv; the other five diagnoses are
left out), ``malignant`` (mel, bcc, akiec vs nv, bkl, df, vasc) and ``dx`` (seven classes;
set ``--config.model.num_classes=7``). The classes are imbalanced (mel is 14 % of mel +
nv): the loss weighs classes by inverse frequency (``loss.class_weights=balanced``), the
checkpoint is chosen by validation AUC, and the reports give balanced accuracy, AUC and
sensitivity at 90 % specificity beside accuracy.

Normalisation inside the model: per-channel mean and std of the fixed split's mel + nv
training images at 64 px with the black padding (``lib.data.channel_stats``; checked by
``tests/test_data.py``), given values used for every fold, scale and label set;
``--config.model.stats_from=train --config.model.mean='()' --config.model.std='()'``
computes each run's own from its training images instead. Augmentation: flips both ways
(dermoscopy has no up), a small zoom, brightness, contrast, saturation and a small hue
jitter (dermoscopes differ in white balance; colour is diagnostic, so the hue shift stays
within +-0.02 turns, 7 degrees).
"""

from configs import common

# lib.data.channel_stats of the fixed train split, label set melanoma, 64 px, pad.
MEAN = (0.5795, 0.4048, 0.4220)
STD = (0.3507, 0.2654, 0.2815)


def get_config(variant: str = ""):
  c = common.base_config()
  c.model.name = "resnet50"
  c.model.dtype = "bfloat16"
  c.model.in_channels = 3
  c.model.mean, c.model.std = MEAN, STD
  c.image_size = 224
  c.data.name = "ham10000"
  c.data.label_set = "melanoma"
  c.data.resize = "pad"
  c.data.augment.vflip = True
  c.data.augment.saturation = 0.1
  c.data.augment.hue = 0.02
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 30
  c.learning_rate = 1e-3
  c.warmup_epochs = 1.0
  c.best_metric = "val_auc"
  if variant == "cpu":
    c.model.name, c.model.dtype = "resnet18", "float32"
    c.model.im2col_max_pixels = 64
    c.image_size = 64
    c.num_epochs = 15
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':cpu' or nothing.")
  return c
