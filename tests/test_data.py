import os

import numpy as np
import pytest
from PIL import Image

from configs import default
from lib import data
from lib.datasets import busi, manual, synthetic_lesions
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
  assert arrays["image"].shape == (64, 32, 32) and arrays["image"].dtype == np.uint8
  assert arrays["mask"].shape == (64, 32, 32) and set(np.unique(arrays["mask"])) <= {0, 1}
  assert set(arrays["label"]) == {0, 1}
  assert arrays["id"] == sorted(arrays["id"])


def test_resize_pad_keeps_aspect_ratio():
  image = np.zeros((40, 80, 1), np.uint8)
  image[:, 20:60] = 255            # a 40x40 white square in the middle of a wide image
  mask = (image > 0).astype(np.uint8) * 255
  im, m = data.resize_example(image, mask, 40, "pad")
  assert im.shape == (40, 40)
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
