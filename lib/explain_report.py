"""``explain.py``'s job: explanation maps of checkpoints on a split, their quality
metrics beside trivial baselines, tables and overlay figures.

Localisation numbers mislead without their baselines: a uniform map puts exactly the
lesion's area fraction of its energy inside the mask, and a fixed point at the image
centre falls inside the lesion for a good share of BUSI images. Both are reported in the
same table as rows ``uniform map`` and ``centre point``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from typing import Any

import jax
import numpy as np

from lib import checks, data, experiment, files, metrics, models, parallel, report, saliency

SUMMARY_COLUMNS = ("model", "method", "images_per_s", "lesion_energy", "pointing_game",
                   "top10_iou", "total_variation", "gini", "entropy", "colour_rho",
                   "luminance_rho", "deletion_auc",
                   "insertion_auc", "n")


TARGETS = {"pred": "the predicted class", "label": "the true label"}


def check_config(config) -> None:
  """Method names (:data:`lib.saliency.METHODS`), the target and the channel reduction,
  before anything runs."""
  for method in config.methods:
    saliency.METHODS[method]
  checks.choice(config.get("channels", "max_abs"), saliency.CHANNEL_REDUCTIONS, "channels")
  if config.target not in TARGETS:
    raise ValueError(f"target must be one of {sorted(TARGETS)}, got {config.target!r}")


def compile_method(model, method: str, config, mesh):
  """Two functions for one method, for :func:`lib.parallel.map_batches` on ``mesh``:
  ``maps(variables, key, {"x", "labels"}, start) -> (maps, target)`` (the explained class
  is the prediction, ``config.target="pred"``, or the label; the batch's key is
  ``fold_in(key, start)``) and ``faithfulness(variables, {"x", "maps", "target"}, start) ->
  deletion/insertion AUCs``. They are separate so that images/s measures the explanation
  alone."""

  channels = config.get("channels", "max_abs")   # RGB gradient maps: max or sum of |g|

  def maps_fn(variables, key, batch, start):
    x, fns = batch["x"], models.model_fns(model, variables)
    if config.target == "label":
      target = batch["labels"]
    else:
      target = saliency.predicted_class(fns.logits_fn, x)
    maps = saliency.explain(method, fns, x, target, key=jax.random.fold_in(key, start),
                            smoothgrad_samples=config.smoothgrad_samples,
                            smoothgrad_sigma=config.smoothgrad_sigma, ig_steps=config.ig_steps,
                            channels=channels)
    return maps, target

  def faithfulness_fn(variables, batch, start):
    del start
    fns = models.model_fns(model, variables)
    out = metrics.deletion_insertion(fns.logits_fn, batch["x"], batch["maps"], batch["target"],
                                     config.deletion_steps)
    return {k: v for k, v in out.items() if k.endswith("auc")}

  return parallel.jit_batched(maps_fn, mesh, 2), parallel.jit_batched(faithfulness_fn, mesh, 1)


def map_quality(maps, masks, has_masks: bool, top_fraction: float, images=None) -> dict:
  """Per-image quality metrics of a batch of maps. With masks and RGB ``images`` (uint8
  (N, H, W, 3)), also whether the map follows the colour variation inside the lesion
  (``colour_rho``: :func:`lib.metrics.colour_variation_correlation`) and, as its control,
  brightness edges (``luminance_rho``)."""
  out = {"total_variation": metrics.total_variation(maps), "gini": metrics.gini(maps),
         "entropy": metrics.entropy(maps)}
  if has_masks:
    out.update(lesion_energy=metrics.lesion_energy(maps, masks),
               pointing_game=metrics.pointing_game(maps, masks).astype(np.float64),
               top10_iou=metrics.top_fraction_iou(maps, masks, top_fraction))
    if images is not None and images.shape[-1] == 3:
      rgb = np.asarray(images, np.float32) / 255.0
      out.update(colour_rho=metrics.colour_variation_correlation(maps, rgb, masks),
                 luminance_rho=metrics.luminance_variation_correlation(maps, rgb, masks))
  return out


@dataclasses.dataclass(frozen=True)
class CheckpointExplanation:
  """What :func:`explain_checkpoint` found for one checkpoint: its ``train_config``, the
  explained images (``arrays``) and whether their data set ``has_masks``; per method, the
  per-image quality metrics (``per_method``: :func:`map_quality`, plus deletion / insertion
  AUCs with ``config.faithfulness``), the ``maps`` (N, H, W) and the ``timing`` (images/s)."""
  train_config: Any
  arrays: dict
  has_masks: bool
  per_method: dict
  maps: dict
  timing: dict


def explain_checkpoint(workdir_ckpt: str, config, restored=None) -> CheckpointExplanation:
  """Maps and per-image metrics of every method for one checkpoint. ``restored``:
  ``(train_config, model, variables, arrays)`` already in memory (else read here)."""
  mesh = parallel.make_mesh(config.get("num_devices", 0))
  if restored is None:
    train_config, model, variables = experiment.restore_model(workdir_ckpt, config.which,
                                                              mesh=mesh)
    arrays = data.load_split(train_config.data, config.split, train_config.image_size)
  else:
    train_config, model, variables, arrays = restored
  arrays = data.subset(arrays, config.max_images, config.seed)
  has_masks = data.DATASETS[train_config.data.name].has_masks
  n, bs = len(arrays["label"]), config.batch_size
  key = jax.random.PRNGKey(config.seed)
  in_channels = train_config.model.in_channels
  to_input = lambda b: {**b, "x": data.to_model_input(b.pop("image"), in_channels)}
  per_method, all_maps, timing = {}, {}, {}
  for method in config.methods:
    maps_fn, faithfulness_fn = compile_method(model, method, config, mesh)
    chunks, targets = [], []
    t_total, images_timed = 0.0, 0
    for b, (_, _, (maps, target), seconds) in enumerate(parallel.iterate_batches(
        maps_fn, {"image": arrays["image"], "labels": arrays["label"]}, batch_size=bs,
        mesh=mesh, args=(variables, key), prepare=to_input,
        desc=f"{os.path.basename(workdir_ckpt.rstrip('/'))} {method}")):
      if b > 0 or n <= bs:  # the first call compiles
        t_total += seconds
        images_timed += bs
      chunks.append(maps)
      targets.append(target)
    maps = np.concatenate(chunks)[:n]
    q = map_quality(maps, arrays["mask"], has_masks, config.top_fraction, arrays["image"])
    if config.faithfulness:
      q.update(parallel.map_batches(
          faithfulness_fn, {"image": arrays["image"], "maps": maps,
                            "target": np.concatenate(targets)[:n]},
          batch_size=bs, mesh=mesh, args=(variables,), prepare=to_input))
    per_method[method] = q
    all_maps[method] = maps
    timing[method] = images_timed / t_total if t_total > 0 else float("nan")
    logging.info("%s: %s %.1f images/s", os.path.basename(workdir_ckpt), method, timing[method])
  return CheckpointExplanation(train_config=train_config, arrays=arrays, has_masks=has_masks,
                               per_method=per_method, maps=all_maps, timing=timing)


def summary_rows(model_name, per_method, timing, arrays, has_masks) -> list[dict]:
  """One row per method (means over images) and the baseline rows of a map that knows
  nothing (with masks)."""
  rows = []
  for method, q in per_method.items():
    row = {"model": model_name, "method": method, "images_per_s": timing[method],
           "n": int(len(arrays["label"]))}
    row.update({k: float(np.nanmean(v)) for k, v in q.items()})   # NaN: undefined here
    rows.append(row)
  if has_masks:
    base = metrics.trivial_baselines(arrays["mask"])
    rows.append({"model": model_name, "method": "uniform map (baseline)",
                 "lesion_energy": float(base["uniform_lesion_energy"].mean()),
                 "n": int(len(arrays["label"]))})
    rows.append({"model": model_name, "method": "centre point (baseline)",
                 "pointing_game": float(base["centre_pointing_game"].mean()),
                 "n": int(len(arrays["label"]))})
  return rows


def compare_models(results: dict, metrics_to_compare=("lesion_energy", "total_variation", "gini",
                                                     "entropy", "colour_rho")) -> list[dict]:
  """Per method and metric: each model's mean with a bootstrap 95 % CI, and the paired
  difference to the first model (same images resampled together)."""
  names = list(results)
  rows = []
  if not names:
    return rows
  ref = names[0]
  for method in results[ref]["per_method"]:
    for metric in metrics_to_compare:
      if metric not in results[ref]["per_method"][method]:
        continue
      base = results[ref]["per_method"][method][metric]
      for name in names:
        vals = results[name]["per_method"][method][metric]
        mean, lo, hi = metrics.bootstrap_ci(vals)
        row = {"method": method, "metric": metric, "model": name, "mean": mean,
               "ci_low": lo, "ci_high": hi}
        if name != ref and len(vals) == len(base):
          d, dlo, dhi = metrics.bootstrap_ci(vals, paired_with=base)
          row.update({f"diff_vs_{ref}": d, "diff_ci_low": dlo, "diff_ci_high": dhi})
        rows.append(row)
  return rows


def run_explain(config, workdir: str) -> list[dict]:
  """``explain.py``'s job; the config is checked before anything is written, and the work
  dir is locked while it runs."""
  checks.check_which(config.which)
  checkpoints = experiment.parse_checkpoints(config.checkpoints)
  check_config(config)
  with files.WorkdirLock(workdir, "explain.py"):
    return _explain(config, workdir, checkpoints)


def _explain(config, workdir: str, checkpoints) -> list[dict]:
  rows, per_image, results = [], [], {}
  for name, ckpt in zip(experiment.run_names(checkpoints), checkpoints):
    explained = explain_checkpoint(ckpt, config)
    train_config, arrays, has_masks = explained.train_config, explained.arrays, explained.has_masks
    per_method, maps, timing = explained.per_method, explained.maps, explained.timing
    results[name] = {"arrays": arrays, "maps": maps, "per_method": per_method,
                     "class_names": data.class_names(train_config.data)}
    rows += summary_rows(name, per_method, timing, arrays, has_masks)
    for method, q in per_method.items():
      for i, ident in enumerate(arrays["id"]):
        per_image.append({"model": name, "method": method, "id": ident,
                          "label": int(arrays["label"][i]), **{k: float(v[i]) for k, v in q.items()}})
    buffer = io.BytesIO()
    np.savez_compressed(buffer, ids=np.asarray(arrays["id"]),
                        **{m: v.astype(np.float16) for m, v in maps.items()})
    files.atomic_write(os.path.join(workdir, f"maps_{name}.npz"), buffer.getvalue(), mode="wb")
    if config.figure_images:
      shown = data.example_indices(arrays["label"], config.figure_images)   # both classes
      report.plot_explanations(data.take(arrays, shown), {m: v[shown] for m, v in maps.items()},
                               results[name]["class_names"],
                               os.path.join(workdir, f"maps_{name}.png"))
  if len(results) > 1 and config.figure_images:
    report.plot_model_comparison(results, os.path.join(workdir, "compare_models.png"),
                                 config.figure_images)
  comparison = compare_models(results)
  comparison_table = report.write_table(comparison, os.path.join(workdir, "comparison"))
  files.atomic_json(os.path.join(workdir, "summary.json"), rows)
  report.write_table(per_image, os.path.join(workdir, "per_image"))
  table = report.write_table(rows, os.path.join(workdir, "summary"), SUMMARY_COLUMNS)
  files.atomic_write(os.path.join(workdir, "report.md"), (
            "# Explanation maps and their quality\n\n"
            f"Split `{config.split}`, target: {TARGETS[config.target]}; RGB gradient maps "
            f"reduced over channels by `{config.get('channels', 'max_abs')}` (max_abs: max of "
            "|g|, abs_sum: sum of |g|). Means over images; "
            "lesion energy = fraction of the map's mass inside the lesion mask, pointing game = "
            "map maximum inside the mask, top10_iou = IoU of the top 10 % pixels with the mask, "
            "total variation (lower = smoother), Gini (higher = sparser), entropy (lower = "
            "more concentrated), deletion AUC (lower = more faithful), insertion AUC (higher = "
            "more faithful). The baseline rows are what a map that knows nothing scores.\n\n"
            f"{table}\n## Models compared (mean, bootstrap 95 % CI over images; paired "
            f"differences to the first model)\n\n{comparison_table}\n"
            + ("![models compared](compare_models.png)\n"
               if len(results) > 1 and config.figure_images else "")
            + "".join(f"![maps](maps_{n}.png)\n" for n in results if config.figure_images)))
  return rows
