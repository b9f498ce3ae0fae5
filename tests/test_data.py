import os

import numpy as np
import pytest
from PIL import Image

from configs import default
from lib import data
from lib import checks
from lib.datasets import busi, manual, synthetic_lesions, synthetic_skin
from tests.conftest import shared_data


def _config(**data_fields):
  c = default.get_config("test")
  c.data.update(data_fields)
  return c


def test_synthetic_lesions_are_deterministic_and_seeded():
  a = synthetic_lesions.generate(0, "train", 5, 48)
  b = synthetic_lesions.generate(0, "train", 5, 48)
  c = synthetic_lesions.generate(1, "train", 5, 48)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  assert a[0].shape == (48, 48) and a[0].dtype == np.uint8 and a[1].any()


def test_synthetic_classes_follow_the_sonographic_cues():
  # Malignant lesions are taller than wide more often ("not parallel" orientation).
  tall, n = {0: 0, 1: 0}, {0: 0, 1: 0}
  for i in range(200):
    _, mask, label = synthetic_lesions.generate(0, "train", i, 64)
    rows, cols = np.nonzero(mask)
    tall[label] += np.ptp(rows) > np.ptp(cols)
    n[label] += 1
  assert tall[1] / n[1] > tall[0] / n[0] + 0.3
  assert 0.35 < n[1] / 200 < 0.65


def test_load_split_shapes_and_labels():
  c = _config()
  arrays = data.load_split(c.data, "train", 32)
  assert arrays["image"].shape == (64, 32, 32, 1) and arrays["image"].dtype == np.uint8
  assert arrays["mask"].shape == (64, 32, 32) and set(np.unique(arrays["mask"])) <= {0, 1}
  assert set(arrays["label"]) == {0, 1}
  assert arrays["id"] == sorted(arrays["id"])


def test_resize_pad_keeps_aspect_ratio():
  image = np.zeros((40, 80, 1), np.uint8)
  image[:, 20:60] = 255            # a 40x40 white square in the middle of a wide image
  mask = (image > 0).astype(np.uint8) * 255
  im, m = data.resize_example(image, mask, 40, "pad")
  assert im.shape == (40, 40, 1) and m.shape == (40, 40)
  # The square fills the middle 20 columns of the 10..30 row band.
  assert m[10:30, 10:30].all() and not m[:9].any() and not m[:, :9].any()
  im, m = data.resize_example(image, mask, 40, "stretch")
  assert m[:, 10:30].all() and not m[:, :9].any()


def test_train_iterator_is_deterministic_and_resumable():
  c = _config()
  arrays = data.load_split(c.data, "train", 32)
  it = data.train_iterator(arrays, c)
  first = [next(it) for _ in range(6)]  # 1.5 epochs of 4 batches
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  it2 = data.train_iterator(arrays, c)
  for a, b in zip(first, [next(it2) for _ in range(6)]):
    np.testing.assert_array_equal(a["image"], b["image"])
  it3 = data.train_iterator(arrays, c)
  it3.set_state(state)
  for a, b in zip(after, [next(it3) for _ in range(3)]):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  b = first[0]
  assert b["image"].shape == (16, 32, 32, 1) and b["image"].dtype == np.float32
  assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  # Each epoch visits every image once, in a new order.
  epoch1 = np.concatenate([x["label"] for x in first[:4]])
  assert np.bincount(epoch1).tolist() == np.bincount(arrays["label"]).tolist()


def test_augmentation_does_not_depend_on_the_number_of_processes():
  """Issue 21, point 3: the augmentation rng was drawn after the per-process slice, so
  2 processes x 2 devices trained on other images than 1 x 4 (step-2 loss 2.337 vs 2.447)."""
  c = _config()
  arrays = data.load_split(c.data, "train", 32)
  key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))
  whole = data.train_iterator(arrays, c)
  parts = [data.train_iterator(arrays, c, process_index=p, process_count=P)
           for P in (2, 4) for p in range(P)]
  for _ in range(3):                                        # steps, across an epoch boundary
    w = next(whole)["image"]
    got = [next(it)["image"] for it in parts]
    assert key(np.concatenate(got[:2])) == key(w)           # 2 processes
    assert key(np.concatenate(got[2:])) == key(w)           # 4 processes


def test_processes_read_disjoint_halves_of_each_global_batch():
  c = _config()
  c.data.augment.crop_scale = 1.0
  c.data.augment.hflip = False
  c.data.augment.brightness = c.data.augment.contrast = 0.0
  arrays = data.load_split(c.data, "train", 32)
  whole = next(data.train_iterator(arrays, c))
  halves = [next(data.train_iterator(arrays, c, process_index=p, process_count=2)) for p in (0, 1)]
  assert halves[0]["image"].shape[0] == 8
  got = np.concatenate([h["image"] for h in halves])
  key = lambda x: sorted(map(bytes, x.reshape(len(x), -1)))
  assert key(got) == key(whole["image"])


# ----------------------------------------------------------------------------- manual dirs


def _write_png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture
def original_busi(tmp_path):
  """A miniature Dataset_BUSI_with_GT release: two masks for one image."""
  root = tmp_path / "Dataset_BUSI_with_GT"
  rng = np.random.default_rng(0)
  for label, n in (("benign", 12), ("malignant", 10), ("normal", 4)):
    for i in range(1, n + 1):
      stem = root / label / f"{label} ({i})"
      _write_png(f"{stem}.png", rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
      m = np.zeros((30, 40), np.uint8)
      if label != "normal":
        m[5:10, 5:10] = 255
      _write_png(f"{stem}_mask.png", m)
  m2 = np.zeros((30, 40), np.uint8)
  m2[20:25, 30:35] = 255
  _write_png(str(root / "benign" / "benign (1)_mask_1.png"), m2)
  return tmp_path


def test_subset_is_stratified_seeded_and_in_split_order():
  """``max_images`` of a sweep or explain.py: a split sorted by class must not give one class."""
  labels = np.array([0] * 70 + [1] * 30)
  arrays = {"label": labels, "image": np.arange(100), "id": [f"i{k}" for k in range(100)]}
  a = data.subset(arrays, 32, seed=0)
  assert len(a["label"]) == 32 and int(a["label"].sum()) in (9, 10)   # 30 % of 32 = 9.6
  assert np.all(np.diff(a["image"]) > 0) and a["id"] == [f"i{k}" for k in a["image"]]
  assert np.array_equal(data.subset(arrays, 32, seed=0)["image"], a["image"])
  assert not np.array_equal(data.subset(arrays, 32, seed=1)["image"], a["image"])
  assert data.subset(arrays, 0) is arrays and data.subset(arrays, 100) is arrays
  assert sum(len(data.subset(arrays, n)["label"]) == n for n in range(1, 100)) == 99
  # Figures: both classes in turn, in the split's order, until one runs out.
  assert data.example_indices(labels, 4).tolist() == [0, 70, 1, 71]
  assert data.example_indices([1, 1, 0], 3).tolist() == [0, 2, 1]
  assert len(data.example_indices([0, 0], 5)) == 2


def test_original_busi_layout_merges_masks_and_splits(original_busi, tmp_path):
  rows = busi.list_examples(str(original_busi))   # the folder containing the release
  assert len(rows) == 26
  first = next(r for r in rows if r["id"] == "benign_0001")
  assert len(first["masks"]) == 2
  assert {r["split"] for r in rows} == {"train", "val", "test"}
  c = _config(name="busi", manual_dir=str(original_busi), data_dir=str(tmp_path / "tfds"))
  test = data.load_split(c.data, "train", 40)
  train_ids = test["id"]
  if "benign_0001" in train_ids:
    m = test["mask"][train_ids.index("benign_0001")]
    assert m[:20].any() and m[20:].any()  # both mask files are in the merged mask
  assert set(test["label"]) <= {0, 1}     # binary label set drops normal
  c.data.label_set = "three_class"
  assert 2 in data.load_split(c.data, "train", 40)["label"]


def test_missing_manual_dir_names_folder_and_layout(tmp_path):
  c = _config(name="busi", manual_dir=str(tmp_path / "nowhere"), data_dir=str(tmp_path / "tfds"))
  with pytest.raises(manual.DataError, match=r"(?s)nowhere.*Expected layout.*manifest.csv"):
    data.get_builder(c.data)
  (tmp_path / "empty").mkdir()
  c.data.manual_dir = str(tmp_path / "empty")
  with pytest.raises(manual.DataError, match="neither manifest.csv nor"):
    data.get_builder(c.data)


def test_corrupt_image_is_named(original_busi, tmp_path):
  bad = original_busi / "Dataset_BUSI_with_GT" / "malignant" / "malignant (3).png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
  c = _config(name="busi", manual_dir=str(original_busi), data_dir=str(tmp_path / "tfds"))
  with pytest.raises(Exception, match=r"malignant \(3\)\.png"):
    data.get_builder(c.data)


def test_each_source_copy_is_prepared_once_and_never_deleted(original_busi, tmp_path_factory):
  """Issue 27, case 8: pointing manual_dir at another (or a broken) copy with the same
  data_dir deleted the good prepared set before the rebuild failed; two runs with
  different copies crashed each other."""
  import glob
  import shutil
  elsewhere = tmp_path_factory.mktemp("elsewhere")    # not inside the manual_dir
  tfds_dir = str(elsewhere / "tfds")
  a = _config(name="busi", manual_dir=str(original_busi), data_dir=tfds_dir)
  first = data.load_split(a.data, "train", 40)
  other = elsewhere / "other_copy"
  shutil.copytree(original_busi, other)
  for f in (other / "Dataset_BUSI_with_GT" / "benign").glob("benign (12)*"):
    f.unlink()                                              # a different copy
  b = _config(name="busi", manual_dir=str(other), data_dir=tfds_dir)
  assert data.get_builder(b.data).data_dir != data.get_builder(a.data).data_dir
  broken = elsewhere / "broken_copy"
  shutil.copytree(original_busi, broken)
  (broken / "Dataset_BUSI_with_GT" / "malignant" / "malignant (3).png").write_bytes(
      b"\x89PNG\r\n\x1a\n not really")
  c = _config(name="busi", manual_dir=str(broken), data_dir=tfds_dir)
  with pytest.raises(Exception, match=r"malignant \(3\)\.png"):
    data.get_builder(c.data)
  again = data.load_split(a.data, "train", 40)               # the first copy's set is intact
  assert again["id"] == first["id"] and np.array_equal(again["image"], first["image"])
  prepared = glob.glob(os.path.join(tfds_dir, "by_source", "*", "busi", "*", "dataset_info.json"))
  assert len(prepared) == 2


def test_processes_that_start_together_build_a_data_set_once(original_busi, tmp_path):
  """Issue 21, point 2: two processes building into one folder failed (rename, timeout)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import sys; sys.path.insert(0, %r)\n"
          "from configs import default\nfrom lib import data\n"
          "c = default.get_config('test'); c.data.name = 'busi'\n"
          "c.data.manual_dir, c.data.data_dir = %r, %r\n"
          "print(len(data.load_split(c.data, 'train', 32)['label']))\n"
          % (root, str(original_busi), str(tmp_path / "tfds")))
  procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  assert outs[0][0].split()[-1] == outs[1][0].split()[-1]            # the same split
  assert sum("Downloading and preparing" in o[0] for o in outs) == 1   # built once


def test_malformed_manifest_names_missing_columns(tmp_path):
  (tmp_path / "manifest.csv").write_text("id,label\nx,benign\n")
  with pytest.raises(manual.DataError, match=r"missing column\(s\) \['image', 'mask', 'split'\]"):
    busi.list_examples(str(tmp_path))


# ----------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def busi_config(tmp_path_factory):
  c = _config(name="busi", manual_dir=shared_data("busi"),
              data_dir=str(tmp_path_factory.mktemp("tfds_busi")))
  return c


def test_real_busi_keeps_the_manifest_split(busi_config):
  builder = data.get_builder(busi_config.data)
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {"train": 456, "val": 65, "test": 129}
  test = data.load_split(busi_config.data, "test", 64)
  assert len(test["label"]) == 73 + 35 and int(test["label"].sum()) == 35
  lesion = test["mask"].mean(axis=(1, 2))
  assert (lesion > 0).all() and 0.03 < lesion.mean() < 0.3
  # No near-duplicate group spans two splits.
  train = data.load_split(busi_config.data, "train", 16)
  assert not set(train["group"]) & set(test["group"])


def test_real_brain_mri(tmp_path_factory):
  c = _config(name="brain_mri", manual_dir=shared_data("brain_mri"),
              data_dir=str(tmp_path_factory.mktemp("tfds_brain")))
  c.model.seg_head = False
  test = data.load_split(c.data, "test", 32)
  assert len(test["label"]) == 39 and int(test["label"].sum()) == 24


def test_cv_folds_are_group_aware_stratified_and_cover_every_image():
  rng = np.random.default_rng(0)
  groups = [f"g{rng.integers(0, 120)}" for _ in range(400)]          # near-duplicate groups
  label_of = {g: int(rng.random() < 0.35) for g in set(groups)}
  labels = np.array([label_of[g] for g in groups])
  fold_of = data.cv_assignment(groups, labels, 5, seed=0)
  for g in set(groups):                                              # a group is one fold
    assert len({fold_of[i] for i, h in enumerate(groups) if h == g}) == 1
  share = [labels[fold_of == f].mean() for f in range(5)]
  assert max(share) - min(share) < 0.1                               # stratified
  sizes = np.bincount(fold_of)
  assert sizes.min() > 0.7 * sizes.max()
  assert not np.array_equal(fold_of, data.cv_assignment(groups, labels, 5, seed=1))
  np.testing.assert_array_equal(fold_of, data.cv_assignment(groups, labels, 5, seed=0))
  tests = []
  for f in range(5):
    idx = data.cv_split_indices(groups, labels, 5, f, seed=0, val_fraction=0.1)
    assert sorted(np.concatenate(list(idx.values()))) == list(range(400))
    names = {k: {groups[i] for i in v} for k, v in idx.items()}
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert not names["val"] & names["test"] and set(labels[idx["val"]]) == {0, 1}
    tests.append(idx["test"])
  assert sorted(np.concatenate(tests)) == list(range(400))            # out-of-fold: each once
  with pytest.raises(ValueError, match="fold must be in"):
    data.cv_split_indices(groups, labels, 5, 5)


def test_cv_splits_of_the_synthetic_set_pool_all_stored_splits():
  c = _config(folds=3, fold=1)
  every = sum(len(data.load_split(_config().data, s, 16)["label"]) for s in ("train", "val", "test"))
  parts = {s: data.load_split(c.data, s, 16) for s in ("train", "val", "test")}
  assert sum(len(p["label"]) for p in parts.values()) == every
  assert not set(parts["test"]["id"]) & set(parts["train"]["id"])
  assert 0.25 < len(parts["test"]["label"]) / every < 0.42
  with pytest.raises(data.DataError, match="splits are train, val and test"):
    data.load_split(c.data, "holdout", 16)


def test_real_busi_cv_keeps_near_duplicate_groups_together(busi_config):
  c = busi_config.copy_and_resolve_references()
  c.data.folds, c.data.fold = 5, 2
  parts = {s: data.load_split(c.data, s, 16) for s in ("train", "val", "test")}
  assert sum(len(p["label"]) for p in parts.values()) == 364 + 174   # benign + malignant
  for a in parts:
    for b in parts:
      assert a == b or not set(parts[a]["group"]) & set(parts[b]["group"])
  assert abs(parts["test"]["label"].mean() - 174 / 538) < 0.03


# ----------------------------------------------------------------------------- RGB (issue 24)


def _skin_config(**data_fields):
  c = _config(name="synthetic_skin", **data_fields)
  c.model.in_channels = 3
  c.data.augment.update(saturation=0.2, hue=0.05)
  return c


def test_rgb_data_set_end_to_end_through_the_input_pipeline():
  c = _skin_config()
  arrays = data.load_split(c.data, "train", 32)
  assert arrays["image"].shape == (64, 32, 32, 3) and arrays["image"].dtype == np.uint8
  # Colour survives: the lesion differs from the skin in hue, not only in brightness.
  lab = np.mean([np.abs(m).mean() for m in
                 (arrays["image"][..., 0].astype(int) - arrays["image"][..., 2])])
  assert lab > 10
  b = next(data.train_iterator(arrays, c))
  assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.float32
  assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  assert b["mask"].shape == (16, 32, 32)
  # The model input: uint8 (..., C) -> float; gray is repeated for a 3-channel stem, RGB
  # is never squeezed into one channel.
  gray = np.full((2, 4, 4, 1), 51, np.uint8)
  assert data.to_model_input(gray, 3).shape == (2, 4, 4, 3)
  np.testing.assert_allclose(data.to_model_input(gray), 0.2)
  with pytest.raises(ValueError, match="3 channels but the model takes 1"):
    data.to_model_input(arrays["image"][:2], 1)


def test_rgb_config_must_give_the_model_three_channels():
  c = _skin_config()
  c.model.in_channels = 1
  with pytest.raises(ValueError, match=r"synthetic_skin.*RGB.*in_channels=1.*in_channels=3"):
    checks.check_train_config(c)
  c.model.in_channels = 3
  checks.check_train_config(c)
  c.model.mean, c.model.std = (0.5, 0.5), (0.2, 0.2)
  with pytest.raises(ValueError, match="model.mean .* has 2 values"):
    checks.check_train_config(c)
  g = _config()                       # a grayscale set may feed a 3-channel (ImageNet) stem
  g.model.in_channels = 3
  checks.check_train_config(g)


def test_colour_jitter_keeps_luma_under_hue_and_leaves_gray_alone():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 0.8, (8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(data._rotate_hue(x, 0.0), x, atol=1e-6)
  # A hue rotation about the grey axis keeps luma and maps grey to grey.
  y = data._rotate_hue(x, 1.0)
  np.testing.assert_allclose(y @ data.LUMA, x @ data.LUMA, atol=1e-5)
  grey = np.full((2, 2, 3), 0.4, np.float32)
  np.testing.assert_allclose(data._rotate_hue(grey, 2.0), grey, atol=1e-6)
  aug = _skin_config().data.augment
  aug.update(brightness=0.0, contrast=0.0, saturation=0.5, hue=0.1)
  assert not np.allclose(data.colour_jitter(x, np.random.default_rng(1), aug), x)
  g = x[..., :1]                      # one channel: saturation and hue do not apply
  np.testing.assert_array_equal(data.colour_jitter(g, np.random.default_rng(1), aug), g)


def test_ham10000_original_release_layout_groups_by_lesion_and_counts_missing_masks(
    tmp_path, caplog):
  """The original release (HAM10000_metadata.csv, images in the two part folders, masks in
  HAM10000_segmentations_lesion_tschandl/): rows keep their diagnosis, a lesion's images
  share a group and a split, and images without a mask are counted in the log (ISIC 2018
  task-1 masks, of other images, used to pass a "some mask exists" check silently)."""
  from lib.datasets import ham10000
  rows = [("HAM_1", "ISIC_1", "mel"), ("HAM_1", "ISIC_2", "mel"), ("HAM_2", "ISIC_3", "nv"),
          ("HAM_3", "ISIC_4", "bcc")]
  (tmp_path / "HAM10000_metadata.csv").write_text(
      "lesion_id,image_id,dx,dx_type\n" + "".join(f"{l},{i},{d},histo\n" for l, i, d in rows))
  for k, (_, image_id, _) in enumerate(rows):
    folder = tmp_path / f"HAM10000_images_part_{1 + k % 2}"
    folder.mkdir(exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), 40 * k, np.uint8)).save(folder / f"{image_id}.jpg")
  masks = tmp_path / "HAM10000_segmentations_lesion_tschandl"
  masks.mkdir()
  Image.fromarray(np.full((6, 8), 255, np.uint8)).save(masks / "ISIC_1_segmentation.png")
  Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ISIC_0000001_segmentation.png")
  with caplog.at_level("WARNING"):
    out = {r["id"]: r for r in ham10000.list_examples(str(tmp_path))}
  assert sorted(out) == ["ISIC_1", "ISIC_2", "ISIC_3", "ISIC_4"]
  assert [out[i]["label"] for i in sorted(out)] == ["mel", "mel", "nv", "bcc"]
  assert out["ISIC_1"]["group"] == out["ISIC_2"]["group"] == "HAM_1"
  assert out["ISIC_1"]["split"] == out["ISIC_2"]["split"]
  assert out["ISIC_1"]["masks"] == [str(masks / "ISIC_1_segmentation.png")]
  assert all(out[i]["masks"] == [] for i in ("ISIC_2", "ISIC_3", "ISIC_4"))
  assert "3 of 4 images" in caplog.text and "no lesion mask" in caplog.text
  (tmp_path / "HAM10000_metadata.csv").write_text("lesion_id,image_id,dx\nHAM_9,ISIC_9,mel\n")
  with pytest.raises(manual.DataError, match=r"Image ISIC_9.jpg of .* is in none of"):
    ham10000.list_examples(str(tmp_path))


def test_synthetic_skin_melanomas_have_more_colours():
  from lib import metrics
  spread = {0: [], 1: []}                  # chroma (CIELAB a*, b*) spread inside the lesion
  for i in range(120):
    image, mask, label = synthetic_skin.generate(0, "train", i, 64)
    assert image.shape == (64, 64, 3) and mask.any()
    spread[label].append(metrics.rgb_to_lab(image / 255.0)[mask][:, 1:].std(0).mean())
  assert np.mean(spread[1]) > 1.3 * np.mean(spread[0])      # 5.8 vs 3.9 on seed 0


def _write_jpeg(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, quality=95)


@pytest.fixture
def ham_folder(tmp_path):
  """A miniature prepared HAM10000 copy: manifest, RGB JPEGs, PNG masks."""
  root = tmp_path / "ham"
  rng = np.random.default_rng(0)
  labels = ["nv"] * 10 + ["mel"] * 6 + ["bkl", "bcc", "akiec", "vasc", "df", "bkl"]
  lines = ["id,label,melanoma,malignant,image,mask,split,group,lesion_id"]
  for i, label in enumerate(labels):
    ident = f"ISIC_{i:07d}"
    _write_jpeg(str(root / "images" / f"{ident}.jpg"), rng.integers(0, 255, (15, 20, 3), np.uint8))
    m = np.zeros((15, 20), np.uint8)
    m[4:10, 5:14] = 255
    _write_png(str(root / "masks" / f"{ident}.png"), m)
    split = ("train", "val", "test")[i % 3]
    group = f"ISIC_{i - i % 2:07d}" if i < 4 else ident     # two groups of two images
    if i < 4:
      split = "train"
    lines.append(f"{ident},{label},{int(label == 'mel')},{int(label in ('mel', 'bcc', 'akiec'))},"
                 f"images/{ident}.jpg,masks/{ident}.png,{split},{group},HAM_{i}")
  (root / "manifest.csv").write_text("\n".join(lines) + "\n")
  return root


def test_ham10000_builder_label_sets_groups_and_colour(ham_folder, tmp_path):
  c = _config(name="ham10000", manual_dir=str(ham_folder), data_dir=str(tmp_path / "tfds"),
              label_set="melanoma")
  train = data.load_split(c.data, "train", 20)
  assert train["image"].shape[1:] == (20, 20, 3)
  assert len(train["label"]) == 8 and int(train["label"].sum()) == 2   # only mel and nv
  assert train["group"][0] == train["group"][1] == "ISIC_0000000"
  # JPEG bytes are stored unchanged: the decoded colours are the file's.
  original = np.asarray(Image.open(ham_folder / "images" / "ISIC_0000000.jpg"))
  stored = data.get_builder(c.data).as_data_source("train")
  ex = next(stored[i] for i in range(len(stored)) if stored[i]["id"] in (b"ISIC_0000000", "ISIC_0000000"))
  np.testing.assert_array_equal(ex["image"], original)
  every = {}
  for label_set, names in (("melanoma", ("nv", "mel")), ("malignant", ("benign", "malignant")),
                           ("dx", ("nv", "mel", "bkl", "bcc", "akiec", "vasc", "df"))):
    c.data.label_set = label_set
    assert data.class_names(c.data) == names
    every[label_set] = sum((data.load_split(c.data, s, 20)["label"].tolist()
                            for s in ("train", "val", "test")), [])
  assert len(every["melanoma"]) == 16 and sum(every["melanoma"]) == 6
  assert len(every["malignant"]) == 22 and sum(every["malignant"]) == 6 + 2   # mel, bcc, akiec
  assert len(every["dx"]) == 22 and sorted(set(every["dx"])) == list(range(7))


def test_ham10000_missing_folder_and_corrupt_image(ham_folder, tmp_path):
  c = _config(name="ham10000", manual_dir=str(tmp_path / "nowhere"),
              data_dir=str(tmp_path / "tfds"), label_set="melanoma")
  with pytest.raises(manual.DataError, match=r"(?s)HAM10000 data folder.*nowhere.*manifest.csv"):
    data.get_builder(c.data)
  (ham_folder / "images" / "ISIC_0000005.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  c.data.manual_dir = str(ham_folder)
  with pytest.raises(manual.DataError, match=r"ISIC_0000005\.jpg"):
    data.get_builder(c.data)


@pytest.fixture(scope="module")
def ham_config(tmp_path_factory):
  return _config(name="ham10000", manual_dir=shared_data("ham10000"), label_set="melanoma",
                 data_dir=str(tmp_path_factory.mktemp("tfds_ham")))


def test_real_ham10000_split_and_the_configs_channel_statistics(ham_config):
  from configs import ham10000 as ham_cfg
  builder = data.get_builder(ham_config.data)
  counts = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert counts == {"train": 5956, "val": 852, "test": 1705}
  train = data.load_split(ham_config.data, "train", 64)
  assert np.bincount(train["label"]).tolist() == [3989, 662]
  assert train["image"].shape[1:] == (64, 64, 3)
  assert (train["mask"].mean(axis=(1, 2)) > 0).all()
  # configs/ham10000.py states these as its normalisation (given values).
  mean, std = data.channel_stats(train["image"])
  np.testing.assert_allclose(mean, ham_cfg.MEAN, atol=2e-4)
  np.testing.assert_allclose(std, ham_cfg.STD, atol=2e-4)
  test = data.load_split(ham_config.data, "test", 16)
  assert not set(train["group"]) & set(test["group"])
