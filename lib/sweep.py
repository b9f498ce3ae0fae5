"""Attack sweeps: checkpoints x attacks x eps on one split, sharded over all devices.

For every attack one function ``(variables, x, y, eps, key) -> per-example results`` is
jit-compiled with ``eps`` traced, so the whole eps grid costs one compilation per attack
and input shape (batches are padded to one shape). The batch axis is sharded over the
same 1-D mesh as training; everything in the function is per example, so the numbers do
not depend on the number of devices.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lib import attacks, checks, data, experiment, files, metrics, models, parallel, report, saliency
from lib import explanation_attacks  # noqa: F401  pylint: disable=unused-import  (registers 'explanation')

RESULT_COLUMNS = ("model", "attack", "eps", "clean_accuracy", "accuracy", "sensitivity",
                  "specificity", "balanced_accuracy", "auc", "success_rate", "linf_mean",
                  "linf_max", "l2_mean", "l2_max", "psnr_mean", "ssim_mean", "n", "attacked")
MAP_COLUMNS = ("model", "attack", "map_method", "eps", "map_label_kept", "spearman_median",
               "spearman_mean", "pearson_median", "top_k_intersection", "map_ssim",
               "com_shift_px", "lesion_energy_clean", "lesion_energy_adv", "constant_maps",
               "ssim_mean", "n")


EXPLANATION = "explanation"
SPEC_ONLY = ("eps",)   # entry fields that belong to the sweep, not to the attack


def attack_entry(spec) -> tuple:
  """``(registry entry, resolved parameters)`` of a config entry of ``attacks`` (a dict or
  ConfigDict with ``name``, the attack's parameters and optionally its own ``eps`` grid).
  Unknown names and parameters stop here, with the valid ones."""
  spec = dict(spec)
  if "name" not in spec:
    raise ValueError(f"An attacks entry needs a 'name' ({', '.join(attacks.ATTACKS.names())}): "
                     f"{spec}")
  entry = attacks.ATTACKS[spec["name"]]
  return entry, entry.resolve(spec, ignore=SPEC_ONLY)


def check_attacks(specs) -> None:
  """Checks every entry of ``attacks`` (names, parameters, eps in [0, 1]) and that no two
  entries share a label (they would share rows and resume keys)."""
  labels = {}
  for spec in specs:
    attack_entry(spec)
    for e in dict(spec).get("eps") or ():
      checks.check_eps(e, f"eps of attack {attack_label(spec)}")
    label = attack_label(spec)
    if label in labels and attack_key(spec) != attack_key(labels[label]):
      raise ValueError(f"Two attacks entries have the label {label!r} but different settings "
                       f"({dict(labels[label])} and {dict(spec)}); their rows would mix.")
    labels[label] = spec


def make_attack(spec) -> Callable:
  """``(fns, x, y, eps, key, surrogate_fns) -> x_adv`` from a config entry of ``attacks``
  (an entry of :data:`lib.attacks.ATTACKS`, e.g. ``{'name': 'pgd', 'steps': 10}``, or
  ``'explanation'`` for :mod:`lib.explanation_attacks`; a plain dict as parsed from
  ``--config.attacks="({'name': 'pgd', 'steps': 10},)"`` works too)."""
  entry, params = attack_entry(spec)

  def run(fns, x, y, eps, key, surrogate_fns=None):
    return entry(fns, x, y, params=params, eps=eps, key=key, surrogate_fns=surrogate_fns)
  return run


def attack_label(spec) -> str:
  """The attack's short name for tables, records and study columns, from its registered
  label rule: ``pgd-10``, ``apgd-20-dlr``, ``grad_cam-keep-50``, ``grad_cam-keep-50-adam``,
  ``gradient-top_k-30-softplus``, ``grad_cam-keep-50-r3``..."""
  entry, params = attack_entry(spec)
  return entry.label(params)


def attack_key(spec) -> str:
  """Everything that determines an attack's numbers (name and every parameter, defaults
  included) as canonical JSON: a resumed sweep reuses a cell only if this matches."""
  entry, params = attack_entry(spec)
  return entry.key(params)


def attack_family(spec) -> str:
  return attack_entry(spec)[0].meta["family"]


def map_method(spec, config) -> str:
  """The explanation whose change is measured: the attacked one for explanation attacks,
  ``config.map_method`` for the others."""
  entry, params = attack_entry(spec)
  if entry.meta["family"] == "explanation":
    return params["method"]
  return config.get("map_method", "grad_cam")


class TraceCounter:
  """Counts traces of the functions it wraps (each trace is followed by one XLA
  compilation, unless the persistent compilation cache has it)."""

  def __init__(self):
    self.count = 0

  def wrap(self, fn):
    @functools.wraps(fn)
    def traced(*args, **kwargs):
      self.count += 1
      return fn(*args, **kwargs)
    return traced


def compile_attack(model, spec, mesh, counter: TraceCounter | None = None,
                   return_images: bool = False, map_method: str = ""):
  """The jitted per-batch function ``(variables, eps, key, batch, start) -> outputs`` of one
  attack for one model (:func:`lib.parallel.jit_batched`: the batch ``{"x", "y"}`` sharded
  over the mesh, the per-example results gathered to every process; the adversarial images
  only when ``return_images``). With ``map_method`` the maps of the clean and the attacked
  images (real model, explaining each image's predicted class: what a user would be shown)
  come back too. The batch's key is ``fold_in(key, start)``."""
  run = make_attack(spec)
  measure_options = dict(smoothgrad_samples=dict(spec).get("smoothgrad_samples", 8),
                         smoothgrad_sigma=dict(spec).get("smoothgrad_sigma", 0.1))

  def evaluate(variables, eps, key, batch, start):
    x, y = batch["x"], batch["y"]
    key = jax.random.fold_in(key, start)
    fns = models.model_fns(model, variables)
    x_adv = run(fns, x, y, eps, key, models.surrogate_fns(model, variables))
    clean_logits, adv_logits = fns.logits_fn(x), fns.logits_fn(x_adv)
    out = {"clean_probs": jax.nn.softmax(clean_logits, -1), "adv_probs": jax.nn.softmax(adv_logits, -1)}
    if return_images:
      out["x_adv"] = x_adv
    if map_method:
      explain = functools.partial(saliency.explain, map_method, fns, key=jax.random.PRNGKey(0),
                                  **measure_options)
      out["clean_map"] = explain(x, jnp.argmax(clean_logits, -1))
      out["adv_map"] = explain(x_adv, jnp.argmax(adv_logits, -1))
    out.update(metrics.perturbation_metrics(x, x_adv))
    return out

  return parallel.jit_batched(counter.wrap(evaluate) if counter else evaluate, mesh, 3)


def cell_metrics(clean_probs, adv_probs, labels, pert: dict) -> dict:
  """The numbers of one (model, attack, eps) cell."""
  cm = metrics.classification_metrics(adv_probs, labels)
  clean_correct = clean_probs.argmax(-1) == labels
  flipped = adv_probs.argmax(-1) != labels
  row = {"clean_accuracy": float(clean_correct.mean()), "accuracy": cm["accuracy"],
         "sensitivity": cm["sensitivity"], "specificity": cm["specificity"],
         "balanced_accuracy": cm["balanced_accuracy"], "auc": cm["auc"],
         "success_rate": float(flipped[clean_correct].mean()) if clean_correct.any() else float("nan"),
         "n": int(len(labels))}
  finite_psnr = np.where(np.isfinite(pert["psnr"]), pert["psnr"], np.nan)
  row.update(linf_mean=float(pert["linf"].mean()), linf_max=float(pert["linf"].max()),
             l2_mean=float(pert["l2"].mean()), l2_max=float(pert["l2"].max()),
             psnr_mean=float(np.nanmean(finite_psnr)) if np.isfinite(finite_psnr).any() else float("inf"),
             ssim_mean=float(pert["ssim"].mean()))
  return row


def map_image_metrics(clean_map, adv_map, clean_probs, adv_probs, masks=None,
                      top_k: float = 0.05) -> dict:
  """Per image, how much an attack changed the explanation: ``kept`` (the clean
  prediction survived), Spearman / Pearson / top-k intersection / SSIM between the clean
  and the attacked map, their centre-of-mass shift (pixels), the share of the map's
  energy inside the lesion before and after (with masks), and ``constant_map`` (1 where the
  clean or the attacked map is constant: its correlations are defined, not measured;
  :func:`lib.metrics.pearson`)."""
  out = {"kept": (clean_probs.argmax(-1) == adv_probs.argmax(-1)).astype(np.float64),
         "spearman": metrics.spearman(clean_map, adv_map),
         "pearson": metrics.pearson(clean_map, adv_map),
         "top_k_intersection": metrics.top_k_intersection(clean_map, adv_map, top_k),
         "map_ssim": metrics.map_ssim(clean_map, adv_map),
         "com_shift_px": metrics.center_of_mass_shift(clean_map, adv_map),
         "constant_map": np.maximum(metrics.constant_map(clean_map), metrics.constant_map(adv_map))}
  if masks is not None:
    out["lesion_energy_clean"] = metrics.lesion_energy(clean_map, masks)
    out["lesion_energy_adv"] = metrics.lesion_energy(adv_map, masks)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def map_cell_metrics(m: dict) -> dict:
  """The cell row of the per-image :func:`map_image_metrics` ``m``: label-kept and flip
  rates, medians and means over images."""
  kept = m["kept"].mean()
  row = {"map_label_kept": float(kept), "map_flip_rate": float(1.0 - kept),
         "spearman_median": float(np.median(m["spearman"])),
         "spearman_mean": float(m["spearman"].mean()),
         "pearson_median": float(np.median(m["pearson"]))}
  row.update({k: float(m[k].mean()) for k in ("top_k_intersection", "map_ssim", "com_shift_px",
                                               "lesion_energy_clean", "lesion_energy_adv") if k in m})
  if "constant_map" in m:   # correlations of constant maps are defined, not measured
    row["constant_maps"] = float(m["constant_map"].mean())
  return row


CASCADE_FAMILIES = ("iterative", "gradient_free")


def cascades(config, spec, map_method_: str) -> bool:
  """Whether the cells of attack ``spec`` use the eps cascade (:func:`run_attack_grid`):
  ``config.eps_cascade`` is on, the sweep measures no map change for them (accuracy only)
  and the attack is a worst-case one (an iterative or gradient-free attack; FGSM and
  noise keep their own curves)."""
  return bool(config.get("eps_cascade", False)) and not map_method_ and \
      attack_family(spec) in CASCADE_FAMILIES


def run_attack_grid(model, variables, arrays, config, spec, mesh, counter=None, *, in_channels,
                    keep_examples: int = 0, has_masks: bool = False, per_image=None,
                    cache: dict | None = None):
  """All eps of one attack on one model: list of cell rows (+ a few examples per eps).

  The grid is ``config.eps``, or the attack's own ``spec.eps`` (e.g. an expensive
  explanation attack at a few eps only). A dict passed as ``per_image`` receives, per
  eps, the per-image results: ``adv_correct``, ``adv_prob`` (of the last class) and,
  with map metrics, those of :func:`map_image_metrics`. A dict passed as ``cache`` keeps
  the compiled function for the next model of the same architecture (the weights are an
  argument, so the runs of a cross-validation share one compilation per attack).

  **Eps cascade** (:func:`cascades`; accuracy-only cells of worst-case attacks): the eps
  run in increasing order and each eps attacks only the images still classified correctly
  at the one before; an image broken at a smaller eps keeps that adversarial image (it
  lies in every larger ball) and its numbers. Robust accuracy is then the worst case over
  the smaller eps too (it cannot rise with eps; it can exceed the eps-by-eps value only
  where a re-attacked survivor draws other random starts, which the tests bound by one
  image), at the cost of the survivors only. Each row says whether it was
  cascaded (``eps_cascade``) and how many images were attacked (``attacked``)."""
  method = map_method(spec, config) if config.get("map_metrics", True) else ""
  shown = data.example_indices(arrays["label"], keep_examples)   # both classes in figures
  label, family = attack_label(spec), attack_family(spec)
  norm = attack_entry(spec)[1].get("norm", "linf")
  cache_key = (repr(model), attack_key(spec), method, bool(keep_examples), mesh)
  fn = None if cache is None else cache.get(cache_key)
  if fn is None:
    fn = compile_attack(model, spec, mesh, counter, return_images=bool(keep_examples),
                        map_method=method)
    if cache is not None:
      cache[cache_key] = fn
  rows, examples = [], {}
  key = jax.random.PRNGKey(config.seed)
  prepare = lambda b: {"x": data.to_model_input(b["image"], in_channels), "y": b["label"]}
  cascade = cascades(config, spec, method)
  grid = [float(e) for e in (dict(spec).get("eps") or config.eps)]
  previous = None     # the cascade's per-image outputs at the last eps
  for eps in (sorted(grid) if cascade else grid):
    todo = np.arange(len(arrays["label"]))
    if previous is not None:
      todo = np.flatnonzero(previous["adv_probs"].argmax(-1) == arrays["label"])
    cat = _attack_images(fn, arrays, todo, previous, config, mesh,
                         (variables, jnp.float32(eps), key), prepare, desc=f"{label} eps={eps:g}")
    if cascade:
      previous = cat
    row = {"attack": label, "family": family, "norm": norm, "eps": float(eps),
           **cell_metrics(cat["clean_probs"], cat["adv_probs"], arrays["label"],
                          {k: cat[k] for k in ("linf", "l2", "psnr", "ssim")}),
           "eps_cascade": cascade, "attacked": int(len(todo))}
    images = {"adv_correct": (cat["adv_probs"].argmax(-1) == arrays["label"]).astype(np.float64),
              "adv_prob": cat["adv_probs"][:, -1].astype(np.float64)}
    if method:
      images.update(map_image_metrics(
          cat["clean_map"], cat["adv_map"], cat["clean_probs"], cat["adv_probs"],
          arrays["mask"] if has_masks else None, config.get("top_k", 0.05)))
      row.update(map_method=method, **map_cell_metrics(images))
      cat["spearman"] = images["spearman"]
    rows.append(row)
    if per_image is not None:
      per_image[float(eps)] = images
    if keep_examples:
      keys = ("x_adv", "adv_probs", "clean_probs", "clean_map", "adv_map", "spearman")
      examples[float(eps)] = {"index": shown, **{k: cat[k][shown] for k in keys if k in cat}}
  return rows, examples


def _attack_images(fn, arrays, todo, previous, config, mesh, args, prepare, desc="") -> dict:
  """``fn``'s per-image outputs on the images ``todo``; the others are ``previous``'s (the
  eps cascade). With no ``previous``, ``todo`` is every image."""
  if previous is not None and len(todo) == 0:
    return {k: v.copy() for k, v in previous.items()}
  sub = {"image": arrays["image"], "label": arrays["label"]}
  if previous is not None:                 # the cascade's survivors fill whole batches
    sub = {k: v[todo] for k, v in sub.items()}
  # The rows that pad the last batch carry label -1, which no prediction matches: AutoAttack
  # counts them as broken (a stage left with only those is skipped, APGD-T's loop over
  # targets does not wait for them) and Square leaves them out of its compacted queries,
  # where repeats of the last image with its label were attacked in full. Attacks of fixed
  # shape (PGD, APGD-CE) still compute them. Their outputs are dropped.
  out = parallel.map_batches(fn, sub, batch_size=config.batch_size, mesh=mesh, args=args,
                             prepare=prepare, desc=desc, pad={"label": -1})
  if previous is None:
    return out
  merged = {k: v.copy() for k, v in previous.items()}
  for k, v in out.items():
    merged[k][todo] = v[:len(todo)]
  return merged


def run_sweep(config, workdir: str) -> list[dict]:
  """The grid of ``config.checkpoints`` x ``config.attacks`` x ``config.eps``; the config is
  checked before anything is written, and the work dir is locked while the sweep runs."""
  checks.check_which(config.which)
  checkpoints = experiment.parse_checkpoints(config.checkpoints)
  for e in config.eps:
    checks.check_eps(e, "--config.eps")
  check_attacks(config.attacks)
  mesh = parallel.make_mesh(config.num_devices)
  if config.batch_size % mesh.size:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by {mesh.size} devices.")
  with files.WorkdirLock(workdir, "attack.py"):
    return _sweep(config, workdir, mesh, checkpoints)


def _sweep(config, workdir: str, mesh, checkpoints) -> list[dict]:
  counter = TraceCounter()
  compiled = {}   # checkpoints of one architecture share each attack's compilation
  rows = previous_cells(config, workdir) if config.get("resume", True) else []
  grid = {}   # (model, attack) -> position in this grid: the order of the tables
  for name, ckpt in zip(experiment.run_names(checkpoints), checkpoints):
    source = experiment.checkpoint_id(ckpt, config.which)
    stale = [r for r in rows if r["model"] == name and r.get("checkpoint") != source]
    if stale:
      logging.warning("%s: %d cells in %s came from another checkpoint; recomputing them.",
                      name, len(stale), workdir)
      rows = [r for r in rows if r not in stale]
    train_config, model, variables = experiment.restore_model(ckpt, config.which, mesh=mesh)
    arrays = data.load_split(train_config.data, config.split, train_config.image_size)
    arrays = data.subset(arrays, config.max_images, config.seed)
    class_names = data.class_names(train_config.data)
    has_masks = data.DATASETS[train_config.data.name].has_masks
    for spec in config.attacks:
      t0, before = time.time(), counter.count
      label, key = attack_label(spec), attack_key(spec)
      grid.setdefault((name, label), len(grid))
      changed = [r for r in rows if r["model"] == name and r["attack"] == label
                 and r.get("spec") != key]
      if changed:
        logging.warning("%s / %s: %d cells in %s were computed with other attack settings; "
                        "recomputing them.", name, label, len(changed), workdir)
        rows = [r for r in rows if r not in changed]
      if _done(rows, name, key, dict(spec).get("eps") or config.eps):
        logging.info("%s / %s: already in %s, skipped", name, label, workdir)
        continue
      cells, examples = run_attack_grid(model, variables, arrays, config, spec, mesh, counter,
                                        in_channels=train_config.model.in_channels,
                                        keep_examples=config.figure_examples, has_masks=has_masks,
                                        cache=compiled)
      logging.info("%s / %s: %d eps in %.1f s, %d compilation(s)", name, label, len(cells),
                   time.time() - t0, counter.count - before)
      done_eps = {c["eps"] for c in cells}
      rows = [r for r in rows if not (r["model"] == name and r["attack"] == label
                                      and r["eps"] in done_eps)]
      for c in cells:
        rows.append({"model": name, **c, "checkpoint": source, "spec": key})
        logging.info("  eps=%.4f acc=%.3f (clean %.3f) success=%.3f ssim=%.4f%s", c["eps"],
                     c["accuracy"], c["clean_accuracy"], c["success_rate"], c["ssim_mean"],
                     f" {c['map_method']} spearman={c['spearman_median']:.3f} "
                     f"kept={c['map_label_kept']:.3f}" if "map_method" in c else "")
      rows.sort(key=lambda r: grid.get((r["model"], r["attack"]), len(grid)))  # stable
      if config.figure_examples and jax.process_index() == 0:
        path = os.path.join(workdir, f"examples_{name}_{label}.png")
        report.plot_attack_examples(attack_family(spec) == EXPLANATION, arrays, examples,
                                    class_names, path, config.figure_eps,
                                    title=f"{name} / {label}")
      if jax.process_index() == 0:  # after every attack: an interrupted sweep keeps what it did
        write_sweep_outputs(rows, workdir, counter.count, config)
  if jax.process_index() == 0:
    write_sweep_outputs(rows, workdir, counter.count, config, complete=True)
  return rows


# Settings that change every cell's numbers: a resumed sweep must have the same ones.
_RESUME_KEYS = ("split", "which", "max_images", "seed", "map_metrics", "map_method", "top_k",
                "eps_cascade")


def previous_cells(config, workdir: str) -> list[dict]:
  """The cells an interrupted (or extended) sweep already wrote to ``workdir``.

  A (model, attack) pair whose eps are all there, computed from the same checkpoint
  (:func:`lib.experiment.checkpoint_id`) with the same attack settings (:func:`attack_key`:
  every parameter, defaults included), is skipped, so re-running the same command resumes
  a sweep and adding a checkpoint or an attack computes only the new cells; cells of an
  attack whose settings changed are recomputed. Refuses, naming the setting, when the
  earlier sweep used another split, seed, image count or map settings (its numbers would
  not be comparable)."""
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return []
  previous = files.read_json(path)
  settings = previous.get("settings", {})
  for k in _RESUME_KEYS:
    if k in settings and k in config and settings[k] != config[k]:
      raise ValueError(
          f"{path} was written with {k}={settings[k]!r}, this sweep has {k}={config[k]!r}. "
          "Use another --workdir, or --config.resume=False to overwrite it.")
  logging.info("Resuming from %s: %d cells already done.", path, len(previous["cells"]))
  return previous["cells"]


def _done(rows, model: str, key: str, eps) -> bool:
  """Whether every eps of the attack with resume key ``key`` is there for ``model``."""
  have = {r["eps"] for r in rows if r["model"] == model and r.get("spec") == key}
  return all(float(e) in have for e in eps)


def row_family(row) -> str:
  """The attack family of a results row (:data:`lib.attacks.FAMILIES`); rows written before
  families were recorded are recognised by their label's first part."""
  if "family" in row:
    return row["family"]
  head = row["attack"].split("-")[0]
  if head in attacks.ATTACKS:
    return attacks.ATTACKS[head].meta["family"]
  return EXPLANATION if head in saliency.METHODS else "iterative"


def row_norm(row) -> str:
  """The norm of a results row's budget (older rows: from the label, e.g. ``pgd-10-l2``)."""
  return row.get("norm") or ("l2" if "l2" in row["attack"].split("-") else "linf")


def masking_checks(rows) -> list[str]:
  """Signs of gradient masking (Athalye et al. 2018; Carlini et al. 2019, Sec. 5): per
  model and norm, accuracy must not rise with eps, iterative attacks must beat the
  single-step one (FGSM), white-box attacks must beat random noise of the same size, and
  a gradient-free attack (Square) must not be much stronger than the strongest gradient
  attack (more than 2 points and 2 images lower accuracy: the gradients mislead; Croce &
  Hein 2020 check the same with 0.2 points on 10000 images).
  Returns one line per violation. Explanation attacks keep (or only incidentally flip)
  labels by design and are not checked; attack families come from the registry
  (:func:`row_family`); attacks are compared only within one norm (:func:`row_norm`)."""
  issues = []
  rows = [r for r in rows if row_family(r) != EXPLANATION]
  for model, norm in sorted({(r["model"], row_norm(r)) for r in rows}):
    mine = [r for r in rows if r["model"] == model and row_norm(r) == norm]
    by, family = {}, {}
    for r in mine:
      by.setdefault(r["attack"], {})[r["eps"]] = r["accuracy"]
      family[r["attack"]] = row_family(r)
    for attack, curve in by.items():
      eps = sorted(curve)
      for a, b in zip(eps, eps[1:]):
        if curve[b] > curve[a] + 1e-9 and family[attack] != "baseline":
          issues.append(f"{model} / {attack}: accuracy rises from eps {a:g} ({curve[a]:.3f}) "
                        f"to {b:g} ({curve[b]:.3f})")
    single = next((c for a, c in by.items() if family[a] == "single_step"), {})
    single_name = next((a for a in by if family[a] == "single_step"), "")
    noise = next((c for a, c in by.items() if family[a] == "baseline"), {})
    for attack, curve in by.items():
      if family[attack] != "iterative":
        continue
      for e, acc in curve.items():
        if e in single and acc > single[e] + 1e-9:
          issues.append(f"{model} / {attack} at eps {e:g}: accuracy {acc:.3f} above "
                        f"{single_name.upper()}'s {single[e]:.3f}")
    for attack, curve in by.items():
      if family[attack] == "baseline":
        continue
      for e, acc in curve.items():
        if e > 0 and e in noise and acc > noise[e] + 1e-9:
          issues.append(f"{model} / {attack} at eps {e:g}: accuracy {acc:.3f} above random noise's {noise[e]:.3f}")
    sizes = {(r["attack"], r["eps"]): r.get("n") for r in mine}
    gradient = [a for a in by if family[a] in ("single_step", "iterative")]
    for attack, curve in by.items():
      if family[attack] != "gradient_free":
        continue
      for e, acc in curve.items():
        best = min(((by[g][e], g) for g in gradient if e in by[g]), default=None)
        n = sizes.get((attack, e)) or 0
        if best and e > 0 and acc < best[0] - max(0.02, 2.0 / n if n else 0.0) - 1e-9:
          issues.append(f"{model} / {attack} at eps {e:g}: accuracy {acc:.3f}, far below the "
                        f"strongest gradient attack's ({best[1]}, {best[0]:.3f}): gradients "
                        "may be masked")
  return issues


def cascade_text(rows) -> str:
  """The report's paragraph naming the cells computed with the eps cascade ('' if none)."""
  pairs = {}
  for r in rows:
    if r.get("eps_cascade"):
      pairs.setdefault((r["model"], r["attack"]), []).append(f"{r['eps']:g}: {r['attacked']}/{r['n']}")
  if not pairs:
    return ""
  lines = "\n".join(f"- {m} / {a} (eps: images attacked) {', '.join(c)}"
                     for (m, a), c in pairs.items())
  return ("## Eps cascade\n\nThese cells were computed with the eps cascade: at each eps only "
          "the images still classified correctly at the next smaller eps were attacked; the "
          "others keep their adversarial image from the smaller eps (it lies inside the larger "
          "ball). Their accuracy is the worst case over all smaller eps too, so it cannot rise "
          "with eps (the rising-accuracy check is vacuous for them). `attacked` in results.csv "
          f"counts the images attacked per cell; `--config.eps_cascade=False` turns it off.\n\n"
          f"{lines}\n\n")


def write_sweep_outputs(rows, workdir, compilations: int, config=None,
                        complete: bool = False) -> None:
  """results.json (cells, the settings of :data:`_RESUME_KEYS`, ``complete`` once the whole
  grid is done), CSV/markdown tables, accuracy-against-eps plots and report.md."""
  settings = {k: config[k] for k in _RESUME_KEYS if config is not None and k in config}
  files.atomic_json(os.path.join(workdir, "results.json"),
                    {"compilations": compilations, "complete": complete, "settings": settings,
                     "cells": rows})
  report.write_table(rows, os.path.join(workdir, "results"), RESULT_COLUMNS)
  summary = [{"model": r["model"], "attack": r["attack"], "eps": r["eps"], "accuracy": r["accuracy"],
              "balanced_accuracy": r["balanced_accuracy"], "auc": r["auc"],
              "success_rate": r["success_rate"], "ssim": r["ssim_mean"]} for r in rows]
  table = report.write_table(summary, os.path.join(workdir, "summary"))
  report.plot_accuracy_vs_eps(rows, os.path.join(workdir, "accuracy_vs_eps.png"))
  map_rows = [{k: r[k] for k in MAP_COLUMNS if k in r} for r in rows if "map_method" in r]
  map_table = ""
  if map_rows:
    map_table = report.write_table(map_rows, os.path.join(workdir, "explanation"), MAP_COLUMNS)
    report.plot_accuracy_vs_eps(rows, os.path.join(workdir, "spearman_vs_eps.png"),
                                metric="spearman_median",
                                ylabel="median Spearman, clean vs attacked map")
  checks = masking_checks(rows)
  for line in checks:
    logging.warning("Possible gradient masking: %s", line)
  check_text = ("\n".join(f"- {c}" for c in checks) if checks else
                "none: accuracy falls with eps, iterative attacks beat FGSM, attacks beat noise, "
                "no gradient-free attack is much stronger than the gradient attacks "
                "(for the attacks in this grid)")
  text = (f"# Attack sweep\n\n{compilations} compilation(s) in the run that wrote this "
          f"({'whole grid done' if complete else 'grid not finished'}).\n\n{table}\n"
          f"{cascade_text(rows)}## Gradient-masking checks\n\n{check_text}\n\n"
          "![accuracy against eps](accuracy_vs_eps.png)\n")
  if map_table:
    text += ("\n## Explanations under attack\n\nBetween the map of each clean image and of its "
             "attacked copy (real model, each explaining its predicted class); `map_label_kept`: "
             "share of images whose prediction the attack left unchanged.\n\n"
             f"{map_table}\n![median Spearman against eps](spearman_vs_eps.png)\n")
  files.atomic_write(os.path.join(workdir, "report.md"), text)
