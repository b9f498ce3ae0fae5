"""A study's stages: train every (model, seed, fold) run, evaluate it image by image on
its held-out fold, redraw the example figures, summarise; :func:`run_study` runs them.

Stages (each resumes; a finished run or evaluation is never redone): train a run, evaluate
it on its test fold (``per_image.csv``), next run; then summarise what is there
(:func:`summarise`: the numbers of :mod:`lib.study.statistics`, written as tables, figures
and README by :mod:`lib.study.reporting`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time

import jax
import ml_collections
import numpy as np

from lib import (data, experiment, explain_report, files, metrics, models, parallel, progress,
                 report, sweep, trainer)
from lib.study.config import (STAGES, all_runs, check_study_config, eval_dir, measured_columns,
                              run_dir, train_config_for)
from lib.study.records import (committed_records, out_of_fold, read_records, with_folds,
                               write_records)
from lib.study.reporting import plot_eps_curves, plot_metrics, write_readme
from lib.study.statistics import judge, summary_rows


# ----------------------------------------------------------------------------- stages


def train_run(study, m, seed: int, fold: int, workdir: str) -> str:
  """Trains one run unless it has ``test_metrics.json`` (an interrupted one resumes from
  its latest checkpoint); returns its directory."""
  rd = run_dir(study, workdir, m.name, seed, fold)
  if parallel.exists(os.path.join(rd, "test_metrics.json")):
    return rd
  logging.info("Study %s: training %s seed %d fold %d/%d -> %s", study.name, m.name, seed,
               fold + 1, study.folds, rd)
  t0 = time.time()
  trainer.train_and_evaluate(train_config_for(study, m, seed, fold, workdir), rd)
  files.atomic_json(os.path.join(rd, "train_time.json"), {"seconds": time.time() - t0})
  return rd


def _attack_config(study) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      eps=tuple(study.eps), batch_size=study.batch_size, seed=0, map_metrics=study.map_metrics,
      map_method=study.map_method, top_k=study.top_k, eps_cascade=study.get("eps_cascade", False)))


def _explain_config(study) -> ml_collections.ConfigDict:
  from configs import explain
  c = explain.get_config()
  c.methods, c.faithfulness, c.batch_size = tuple(study.methods), False, study.batch_size
  c.smoothgrad_samples, c.num_devices = study.smoothgrad_samples, study.get("num_devices", 0)
  return c


_COMPILED: dict = {}   # attack functions compiled for one architecture, reused across runs


def evaluate_run(study, rd: str, *, out_dir: str = "", figures_to: str = "",
                 model_name: str = "") -> dict:
  """Per-image records of the run in ``rd`` on its held-out fold: ``prob`` (of the positive class)
  and ``correct``; for every attack and eps ``<attack>@<eps>:<field>`` (``adv_correct``,
  ``spearman``, ``lesion_energy_adv`` ... of :func:`lib.sweep.run_attack_grid`); for
  every saliency method ``<method>:<quality>`` (lesion energy, total variation, Gini,
  entropy of :func:`lib.explain_report.map_quality`). Written to
  ``<out_dir or rd>/per_image.csv``.
  With ``figures_to``, before/after figures of the attacks are written there.

  Each attack's columns are also written, as soon as it ends, to
  ``per_image.partial-<fingerprint>.csv`` (the fingerprint: the checkpoint, the attack with
  every parameter, the study's eps grid and map settings; :func:`_partial_path`): an
  evaluation interrupted (a session's end, a preemption) resumes at the next attack instead
  of redoing hours of AutoAttack, and a partial made with other settings is never taken.
  An attack taken back this way redraws its figure on the few figure images only; its
  seconds count in ``kept_seconds``. The partial files go once ``per_image.csv`` is
  written."""
  mesh = parallel.make_mesh(study.get("num_devices", 0))
  config, model, variables = experiment.restore_model(rd, "best", mesh=mesh)
  arrays = data.load_split(config.data, "test", config.image_size)
  in_channels, has_masks = config.model.in_channels, data.DATASETS[config.data.name].has_masks
  key = ("probs", repr(model), mesh)   # compiled once per architecture, like the attacks
  if key not in _COMPILED:
    _COMPILED[key] = parallel.jit_batched(
        lambda v, batch, start: jax.nn.softmax(models.model_fns(model, v).logits_fn(batch["x"]), -1),
        mesh, 1)
  probs = parallel.map_batches(
      _COMPILED[key], {"image": arrays["image"]}, batch_size=study.batch_size, mesh=mesh,
      args=(variables,), prepare=lambda b: {"x": data.to_model_input(b["image"], in_channels)})
  rec = {"id": list(arrays["id"]), "group": list(arrays["group"]),
         "label": arrays["label"].astype(np.float64), "prob": probs[:, -1].astype(np.float64),
         "correct": (probs.argmax(-1) == arrays["label"]).astype(np.float64)}
  acfg = _attack_config(study)
  class_names = data.class_names(config.data)
  out = out_dir or rd
  checkpoint, kept_seconds = experiment.checkpoint_id(rd, "best"), 0.0
  for spec in study.attacks:
    label = sweep.attack_label(spec)
    partial = _partial_path(out, checkpoint, spec, acfg)
    kept = _read_partial(partial, rec["id"]) if files.is_writer() else None
    # Process 0 decides for all (the others may not see its files); only it writes records.
    if parallel.agree(kept is not None):   # finished before an interruption: not redone
      logging.info("%s: %s kept from an interrupted evaluation (%s)", model_name or rd, label,
                   partial)
      cols, seconds = kept if kept is not None else ({}, 0.0)
      rec.update(cols)
      kept_seconds += seconds
      if figures_to:
        _plot_figure_examples(study, spec, model, variables, arrays, acfg, mesh, class_names,
                              figures_to, model_name, in_channels, has_masks)
      continue
    per_image, t0 = {}, time.time()
    _, examples = sweep.run_attack_grid(
        model, variables, arrays, acfg, spec, mesh,
        in_channels=in_channels, keep_examples=study.figure_images if figures_to else 0,
        has_masks=has_masks, per_image=per_image, cache=_COMPILED)
    seconds = time.time() - t0
    logging.info("%s: %s at %d eps in %.1f s", model_name or rd, label, len(per_image), seconds)
    cols = {f"{label}@{eps:g}:{k}": v for eps, fields in per_image.items()
            for k, v in fields.items()}
    rec.update(cols)
    os.makedirs(out, exist_ok=True)
    write_records({"id": rec["id"], "group": rec["group"], **cols}, partial)
    files.atomic_json(partial[:-len(".csv")] + ".json", {"attack": label, "seconds": seconds})
    if figures_to and examples:
      _plot_examples(study, spec, arrays, examples, class_names, figures_to, model_name)
  maps = {}
  if study.methods:
    explained = explain_report.explain_checkpoint(
        rd, _explain_config(study), restored=(config, model, variables, arrays))
    maps = explained.maps
    for method, q in explained.per_method.items():
      rec.update({f"{method}:{k}": np.asarray(v, np.float64) for k, v in q.items()})
    if has_masks:
      base = metrics.trivial_baselines(arrays["mask"])
      rec["baseline:uniform_lesion_energy"] = base["uniform_lesion_energy"].astype(np.float64)
      rec["baseline:centre_pointing_game"] = base["centre_pointing_game"].astype(np.float64)
  os.makedirs(out, exist_ok=True)
  write_records(rec, os.path.join(out, "per_image.csv"))
  if files.is_writer():       # per_image.csv now holds them (and stale ones go too)
    for name in os.listdir(out):
      if name.startswith("per_image.partial-"):
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(out, name))
  return {"records": rec, "arrays": arrays, "maps": maps, "class_names": class_names,
          "kept_seconds": kept_seconds}


def _partial_path(out: str, checkpoint: str, spec, acfg) -> str:
  """Where :func:`evaluate_run` keeps one attack's columns until ``per_image.csv`` is
  written; the name fingerprints what the numbers depend on (checkpoint, attack and every
  parameter, eps grid, cascade and map settings), not the attack's label."""
  what = json.dumps([checkpoint, sweep.attack_key(spec), acfg.to_dict()], sort_keys=True,
                    default=str)
  return os.path.join(out, f"per_image.partial-{hashlib.sha1(what.encode()).hexdigest()[:16]}.csv")


def _read_partial(path: str, ids: list[str]) -> tuple[dict, float] | None:
  """(columns, seconds) of one attack that an interrupted :func:`evaluate_run` wrote to
  ``path``, or None when there are none, they belong to other images or cannot be read
  (then the attack runs again)."""
  if not os.path.exists(path):
    return None
  try:
    kept = read_records(path)
    seconds = float(files.read_json(path[:-len(".csv")] + ".json")["seconds"])
  except (OSError, ValueError, KeyError) as e:
    logging.warning("%s cannot be read (%s): attacking again", path, e)
    return None
  if kept["id"] != list(ids):
    logging.warning("%s holds other images than this evaluation: attacking again", path)
    return None
  return {k: v for k, v in kept.items() if k not in ("id", "group")}, seconds


def _plot_figure_examples(study, spec, model, variables, arrays, acfg, mesh, class_names,
                          figures_to: str, model_name: str, in_channels: int,
                          has_masks: bool) -> None:
  """The before/after figure of one attack, from a run on the ``figure_images`` test images
  that :func:`lib.data.example_indices` picks (both classes in turn) only."""
  shown = data.take(arrays, data.example_indices(arrays["label"], study.figure_images))
  _, examples = sweep.run_attack_grid(
      model, variables, shown, acfg, spec, mesh, in_channels=in_channels,
      keep_examples=len(shown["label"]), has_masks=has_masks, cache=_COMPILED)
  _plot_examples(study, spec, shown, examples, class_names, figures_to, model_name)


def _plot_examples(study, spec, arrays, examples, class_names, figures_to: str,
                   model_name: str) -> None:
  """``examples_<model>_<attack>.png``: the images (or maps) of one attack before and
  after, at the eps nearest ``study.figure_eps``."""
  label = sweep.attack_label(spec)
  eps = min(examples, key=lambda e: abs(e - study.figure_eps))
  path = os.path.join(figures_to, f"examples_{model_name}_{label}.png")
  report.plot_attack_examples(sweep.attack_family(spec) == sweep.EXPLANATION, arrays, examples,
                              class_names, path, eps, title=f"{model_name} / {label}")


def figure_seed(study) -> int:
  """The repetition whose first fold the figures show: ``study.figure_seed`` (-1: the last
  of ``study.seeds``)."""
  seed = study.get("figure_seed", -1)
  return study.seeds[-1] if seed == -1 else seed


def plot_figures(study, workdir: str, results_dir: str, seed: int) -> None:
  """The ``figures`` stage: redraws every ``examples_*.png`` and ``maps.png`` from fold 0 of
  repetition ``seed`` (the first evaluation of a study draws them once, from its first
  repetition). The attacks run on only the ``figure_images`` test images that
  :func:`lib.data.example_indices` picks (both classes in turn), and no records are
  written; ``figures.json`` says which runs the figures show."""
  mesh, acfg = parallel.make_mesh(study.get("num_devices", 0)), _attack_config(study)
  for m in study.models:
    rd = run_dir(study, workdir, m.name, seed, 0)
    if not parallel.exists(os.path.join(rd, "test_metrics.json")):
      raise FileNotFoundError(
          f"Figures of repetition {seed} need its fold-0 run of {m.name!r} in {rd}, which is "
          "not a finished run: train it first or pick another --config.figure_seed.")
    config, model, variables = experiment.restore_model(rd, "best", mesh=mesh)
    arrays = data.load_split(config.data, "test", config.image_size)
    for spec in study.attacks:
      _plot_figure_examples(study, spec, model, variables, arrays, acfg, mesh,
                            data.class_names(config.data), results_dir, m.name,
                            config.model.in_channels,
                            data.DATASETS[config.data.name].has_masks)
  plot_first_fold_maps(study, workdir, results_dir, seed=seed, overwrite=True)
  files.atomic_json(os.path.join(results_dir, "figures.json"), {"seed": seed, "fold": 0})


def evaluate_once(study, rd: str, out_dir: str, model_name: str, *,
                  figures_to: str = "") -> None:
  """:func:`evaluate_run` of the run in ``rd`` unless ``out_dir/per_image.csv`` exists."""
  if parallel.exists(os.path.join(out_dir, "per_image.csv")):
    return
  logging.info("Study %s: evaluating %s -> %s", study.name, rd, out_dir)
  t0 = time.time()
  done = evaluate_run(study, rd, out_dir=out_dir, figures_to=figures_to, model_name=model_name)
  files.atomic_json(os.path.join(out_dir, "eval_time.json"),
                    {"seconds": time.time() - t0 + done["kept_seconds"]})


def plot_first_fold_maps(study, workdir: str, results_dir: str, *, seed: int | None = None,
                         overwrite: bool = False) -> None:
  """``maps.png``: the saliency maps of every model on ``figure_images`` test images (both
  classes) of the first fold of repetition ``seed`` (default the first), side by side, once
  all those runs exist; kept if already drawn unless ``overwrite``."""
  path = os.path.join(results_dir, "maps.png")
  seed = study.seeds[0] if seed is None else seed
  dirs = {m.name: run_dir(study, workdir, m.name, seed, 0) for m in study.models}
  if not study.methods or (parallel.exists(path) and not overwrite) or not all(
      parallel.exists(os.path.join(d, "test_metrics.json")) for d in dirs.values()):
    return
  config = _explain_config(study)
  config.max_images = study.figure_images
  results = {}
  for name, d in dirs.items():
    explained = explain_report.explain_checkpoint(d, config)
    results[name] = {"arrays": explained.arrays, "maps": explained.maps,
                     "class_names": data.class_names(explained.train_config.data)}
  report.plot_model_comparison(results, path, study.figure_images)


def summarise(study, workdir: str, results_dir: str) -> dict:
  """The ``summarise`` stage: tables, figures and README of the finished runs (the numbers
  of :func:`lib.study.statistics.summary_rows`; see :mod:`lib.study`)."""
  os.makedirs(results_dir, exist_ok=True)
  recs = committed_records(study, results_dir)
  missing = []
  for m, seed, fold in all_runs(study):
    path = os.path.join(eval_dir(workdir, m.name, seed, fold), "per_image.csv")
    if os.path.exists(path):
      recs[m.name, seed, fold] = read_records(path)
    elif (m.name, seed, fold) not in recs:
      missing.append(f"{m.name}/seed{seed}_fold{fold}")
  names = [m.name for m in study.models]
  complete_reps = [s for s in study.seeds
                   if all((n, s, f) in recs for n in names for f in range(study.folds))]
  pooled = out_of_fold(recs, names, complete_reps, study.folds)
  numbers = summary_rows(recs, pooled, names, study.metrics, study.comparisons,
                         folds=study.folds, n_boot=study.n_boot)
  per_run, model_rows, comparison_rows = numbers.per_run, numbers.models, numbers.comparisons
  report.write_table(per_run, os.path.join(results_dir, "per_run"))
  model_table = report.write_table(model_rows, os.path.join(results_dir, "models"))
  comparison_table = report.write_table(comparison_rows, os.path.join(results_dir, "comparisons"))
  for n in names:     # every evaluated run, also of unfinished repetitions (durable record)
    for s in study.seeds:
      done = [f for f in range(study.folds) if (n, s, f) in recs]
      if done:
        write_records(with_folds([recs[n, s, f] for f in done], done),
                      os.path.join(results_dir, f"per_image_{n}_seed{s}.csv"))
  plot_metrics(model_rows, study, os.path.join(results_dir, "metrics.png"))
  curves = [f"{field}_vs_eps.png" for field in study.get("curves", ("adv_correct",))
            if plot_eps_curves(model_rows, study, field,
                               os.path.join(results_dir, f"{field}_vs_eps.png"))]
  verdicts = [judge(c, comparison_rows, model_rows) for c in study.get("claims", ())]
  write_readme(study, results_dir, model_table, comparison_table, verdicts, missing,
               complete_reps, curves, workdir)
  return {"models": model_rows, "comparisons": comparison_rows, "verdicts": verdicts,
          "missing": missing}


def run_study(study, workdir: str) -> dict:
  """``study.py``'s job: the stages in ``study.stages`` (default all but ``figures``):
  ``train`` and ``evaluate`` every run not done (or committed) yet, redraw the ``figures``
  from another repetition (:func:`plot_figures`), ``summarise`` them all. Returns the
  summary (empty without ``summarise``: a pass over one seed does not overwrite the
  study's summary of all of them). The config is checked first
  (:func:`lib.study.config.check_study_config`), and so are the committed records it would
  reuse (:func:`check_committed_records`). A relative ``results_dir`` is under the
  repository (where the committed studies live), whatever the current directory."""
  results_dir = results_path(study)
  stages = tuple(study.get("stages", ("train", "evaluate", "summarise")))
  if unknown := set(stages) - set(STAGES):
    raise ValueError(f"Unknown stage(s) {sorted(unknown)} in --config.stages: the stages are "
                     f"{', '.join(STAGES)}.")
  check_study_config(study)   # a misspelt metric stops here, before anything is written
  check_committed_records(study, results_dir)
  logging.info("Study %s: runs in %s, results in %s.", study.name, os.path.abspath(workdir),
               results_dir)
  if set(stages) == {"summarise"}:   # writes only results_dir: no work dir, no lock needed
    return _run_stages(study, workdir, results_dir, stages)
  with files.WorkdirLock(workdir, "study.py"):
    return _run_stages(study, workdir, results_dir, stages)


def results_path(study) -> str:
  """``study.results_dir``, a relative one taken from the repository root."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.path.normpath(os.path.join(root, study.results_dir))


def check_committed_records(study, results_dir: str) -> None:
  """Refuses to reuse committed records made with other settings: a record is reused in
  place of a run (never retrained), so if this config measures a column the committed
  ``per_image_*.csv`` lacks (another eps, attack or method), the study would summarise the
  old numbers under the new config (it used to, and rewrote ``study_config.json`` with
  the new eps while its tables showed the old ones)."""
  committed = committed_records(study, results_dir)
  if not committed:
    return
  # One column per attack, eps and method identifies what was measured (fields added to
  # the evaluation later, such as constant_map, are not required of older records).
  want = {c for c in measured_columns(study)
          if c.endswith(":adv_correct") or c.endswith(":total_variation")}
  for (model, seed, _), rec in sorted(committed.items()):
    missing = sorted(want - set(rec))
    if missing:
      path = os.path.join(results_dir, f"per_image_{model}_seed{seed}.csv")
      raise ValueError(
          f"{path} holds this study's records made with other settings: it lacks "
          f"{len(missing)} column(s) this config measures, e.g. {missing[:3]}. Use another "
          "--config.results_dir for a study with other settings, or move that file aside "
          "to redo its runs.")


def _run_stages(study, workdir: str, results_dir: str, stages) -> dict:
  os.makedirs(results_dir, exist_ok=True)
  committed = committed_records(study, results_dir)
  runs = all_runs(study)
  for m, seed, fold in progress.track(runs, len(runs), f"study {study.name}", "run"):
    # each run evaluated as soon as it is trained
    rd = run_dir(study, workdir, m.name, seed, fold)
    done_here = parallel.exists(os.path.join(eval_dir(workdir, m.name, seed, fold), "per_image.csv"))
    if (m.name, seed, fold) in committed and not done_here:
      continue   # summarised before and its work dir is gone: never retrained
    if "train" in stages:
      train_run(study, m, seed, fold, workdir)
    if "evaluate" in stages and parallel.exists(os.path.join(rd, "test_metrics.json")):
      first = seed == study.seeds[0] and fold == 0
      evaluate_once(study, rd, eval_dir(workdir, m.name, seed, fold), m.name,
                    figures_to=results_dir if first else "")
  if "evaluate" in stages:
    plot_first_fold_maps(study, workdir, results_dir)
  if "figures" in stages:
    plot_figures(study, workdir, results_dir, figure_seed(study))
  return summarise(study, workdir, results_dir) if "summarise" in stages else {}
