"""BUSI benign vs malignant, ResNet-50 + lesion-segmentation head (multi-task), 224 px.

``configs/busi_mtl.py:cpu`` is ResNet-18 at 128 px for 2 CPU cores (< 30 min).
The data folder defaults to ../shared/data/busi; override with
``--config.data.manual_dir=/path/to/Dataset_BUSI_with_GT``.
"""

from configs import common


def get_config(variant: str = ""):
  c = common.base_config()
  c.model.name = "resnet50"
  c.model.seg_head = True
  c.model.dtype = "bfloat16"
  c.image_size = 224
  c.data.name = "busi"
  c.data.label_set = "binary"
  c.batch_size = 32
  c.num_epochs = 40
  c.learning_rate = 1e-3
  c.warmup_epochs = 2.0
  c.weight_decay = 1e-4
  c.loss.class_weights = "balanced"
  c.best_metric = "val_auc"
  if variant == "cpu":
    common.cpu_variant(c)
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':cpu' or nothing.")
  return c
