"""Metrics of classifiers, segmentations, perturbations and saliency maps.

Classification and segmentation metrics are host-side numpy; perturbation metrics are
JAX (they run inside the compiled attack functions); the map measures shared with the
explanation attacks (Pearson, cosine, centre of mass) run on either (:func:`_xp`).

Binary tasks treat class index 1 as positive (malignant, tumour): sensitivity is its
recall (true-positive rate), specificity the recall of the others (true-negative rate).
ROC AUC is the Mann-Whitney U statistic with ties counted one half (Hanley & McNeil
1982); for more than two classes the macro average of one-vs-rest AUCs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Host-side numpy, importable without JAX (lib/classifier_metrics.py), re-exported here.
from lib.classifier_metrics import (classification_metrics, roc_auc,  # noqa: F401
                                    sensitivity_at_specificity)


def dice_score(pred_mask: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-image Dice of binary masks (1 where both are empty)."""
  pred_mask, mask = pred_mask.astype(bool), mask.astype(bool)
  inter = (pred_mask & mask).sum(axis=(1, 2))
  total = pred_mask.sum(axis=(1, 2)) + mask.sum(axis=(1, 2))
  return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def segmentation_metrics(mask_probs: np.ndarray, masks: np.ndarray, has_mask: np.ndarray) -> dict:
  sel = np.asarray(has_mask) > 0
  if not sel.any():
    return {}
  return {"dice": float(dice_score(mask_probs[sel] > 0.5, masks[sel] > 0.5).mean())}


# ----------------------------------------------------------------------------- imperceptibility
# jnp functions of image batches in [0, 1] (NHWC), per example, jit-able.


def linf_distance(x, x_adv):
  return jnp.abs((x_adv - x).reshape(x.shape[0], -1)).max(axis=1)


def l2_distance(x, x_adv):
  return jnp.sqrt(((x_adv - x) ** 2).reshape(x.shape[0], -1).sum(axis=1))


def psnr(x, x_adv, data_range: float = 1.0):
  """Peak signal-to-noise ratio in dB (inf for identical images)."""
  mse = ((x_adv - x) ** 2).reshape(x.shape[0], -1).mean(axis=1)
  return 10.0 * jnp.log10(data_range ** 2 / mse)


def _gaussian_blur(x, size: int = 11, sigma: float = 1.5):
  """Separable Gaussian filter per channel, 'VALID' as in Wang et al.'s reference code, at
  ``Precision.HIGHEST``: the default lets GPUs and TPUs run it in TF32 / bfloat16, which
  moves SSIM of near-identical images by more than the differences it has to resolve."""
  t = jnp.arange(size, dtype=x.dtype) - (size - 1) / 2
  k = jnp.exp(-t ** 2 / (2 * sigma ** 2))
  k = k / k.sum()
  c = x.shape[-1]
  dn = ("NHWC", "HWIO", "NHWC")
  kh = jnp.tile(k.reshape(size, 1, 1, 1), (1, 1, 1, c))
  kw = jnp.tile(k.reshape(1, size, 1, 1), (1, 1, 1, c))
  conv = lambda a, k: jax.lax.conv_general_dilated(
      a, k, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c,
      precision=jax.lax.Precision.HIGHEST)
  return conv(conv(x, kh), kw)


def ssim(x, y, data_range: float = 1.0):
  """Mean structural similarity per example (Wang et al. 2004): 11x11 Gaussian window,
  sigma 1.5, K1 = 0.01, K2 = 0.03, averaged over pixels and channels."""
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_x, mu_y = _gaussian_blur(x), _gaussian_blur(y)
  sxx = _gaussian_blur(x * x) - mu_x ** 2
  syy = _gaussian_blur(y * y) - mu_y ** 2
  sxy = _gaussian_blur(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
  return s.reshape(s.shape[0], -1).mean(axis=1)


def perturbation_metrics(x, x_adv) -> dict:
  """L-inf and L2 norms, PSNR and SSIM of a perturbation, per example."""
  return {"linf": linf_distance(x, x_adv), "l2": l2_distance(x, x_adv),
          "psnr": psnr(x, x_adv), "ssim": ssim(x, x_adv)}


# ----------------------------------------------------------------------------- saliency maps
# Host-side numpy on maps (B, H, W); each returns one value per example.


def _xp(*arrays):
  """The array module of a map measure: ``jax.numpy`` for JAX arrays (inside ``jit`` and
  ``grad``: the explanation attacks' objectives), numpy in float64 for anything else (the
  host-side tables). One implementation serves both."""
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def _flat(m, xp=np):
  if xp is np:
    m = np.asarray(m, np.float64)
  return m.reshape(m.shape[0], -1)


def _ratio(xp, num, den2):
  """num / sqrt(den2): on the host exactly, 0 where den2 = 0; under JAX with a tiny
  offset inside the root, so that the gradient stays finite on a constant map."""
  if xp is np:
    den = np.sqrt(den2)
    return np.where(den > 0, num / np.maximum(den, 1e-30), 0.0)
  return num / jnp.sqrt(den2 + 1e-12)


def pearson(a, b):
  """Per-example Pearson correlation of two batches of maps.

  Constant maps (no variation, e.g. an all-zero CAM) have no correlation; on the host they
  get a defined value: 1 where both maps are constant (neither ranks any pixel above
  another, so nothing changed), 0 where only one is (flag such images with
  :func:`constant_map`). Under JAX (the attack objectives) a constant map gives 0, with a
  finite gradient."""
  xp = _xp(a, b)
  a, b = _flat(a, xp), _flat(b, xp)
  a = a - a.mean(1, keepdims=True)
  b = b - b.mean(1, keepdims=True)
  saa, sbb = (a ** 2).sum(1), (b ** 2).sum(1)
  r = _ratio(xp, (a * b).sum(1), saa * sbb)
  if xp is np:
    r = np.where((saa == 0) & (sbb == 0), 1.0, r)
  return r


def constant_map(m) -> np.ndarray:
  """1 where a map is constant (Pearson and Spearman against it are defined, not measured:
  see :func:`pearson`), else 0; host."""
  f = _flat(m)
  return (f.max(1) == f.min(1)).astype(np.float64)


def spearman(a, b) -> np.ndarray:
  """Spearman rank correlation with average ranks for ties (CAMs have many zeros); host.
  Constant maps as in :func:`pearson`: 1 when both are, 0 when one is."""
  from scipy.stats import rankdata
  return pearson(rankdata(_flat(a), axis=1), rankdata(_flat(b), axis=1))


def cosine(a, b):
  """Per-example cosine similarity of two batches of maps (0 where one is all zero)."""
  xp = _xp(a, b)
  a, b = _flat(a, xp), _flat(b, xp)
  return _ratio(xp, (a * b).sum(1), (a ** 2).sum(1) * (b ** 2).sum(1))


def _top_k_sets(m, k):
  return np.argsort(-_flat(m), axis=1, kind="stable")[:, :k]


def top_k_intersection(a, b, k: float | int = 0.02) -> np.ndarray:
  """Fraction of the k most salient pixels of ``a`` that are among the k most salient of
  ``b`` (Ghorbani et al. 2019, "top-k intersection"); k a count or a fraction of pixels."""
  n = _flat(a).shape[1]
  k = int(round(k * n)) if isinstance(k, float) else int(k)
  ta, tb = _top_k_sets(a, k), _top_k_sets(b, k)
  return np.asarray([len(np.intersect1d(x, y)) / k for x, y in zip(ta, tb)])


def map_ssim(a, b) -> np.ndarray:
  """SSIM of two maps each min-max normalised to [0, 1]."""
  norm = lambda m: (lambda f: ((f - f.min(1, keepdims=True)) /
                               np.maximum(np.ptp(f, axis=1, keepdims=True), 1e-12)))(_flat(m))
  shape = np.asarray(a).shape
  return np.asarray(ssim(jnp.asarray(norm(a).reshape(shape)[..., None], jnp.float32),
                         jnp.asarray(norm(b).reshape(shape)[..., None], jnp.float32)))


def center_of_mass(m, *, fraction: bool = False):
  """(row, col) of each non-negative map's centre of mass, (B, 2): in pixels (pixel
  centres at integer indices), or with ``fraction`` in fractions of the image size
  ((pixels + 0.5) / size: the centre of the image is (0.5, 0.5))."""
  xp = _xp(m)
  m = xp.maximum(m if xp is jnp else np.asarray(m, np.float64), 0.0)
  total = m.sum(axis=(1, 2))
  total = np.maximum(total, 1e-30) if xp is np else total + 1e-12
  rows = xp.arange(m.shape[1]) + (0.5 if fraction else 0.0)
  cols = xp.arange(m.shape[2]) + (0.5 if fraction else 0.0)
  if fraction:
    rows, cols = rows / m.shape[1], cols / m.shape[2]
  return xp.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], 1)


def center_of_mass_shift(a, b) -> np.ndarray:
  """Euclidean distance in pixels between the maps' centres of mass (Ghorbani et al. 2019)."""
  return np.linalg.norm(center_of_mass(a) - center_of_mass(b), axis=1)


def total_variation(m) -> np.ndarray:
  """Normalised total variation: mean |finite difference| of the map scaled to max 1.
  Lower is smoother / more coherent (as used to compare saliency of robust models)."""
  m = np.asarray(m, np.float64)
  m = m / np.maximum(np.abs(m).max(axis=(1, 2), keepdims=True), 1e-30)
  tv = np.abs(np.diff(m, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(m, axis=2)).sum(axis=(1, 2))
  return tv / (m.shape[1] * m.shape[2])


def gini(m) -> np.ndarray:
  """Gini index of |m| (Hurley & Rickard 2009; sparseness of attributions, Chalasani et
  al. 2020): 0 for a uniform map, 1 - 1/N for all mass in one pixel."""
  f = np.sort(np.abs(_flat(m)), axis=1)
  n = f.shape[1]
  l1 = np.maximum(f.sum(1, keepdims=True), 1e-30)
  k = np.arange(1, n + 1)[None]
  return 1.0 - 2.0 * ((f / l1) * (n - k + 0.5) / n).sum(1)


def entropy(m) -> np.ndarray:
  """Shannon entropy of |m| / sum |m|, divided by log(N): 1 uniform, 0 one pixel."""
  p = np.abs(_flat(m))
  p = p / np.maximum(p.sum(1, keepdims=True), 1e-30)
  h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(1)
  return h / np.log(p.shape[1])


def lesion_energy(m, mask) -> np.ndarray:
  """Fraction of the (non-negative) map's mass inside the lesion mask ("energy-based
  pointing game", Wang et al. 2020, Score-CAM). A uniform map scores the lesion's area."""
  m = np.clip(_flat(m), 0, None)
  return (m * _flat(mask)).sum(1) / np.maximum(m.sum(1), 1e-30)


def pointing_game(m, mask) -> np.ndarray:
  """1 where the map's maximum falls inside the mask (Zhang et al. 2018)."""
  idx = np.argmax(_flat(m), axis=1)
  return _flat(mask)[np.arange(len(idx)), idx] > 0


# ----------------------------------------------------------------------------- colour


# sRGB (D65) -> CIE XYZ, IEC 61966-2-1; the D65 white point for L*a*b*.
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = _SRGB_TO_XYZ.sum(axis=1)   # sRGB white (1, 1, 1): 0.95047, 1.0, 1.08883


def rgb_to_lab(images) -> np.ndarray:
  """sRGB images in [0, 1] (..., 3) -> CIE L*a*b* (..., 3) under D65 (L* in [0, 100]; a*,
  b* about -128..127): the sRGB transfer curve undone, XYZ by IEC 61966-2-1, then CIE 1976
  L*a*b*. Euclidean distances in a*b* approximate perceived differences of hue and
  saturation independent of brightness."""
  rgb = np.asarray(images, np.float64)
  lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  xyz = lin @ _SRGB_TO_XYZ.T / _D65
  delta = 6.0 / 29.0
  f = np.where(xyz > delta ** 3, np.cbrt(xyz), xyz / (3 * delta ** 2) + 4.0 / 29.0)
  return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]),
                   200.0 * (f[..., 1] - f[..., 2])], axis=-1)


def colour_gradient(images) -> np.ndarray:
  """Local colour variation of RGB images (N, H, W, 3) in [0, 1]: the magnitude of the
  spatial gradient of the chromatic channels a*, b* of CIELAB,
  ``sqrt(|grad a*|^2 + |grad b*|^2)`` per pixel (N, H, W), with central differences inside
  the image and one-sided ones at its border (``np.gradient``). Brightness changes alone
  (L*) do not count: that is :func:`luminance_gradient`."""
  lab = rgb_to_lab(images)
  out = 0.0
  for c in (1, 2):
    gy, gx = np.gradient(lab[..., c], axis=(1, 2))
    out = out + gy ** 2 + gx ** 2
  out = np.sqrt(out)
  return np.where(out < 1e-6, 0.0, out)   # float rounding of greys (a JND is about 1 unit)


def luminance_gradient(images) -> np.ndarray:
  """Magnitude of the spatial gradient of L* (N, H, W): the brightness edges, the control
  for :func:`colour_gradient`."""
  gy, gx = np.gradient(rgb_to_lab(images)[..., 0], axis=(1, 2))
  return np.sqrt(gy ** 2 + gx ** 2)


def masked_spearman(a, b, mask, min_pixels: int = 16) -> np.ndarray:
  """Per image, the Spearman rank correlation of ``a`` and ``b`` (N, H, W) over the pixels
  where ``mask`` is set (ties get average ranks); NaN for an image with fewer than
  ``min_pixels`` such pixels or with a constant ``a`` or ``b`` there."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mask = np.asarray(mask) > 0
  out = np.full(len(a), np.nan)
  for i in range(len(a)):
    sel = mask[i]
    if sel.sum() < min_pixels:
      continue
    x, y = stats.rankdata(a[i][sel]), stats.rankdata(b[i][sel])
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x ** 2).sum() * (y ** 2).sum())
    if den > 0:
      out[i] = (x * y).sum() / den
  return out


def lesion_interior(masks, erode: int = 2) -> np.ndarray:
  """The masks (N, H, W) eroded by ``erode`` pixels (3 x 3 steps): the lesion without its
  rim, where a central difference reaches outside the lesion, and where the step from
  lesion to skin or to the black padding of a resized image would count as "variation
  inside the lesion"."""
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  masks = np.asarray(masks) > 0
  if erode <= 0:
    return masks
  return np.stack([ndimage.binary_erosion(m, np.ones((3, 3), bool), iterations=erode)
                   for m in masks])


def colour_variation_correlation(maps, images, masks, min_pixels: int = 16,
                                 erode: int = 2) -> np.ndarray:
  """Does a saliency map follow the colour variation inside the lesion? Per image, the
  Spearman correlation, over the pixels of the lesion's interior (the mask eroded by
  ``erode`` pixels: :func:`lesion_interior`), between |map| and the local colour gradient
  (:func:`colour_gradient`, CIELAB a*b*). The skin-cancer saliency study's third
  observation (maps of robust models highlight colour variation within the lesion) made
  measurable: near 0 for a map unrelated to colour (a random map's expected value), 1 for
  a map ranked exactly like the colour edges. NaN where the interior has fewer than
  ``min_pixels`` pixels or either is constant there. Images (N, H, W, 3) in [0, 1]; maps
  and masks (N, H, W)."""
  return masked_spearman(np.abs(np.asarray(maps)), colour_gradient(images),
                         lesion_interior(masks, erode), min_pixels)


def luminance_variation_correlation(maps, images, masks, min_pixels: int = 16,
                                    erode: int = 2) -> np.ndarray:
  """:func:`colour_variation_correlation` with the L* (brightness) gradient: whether a map
  follows edges of any kind, the control that tells colour from mere contrast."""
  return masked_spearman(np.abs(np.asarray(maps)), luminance_gradient(images),
                         lesion_interior(masks, erode), min_pixels)


def top_fraction_iou(m, mask, fraction: float = 0.1) -> np.ndarray:
  """IoU between the top ``fraction`` most salient pixels and the mask."""
  f = _flat(m)
  k = max(int(round(fraction * f.shape[1])), 1)
  top = np.zeros_like(f, bool)
  np.put_along_axis(top, _top_k_sets(m, k), True, axis=1)
  gt = _flat(mask) > 0
  return (top & gt).sum(1) / np.maximum((top | gt).sum(1), 1)


def trivial_baselines(mask) -> dict:
  """What a map that knows nothing scores: a uniform map's lesion energy (= the lesion's
  area fraction) and the hit rate of a fixed point at the image centre."""
  mask = np.asarray(mask)
  h, w = mask.shape[1:3]
  return {"uniform_lesion_energy": _flat(mask).mean(1),
          "centre_pointing_game": mask[:, h // 2, w // 2] > 0}


def deletion_insertion(logits_fn, x, maps, target, steps: int = 16, baseline: float = 0.0):
  """Deletion and insertion curves and their AUCs (Petsiuk et al. 2018, RISE).

  Deletion replaces the most salient pixels first by ``baseline`` and tracks the
  target's probability (lower AUC = more faithful); insertion starts from the baseline
  image and restores the most salient pixels first (higher AUC = more faithful).
  jnp, jit-able; returns dict of (B,) AUCs and (B, steps + 1) curves.
  """
  b, h, w = maps.shape
  order = jnp.argsort(-maps.reshape(b, -1), axis=1)
  ranks = jnp.argsort(order, axis=1).reshape(b, h, w)      # 0 = most salient
  fractions = jnp.linspace(0.0, 1.0, steps + 1)

  def prob(images):
    return jnp.take_along_axis(jax.nn.softmax(logits_fn(images), -1), target[:, None], 1)[:, 0]

  def at(frac):
    top = (ranks < jnp.round(frac * h * w))[..., None]
    deleted = jnp.where(top, baseline, x)
    inserted = jnp.where(top, x, baseline)
    return prob(deleted), prob(inserted)

  deletion, insertion = jax.lax.map(at, fractions)           # (steps + 1, B)
  auc = lambda c: jnp.trapezoid(c, fractions, axis=0)
  return {"deletion_auc": auc(deletion), "insertion_auc": auc(insertion),
          "deletion_curve": deletion.T, "insertion_curve": insertion.T}


# ----------------------------------------------------------------------------- uncertainty


def bootstrap_ci(values, *, paired_with=None, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95, method: str = "BCa"):
  """Mean (or mean difference ``values - paired_with``, resampling the same images) and
  its bootstrap confidence interval: bias-corrected and accelerated (``"BCa"``, Efron &
  Tibshirani 1993, ch. 14; ``scipy.stats.bootstrap``), which corrects the percentile
  interval's skew for the bounded, skewed per-image map metrics, or ``"percentile"``.
  Non-finite values are left out. Returns ``(estimate, low, high)``."""
  from scipy import stats as scipy_stats  # pylint: disable=import-outside-toplevel
  v = np.asarray(values, np.float64)
  if paired_with is not None:
    v = v - np.asarray(paired_with, np.float64)
  v = v[np.isfinite(v)]
  if len(v) == 0:
    return float("nan"), float("nan"), float("nan")
  if len(v) < 3 or np.ptp(v) <= 1e-9 * max(1.0, float(np.abs(v).max())):
    m = float(v.mean())   # no spread (up to rounding): BCa's acceleration is undefined
    return m, m, m
  res = scipy_stats.bootstrap((v,), np.mean, n_resamples=n_boot, confidence_level=level,
                              method=method, random_state=np.random.default_rng(seed))
  return float(v.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)
