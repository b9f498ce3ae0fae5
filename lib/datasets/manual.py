"""Shared pieces of the builders that read a user's local copy (TFDS ``manual_dir``)."""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent import futures
from typing import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds


class DataError(ValueError):
  """A data folder or file that cannot be used; the message says which and why."""


def read_manifest(path: str, required: Sequence[str]) -> list[dict]:
  """Reads ``manifest.csv`` and checks its columns."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
      raise DataError(f"{path}: missing column(s) {missing}; expected at least {list(required)}.")
    return list(reader)


def manifest_examples(manual_dir: str, labels, *, masks: bool):
  """The rows ``id, label, image, masks, split, group`` of a prepared copy's
  ``manifest.csv`` (columns ``id, label, image, split`` [, ``mask``] [, ``group``]; paths
  relative to the folder; a missing group is the image's own), or None when the folder
  has no manifest. A label outside ``labels`` stops with the row and the valid ones."""
  manifest = os.path.join(manual_dir, "manifest.csv")
  if not os.path.exists(manifest):
    return None
  rows = read_manifest(manifest, ("id", "label", "image") + (("mask",) if masks else ()) + ("split",))
  out = []
  for r in rows:
    if r["label"] not in labels:
      raise DataError(f"{manifest}: row {r['id']} has unknown label {r['label']!r} "
                      f"(expected one of {tuple(labels)}).")
    out.append(dict(id=r["id"], label=r["label"], split=r["split"],
                    group=r.get("group") or r["id"],
                    image=os.path.join(manual_dir, r["image"]),
                    masks=[os.path.join(manual_dir, r["mask"])] if masks and r["mask"] else []))
  return out


def load_image(path: str, channels: int = 1) -> np.ndarray:
  """Decodes an image file to uint8 (H, W, channels), naming the file if it is corrupt.

  ``channels=1``: grayscale by the ITU-R 601-2 luma transform (colour files such as
  BUSI's Doppler overlays are converted); ``channels=3``: RGB (a grayscale file is
  repeated, a palette or RGBA file converted)."""
  from PIL import Image, UnidentifiedImageError
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels!r}")
  try:
    with Image.open(path) as im:
      im.load()
      a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
      return a[..., None] if channels == 1 else a
  except FileNotFoundError:
    raise DataError(f"Image file not found: {path}") from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"Corrupt or unreadable image file {path}: {e}") from None


def load_gray(path: str) -> np.ndarray:
  """Decodes an image file to uint8 (H, W, 1) (:func:`load_image` with one channel)."""
  return load_image(path, 1)


def load_mask(paths: Iterable[str], shape) -> np.ndarray:
  """Merges one or more mask files with a per-pixel OR -> uint8 {0, 255} (H, W, 1)."""
  out = np.zeros(shape[:2], bool)
  for p in paths:
    m = load_gray(p)[..., 0]
    if m.shape != out.shape:
      raise DataError(f"Mask {p} has shape {m.shape}, its image has {out.shape}.")
    out |= m > 0
  return (out.astype(np.uint8) * 255)[..., None]


def to_pil(array: np.ndarray):
  """uint8 (H, W, 1) or (H, W, 3) -> PIL image: TFDS encodes PIL images without TensorFlow."""
  from PIL import Image
  return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _is_stored_as_is(path: str, channels: int, formats=("PNG", "JPEG")) -> bool:
  """Whether a file's bytes can be stored unchanged: a PNG or JPEG already in the stored
  mode (8-bit grayscale for one channel, RGB for three)."""
  from PIL import Image
  with Image.open(path) as im:
    return im.format in formats and im.mode == ("L" if channels == 1 else "RGB")


def hash_split(ids_by_label: dict[str, list[str]], test=0.2, val=0.1) -> dict[str, str]:
  """Deterministic stratified split by sha256("split:" + id), for folders without one."""
  out = {}
  for ids in ids_by_label.values():
    ordered = sorted(ids, key=lambda i: hashlib.sha256(f"split:{i}".encode()).hexdigest())
    n_test, n_val = round(test * len(ordered)), round(val * len(ordered))
    for k, i in enumerate(ordered):
      out[i] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
  return out


def fingerprint(manual_dir: str, rows: Sequence[dict]) -> str:
  """A cheap fingerprint of what a builder reads from a manual_dir: every example's id,
  label, split and group (the manifest's content) and the names and sizes of its image and
  mask files. Other files in the folder (a README, a TFDS data dir put inside it) do not
  count."""
  h = hashlib.sha256()
  for r in sorted(rows, key=lambda r: r["id"]):
    paths = [r["image"]] + list(r.get("masks", []))
    h.update(repr((r["id"], r["label"], r["split"], r["group"],
                   [(os.path.relpath(p, manual_dir), os.path.getsize(p)) for p in paths]))
             .encode() + b"\n")
  return h.hexdigest()[:16]


def missing_dir_error(name: str, manual_dir: str, layout: str) -> DataError:
  return DataError(
      f"The {name} data folder {manual_dir!r} does not exist or is not a folder. Point "
      f"--config.data.manual_dir at your copy. Expected layout:\n{layout}")


class ManualImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders over a manual_dir: image, mask, label, id, group per example.

  Subclasses set ``LABELS``, ``LAYOUT`` and ``list_examples(manual_dir)``, which returns
  rows ``id, label, image (path), masks (list of paths), split, group``. Splits come
  from the rows; images are stored at their original size as 8-bit grayscale or, with
  ``CHANNELS = 3``, RGB (register the data set with the same ``channels``).
  """

  VERSION = tfds.core.Version("1.0.0")
  LABELS: tuple = ()
  HOMEPAGE = ""
  CHANNELS = 1

  @staticmethod
  def list_examples(manual_dir: str) -> list[dict]:
    raise NotImplementedError

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, self.CHANNELS)),
            "mask": tfds.features.Image(shape=(None, None, 1)),
            "label": tfds.features.ClassLabel(names=list(self.LABELS)),
            "id": tfds.features.Text(),
            "group": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE or None,
    )

  def _split_generators(self, dl_manager):
    rows = self.list_examples(os.fspath(dl_manager.manual_dir))
    splits = sorted({r["split"] for r in rows})
    return {s: self._generate_examples([r for r in rows if r["split"] == s]) for s in splits}

  def _generate_examples(self, rows):
    def decode(r):
      # Every file is decoded (a corrupt one is named here, not at training time), but
      # a PNG or JPEG already in the stored mode is stored as its original bytes:
      # re-encoding was 90 % of the build time. Other images and merged masks are
      # re-encoded (losslessly, as PNG).
      image = load_image(r["image"], self.CHANNELS)
      masks = r.get("masks", [])
      mask = load_mask(masks, image.shape)
      keep_image = _is_stored_as_is(r["image"], self.CHANNELS)
      keep_mask = len(masks) == 1 and _is_stored_as_is(masks[0], 1, ("PNG",))  # >0: lesion
      return (r, r["image"] if keep_image else to_pil(image),
              masks[0] if keep_mask else to_pil(mask))

    with futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 2)) as pool:
      for r, image, mask in pool.map(decode, rows):
        yield r["id"], {"image": image, "mask": mask, "label": r["label"], "id": r["id"],
                        "group": r["group"]}
