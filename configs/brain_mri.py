"""Brain MRI tumour vs no tumour, ResNet-50 classifier at 224 px (no masks, no seg head).

``configs/brain_mri.py:cpu`` is ResNet-18 at 128 px for 2 CPU cores.
"""

from configs import common


def get_config(variant: str = ""):
  c = common.base_config()
  c.model.name = "resnet50"
  c.model.dtype = "bfloat16"
  c.image_size = 224
  c.data.name = "brain_mri"
  c.data.resize = "pad"
  c.data.augment.vflip = True      # no depth axis in axial MRI slices
  c.batch_size = 16                # 136 training images
  c.eval_batch_size = 32
  c.num_epochs = 40
  c.learning_rate = 1e-3
  c.warmup_epochs = 2.0
  c.best_metric = "val_auc"
  if variant == "cpu":
    common.cpu_variant(c)
    c.batch_size = 16
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':cpu' or nothing.")
  return c
