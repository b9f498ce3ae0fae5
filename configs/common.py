"""Defaults shared by every experiment config; each config file changes what it needs.

Every field can be overridden on the command line, e.g.
``--config.batch_size=16 --config.data.manual_dir=/data/Dataset_BUSI_with_GT``.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.image_size = 128

  c.model = ml_collections.ConfigDict(dict(
      name="resnet18",           # resnet18|34|50|101, resnet_tiny, resnet_tiny_bottleneck
      num_classes=2,
      in_channels=1,             # 1 grayscale, 3 RGB (gray images are repeated); an RGB
                                 # data set needs 3
      seg_head=False,            # multi-task: lesion-mask decoder
      cam_layer="last",          # last | penultimate | dilated
      activation="relu",         # relu | softplus (surrogate)
      softplus_beta=10.0,
      dtype="float32",           # float32 | bfloat16 (compute; params stay float32)
      width=0,                   # 0: the architecture's default
      decoder_channels=0,
      im2col_max_pixels=0,       # CPU: convs with <= this many output pixels as im2col (64)
      mean=(),                   # per-channel normalisation inside the model; () = the
      std=(),                    # default (0.449, 0.226: ImageNet's averaged over RGB)
      stats_from="",             # train: mean/std of the run's own training images
  ))

  c.data = ml_collections.ConfigDict(dict(
      name="synthetic_lesions",  # synthetic_lesions | synthetic_skin | busi | brain_mri | ham10000
      manual_dir="",             # '' -> $MEDROBUST_DATA_ROOT/<name> or ../shared/data/<name>
      data_dir="",               # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
      label_set="binary",        # busi: binary (benign vs malignant) | three_class;
                                 # ham10000: melanoma (mel vs nv) | malignant | dx
      resize="pad",              # pad (keep aspect) | stretch
      num_threads=2,
      # > 0: group-aware stratified k-fold over all labelled images instead of the stored
      # split; `fold` is the test fold, val_fraction of the other folds' groups select
      # checkpoints (lib/data.py cv_assignment)
      folds=0, fold=0, fold_seed=0, val_fraction=0.1,
      # > 0: train on a label-stratified subset of this many training images (drawn with
      # fold_seed, so every model of a fold sees the same ones); val and test stay whole
      train_subset=0,
      # synthetic_lesions only
      synthetic_size=64, num_train=512, num_val=128, num_test=128, synthetic_seed=0,
      augment=ml_collections.ConfigDict(dict(
          hflip=True, vflip=False, crop_scale=0.85, brightness=0.1, contrast=0.1,
          saturation=0.0, hue=0.0)),   # RGB only (lib/data.py colour_jitter)
  ))

  c.batch_size = 32              # global, over all devices and hosts
  c.eval_batch_size = 64
  c.num_epochs = 30
  c.optimizer = "adamw"          # adamw | sgd
  c.learning_rate = 1e-3
  c.warmup_epochs = 1.0
  c.weight_decay = 1e-4
  c.momentum = 0.9
  c.grad_clip = 0.0

  c.loss = ml_collections.ConfigDict(dict(
      class_weights="balanced",  # balanced | none | [w0, w1, ...]
      mask_weight=1.0,           # weight of (BCE + dice_weight * Dice) when seg_head
      dice_weight=1.0,
      bce_pos_weight=1.0,
  ))

  # Adversarial training (lib/adversarial.py). eps in pixel units ([0, 1]).
  c.adv = ml_collections.ConfigDict(dict(
      method="none",             # none | pgd | iterative | fgsm_rs | trades
      eps=0.004,
      steps=7,                   # attack steps (pgd, iterative, trades)
      step_size_factor=0.25,     # step = factor * eps (fgsm_rs: 1.25 eps)
      random_start=True,
      mix_ratio=0.5,             # iterative: share of each batch made adversarial
      ramp_epochs=0,             # > 0: eps ramps up linearly from 0 over these epochs
      trades_beta=6.0,
      bn_mode="eval",            # BatchNorm while attacking: eval (running stats) | train
      check_steps=10,            # every epoch: PGD-k accuracy on a held-out val batch
      check_images=64,
      overfit_drop=0.3,          # ... a fall by this much below its best is catastrophic
      overfit_ratio=0.5,         # ... overfitting if also below this share of clean accuracy
      overfit_stop=True,         # ... overfitting: stop (True) or only warn
  ))
  # Start from another run and choose what trains (fine-tuning, robustifying stages).
  c.init_from = ""               # train.py work dir whose weights start this run
  c.init_from_which = "best"     # best | latest
  c.init_from_torch = ""         # torchvision ResNet weights (.safetensors / .pth), e.g. ImageNet
  c.transplant_from = ""         # work dir whose `transplant_stages` replace ours
  c.transplant_stages = ()       # e.g. ('stem', 'stage1')
  c.trainable = ()               # modules that train; () = all, e.g. ('stem', 'stage1')

  c.parallel = "shard_map"       # shard_map | pmap
  c.num_devices = 0              # 0: all devices

  c.eval_every_epochs = 1
  c.checkpoint_keep = 2
  c.best_metric = "val_auc"      # any val_* metric; "" keeps the last checkpoint
  c.best_mode = "max"
  c.log_every_steps = 10
  c.async_checkpointing = True
  # A work dir that holds a run made with other settings: refuse | continue (resume its
  # checkpoints with these settings) | restart (move it aside, start afresh)
  c.existing_run = "refuse"
  return c


def cpu_variant(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """ResNet-18 at 128 px: the scale that trains on 2 CPU cores in well under 30 min."""
  c.model.name = "resnet18"
  c.model.dtype = "float32"
  c.image_size = 128
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_epochs = 40              # 11 steps of 32 per epoch on BUSI's 377 training images
  return c
