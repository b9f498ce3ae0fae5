"""Explanation maps of checkpoints, their quality metrics, tables and overlay figures.

  python explain.py --config=configs/explain.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/explain
"""

from lib import cli, explain_report

if __name__ == "__main__":
  cli.run(explain_report.run_explain, "configs/explain.py")
