"""What a run leaves for a reader: metric logs, figures and markdown/CSV tables.

Every ``plot_*`` function builds a :class:`matplotlib.figure.Figure` with the object API
(:func:`new_figure`: no pyplot state, no backend switch) and returns it; given a ``path``
it also writes it there (atomically, process 0 only). In a notebook, the returned figure
displays itself."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import TYPE_CHECKING, Optional, Sequence

import jax
import numpy as np

from lib import data, files

if TYPE_CHECKING:   # matplotlib is imported only when a figure is drawn
  from matplotlib.figure import Figure


class MetricWriter:
  """Appends metrics to ``metrics.jsonl`` and TensorBoard event files (process 0 only).

  TensorBoard events are written by tensorboardX, which needs no TensorFlow.
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      files.repair_jsonl(self.path)   # a line torn by a crash would corrupt the next one
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # optional
        self._tb = None

  def write(self, step: int, metrics: dict, prefix: str = "") -> None:
    if not self.active:
      return
    scalars = {f"{prefix}{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float, np.floating, np.integer))}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


read_jsonl = files.read_jsonl


def write_table(rows: Sequence[dict], path_stem: str, columns: Optional[Sequence[str]] = None,
                floatfmt: str = "{:.4g}") -> str:
  """Writes rows as ``<stem>.csv`` and ``<stem>.md``; returns the markdown."""
  if not rows:
    return ""
  if columns is None:  # every key, in order of first appearance
    columns = list(dict.fromkeys(k for r in rows for k in r))
  columns = list(columns)
  buffer = io.StringIO(newline="")
  w = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
  w.writeheader()
  w.writerows(rows)
  files.atomic_write(path_stem + ".csv", buffer.getvalue(), mode="w")
  fmt = lambda v: floatfmt.format(v) if isinstance(v, float) else str(v)
  md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
  text = "\n".join(md) + "\n"
  files.atomic_write(path_stem + ".md", text)
  return text


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize, squeeze: bool = True):
  """``(Figure, axes)`` built with matplotlib's object API: no pyplot state and no backend
  switch, so the plot functions work the same in a script, a test and a live Jupyter
  session (where a returned Figure displays itself)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig, path: str, dpi: int = 110) -> None:
  """Lays out ``fig`` and writes it to ``path`` (atomically, process 0 only: like every
  file, :func:`lib.files.atomic_write`)."""
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=dpi, format=os.path.splitext(path)[1][1:] or "png")
  files.atomic_write(path, buffer.getvalue(), mode="wb")


def _finish(fig, path: Optional[str], dpi: int):
  """Saves ``fig`` when a ``path`` is given; returns it either way."""
  if path:
    save_figure(fig, path, dpi=dpi)
  return fig


def plot_training_curves(log: list[dict], path: Optional[str] = None) -> "Figure":
  """Training loss per step and validation metrics per epoch."""
  fig, axes = new_figure(1, 2, figsize=(10, 3.6))
  train = [r for r in log if "train_loss" in r]
  axes[0].plot([r["step"] for r in train], [r["train_loss"] for r in train])
  axes[0].set(xlabel="step", ylabel="training loss", yscale="log")
  val = [r for r in log if "val_auc" in r]
  for key in ("val_auc", "val_balanced_accuracy", "val_sensitivity", "val_specificity", "val_dice"):
    if val and key in val[0]:
      axes[1].plot([r["step"] for r in val], [r[key] for r in val], marker="o", ms=3,
                   label=key[4:])
  axes[1].set(xlabel="step", ylabel="validation", ylim=(0, 1.02))
  axes[1].legend(fontsize=8)
  return _finish(fig, path, dpi=110)


def plot_predictions(images, masks, labels, probs, mask_probs, class_names,
                     path: Optional[str] = None,
                     n: int = 8) -> "Figure":
  """Test images with the true lesion contour (green), predicted mask (red) and P(class)."""
  n = min(n, len(images))
  fig, axes = new_figure(1, n, figsize=(2.1 * n, 2.5))
  for i, ax in enumerate(np.atleast_1d(axes)):
    show_image(ax, images[i])
    if masks is not None and masks[i].any():
      ax.contour(masks[i], [0.5], colors="lime", linewidths=0.8)
    if mask_probs is not None:
      ax.contour(mask_probs[i], [0.5], colors="red", linewidths=0.8)
    pred = int(np.argmax(probs[i]))
    ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[pred]} {probs[i][pred]:.2f}",
                 fontsize=7, color="black" if pred == labels[i] else "red")
    ax.axis("off")
  return _finish(fig, path, dpi=110)


def plot_accuracy_vs_eps(rows: Sequence[dict], path: Optional[str] = None,
                         highlight: float = 0.004,
                         metric: str = "accuracy", ylabel: str = "accuracy under attack") -> "Figure":
  """``metric`` (accuracy under attack) against eps, one line per (model, attack) that has it."""
  fig, ax = new_figure(figsize=(6, 4))
  rows = [r for r in rows if metric in r]
  keys = sorted({(r["model"], r["attack"]) for r in rows})
  for model, attack in keys:
    pts = sorted((r["eps"], r[metric]) for r in rows if r["model"] == model and r["attack"] == attack)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=f"{model} / {attack}")
  ax.axvline(highlight, color="gray", ls=":", lw=1)
  ax.set(xlabel="eps (L-inf, pixels in [0, 1])", ylabel=ylabel,
         ylim=(min(0.0, min((r[metric] for r in rows), default=0.0)), 1.02))
  ax.set_xscale("symlog", linthresh=1e-3)
  ax.legend(fontsize=7)
  return _finish(fig, path, dpi=110)


def plot_attack_examples(explanation: bool, arrays, examples: dict, class_names,
                         path: Optional[str],
                         eps: float, title: str = "") -> "Figure":
  """The before/after figure of one attack: the maps (:func:`plot_map_attack`) for an
  explanation attack, else the images (:func:`plot_adversarial_examples`)."""
  if explanation:
    return plot_map_attack(arrays, examples, class_names, path, eps, title=title)
  return plot_adversarial_examples(arrays, examples, class_names, path, eps)


def plot_adversarial_examples(arrays, examples: dict, class_names, path: Optional[str],
                              eps: float, n: int = 4) -> "Figure":
  """Clean image, perturbation (amplified to the full grey range) and adversarial image,
  with the predictions, for ``n`` images at one eps."""
  eps = min(examples, key=lambda e: abs(e - eps))
  ex = examples[eps]
  n = min(n, len(ex["x_adv"]))
  fig, axes = new_figure(n, 3, figsize=(6.3, 2.2 * n), squeeze=False)
  for i in range(n):
    j = ex["index"][i] if "index" in ex else i      # the image's position in ``arrays``
    clean = arrays["image"][j].astype(np.float32) / 255.0
    adv = ex["x_adv"][i]
    delta = adv - clean
    scale = max(np.abs(delta).max(), 1e-8)
    p_clean, p_adv = ex["clean_probs"][i], ex["adv_probs"][i]
    label = class_names[arrays["label"][j]]
    show_image(axes[i, 0], clean)
    axes[i, 0].set_title(f"clean ({label})\n{class_names[p_clean.argmax()]} {p_clean.max():.2f}", fontsize=7)
    if delta.shape[-1] == 3:   # RGB: mid-grey is zero, each channel amplified alike
      axes[i, 1].imshow(np.clip(0.5 + 0.5 * delta / scale, 0, 1))
    else:
      axes[i, 1].imshow(delta[..., 0] / scale, cmap="seismic", vmin=-1, vmax=1)
    axes[i, 1].set_title(f"perturbation x{1 / scale:.0f}\nmax {scale:.4f}" if scale > 1e-8 else
                         "no perturbation\n(not attacked or none found)", fontsize=7)
    show_image(axes[i, 2], adv)
    axes[i, 2].set_title(f"adversarial eps={eps:g}\n{class_names[p_adv.argmax()]} {p_adv.max():.2f}",
                         fontsize=7, color="red" if p_adv.argmax() != p_clean.argmax() else "black")
    for a in axes[i]:
      a.axis("off")
  return _finish(fig, path, dpi=110)


def plot_map_attack(arrays, examples: dict, class_names, path: Optional[str], eps: float,
                    n: int = 4, title: str = "") -> "Figure":
  """Before/after figure of an explanation attack at one eps: per image, the clean image
  with its map and the lesion contour, beside the attacked image with its map, each
  titled with the prediction and its probability (the Spearman correlation of the maps
  on the right)."""
  eps = min(examples, key=lambda e: abs(e - eps))
  ex = examples[eps]
  n = min(n, len(ex["adv_map"]))
  fig, axes = new_figure(n, 2, figsize=(4.4, 2.3 * n + 0.3), squeeze=False)
  for i in range(n):
    j = ex["index"][i] if "index" in ex else i      # the image's position in ``arrays``
    clean = arrays["image"][j].astype(np.float32) / 255.0
    p_clean, p_adv = ex["clean_probs"][i], ex["adv_probs"][i]
    _overlay(axes[i, 0], clean, arrays["mask"][j], ex["clean_map"][i])
    axes[i, 0].set_title(f"clean ({class_names[arrays['label'][j]]})\n"
                         f"pred {class_names[p_clean.argmax()]} {p_clean.max():.2f}", fontsize=7)
    _overlay(axes[i, 1], ex["x_adv"][i], arrays["mask"][j], ex["adv_map"][i])
    flipped = p_adv.argmax() != p_clean.argmax()
    axes[i, 1].set_title(f"attacked, eps={eps:g}, Spearman {ex['spearman'][i]:.2f}\n"
                         f"pred {class_names[p_adv.argmax()]} {p_adv.max():.2f}",
                         fontsize=7, color="red" if flipped else "black")
    for a in axes[i]:
      a.axis("off")
  if title:
    fig.suptitle(title, fontsize=8)
  return _finish(fig, path, dpi=110)


def show_image(ax, image) -> None:
  """Shows a float image in [0, 1]: (H, W) or (H, W, 1) in grey, (H, W, 3) in colour."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 3:
    ax.imshow(np.clip(image, 0, 1))
  else:
    ax.imshow(image.reshape(image.shape[:2]), cmap="gray", vmin=0, vmax=1)


def _overlay(ax, image, mask, saliency_map=None) -> None:
  """The image (grey or colour), the map in 'jet' (clipped at its 99.5th percentile), the
  lesion contour."""
  show_image(ax, image)
  if saliency_map is not None:
    hi = max(np.percentile(saliency_map, 99.5), 1e-12)
    ax.imshow(np.clip(saliency_map / hi, 0, 1), cmap="jet", alpha=0.45, vmin=0, vmax=1)
  if mask.any():
    ax.contour(mask, [0.5], colors="lime" if saliency_map is None else "white",
               linewidths=0.7 if saliency_map is None else 0.5)


def plot_map_grid(rows, path: Optional[str] = None) -> "Figure":
  """One figure row per ``(title, image, mask, {method: map})``: the image with the lesion
  contour, then each method's map over it."""
  methods = list(rows[0][3])
  fig, axes = new_figure(len(rows), len(methods) + 1,
                           figsize=(1.9 * (len(methods) + 1), 1.95 * len(rows)), squeeze=False)
  for r, (title, image, mask, maps) in enumerate(rows):
    _overlay(axes[r, 0], image, mask)
    axes[r, 0].set_title(title, fontsize=6)
    for j, method in enumerate(methods):
      _overlay(axes[r, j + 1], image, mask, maps[method])
      if r == 0:
        axes[r, j + 1].set_title(method.replace("_", " "), fontsize=7)
  for a in axes.flat:
    a.axis("off")
  return _finish(fig, path, dpi=100)


def plot_explanations(arrays, maps: dict, class_names, path: Optional[str] = None) -> "Figure":
  """Rows of images of one model: the image with the lesion contour, then each map."""
  n = len(next(iter(maps.values())))
  return plot_map_grid([(f"{arrays['id'][i]}\n{class_names[arrays['label'][i]]}",
                  arrays["image"][i].astype(np.float32) / 255.0, arrays["mask"][i],
                  {m: v[i] for m, v in maps.items()}) for i in range(n)], path)


def plot_model_comparison(results: dict, path: Optional[str] = None,
                          n_images: int = 4) -> "Figure":
  """For ``n_images`` images of both classes (:func:`lib.data.example_indices`): one row
  per image (with its lesion contour and class), then one column per (method, model): each
  method's maps of every model side by side on the same image. ``results[name]`` holds
  ``arrays`` (the same images for every model), ``maps`` and ``class_names``."""
  names = list(results)
  arrays, class_names = results[names[0]]["arrays"], results[names[0]]["class_names"]
  methods = list(results[names[0]]["maps"])
  return plot_map_grid(
      [(f"{arrays['id'][i]}\n{class_names[arrays['label'][i]]}",
        arrays["image"][i].astype(np.float32) / 255.0, arrays["mask"][i],
        {f"{method}\n{name}": results[name]["maps"][method][i]
         for method in methods for name in names})
       for i in data.example_indices(arrays["label"], n_images)], path)
