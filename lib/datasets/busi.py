"""BUSI breast ultrasound (Al-Dhabyani et al., Data in Brief 28, 2020) as a TFDS builder.

Reads a local copy (``manual_dir``) in either of two layouts:

* the prepared layout of ``../shared/data/busi``: ``manifest.csv`` with columns
  ``id, label, image, mask, split, group`` and the files it names; its group-aware
  split is kept;
* the original ``Dataset_BUSI_with_GT`` release that researchers download:
  ``benign/benign (1).png`` with ``benign (1)_mask.png`` (and ``_mask_1.png``, ...,
  merged with a per-pixel OR), the same for ``malignant/`` and ``normal/``. That
  release has no split and no near-duplicate groups; a deterministic stratified split
  by hashed id is made and every image is its own group (so near-duplicates can leak
  across splits: prefer the prepared copy's manifest when you can).

All three labels are stored; :mod:`lib.data` selects a label set (benign vs malignant,
the study's default, or three classes with normal). Images are stored as 8-bit
grayscale at their original resolution; the few RGB files (colour Doppler overlays)
are converted with the ITU-R 601-2 luma transform.
"""

from __future__ import annotations

import glob
import os
import re

from lib.datasets import manual, register_dataset

LABELS = ("benign", "malignant", "normal")

LAYOUT = """\
  either  <dir>/manifest.csv  (columns id,label,image,mask,split,group; paths relative to <dir>)
          <dir>/images/<id>.png, <dir>/masks/<id>.png
  or      <dir>/benign/benign (1).png, <dir>/benign/benign (1)_mask.png [, _mask_1.png ...]
          <dir>/malignant/..., <dir>/normal/...   (the Dataset_BUSI_with_GT release;
          <dir> may also be the folder that contains Dataset_BUSI_with_GT)"""

_ORIGINAL = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")


def _original_root(manual_dir: str):
  for cand in (manual_dir, os.path.join(manual_dir, "Dataset_BUSI_with_GT")):
    if all(os.path.isdir(os.path.join(cand, lab)) for lab in ("benign", "malignant")):
      return cand
  return None


def list_examples(manual_dir: str) -> list[dict]:
  """Rows ``id, label, image, masks (list), split, group`` of either layout."""
  if not os.path.isdir(manual_dir):
    raise manual.missing_dir_error("BUSI", manual_dir, LAYOUT)
  prepared = manual.manifest_examples(manual_dir, LABELS, masks=True)
  if prepared is not None:
    return prepared
  root = _original_root(manual_dir)
  if root is None:
    raise manual.DataError(
        f"{manual_dir!r} holds neither manifest.csv nor the benign/ and malignant/ folders "
        f"of Dataset_BUSI_with_GT. Expected layout:\n{LAYOUT}")
  out = []
  for label in LABELS:
    for path in sorted(glob.glob(os.path.join(root, label, "*.png"))):
      m = _ORIGINAL.match(os.path.basename(path))
      if not m:
        continue  # mask files and strays
      stem = path[:-4]
      masks = sorted(glob.glob(glob.escape(stem) + "_mask*.png"))
      ident = f"{label}_{int(m.group(2)):04d}"
      out.append(dict(id=ident, label=label, image=path, masks=masks, group=ident))
  if not out:
    raise manual.DataError(f"No images found under {root}. Expected layout:\n{LAYOUT}")
  by_label = {lab: [r["id"] for r in out if r["label"] == lab] for lab in LABELS}
  split = manual.hash_split(by_label)
  for r in out:
    r["split"] = split[r["id"]]
  return out


@register_dataset("busi", class_names={"binary": ("benign", "malignant"),
                                     "three_class": ("benign", "malignant", "normal")},
                  has_masks=True, manual_dir="busi")
class Busi(manual.ManualImageBuilder):
  """BUSI breast ultrasound with lesion masks; splits train/val/test from the manifest."""

  LABELS = LABELS
  HOMEPAGE = "https://doi.org/10.1016/j.dib.2019.104863"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Point manual_dir at a BUSI folder:\n{LAYOUT}"
  list_examples = staticmethod(list_examples)
