"""Brain MRI tumour / no tumour (Chakrabarty, Kaggle "Brain MRI Images for Brain Tumor
Detection") as a TFDS builder over a local copy (``manual_dir``).

Layouts:
* the prepared copy ``../shared/data/brain_mri``: ``manifest.csv`` with columns
  ``id, label (tumor|no_tumor), image, split, group``; its group-aware split is kept;
* the original release: ``yes/`` and ``no/`` folders of image files; a deterministic
  stratified split by hashed id is made (no near-duplicate groups).

Classification only: there are no masks, so an all-zero mask is stored and the
multi-task head must stay off for this data set.
"""

from __future__ import annotations

import glob
import os

from lib.datasets import manual, register_dataset

LABELS = ("no_tumor", "tumor")

LAYOUT = """\
  either  <dir>/manifest.csv  (columns id,label,image,split,group; label tumor|no_tumor)
          <dir>/images/<id>.png
  or      <dir>/yes/*.jpg|png  and  <dir>/no/*.jpg|png   (the original release)"""


def list_examples(manual_dir: str) -> list[dict]:
  if not os.path.isdir(manual_dir):
    raise manual.missing_dir_error("brain MRI", manual_dir, LAYOUT)
  prepared = manual.manifest_examples(manual_dir, LABELS, masks=False)
  if prepared is not None:
    return prepared
  if not all(os.path.isdir(os.path.join(manual_dir, d)) for d in ("yes", "no")):
    raise manual.DataError(
        f"{manual_dir!r} holds neither manifest.csv nor yes/ and no/ folders. "
        f"Expected layout:\n{LAYOUT}")
  out = []
  for folder, label in (("no", "no_tumor"), ("yes", "tumor")):
    for i, path in enumerate(sorted(glob.glob(os.path.join(manual_dir, folder, "*")))):
      ident = f"{folder}_{i + 1:04d}"
      out.append(dict(id=ident, label=label, image=path, group=ident))
  split = manual.hash_split({lab: [r["id"] for r in out if r["label"] == lab] for lab in LABELS})
  for r in out:
    r["split"] = split[r["id"]]
  return out


@register_dataset("brain_mri", class_names={"binary": ("no_tumor", "tumor")}, has_masks=False,
                  manual_dir="brain_mri")
class BrainMri(manual.ManualImageBuilder):
  """Brain MRI slices, tumour vs no tumour (no masks: stored all zero)."""

  LABELS = LABELS
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"Point manual_dir at a brain MRI folder:\n{LAYOUT}"
  list_examples = staticmethod(list_examples)
