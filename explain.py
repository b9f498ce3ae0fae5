"""Explanation maps of checkpoints, their quality metrics, tables and overlay figures.

  python explain.py --config=configs/explain.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/explain
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lib import experiment, explain_report

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/explain.py", "Explanation config file.",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for tables and figures.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  experiment.setup_logging()
  logging.info("Config:\n%s", FLAGS.config)
  explain_report.run_explain(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
