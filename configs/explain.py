"""Explanation maps and their quality for train.py runs.

  python explain.py --config=configs/explain.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/explain

``:quick`` (the demo) computes the cheap methods on a few images.
"""

import ml_collections


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.checkpoints = ""
  c.which = "best"
  c.split = "test"
  c.target = "pred"               # pred (the predicted class) | label (the true class)
  c.methods = ("gradient", "gradient_x_input", "smoothgrad", "vargrad", "integrated_gradients",
               "grad_cam", "grad_cam_pp")
  c.smoothgrad_samples = 16
  c.smoothgrad_sigma = 0.1        # pixel units (data range 1)
  c.ig_steps = 32
  c.channels = "max_abs"          # RGB gradient maps: max_abs (max over channels of |g|) | abs_sum
  c.faithfulness = True           # deletion / insertion AUCs
  c.deletion_steps = 16
  c.top_fraction = 0.1
  c.batch_size = 16               # sharded over the devices; the last batch is padded
  c.num_devices = 0               # 0: all devices
  c.max_images = 0                # 0: the whole split, else a label-stratified subset
  c.figure_images = 6             # images per figure (0: no figures)
  c.seed = 0
  if variant == "quick":
    c.methods = ("gradient", "smoothgrad", "grad_cam", "grad_cam_pp")
    c.smoothgrad_samples = 8
    c.max_images = 64
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':quick' or nothing.")
  return c
