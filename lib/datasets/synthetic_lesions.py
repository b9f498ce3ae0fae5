"""Procedural breast-ultrasound-like images with lesion masks (benign vs malignant).

The sonographic criteria that the generator encodes (BI-RADS ultrasound lexicon;
Stavros et al. 1995, "Solid breast nodules: use of sonography to distinguish between
benign and malignant lesions"):
  * benign: smooth, circumscribed oval lesion, wider than tall ("parallel"
    orientation), sometimes posterior enhancement;
  * malignant: irregular or spiculated margin, taller than wide ("not parallel"),
    posterior acoustic shadowing.
Every cue is drawn from overlapping distributions (and a few examples carry the other
class's shadow), so a model does not reach 100 % at once. Images have multiplicative
speckle (Rayleigh), layered tissue texture and depth-dependent gain, like B-mode scans.

Everything is a pure function of ``(seed, split, index)``, so the data set is the same
on every machine.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from lib.datasets import register_dataset

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}
LABELS = ("benign", "malignant")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
  """Low-frequency noise: a coarse random grid upsampled bilinearly."""
  coarse = rng.standard_normal((scale + 1, scale + 1))
  grid = np.linspace(0, scale, size)
  i0 = np.floor(grid).astype(int).clip(0, scale - 1)
  f = grid - i0
  rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
  return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def render_lesion(rng: np.random.Generator, size: int, malignant: bool):
  """Draws one image (uint8, HxW) and its lesion mask (bool, HxW)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  # Tissue: horizontal layers, texture and depth attenuation.
  layers = 0.45 + 0.12 * np.sin(2 * np.pi * (yy * rng.uniform(2, 5) + rng.uniform()))
  tissue = layers + 0.10 * _smooth_noise(rng, size, 6) + 0.05 * _smooth_noise(rng, size, 20)
  tissue *= 1.0 - rng.uniform(0.2, 0.45) * yy
  # Lesion geometry: overlapping distributions of orientation and margin.
  cy, cx = rng.uniform(0.35, 0.6), rng.uniform(0.3, 0.7)
  radius = rng.uniform(0.09, 0.17)
  if malignant:
    aspect = rng.uniform(0.75, 1.5)            # height / width, mostly > 1
    irregular = rng.uniform(0.08, 0.3)
    spikes = rng.integers(0, 12)
    shadow = rng.uniform(0.15, 0.6)
  else:
    aspect = rng.uniform(0.45, 1.05)           # mostly wider than tall
    irregular = rng.uniform(0.0, 0.12)
    spikes = rng.integers(0, 2) * rng.integers(0, 5)
    shadow = rng.uniform(0.0, 0.3) if rng.uniform() < 0.2 else -rng.uniform(0.0, 0.2)
  ry, rx = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
  theta = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
  r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
  boundary = np.ones_like(theta)
  for k in range(2, 7):                         # lobulation
    boundary += irregular / k * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
  if spikes:                                    # spiculation
    angles = rng.uniform(0, 2 * np.pi, spikes)
    for a in angles:
      d = np.angle(np.exp(1j * (theta - a)))
      boundary += rng.uniform(0.2, 0.6) * np.exp(-(d / 0.08) ** 2)
  mask = r <= boundary
  echo = rng.uniform(0.08, 0.25)                # hypoechoic interior
  image = np.where(mask, echo + 0.05 * _smooth_noise(rng, size, 10), tissue)
  halo = np.exp(-((r - boundary) / 0.08) ** 2) * rng.uniform(0.0, 0.15)
  image = image + halo * (~mask) * (1 if not malignant else -1)
  # Posterior acoustic shadowing (positive) or enhancement (negative) below the lesion.
  width = np.abs(xx - cx) / (rx * 1.1)
  below = (yy > cy) & (width < 1)
  falloff = np.clip((yy - cy) / 0.15, 0, 1) * (1 - width ** 2).clip(0, 1)
  image = image * (1 - shadow * falloff * below * (~mask))
  # Multiplicative Rayleigh speckle and mild blur of the envelope.
  speckle = rng.rayleigh(scale=0.8, size=(size, size))
  image = np.clip(image * (0.4 + 0.6 * speckle), 0, 1)
  return (image * 255).astype(np.uint8), mask


def generate(seed: int, split: str, index: int, size: int):
  """Example ``index`` of ``split``: (image uint8 HxW, mask bool HxW, label int)."""
  rng = np.random.default_rng([seed, SPLIT_OFFSETS[split], index])
  label = int(rng.integers(0, 2))
  image, mask = render_lesion(rng, size, malignant=bool(label))
  return image, mask, label


@dataclasses.dataclass
class SyntheticLesionsConfig(tfds.core.BuilderConfig):
  image_size: int = 64
  num_train: int = 512
  num_val: int = 128
  num_test: int = 128
  seed: int = 0


def make_config(image_size=64, num_train=512, num_val=128, num_test=128, seed=0):
  """A builder config named after its parameters, so each variant has its own folder."""
  return SyntheticLesionsConfig(
      name=f"s{image_size}_n{num_train}-{num_val}-{num_test}_seed{seed}",
      version=tfds.core.Version("1.0.0"), image_size=image_size, num_train=num_train,
      num_val=num_val, num_test=num_test, seed=seed)


def _builder_kwargs(data_config) -> dict:
  return {"config": make_config(data_config.synthetic_size, data_config.num_train,
                                data_config.num_val, data_config.num_test,
                                data_config.synthetic_seed)}


@register_dataset("synthetic_lesions", class_names={"binary": ("benign", "malignant")},
                  has_masks=True, builder_kwargs=_builder_kwargs)
class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Procedural breast-ultrasound-like lesions (:func:`generate`), grayscale, with masks;
  written as array_record, read without TF."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [make_config()]
  CHANNELS = 1
  LABELS = LABELS
  generate = staticmethod(generate)   # (seed, split, index, size) -> image, mask, label

  def _info(self):
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, self.CHANNELS)),
            "mask": tfds.features.Image(shape=(s, s, 1)),
            "label": tfds.features.ClassLabel(names=list(self.LABELS)),
            "id": tfds.features.Text(),
            "group": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    c = self.builder_config
    counts = {"train": c.num_train, "val": c.num_val, "test": c.num_test}
    return {split: self._generate_examples(split, n) for split, n in counts.items()}

  def _generate_examples(self, split, n):
    from PIL import Image
    c = self.builder_config
    for i in range(n):
      image, mask, label = self.generate(c.seed, split, i, c.image_size)
      key = f"{split}_{i:05d}"
      yield key, {
          "image": Image.fromarray(image), "mask": Image.fromarray(mask.astype(np.uint8) * 255),
          "label": label, "id": key, "group": key,
      }
