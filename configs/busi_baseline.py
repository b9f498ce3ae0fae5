"""BUSI benign vs malignant, plain ResNet-50 classifier (no segmentation head), 224 px.

The single-task baseline of the breast-ultrasound study; ``:cpu`` is ResNet-18 at 128 px.
"""

from configs import busi_mtl


def get_config(variant: str = ""):
  c = busi_mtl.get_config(variant)
  c.model.seg_head = False
  return c
