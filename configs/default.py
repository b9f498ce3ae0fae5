"""The embedded default (``make demo``): synthetic lesions, a tiny multi-task ResNet.

Trains in a few minutes on a 2-core CPU and needs no data on disk.
"""

from configs import common


def get_config(variant: str = ""):
  c = common.base_config()
  c.image_size = 64
  c.model.name = "resnet_tiny"
  c.model.width = 16
  c.model.decoder_channels = 16
  c.model.seg_head = True
  c.model.cam_layer = "penultimate"
  c.data.name = "synthetic_lesions"
  c.data.synthetic_size = 64
  c.data.num_train, c.data.num_val, c.data.num_test = 768, 128, 128
  c.batch_size = 32
  c.num_epochs = 8
  c.learning_rate = 3e-3
  c.log_every_steps = 12
  if variant == "test":  # seconds, for the end-to-end tests
    c.image_size = 32
    c.model.width = 8
    c.model.decoder_channels = 8
    c.data.synthetic_size = 32
    c.data.num_train, c.data.num_val, c.data.num_test = 64, 32, 32
    c.batch_size = 16
    c.eval_batch_size = 32
    c.num_epochs = 3
    c.log_every_steps = 2
    c.async_checkpointing = False
  return c
