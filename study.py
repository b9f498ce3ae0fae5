"""Runs one study end to end: cross-validated training of its models, per-image
evaluation on every held-out fold, tables, figures and README in ``results/<study>/``.

  python study.py --config=configs/studies/busi_gradcam.py:cpu --workdir=runs/study_busi_gradcam_cpu

Starting the same command again resumes: finished runs and evaluations are kept.
``--config.stages="('summarise',)"`` only rewrites the summary from what is done;
``--config.stages="('figures', 'summarise')"`` redraws the example figures from fold 0 of
repetition ``--config.figure_seed`` (default the last) and rewrites the summary.
"""

from lib import cli, study

if __name__ == "__main__":
  cli.run(study.run_study, "configs/studies/busi_gradcam.py")
