"""HAM10000 dermoscopy (Tschandl, Rosendahl & Kittler, Scientific Data 5, 180161, 2018;
lesion masks from the ISIC 2018 challenge, Codella et al., arXiv:1902.03368) as a TFDS
builder over a local copy (``manual_dir``). CC BY-NC 4.0: cite both when using the data.

Layouts:
* the prepared copy ``../shared/data/ham10000``: ``manifest.csv`` with columns ``id,
  label (the dx code), image, mask, split, group`` (and HAM10000's metadata, unused
  here) and the files it names; its split by whole groups (one lesion, and near-duplicate
  images across lesions, never span two splits) is kept, and cross-validation groups by
  ``group``;
* the original release: ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, ...``) beside
  the images (``<image_id>.jpg`` in the folder or in ``HAM10000_images_part_1/`` and
  ``_part_2/``) and, optionally, the lesion masks published with HAM10000
  (``<image_id>_segmentation.png`` in the folder or in a ``masks/`` or
  ``HAM10000_segmentations_lesion_tschandl/`` folder; the ISIC 2018 task-1 masks are of
  other images, ISIC_0000000-0016072, and match none). Groups are lesions
  (``lesion_id``); a deterministic split by hashed lesion id, stratified by diagnosis, is
  made (no near-duplicate groups across lesions: prefer the prepared copy). An image
  without a mask gets an all-zero one, and how many have none is logged.

Images are stored as RGB at their original size (the prepared copy's 200 x 150 JPEG bytes
unchanged). The seven diagnoses are stored; :mod:`lib.data` selects a label set:
``melanoma`` (mel vs nv, the default and the usual melanoma task: other diagnoses are left
out), ``malignant`` (mel, bcc, akiec vs nv, bkl, df, vasc) or ``dx`` (all seven).
"""

from __future__ import annotations

import logging
import os

from lib.datasets import manual, register_dataset

# Stored order (the ClassLabel's): alphabetical dx codes.
LABELS = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MALIGNANT = ("mel", "bcc", "akiec")
BENIGN = ("nv", "bkl", "df", "vasc")

LAYOUT = """\
  either  <dir>/manifest.csv  (columns id,label,image,mask,split,group; label: a dx code
          akiec|bcc|bkl|df|mel|nv|vasc; paths relative to <dir>)
          <dir>/images/<id>.jpg, <dir>/masks/<id>.png
  or      <dir>/HAM10000_metadata.csv (lesion_id,image_id,dx,...) with the images
          <dir>/[HAM10000_images_part_1/|HAM10000_images_part_2/]<image_id>.jpg and,
          optionally, masks <dir>/[masks/|HAM10000_segmentations_lesion_tschandl/]
          <image_id>_segmentation.png   (the original release)"""


def _check_label(path: str, row_id: str, label: str) -> None:
  if label not in LABELS:
    raise manual.DataError(f"{path}: row {row_id} has unknown diagnosis {label!r} "
                           f"(expected one of {LABELS}).")


def _find(manual_dir: str, folders, name: str):
  for folder in folders:
    path = os.path.join(manual_dir, folder, name)
    if os.path.exists(path):
      return path
  return None


def list_examples(manual_dir: str) -> list[dict]:
  """Rows ``id, label, image, masks (list), split, group`` of either layout."""
  if not os.path.isdir(manual_dir):
    raise manual.missing_dir_error("HAM10000", manual_dir, LAYOUT)
  prepared = manual.manifest_examples(manual_dir, LABELS, masks=True)
  if prepared is not None:
    return prepared
  metadata = os.path.join(manual_dir, "HAM10000_metadata.csv")
  if not os.path.exists(metadata):
    raise manual.DataError(f"{manual_dir!r} holds neither manifest.csv nor "
                           f"HAM10000_metadata.csv. Expected layout:\n{LAYOUT}")
  rows = manual.read_manifest(metadata, ("lesion_id", "image_id", "dx"))
  image_dirs = ("", "HAM10000_images_part_1", "HAM10000_images_part_2", "images")
  mask_dirs = ("", "masks", "HAM10000_segmentations_lesion_tschandl")
  out = []
  for r in rows:
    _check_label(metadata, r["image_id"], r["dx"])
    image = _find(manual_dir, image_dirs, r["image_id"] + ".jpg")
    if image is None:
      raise manual.DataError(f"Image {r['image_id']}.jpg of {metadata} is in none of "
                             f"{[os.path.join(manual_dir, d) for d in image_dirs]}.")
    mask = _find(manual_dir, mask_dirs, r["image_id"] + "_segmentation.png")
    out.append(dict(id=r["image_id"], label=r["dx"], image=image, masks=[mask] if mask else [],
                    group=r["lesion_id"]))
  if without := sum(not r["masks"] for r in out):
    logging.warning("%d of %d images in %s have no lesion mask (<image_id>_segmentation.png "
                    "in %s): theirs are stored all zero, and the lesion metrics and the "
                    "segmentation head are meaningless on them.", without, len(out),
                    manual_dir, [d or "." for d in mask_dirs])
  # Split by lesion (a lesion's images stay together), stratified by diagnosis.
  lesions = {}
  for r in out:
    lesions.setdefault(r["label"], []).append(r["group"])
  split = manual.hash_split({k: sorted(set(v)) for k, v in lesions.items()})
  for r in out:
    r["split"] = split[r["group"]]
  return out


@register_dataset("ham10000",
                  class_names={"melanoma": ("nv", "mel"),
                               "malignant": ("benign", "malignant"),
                               "dx": ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df")},
                  label_sources={"malignant": {"benign": BENIGN, "malignant": MALIGNANT}},
                  has_masks=True, channels=3, manual_dir="ham10000")
class Ham10000(manual.ManualImageBuilder):
  """HAM10000 dermoscopic images (RGB) with lesion masks and seven diagnoses; splits
  train/val/test from the manifest (by whole groups)."""

  LABELS = LABELS
  CHANNELS = 3
  HOMEPAGE = "https://doi.org/10.1038/sdata.2018.161"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Point manual_dir at a HAM10000 folder:\n{LAYOUT}"
  list_examples = staticmethod(list_examples)
