"""Attack sweep over checkpoints x attacks x eps; writes tables and figures.

  python attack.py --config=configs/attack_sweep.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/sweep
"""

from lib import cli, sweep

if __name__ == "__main__":
  cli.run(sweep.run_sweep, "configs/attack_sweep.py")
