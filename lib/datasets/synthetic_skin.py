"""Procedural dermoscopy-like RGB images with lesion masks (nevus vs melanoma): the RGB
counterpart of :mod:`lib.datasets.synthetic_lesions`, for tests and demos of the colour
path without the HAM10000 files.

The generator encodes the ABCD rule of dermoscopy (Stolz et al. 1994): a melanoma is more
often **A**symmetric, has an irregular **B**order, several **C**olours (dark brown, black,
blue-grey, red, light brown) and a larger **D**iameter; a common nevus is round, symmetric,
evenly brown. Every cue is drawn from overlapping distributions, so a model does not reach
100 % at once, and the colour blotches of a melanoma lie inside its mask: a model that
uses colour variation has a reason to look there (what the robust-saliency study's colour
metric, :func:`lib.metrics.colour_variation_correlation`, measures).

Everything is a pure function of ``(seed, split, index)``; the builder configs (size,
counts, seed) are those of :mod:`lib.datasets.synthetic_lesions`.
"""

from __future__ import annotations

import numpy as np

from lib.datasets import register_dataset, synthetic_lesions
from lib.datasets.synthetic_lesions import SPLIT_OFFSETS, _smooth_noise

LABELS = ("nevus", "melanoma")

SKIN = np.array([0.88, 0.68, 0.58])
# Dermoscopic colours (RGB in [0, 1]): the first is a nevus's brown.
COLOURS = np.array([
    [0.55, 0.36, 0.24],   # brown
    [0.30, 0.18, 0.13],   # dark brown
    [0.12, 0.09, 0.09],   # black
    [0.42, 0.47, 0.58],   # blue-grey
    [0.72, 0.32, 0.30],   # red
    [0.74, 0.55, 0.40],   # light brown
])


def render_skin_lesion(rng: np.random.Generator, size: int, melanoma: bool):
  """Draws one RGB image (uint8, H x W x 3) and its lesion mask (bool, H x W)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  skin = SKIN + rng.uniform(-0.06, 0.06, 3)
  image = skin[None, None] * (1 + 0.05 * _smooth_noise(rng, size, 5))[..., None]
  cy, cx = rng.uniform(0.4, 0.6, 2)
  if melanoma:
    radius, aspect = rng.uniform(0.16, 0.3), rng.uniform(0.6, 1.6)
    irregular, n_colours = rng.uniform(0.08, 0.3), int(rng.integers(2, 5))
  else:
    radius, aspect = rng.uniform(0.12, 0.24), rng.uniform(0.8, 1.25)
    irregular, n_colours = rng.uniform(0.0, 0.1), int(rng.integers(1, 3))
  ry, rx = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
  theta = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
  r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
  boundary = np.ones_like(theta)
  for k in range(1 if melanoma else 2, 7):       # k = 1 shifts the outline: asymmetry
    boundary += irregular / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
  mask = r <= boundary
  base = COLOURS[0] * rng.uniform(0.85, 1.15)
  lesion = base[None, None] * (1 + 0.06 * _smooth_noise(rng, size, 8))[..., None]
  picks = rng.choice(np.arange(1, len(COLOURS)), size=n_colours - 1, replace=False)
  for colour in COLOURS[picks]:                   # blotches of other colours in the lesion
    by, bx = cy + ry * rng.uniform(-0.6, 0.6), cx + rx * rng.uniform(-0.6, 0.6)
    spread = radius * rng.uniform(0.2, 0.5)
    weight = np.exp(-((yy - by) ** 2 + (xx - bx) ** 2) / (2 * spread ** 2))
    weight *= 0.5 + 0.5 * (_smooth_noise(rng, size, 12) > -0.3)
    lesion = lesion * (1 - weight[..., None]) + colour * weight[..., None]
  edge = np.clip((boundary - r) / (0.08 if melanoma else 0.15), 0, 1)  # soft margin
  alpha = np.where(mask, 0.35 + 0.65 * edge, 0.0)[..., None]
  image = image * (1 - alpha) + lesion * alpha
  vignette = np.clip(1.25 - 1.1 * np.hypot(yy - 0.5, xx - 0.5), 0, 1)  # dermoscope's circle
  image = image * vignette[..., None] + rng.normal(0, 0.015, image.shape)
  return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask


def generate(seed: int, split: str, index: int, size: int):
  """Example ``index`` of ``split``: (image uint8 H x W x 3, mask bool H x W, label)."""
  rng = np.random.default_rng([seed, 100 + SPLIT_OFFSETS[split], index])
  label = int(rng.integers(0, 2))
  image, mask = render_skin_lesion(rng, size, melanoma=bool(label))
  return image, mask, label


@register_dataset("synthetic_skin", class_names={"binary": LABELS}, has_masks=True,
                  channels=3, builder_kwargs=synthetic_lesions._builder_kwargs)
class SyntheticSkin(synthetic_lesions.SyntheticLesions):
  """Procedural dermoscopy-like RGB lesions (:func:`generate`), nevus vs melanoma, with
  masks; written as array_record, read without TF."""

  CHANNELS = 3
  LABELS = LABELS
  generate = staticmethod(generate)
