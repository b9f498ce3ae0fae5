"""Trains a classifier (optionally multi-task with a lesion-mask head) from a config.

  python train.py --config=configs/busi_mtl.py:cpu --workdir=runs/busi_mtl_cpu

Starting the same command again resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lib import experiment, parallel, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and figures.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  experiment.setup_logging()
  parallel.maybe_initialize_distributed(FLAGS.config)
  logging.info("Config:\n%s", FLAGS.config)
  trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
