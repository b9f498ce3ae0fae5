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
      in_channels=1,             # 1 grayscale, 3 RGB (gray images are repeated)
      seg_head=False,            # multi-task: lesion-mask decoder
      cam_layer="last",          # last | penultimate | dilated
      activation="relu",         # relu | softplus (surrogate)
      softplus_beta=10.0,
      dtype="float32",           # float32 | bfloat16 (compute; params stay float32)
      width=0,                   # 0: the architecture's default
      decoder_channels=0,
  ))

  c.data = ml_collections.ConfigDict(dict(
      name="synthetic_lesions",  # synthetic_lesions | busi | brain_mri
      manual_dir="",             # '' -> ../shared/data/<name>
      data_dir="",               # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
      label_set="binary",        # busi: binary (benign vs malignant) | three_class
      resize="pad",              # pad (keep aspect) | stretch
      num_threads=2,
      # synthetic_lesions only
      synthetic_size=64, num_train=512, num_val=128, num_test=128, synthetic_seed=0,
      augment=ml_collections.ConfigDict(dict(
          hflip=True, vflip=False, crop_scale=0.85, brightness=0.1, contrast=0.1)),
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

  c.parallel = "shard_map"       # shard_map | pmap
  c.num_devices = 0              # 0: all devices
  c.multihost = False            # call jax.distributed.initialize()

  c.eval_every_epochs = 1
  c.checkpoint_keep = 2
  c.best_metric = "val_auc"      # any val_* metric
  c.best_mode = "max"
  c.log_every_steps = 10
  c.async_checkpointing = True
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
