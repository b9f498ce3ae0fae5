"""A study config: its models' ``train.py`` configs, where its runs live, and the check
that every metric it names is one the study measures.

A study config (``configs/studies/``) names ``models`` (each a ``train.py`` config with
overrides), ``seeds`` and ``folds``, the ``attacks`` at ``eps`` and saliency ``methods``
measured on every held-out fold, and the ``metrics``, ``comparisons`` and ``claims`` to
report. Metric names are strings (``auc``, ``sensitivity_at_specificity:0.9``,
``mean:pgd-10@0.004:adv_correct``, ``median:grad_cam:gini`` ...): :func:`check_study_config`
refuses a name the study would never measure, before anything is trained or written,
instead of reporting it "not measured" at the end.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re

import ml_collections
import numpy as np

from lib import checks, data, explain_report, saliency, sweep
from lib.study.statistics import CLASSIFICATION, SENS_AT_SPEC

STAGES = ("train", "evaluate", "figures", "summarise")
_RUN = re.compile(r"\{run:([A-Za-z0-9_\-]+)\}")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What the evaluation of a run (lib.study.runs.evaluate_run) writes per image, besides
# id and group: its base columns; per attack and eps, the fields of
# lib.sweep.run_attack_grid (adv_correct and adv_prob; with study.map_metrics those of
# lib.sweep.map_image_metrics, the lesion energies only on data sets with masks); per
# saliency method, the keys of lib.explain_report.map_quality.
BASE_COLUMNS = ("prob", "correct", "label")
ATTACK_FIELDS = ("adv_correct", "adv_prob")
MAP_FIELDS = ("kept", "spearman", "pearson", "top_k_intersection", "map_ssim", "com_shift_px",
              "constant_map")
MASK_FIELDS = ("lesion_energy_clean", "lesion_energy_adv")
# What a map that knows nothing scores on each image (studies with saliency methods and
# masks): a uniform map's lesion energy (the lesion's area) and a centre point's pointing
# game (lib.metrics.trivial_baselines).
BASELINE_COLUMNS = ("baseline:uniform_lesion_energy", "baseline:centre_pointing_game")


# ----------------------------------------------------------------------------- configs


def load_train_config(spec: str) -> ml_collections.ConfigDict:
  """``"configs/busi_mtl.py:cpu"`` -> that file's ``get_config("cpu")``."""
  path, _, variant = spec.partition(":")
  if not os.path.isabs(path):
    path = os.path.join(_ROOT, path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Config file {path} (from model config {spec!r}) does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      "study_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)


def run_dir(study, workdir: str, model: str, seed: int, fold: int) -> str:
  """Where one training run of the study lives (``study.runs_dir`` can point at another
  study's runs, which are then shared, not retrained)."""
  return os.path.join(study.get("runs_dir") or workdir, model, f"seed{seed}_fold{fold}")


def eval_dir(workdir: str, model: str, seed: int, fold: int) -> str:
  """Where this study's evaluation of one run goes (``per_image.csv``, ``eval_time.json``):
  always under its own work dir, so that studies sharing runs (``runs_dir``) keep their
  own records; the run directory itself when the study trained the run."""
  return os.path.join(workdir, model, f"seed{seed}_fold{fold}")


def _set(c, dotted: str, value):
  """Sets the dotted field with ConfigDict's own update (its type checks and casts, e.g. a
  list for a tuple field), after checking that the field exists: the update would silently
  add a misspelt one."""
  *parents, leaf = dotted.split(".")
  node = c
  for p in parents:
    node = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise KeyError(f"Unknown config field {dotted!r} in a study override.")
  c.update_from_flattened_dict({dotted: value})


def train_config_for(study, model_spec, seed: int, fold: int, workdir: str):
  """The ``train.py`` config of one (model, seed, fold) run."""
  c = load_train_config(model_spec.config)
  names = {m.name for m in study.models}

  def resolve(v):
    if not isinstance(v, str):
      return v
    for ref in _RUN.findall(v):
      if ref not in names:
        raise KeyError(f"{model_spec.name}: override refers to unknown model {ref!r}.")
    return _RUN.sub(lambda m: run_dir(study, workdir, m.group(1), seed, fold), v)

  for overrides in (study.get("overrides", ()), model_spec.get("overrides", ())):
    for k, v in overrides:
      _set(c, k, resolve(v))
  c.seed = seed
  c.num_devices = study.get("num_devices", 0)   # the runs train on the study's devices
  c.data.folds, c.data.fold, c.data.fold_seed = study.folds, fold, seed
  return c


def all_runs(study):
  """``(model spec, seed, fold)`` in training order: seeds, folds, then models in the order
  given (so a model that starts from another comes after it)."""
  return [(m, s, f) for s in study.seeds for f in range(study.folds) for m in study.models]


# ----------------------------------------------------------------------------- metric names


def _has_masks(study) -> bool:
  """Whether any model's data set has lesion masks (lesion energy, pointing game)."""
  seed = study.seeds[0] if study.seeds else 0
  for m in study.models:
    spec = data.DATASETS.get(train_config_for(study, m, seed, 0, "").data.name)
    if spec is None or spec.has_masks:   # an unknown data set stops later, with its name
      return True
  return False


def _channels(study) -> int:
  """The most channels of the study's data sets (3: the colour metrics are measured)."""
  seed = study.seeds[0] if study.seeds else 0
  specs = [data.DATASETS.get(train_config_for(study, m, seed, 0, "").data.name)
           for m in study.models]
  return max([spec.channels for spec in specs if spec is not None] or [1])


def _attack_fields(study, has_masks: bool) -> tuple[str, ...]:
  return (ATTACK_FIELDS + (MAP_FIELDS if study.get("map_metrics", True) else ())
          + (MASK_FIELDS if study.get("map_metrics", True) and has_masks else ()))


def measured_columns(study, has_masks: bool | None = None) -> list[str]:
  """The per-image numeric columns the study's evaluation writes for every run: the base
  columns, ``<attack label>@<eps>:<field>`` for every attack (:func:`lib.sweep.attack_label`)
  at each eps of its grid (the attack's own ``eps``, else ``study.eps``), and
  ``<method>:<quality>`` for every saliency method. ``has_masks`` default: whether any
  model's data set has lesion masks."""
  has_masks = _has_masks(study) if has_masks is None else has_masks
  fields = _attack_fields(study, has_masks)
  columns = list(BASE_COLUMNS)
  for spec in study.attacks:
    label = sweep.attack_label(spec)
    for eps in dict(spec).get("eps") or study.eps:
      columns += [f"{label}@{float(eps):g}:{field}" for field in fields]
  blank = np.zeros((1, 4, 4))
  qualities = explain_report.map_quality(blank, blank, has_masks, 0.1,
                                         np.zeros((1, 4, 4, _channels(study)), np.uint8))
  for method in study.methods:
    columns += [f"{method}:{q}" for q in qualities]
  if study.methods and has_masks:
    columns += list(BASELINE_COLUMNS)
  return columns


def _valid_level(level: str) -> bool:
  """Whether ``level`` (of ``sensitivity_at_specificity:<level>``) is a specificity."""
  try:
    return 0.0 < float(level) <= 1.0
  except ValueError:
    return False


def check_study_config(study) -> None:
  """Refuses a study whose ``metrics``, ``claims``, ``comparisons`` or ``curves`` name
  something it never measures (a typo would otherwise be reported "not measured", or
  silently leave out a comparison or curve), before anything is trained or written.

  A metric is one of :data:`CLASSIFICATION`, ``sensitivity_at_specificity:<level>`` with
  0 < level <= 1, or ``mean:<column>`` / ``median:<column>`` of a column of
  :func:`measured_columns`; a claim's metric is also one of ``study.metrics`` (only those
  are summarised), its ``a`` a model, its ``b`` a model (``(a, b)`` in ``comparisons``) or
  a number, its ``direction`` ``greater`` or ``less``; a comparison is two models; a curve
  a per-image field of the attacks. Raises ``ValueError`` naming each bad entry, where it
  is used and the closest valid names. The attacks (names, parameters, eps) and the
  saliency methods are checked against their registries first."""
  sweep.check_attacks(study.attacks)
  for e in study.eps:
    checks.check_eps(e, f"study {study.name}: eps")
  for method in study.methods:
    saliency.METHODS[method]
  has_masks = _has_masks(study)
  columns = measured_columns(study, has_masks)
  valid = set(CLASSIFICATION) | {f"{how}:{c}" for how in ("mean", "median") for c in columns}
  models = [m.name for m in study.models]
  problems = []

  def bad(what: str, where: str, candidates, hint: str = "") -> None:
    close = difflib.get_close_matches(what, sorted(candidates), n=3, cutoff=0.6)
    problems.append(f"{what!r} in {where}: "
                    + (f"closest valid: {', '.join(map(repr, close))}" if close else
                       "no valid name is close") + (f" ({hint})" if hint else ""))

  def check_metric(name, where: str) -> bool:
    name = str(name)
    how, _, level = name.partition(":")
    if name in valid or (how == SENS_AT_SPEC and _valid_level(level)):
      return True
    example = f"{SENS_AT_SPEC}:{level if _valid_level(level) else '0.9'}"
    hint = ("the level is a specificity in (0, 1]" if how == SENS_AT_SPEC else
            "not a per-image column of this study" if how in ("mean", "median") else "")
    bad(name, where, valid | {example}, hint)
    return False

  for i, metric in enumerate(study.metrics):
    check_metric(metric, f"metrics[{i}]")
  for i, claim in enumerate(study.get("claims", ())):
    where = f"claims[{i}] ({claim.get('text', '')!r})"
    if check_metric(claim.metric, where + ".metric") and claim.metric not in study.metrics:
      bad(claim.metric, where + ".metric", study.metrics,
          "only the study's metrics are summarised: add it to metrics")
    if claim.a not in models:
      bad(claim.a, where + ".a", models, "not a model of the study")
    if isinstance(claim.b, str):
      if claim.b not in models:
        bad(claim.b, where + ".b", models, "not a model of the study")
      elif claim.a in models and (claim.a, claim.b) not in map(tuple, study.comparisons):
        problems.append(f"{(claim.a, claim.b)!r} in {where}: not among the comparisons "
                        f"{[tuple(c) for c in study.comparisons]}")
    if claim.direction not in ("greater", "less"):
      bad(claim.direction, where + ".direction", ("greater", "less"))
  for i, pair in enumerate(study.get("comparisons", ())):
    for model in pair:
      if model not in models:
        bad(model, f"comparisons[{i}]", models, "not a model of the study")
  fields = _attack_fields(study, has_masks)
  for i, field in enumerate(study.get("curves", ())):
    if field not in fields:
      bad(field, f"curves[{i}]", fields, "not a per-image field of the attacks")
  if problems:
    raise ValueError(
        f"Study {study.name}: {len(problems)} name(s) it does not measure:\n  "
        + "\n  ".join(problems)
        + f"\nA metric is one of {', '.join(CLASSIFICATION)}, '{SENS_AT_SPEC}:<level>', or "
        "'mean:<column>' / 'median:<column>' of a per-image column: "
        + ", ".join(BASE_COLUMNS) + ", '<attack>@<eps>:<field>' (attacks "
        + ("; ".join(f"{sweep.attack_label(s)} at eps "
                     + ", ".join(f"{float(e):g}" for e in dict(s).get("eps") or study.eps)
                     for s in study.attacks) or "none") + "; fields "
        + ", ".join(fields) + ") or '<method>:<quality>' (methods "
        + (", ".join(study.methods) or "none") + ").")
