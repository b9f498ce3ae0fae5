"""The prepared GPU run (bench/gpu/): its wheel list, its data pack and a CPU dry run of the
whole command, so that a lent GPU's first call cannot fail on a missing package, a path or
a typo."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from importlib import metadata
from packaging.markers import Marker
from packaging.requirements import Requirement
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name: str):
  """bench/gpu/<name>.py as a module (bench/ is not a package)."""
  spec = importlib.util.spec_from_file_location(f"gpu_{name}", os.path.join(ROOT, "bench", "gpu",
                                                                            f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module      # dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


def _pack_module():
  return _load("pack")


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements, env, present=frozenset()) -> set:
  """Every distribution the requirements pull in on the GPU machine's Python (3.12, Linux),
  extras included, from the installed metadata; names only where one is not installed or
  is ``present`` there (its own needs are the machine's business: our python-dateutil
  needs tzdata, the machine's older one does not)."""
  seen, todo = set(), [(Requirement(r), "") for r in requirements]
  while todo:
    req, extra = todo.pop()
    if req.marker and not req.marker.evaluate({**env, "extra": extra}):
      continue
    key = (_norm(req.name), frozenset(req.extras))
    if key in seen:
      continue
    seen.add(key)
    if key[0] in present:
      continue
    try:
      requires = metadata.distribution(req.name).requires or []
    except metadata.PackageNotFoundError:
      continue
    for r in requires:
      sub = Requirement(r)
      extras = [""] + sorted(req.extras)
      for e in extras:
        if not sub.marker or sub.marker.evaluate({**env, "extra": e}):
          todo.append((sub, e))
          break
  return {name for name, _ in seen}


def test_wheels_and_gpu_image_cover_every_requirement():
  pack = _pack_module()
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
  env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
         "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
         "implementation_name": "cpython", "platform_python_implementation": "CPython"}
  assert Marker('python_version < "3.9"').evaluate(env) is False
  wheels = {_norm(n) for n in pack.WHEELS}
  missing = sorted(_closure(deps, env, pack.GPU_HAS) - pack.GPU_HAS - wheels)
  assert not missing, (f"packages the GPU machine lacks and bench/gpu/pack.py does not pack: "
                       f"{missing}; add them to WHEELS")
  # the one that the first real run lacked (etils[epath] -> importlib_resources)
  assert "importlib-resources" in wheels
  # the peers' packages are not installed here: named directly
  assert {"torchattacks", "captum", "grad-cam", "ttach"} <= wheels
  assert not wheels & pack.GPU_HAS, "a packed wheel would shadow the machine's own package"


def _write_busi_like(root, sizes):
  os.makedirs(os.path.join(root, "images"))
  os.makedirs(os.path.join(root, "masks"))
  rng = np.random.default_rng(0)
  rows = ["id,label,image,mask,height,width,split,group"]
  for i, (h, w) in enumerate(sizes):
    ident = f"{'benign' if i % 2 else 'malignant'}_{i:04d}"
    image = (rng.uniform(0, 255, (h, w)) * np.linspace(0.3, 1, w)).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:h // 2, w // 3:w // 2] = 255
    Image.fromarray(image).save(os.path.join(root, "images", f"{ident}.png"))
    Image.fromarray(mask).save(os.path.join(root, "masks", f"{ident}.png"))
    rows.append(f"{ident},{ident.split('_')[0]},images/{ident}.png,masks/{ident}.png,{h},{w},"
                f"{'train' if i < 4 else 'test'},{ident}")
  with open(os.path.join(root, "manifest.csv"), "w") as f:
    f.write("\n".join(rows) + "\n")


def test_packed_data_is_what_the_pipeline_makes(tmp_path):
  """At image_size = the pack's size the pipeline gives bit for bit the same arrays from
  the pack as from the full-size images (odd sizes too, where downscaling first would
  misalign the padding), and the builder reads the pack's layout."""
  from lib import data
  from configs import common
  pack = _pack_module()
  src = tmp_path / "src"
  _write_busi_like(str(src / "busi"), [(75, 103), (120, 97), (50, 50), (31, 47), (90, 140),
                                       (64, 33)])
  pack.pack_dataset("busi", str(src), str(tmp_path / "packed" / "busi"), 40)
  out = {}
  for name, manual_dir in (("full", src / "busi"), ("packed", tmp_path / "packed" / "busi")):
    c = common.base_config()
    c.data.name, c.data.manual_dir = "busi", str(manual_dir)
    c.data.data_dir = str(tmp_path / f"tfds_{name}")
    out[name] = {s: data.load_split(c.data, s, 40) for s in ("train", "test")}
  for split in ("train", "test"):
    a, b = out["full"][split], out["packed"][split]
    assert a["id"] == b["id"] and np.array_equal(a["label"], b["label"])
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert a["mask"].any()


def test_dry_run_of_the_gpu_command(tmp_path):
  """bench/gpu/run.py --dry_run: env, throughput (every row), peers (skipped without torch),
  the oncology study at test scale, its summary and the results tarball, under the same
  time bookkeeping as on the GPU."""
  out, work = tmp_path / "out", os.path.relpath(tmp_path / "work", ROOT)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run(
      [sys.executable, "bench/gpu/run.py", "--dry_run", "--out", str(out), "--workdir", work,
       "--only", "env,throughput,peers,oncology", "--budget", "400"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  steps = {s["step"]: s for s in json.load(open(out / "steps.json"))}
  assert set(steps) == {"env", "throughput", "peers", "oncology", "summarise_oncology"}
  for name in ("env", "throughput", "oncology", "summarise_oncology"):
    assert steps[name]["rc"] == 0 and not steps[name]["timed_out"], steps[name]
  throughput = json.load(open(out / "throughput.json"))
  names = [r["name"] for r in throughput["rows"]]
  assert names[:2] == ["train_standard", "train_pgd-2"] and len(names) == 9
  assert all("error" not in r and r["images_per_s"] > 0 and r["flops"] > 0
             for r in throughput["rows"])
  assert json.load(open(out / "env.json"))["jax_backend"] == "cpu"
  # --recount recomputes the FLOPs of a recorded run from its arguments: the same counts
  proc = subprocess.run([sys.executable, "bench/gpu/throughput.py", "--recount",
                         str(out / "throughput.json")], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  recounted = json.load(open(out / "throughput.recounted.json"))
  for a, b in zip(throughput["rows"], recounted["rows"]):
    assert b["flops"] == pytest.approx(a["flops"], rel=1e-6) and b["median_s"] == a["median_s"]
  import tarfile
  with tarfile.open(out / "results.tar.gz") as tar:
    files = tar.getnames()
  assert any(f.endswith("results/oncology/README.md") for f in files)
  assert any(f.endswith("per_image.csv") for f in files)
  assert not any("/checkpoints/" in f for f in files)   # no weights, only records
  assert (out / "run.log").stat().st_size > 0


def test_a_step_past_its_share_is_stopped_and_the_run_goes_on(tmp_path):
  run = _load("run")
  with open(tmp_path / "log", "w") as log:
    slow = run.run_step(run.Step("slow", [sys.executable, "-c",
                                          "import time; print('started', flush=True); "
                                          "time.sleep(60)"], 60), 2, log)
    fast = run.run_step(run.Step("fast", [sys.executable, "-c", "print('ok')"], 10), 10, log)
  assert slow["timed_out"] and slow["seconds"] < 30
  assert fast == {"step": "fast", "rc": 0, "seconds": fast["seconds"], "timed_out": False}
  text = open(tmp_path / "log").read()
  assert "started" in text and "ok" in text
