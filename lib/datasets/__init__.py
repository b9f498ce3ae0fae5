"""Data sets: one TFDS builder per file in this package, registered in :data:`DATASETS`.

A builder writes array_record files (no TensorFlow) and is registered with
:func:`register_dataset`, which declares what the rest of the code needs to know:
its label sets (``label_set`` -> class names in model output order), whether it has
lesion masks, and, for data that cannot be generated, the folder under the shared data
root (``$MEDROBUST_DATA_ROOT`` or ``../shared/data``) that is its default ``manual_dir``.
Every module of this package is imported when the package is, so a new data set is one
new file here (docs/EXTENDING.md); code elsewhere can register one too.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Mapping, Optional

from lib import registry

DATASETS = registry.Registry("data set")


def register_dataset(name: str, *, class_names: Mapping[str, tuple], has_masks: bool,
                     channels: int = 1, manual_dir: Optional[str] = None,
                     label_sources: Optional[Mapping[str, Mapping[str, tuple]]] = None,
                     builder_kwargs: Optional[Callable] = None, replace: bool = False):
  """Class decorator: registers a TFDS builder as data set ``name`` (``data.name`` in
  configs).

  Args:
    class_names: label set -> class names in model output order (the first label set is
      the default).
    has_masks: whether images come with lesion masks (segmentation head, lesion metrics).
    channels: 1 (stored grayscale) or 3 (RGB); a model's ``in_channels`` must be 3 for an
      RGB data set, and may be 3 for a grayscale one (the channel is repeated, e.g. for an
      ImageNet stem).
    label_sources: label set -> {class name: the stored labels it pools}, for label sets
      whose classes merge stored labels (HAM10000's ``malignant``: mel, bcc and akiec);
      a class not listed is the stored label of its own name.
    manual_dir: folder name under the shared data root (a data set read from local
      files, built with ``download_and_prepare(manual_dir=...)``); None for generated data.
    builder_kwargs: ``data_config -> dict`` of extra builder arguments (e.g. a
      ``BuilderConfig`` made from config fields).
  """
  def decorate(builder):
    if channels not in (1, 3):
      raise ValueError(f"Data set {name!r}: channels must be 1 or 3, got {channels!r}.")
    if getattr(builder, "CHANNELS", channels) != channels:
      raise ValueError(f"Data set {name!r} is registered with channels={channels} but its "
                       f"builder stores {builder.CHANNELS}.")
    DATASETS.register(name, replace=replace, builder=builder, class_names=dict(class_names),
                      has_masks=has_masks, channels=channels, manual_dir=manual_dir,
                      label_sources={k: dict(v) for k, v in (label_sources or {}).items()},
                      builder_kwargs=builder_kwargs)(builder)
    return builder
  return decorate


for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
