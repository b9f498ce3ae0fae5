"""Cross-validated studies: models x seeds x group-aware folds, per-image records,
confidence intervals and paired tests.

A single split misleads on data sets of a few hundred images, so every comparison
between models is made over a repeated, group-aware, label-stratified k-fold
(:func:`lib.data.cv_assignment`; repetition ``r`` uses fold assignment ``fold_seed = r``
and training seed ``r``). A study config (``configs/studies/``) names

* ``models``: each a ``train.py`` config (``"configs/busi_mtl.py:cpu"``) with overrides;
  an override value ``"{run:NAME}"`` is the work dir of model ``NAME`` on the same seed and
  fold (fine-tuning a robust model, transplanting its stages);
* ``attacks`` (entries of ``attack.py``'s ``attacks``) at ``eps`` and saliency ``methods``
  measured on every held-out fold, image by image (:func:`lib.study.runs.evaluate_run`);
* ``metrics`` and the ``comparisons`` (and ``claims``) to report, checked against what
  the study measures before anything runs (:func:`lib.study.config.check_study_config`).

Stages (each resumes; a finished run or evaluation is never redone): train a run, evaluate
it on its test fold (``per_image.csv``), next run; then summarise what is there.
The summary (:func:`lib.study.runs.summarise`) reports per model and metric

* the mean over the k x r fold runs with the corrected resampled-t 95 % CI (Nadeau &
  Bengio 2003: the variance is inflated by ``1/(k r) + n_test/n_train`` because the
  training sets overlap), and
* the pooled out-of-fold value (every image predicted once per repetition by the model
  that did not see it) with a percentile bootstrap 95 % CI over images, resampling whole
  groups (near-duplicates / patients together);

and for each comparison ``a - b`` the same two, paired: the corrected resampled t-test
over the fold runs and a paired group bootstrap over the out-of-fold images.

The package, one job per module:

* :mod:`lib.study.config`: the models' train configs, where runs live, the metric-name check;
* :mod:`lib.study.runs`: the stages (train, evaluate, figures, summarise) and :func:`run_study`;
* :mod:`lib.study.records`: the per-image CSV records and their alignment across folds;
* :mod:`lib.study.statistics`: metrics of records, corrected t, group bootstrap, verdicts
  (numpy and scipy only: it imports no JAX);
* :mod:`lib.study.reporting`: figures, README, wall-time and checkpoint tables.

``from lib import study`` gives every public name of these modules (``study.run_study``,
``study.summarise``, ``study.metric_fn``, ...). They are imported on first use, so that
``lib.study.statistics`` and ``lib.study.records`` can be imported without JAX.
"""

import importlib

_EXPORTS = {
    "config": ("STAGES", "BASE_COLUMNS", "ATTACK_FIELDS", "MAP_FIELDS", "MASK_FIELDS",
               "load_train_config", "run_dir", "eval_dir", "train_config_for", "all_runs",
               "measured_columns", "check_study_config"),
    "runs": ("_COMPILED", "train_run", "evaluate_run", "evaluate_once", "figure_seed",
             "plot_figures", "plot_first_fold_maps", "summarise", "run_study", "results_path",
             "check_committed_records"),
    "records": ("write_records", "read_records", "committed_records", "out_of_fold",
                "with_folds"),
    "statistics": ("SENS_AT_SPEC", "CLASSIFICATION", "metric_fn", "metric_range", "has_column",
                   "Estimate", "corrected_t", "group_bootstrap", "Summary", "summary_rows", "judge"),
    "reporting": ("plot_metrics", "plot_eps_curves", "wall_times", "checkpoint_selection",
                  "write_readme"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [name for name in _MODULE_OF if not name.startswith("_")]


def __getattr__(name: str):
  """``study.X``: ``X`` of the module that defines it (imported now if not yet)."""
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__():
  return sorted(set(globals()) | set(_MODULE_OF))
