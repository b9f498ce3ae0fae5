"""Trains a classifier (optionally multi-task with a lesion-mask head) from a config.

  python train.py --config=configs/busi_mtl.py:cpu --workdir=runs/busi_mtl_cpu

Starting the same command again resumes from the latest checkpoint in --workdir.
"""

from lib import cli, trainer

if __name__ == "__main__":
  cli.run(trainer.train_and_evaluate, "configs/default.py", lock_config=True)
