"""Input pipeline: TFDS builders (array_record) -> resized arrays -> grain iterators.

No TensorFlow is needed: builders write array_record files, ``as_data_source`` reads
them, images are decoded with PIL. A split is small enough here (hundreds of images)
to be decoded and resized once into memory; the training stream is a grain
``MapDataset`` (shuffle per epoch with a seed, host-side augmentation with a per-example
rng, batching), so the whole stream is a deterministic function of the seed and the
iterator state is one integer that is saved with every checkpoint.

Every batch is a dict of numpy arrays: ``image`` float32 (B, H, W, C) in [0, 1],
``mask`` float32 (B, H, W) in {0, 1}, ``label`` int32 (B,), ``has_mask`` float32 (B,)
and, for evaluation, ``weight`` float32 (B,) (0 for padding).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from concurrent import futures
from typing import Optional

import grain
import numpy as np
from PIL import Image

from lib import datasets, files, progress
from lib.datasets import manual
from lib.datasets.manual import DataError

# Where the real data sets live by default: ``$MEDROBUST_DATA_ROOT/<name>``, else
# ``../shared/data/<name>`` beside the checkout (``--config.data.manual_dir`` overrides both).
SHARED_DATA = os.path.abspath(os.path.expanduser(
    os.environ.get("MEDROBUST_DATA_ROOT")
    or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")))


# The registered data sets (one file each in lib/datasets/; lib/datasets/__init__.py).
DATASETS = datasets.DATASETS
register_dataset = datasets.register_dataset


def default_manual_dir(name: str) -> Optional[str]:
  """Where data set ``name``'s files are read from unless ``data.manual_dir`` says
  otherwise: its folder under :data:`SHARED_DATA` (None for generated data)."""
  folder = DATASETS[name].manual_dir
  return None if folder is None else os.path.join(SHARED_DATA, folder)


def class_names(data_config) -> tuple:
  spec = DATASETS[data_config.name]
  if data_config.label_set not in spec.class_names:
    raise ValueError(f"Data set {data_config.name!r} has label sets "
                     f"{sorted(spec.class_names)}, not {data_config.label_set!r}.")
  return spec.class_names[data_config.label_set]


def stored_label_map(data_config, stored: list) -> dict:
  """{stored label index: class index in the label set}; stored labels outside the label
  set are absent (their images are left out, e.g. HAM10000's bkl for mel vs nv)."""
  names = class_names(data_config)
  sources = DATASETS[data_config.name].label_sources.get(data_config.label_set, {})
  out = {}
  for i, name in enumerate(names):
    for source in sources.get(name, (name,)):
      if source not in stored:
        raise DataError(f"Label set {data_config.label_set!r} of {data_config.name} pools "
                        f"{source!r}, which is not a stored label ({stored}).")
      if stored.index(source) in out:
        raise DataError(f"Label set {data_config.label_set!r} of {data_config.name} puts the "
                        f"stored label {source!r} in two classes.")
      out[stored.index(source)] = i
  return out


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def get_builder(data_config):
  """Returns the prepared TFDS builder of a registered data set; builds it first if needed.

  In a job of several processes, process 0 prepares it while the others wait at a barrier,
  then they open it (on a shared file system) or prepare their own copy (on local disks).
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return _get_builder(data_config)
  from lib import parallel  # pylint: disable=import-outside-toplevel
  builder = _get_builder(data_config) if jax.process_index() == 0 else None
  parallel.sync(f"data {data_config.name} prepared")
  return builder or _get_builder(data_config)


def _get_builder(data_config):
  """:func:`get_builder` in one process.

  A data set read from a ``manual_dir`` is prepared once per *source*: under
  ``<data_dir>/by_source/<fingerprint>/`` (the fingerprint of the folder's file names and
  sizes), so another copy (or a changed one) gets its own prepared set and never replaces
  or deletes the one another run is reading. Builds hold a lock, so runs or processes that
  start together build once: the others wait and then read it (concurrent builds into one
  folder used to fail on a rename or a timeout).
  """
  name = data_config.name
  spec = DATASETS[name]
  data_dir = data_config.get("data_dir") or default_data_dir()
  kwargs = spec.builder_kwargs(data_config) if spec.builder_kwargs else {}
  if spec.manual_dir is None:  # generated data: the builder config names its folder
    return _prepared(lambda: spec.builder(data_dir=data_dir, file_format="array_record",
                                          **kwargs), data_dir, name, {})

  import tensorflow_datasets as tfds
  manual_dir = os.path.abspath(os.path.expanduser(data_config.get("manual_dir") or
                                                  default_manual_dir(name)))
  # Validates the layout (and names the folder) before anything is written.
  rows = spec.builder.list_examples(manual_dir)
  fingerprint = manual.fingerprint(manual_dir, rows)
  root = os.path.join(data_dir, "by_source", fingerprint[:16])
  return _prepared(
      lambda: spec.builder(data_dir=root, file_format="array_record", **kwargs), root, name,
      {"download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)},
      source={"manual_dir": manual_dir, "fingerprint": fingerprint})


def _prepared(make, root: str, name: str, prepare_kwargs: dict, source: Optional[dict] = None):
  """``make()``'s builder, prepared under an exclusive lock on ``<root>/<name>.lock``."""
  builder = make()
  if _is_prepared(builder):
    return builder
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f"{name}.lock"), "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      logging.info("Waiting for another process that is preparing %s in %s ...", name, root)
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = make()   # it may have been prepared while we waited
      if not _is_prepared(builder):
        if source is not None:
          logging.info("Preparing %s from %s into %s (once per source copy).", name,
                       source["manual_dir"], builder.data_dir)
        builder.download_and_prepare(**prepare_kwargs)
        if source is not None:
          files.atomic_json(os.path.join(builder.data_dir, "source.json"), source)
        builder = make()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return builder


def _is_prepared(builder) -> bool:
  return os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))


# ----------------------------------------------------------------------------- resizing


def resize_example(image: np.ndarray, mask: np.ndarray, size: int, mode: str = "pad"):
  """uint8 (H, W, C) image and (H, W, 1) mask -> (size, size, C) and (size, size); bilinear
  for images, nearest for masks.

  ``mode="pad"`` keeps the aspect ratio and pads with black (centred); ``"stretch"``
  resizes to a square.
  """
  h, w = image.shape[:2]
  if mode == "pad":
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    image = np.pad(image, ((top, side - h - top), (left, side - w - left), (0, 0)))
    mask = np.pad(mask, ((top, side - h - top), (left, side - w - left), (0, 0)))
  elif mode != "stretch":
    raise ValueError(f"resize mode must be 'pad' or 'stretch', got {mode!r}")
  im = np.asarray(_pil(image).resize((size, size), Image.BILINEAR), np.uint8)
  ma = Image.fromarray(mask[..., 0]).resize((size, size), Image.NEAREST)
  return im.reshape(size, size, image.shape[-1]), (np.asarray(ma) > 0).astype(np.uint8)


def _pil(image: np.ndarray) -> Image.Image:
  """uint8 (H, W, 1) or (H, W, 3) -> a PIL image ("L" or "RGB")."""
  return Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))


def load_split(data_config, split: str, image_size: int) -> dict:
  """Decodes and resizes one split into memory.

  Returns numpy arrays ``image`` uint8 (N, S, S, C) (C: the data set's ``channels``),
  ``mask`` uint8 (N, S, S), ``label`` int32 (N,) in the label set's order, and lists ``id``
  and ``group``.

  With ``data_config.folds = k > 0`` the stored split is ignored: all labelled images
  are pooled and ``split`` is ``train``/``val``/``test`` of fold ``data_config.fold``
  of a group-aware stratified k-fold (:func:`cv_assignment`).
  """
  builder = get_builder(data_config)
  if data_config.get("folds", 0):
    return _cv_split(builder, data_config, split, image_size)
  if split not in builder.info.splits:
    raise DataError(f"Split {split!r} not in {data_config.name} (has "
                    f"{sorted(builder.info.splits)}).")
  return _read_split(builder, data_config, split, image_size)


def _read_split(builder, data_config, split: str, image_size: int) -> dict:
  source = builder.as_data_source(split)
  remap = stored_label_map(data_config, builder.info.features["label"].names)
  mode = data_config.get("resize", "pad")

  def read(i):
    ex = source[i]
    label = int(ex["label"])
    if label not in remap:
      return None
    image, mask = resize_example(ex["image"], ex["mask"], image_size, mode)
    return image, mask, remap[label], _text(ex["id"]), _text(ex["group"])

  with futures.ThreadPoolExecutor(max(os.cpu_count() or 1, 2)) as pool:
    rows = [r for r in progress.track(pool.map(read, range(len(source))), len(source),
                                      f"{data_config.name}/{split} {image_size} px", "img")
            if r is not None]
  rows.sort(key=lambda r: r[3])  # stored order is a hash; sort by id for stable evaluation
  if not rows:
    raise DataError(f"{data_config.name}/{split} has no images of classes "
                    f"{class_names(data_config)}.")
  image, mask, label, ids, groups = zip(*rows)
  return dict(image=np.stack(image), mask=np.stack(mask),
              label=np.asarray(label, np.int32), id=list(ids), group=list(groups))


# ----------------------------------------------------------------------------- cross-validation


def _order(seed: int, name: str) -> str:
  return hashlib.sha256(f"cv{seed}:{name}".encode()).hexdigest()


def cv_assignment(groups, labels, folds: int, seed: int = 0) -> np.ndarray:
  """Group-aware, label-stratified k-fold: the fold (0..k-1) of every image.

  All images of a group (near-duplicates, one patient) land in one fold. Groups are
  taken per label (a group's label: its images' most common one) in an order hashed
  with ``seed``, each into the fold that so far has the fewest images of that label
  (then the fewest images), so every fold has about 1/k of every class. A pure function
  of ids and seed: the same on every machine, independent of the stored order.
  """
  groups, labels = list(groups), np.asarray(labels)
  if folds < 2:
    raise ValueError(f"folds must be >= 2, got {folds}")
  members: dict = {}
  for i, g in enumerate(groups):
    members.setdefault(g, []).append(i)
  if len(members) < folds:
    raise DataError(f"{len(members)} groups cannot fill {folds} folds.")
  group_label = {g: int(np.bincount(labels[idx]).argmax()) for g, idx in members.items()}
  fold_of = np.zeros(len(groups), np.int32)
  count = np.zeros((folds, int(labels.max()) + 1), np.int64)
  for lab in sorted(set(group_label.values())):
    for g in sorted((g for g in members if group_label[g] == lab), key=lambda g: _order(seed, g)):
      f = min(range(folds), key=lambda f: (count[f, lab], count[f].sum(), f))
      fold_of[members[g]] = f
      count[f] += np.bincount(labels[members[g]], minlength=count.shape[1])
  return fold_of


def cv_split_indices(groups, labels, folds: int, fold: int, seed: int = 0,
                     val_fraction: float = 0.1) -> dict:
  """Indices of ``train``, ``val`` and ``test`` for one fold.

  ``test`` is fold ``fold``; ``val`` (for checkpoint selection) is ``val_fraction`` of
  the other folds' groups, stratified by label and drawn with a fold-dependent hash;
  ``train`` is the rest. No group is in two of them."""
  if not 0 <= fold < folds:
    raise ValueError(f"fold must be in [0, {folds}), got {fold}")
  groups, labels = list(groups), np.asarray(labels)
  fold_of = cv_assignment(groups, labels, folds, seed)
  rest = [g for g in dict.fromkeys(groups[i] for i in np.flatnonzero(fold_of != fold))]
  first = {}
  for i, g in enumerate(groups):
    first.setdefault(g, i)
  val_groups = set()
  for lab in sorted({int(labels[first[g]]) for g in rest}):
    mine = sorted((g for g in rest if labels[first[g]] == lab),
                  key=lambda g: _order(seed * 1000 + fold, g))
    val_groups.update(mine[:max(1, round(val_fraction * len(mine)))])
  in_val = np.array([g in val_groups for g in groups])
  return {"test": np.flatnonzero(fold_of == fold),
          "val": np.flatnonzero((fold_of != fold) & in_val),
          "train": np.flatnonzero((fold_of != fold) & ~in_val)}


_POOLED: dict = {}   # (prepared data dir, label set, resize, size) -> all images, by id


def _pooled(builder, data_config, image_size: int) -> dict:
  """Every stored split decoded and resized, sorted by id; kept for the process (a fold's
  train, val and test come from the same pool: decoded once, not three times)."""
  key = (builder.data_dir, os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json")),
         data_config.get("label_set", "binary"),
         data_config.get("resize", "pad"), image_size)
  if key not in _POOLED:
    parts = [_read_split(builder, data_config, s, image_size) for s in sorted(builder.info.splits)]
    pooled = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
                  else sum((p[k] for p in parts), [])) for k in parts[0]}
    order = np.argsort(pooled["id"], kind="stable")
    _POOLED.clear()
    _POOLED[key] = {k: (v[order] if isinstance(v, np.ndarray) else [v[i] for i in order])
                    for k, v in pooled.items()}
  return _POOLED[key]


def _cv_split(builder, data_config, split: str, image_size: int) -> dict:
  if split not in ("train", "val", "test"):
    raise DataError(f"With data.folds > 0 the splits are train, val and test, not {split!r}.")
  pooled = _pooled(builder, data_config, image_size)
  idx = cv_split_indices(pooled["group"], pooled["label"], data_config.folds, data_config.fold,
                         data_config.get("fold_seed", 0),
                         data_config.get("val_fraction", 0.1))[split]
  return take(pooled, idx)


def channel_stats(images_u8: np.ndarray, chunk: int = 256) -> tuple[tuple, tuple]:
  """Per-channel mean and standard deviation of uint8 images (N, H, W, C) in [0, 1]
  units, rounded to 4 digits: the given values of ``model.mean`` / ``model.std`` that a
  config states (e.g. configs/ham10000.py, from its training split), or a run's own with
  ``model.stats_from="train"``. Two passes over ``chunk`` images at a time (float64 sums:
  5,000 RGB images at 224 px never become one 6 GB float64 array)."""
  images_u8 = np.asarray(images_u8)
  n = images_u8.shape[0] * images_u8.shape[1] * images_u8.shape[2]
  chunks = [images_u8[i:i + chunk] for i in range(0, len(images_u8), chunk)]
  flat = lambda c: c.reshape(-1, c.shape[-1]).astype(np.float64)
  mean = sum(flat(c).sum(0) for c in chunks) / n
  var = sum(((flat(c) - mean) ** 2).sum(0) for c in chunks) / n
  return (tuple(round(float(v) / 255.0, 4) for v in mean),
          tuple(round(float(np.sqrt(v)) / 255.0, 4) for v in var))


def take(arrays: dict, idx) -> dict:
  """The images ``idx`` of a split's arrays (numpy arrays and lists such as ``id``)."""
  return {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx])
          for k, v in arrays.items()}


def subset(arrays: dict, n: int, seed: int = 0) -> dict:
  """``n`` images of a split, stratified by label, in the split's order: each class gives
  its share (largest remainder) from a seeded shuffle. Splits are often sorted by class, so
  their first ``n`` images may all be benign. ``n <= 0`` or ``n >= len``: the whole split."""
  labels = np.asarray(arrays["label"])
  if n <= 0 or n >= len(labels):
    return arrays
  classes, counts = np.unique(labels, return_counts=True)
  share = counts * n / len(labels)
  per_class = np.floor(share).astype(int)
  per_class[np.argsort(per_class - share, kind="stable")[:n - per_class.sum()]] += 1
  rng = np.random.default_rng(seed)
  idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:k]
                                for c, k in zip(classes, per_class)]))
  return take(arrays, idx)


def example_indices(labels, k: int) -> np.ndarray:
  """``k`` images to show in a figure: the first of each class in turn (benign, malignant,
  benign, ...), so that a figure of a class-sorted split shows both classes."""
  labels = np.asarray(labels)
  queues = [list(np.flatnonzero(labels == c)) for c in dict.fromkeys(labels.tolist())]
  out = []
  while len(out) < min(k, len(labels)):
    for q in queues:
      if q and len(out) < k:
        out.append(q.pop(0))
  return np.asarray(out, dtype=int)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


# ----------------------------------------------------------------------------- augmentation


def to_model_input(image_u8: np.ndarray, in_channels: Optional[int] = None) -> np.ndarray:
  """uint8 (..., H, W, C) -> float32 (..., H, W, in_channels) in [0, 1].

  A grayscale image (C = 1) is repeated for a 3-channel model (an ImageNet stem);
  ``in_channels=None`` keeps C. An RGB image for a 1-channel model is refused (the config
  check, :func:`lib.checks.check_channels`, stops such a config before anything runs)."""
  x = image_u8.astype(np.float32) / 255.0
  c = x.shape[-1]
  if in_channels is None or in_channels == c:
    return x
  if c == 1:
    return np.repeat(x, in_channels, axis=-1)
  raise ValueError(f"Images have {c} channels but the model takes {in_channels}.")


# ITU-R 601-2 luma, the weights of PIL's "L" conversion (what grayscale data sets stored).
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _rotate_hue(x: np.ndarray, angle: float) -> np.ndarray:
  """Rotates the hue of float RGB (..., 3) by ``angle`` radians: a rotation about the grey
  axis in YIQ space, which keeps luma (a linear stand-in for HSV's hue shift)."""
  to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                    np.float32)
  c, s = np.cos(angle), np.sin(angle)
  rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
  m = np.linalg.inv(to_yiq) @ rot @ to_yiq
  return x @ m.T.astype(np.float32)


def colour_jitter(x: np.ndarray, rng: np.random.Generator, aug) -> np.ndarray:
  """Brightness, contrast (both channels alike), and for RGB saturation and hue jitter of
  one float image (S, S, C) in [0, 1], each drawn uniformly in +-its ``aug`` amount (hue
  in turns, as torchvision's ColorJitter); clipped to [0, 1]. Dermoscopes and cameras
  differ in white balance and saturation, so colour jitter is on in the HAM10000 configs;
  grayscale images get only brightness and contrast."""
  if aug.get("brightness", 0) or aug.get("contrast", 0):
    c = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
    b = rng.uniform(-aug.brightness, aug.brightness)
    x = np.clip((x - x.mean()) * c + x.mean() + b, 0.0, 1.0)
  if x.shape[-1] == 3:
    if aug.get("saturation", 0):
      gray = (x @ LUMA)[..., None]
      x = np.clip(gray + (x - gray) * (1.0 + rng.uniform(-aug.saturation, aug.saturation)), 0, 1)
    if aug.get("hue", 0):
      x = np.clip(_rotate_hue(x, 2 * np.pi * rng.uniform(-aug.hue, aug.hue)), 0.0, 1.0)
  return x.astype(np.float32)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug) -> tuple:
  """Host-side augmentation of one uint8 (S, S, C) image and its (S, S) mask -> float32
  (S, S, C) in [0, 1] and the mask.

  Horizontal flip, random crop of a fraction ``aug.crop_scale``..1 of the side resized
  back (a small zoom and translation), then :func:`colour_jitter`. Vertical flips are off
  by default: in ultrasound the vertical axis is depth and shadowing points down (for
  dermoscopy, which has no up, the HAM10000 configs turn them on).
  """
  size = image.shape[0]
  if aug.hflip and rng.uniform() < 0.5:
    image, mask = image[:, ::-1], mask[:, ::-1]
  if aug.vflip and rng.uniform() < 0.5:
    image, mask = image[::-1], mask[::-1]
  if aug.crop_scale < 1.0:
    side = int(round(size * rng.uniform(aug.crop_scale, 1.0)))
    top, left = rng.integers(0, size - side + 1, size=2)
    box = (int(left), int(top), int(left) + side, int(top) + side)
    image = np.asarray(_pil(image).resize((size, size), Image.BILINEAR, box=box)).reshape(
        size, size, image.shape[-1])
    mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask)).resize(
        (size, size), Image.NEAREST, box=box))
  x = colour_jitter(image.astype(np.float32) / 255.0, rng, aug)
  return x, np.ascontiguousarray(mask)


# ----------------------------------------------------------------------------- iterators


def train_iterator(arrays: dict, config, *, process_index: int = 0, process_count: int = 1):
  """Infinite deterministic grain iterator of training batches for this process.

  The per-process batch is ``config.batch_size // process_count``; process p reads
  elements p, p + P, ... of the shuffled stream, so the union over processes of one
  step is one global batch. ``iterator.get_state()`` / ``set_state`` save and restore
  the position (see lib/checkpoint.py).
  """
  if config.batch_size % process_count:
    raise ValueError(f"batch_size {config.batch_size} is not divisible by {process_count} processes.")
  local = config.batch_size // process_count
  n = len(arrays["label"])
  if config.batch_size > n:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {n} training images.")
  has_mask = float(DATASETS[config.data.name].has_masks)
  in_channels = config.model.in_channels
  aug = config.data.augment

  def element(i):
    return arrays["image"][i], arrays["mask"][i], arrays["label"][i]

  def augmented(ex, rng):
    image, mask, label = ex
    x, m = augment(image, mask, rng, aug)
    return x, m, label

  def collate(examples):
    x, m, y = zip(*examples)
    x = np.stack(x)
    return {"image": np.repeat(x, in_channels, -1) if x.shape[-1] < in_channels else x,
            "mask": np.stack(m).astype(np.float32), "label": np.asarray(y, np.int32),
            "has_mask": np.full((len(y),), has_mask, np.float32)}

  ds = grain.MapDataset.range(n).shuffle(seed=config.seed).repeat(None)
  # Augment before taking this process's slice: each example's augmentation rng comes from
  # its position in the global stream, so a step sees the same images whatever the number
  # of processes (sliced after, it depended on it; issue 21). The dataset is lazy: each
  # process still decodes and augments only its own examples.
  ds = ds.map(element).random_map(augmented, seed=config.seed + 1)
  ds = ds[process_index::process_count]
  ds = ds.batch(local, drop_remainder=True, batch_fn=collate)
  threads = config.data.get("num_threads", 2)
  read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(4, threads))
  return iter(ds.to_iter_dataset(read_options=read))
