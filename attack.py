"""Attack sweep over checkpoints x attacks x eps; writes tables and figures.

  python attack.py --config=configs/attack_sweep.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/sweep
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lib import experiment, sweep

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/attack_sweep.py", "Sweep config file.",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for results, tables and figures.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  experiment.setup_logging()
  logging.info("Config:\n%s", FLAGS.config)
  sweep.run_sweep(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
