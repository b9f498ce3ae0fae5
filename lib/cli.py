"""The shared shape of the absl entry points: ``--config`` (ml_collections) + ``--workdir``."""

from __future__ import annotations

from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from lib import experiment, parallel


def run(job: Callable, default_config: str, *, lock_config: bool = False) -> None:
  """Defines the flags and runs ``job(config, workdir)`` under ``absl.app``."""
  config_flags.DEFINE_config_file("config", default_config, "Config file (with :variant).",
                                  lock_config=lock_config)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["workdir"])

  def main(argv):
    del argv
    experiment.setup_logging()
    config = flags.FLAGS.config
    parallel.maybe_initialize_distributed(config)
    logging.info("Config:\n%s", config)
    job(config, flags.FLAGS.workdir)

  app.run(main)
