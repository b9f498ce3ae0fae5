"""Builds the folder that travels to a GPU machine: ``.carry/gpu`` (ignored by git).

  .venv/bin/python bench/gpu/pack.py                       # wheels + BUSI at 224 px
  .venv/bin/python bench/gpu/pack.py --datasets busi,brain_mri

The lent GPU machine (an H200 with Python 3.12, jax, flax, optax, orbax, torch, numpy,
scipy, matplotlib, pillow ...) has no registry and no internet, and only the checkout
travels, at most 64 MiB together with the ignored folders a call carries. This script
puts there what the machine lacks:

* ``wheels/``: Python 3.12 manylinux wheels of every package the project and the peer
  benchmark import that the machine's image does not hold (:data:`WHEELS`, versions from
  requirements.lock and bench/requirements-peers.txt); pure-Python packages published
  only as source (grad-cam, promise) are built into wheels here.
* ``data/<name>/``: each real data set from ``../shared/data/<name>`` (or
  ``$MEDROBUST_DATA_ROOT``) in the layout its builder reads (``manifest.csv``,
  ``images/``, ``masks/``), every image already padded and resized to ``--size`` by the
  pipeline's own ``resize_example``. At ``image_size = --size`` (and the default
  ``data.resize="pad"``) the pipeline's arrays are therefore bit for bit those of the
  full-size copy (tests/test_gpu_pack.py); at another size they are resampled twice.
  (Downscaling each image to a longer side of ``--size`` instead, as a first version did,
  moved pixels by 2.5 grey levels on average (``--measure_double_resampling``): more than
  the eps = 0.004 budget.) The data sets' READMEs (licence, citation) travel with them; nothing here is committed.

Then ``bash bench/gpu/run.sh`` on the machine (bench/gpu/README.md) installs the wheels
into a temporary site, points ``MEDROBUST_DATA_ROOT`` at ``data/`` and runs the steps.
The script ends by printing what would travel (tracked + untracked files + the pack)
against the 64 MiB limit and fails when it is over.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK = os.path.join(ROOT, ".carry", "gpu")
LIMIT_MIB = 64.0

# What the H200 image lacks, with the versions we pin; everything else the project imports
# is there. tests/test_gpu_pack.py checks that this list and GPU_HAS together cover every
# requirement of the project (the first GPU run lacked importlib_resources, which
# tensorflow-datasets imports when it builds a data set).
WHEELS = {
    # the project (requirements.lock)
    "ml_collections": "1.1.0", "tensorflow-datasets": "4.9.10", "array_record": "0.8.6",
    "grain": "0.2.18", "tensorboardX": "2.6.5", "dm-tree": "0.1.10",
    "immutabledict": "4.3.1", "promise": "2.3", "simple-parsing": "0.1.9",
    "docstring_parser": "0.18.0", "tensorflow-metadata": "1.21.0",
    "googleapis-common-protos": "1.76.0", "termcolor": "3.3.0", "toml": "0.10.2",
    "portpicker": "1.6.0", "importlib_resources": "7.1.0",
    # the peer benchmark (bench/requirements-peers.txt)
    "torchattacks": "3.5.1", "captum": "0.9.0", "grad-cam": "1.5.7", "ttach": "0.0.3",
}
SOURCE_ONLY = ("promise", "grad-cam")   # pure Python, published as sdists: built here

# Distributions the H200 image holds: the package list of the device tool's KINDS.md (read
# there on 2026-11-17), names lower-case with '-' for '_'.
GPU_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless opt-einsum opt-einsum-fx optax optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil py-cpuinfo pyarrow pybind11 pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentence-transformers
sentencepiece setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken
timm tokenizers toolz torch torch-geometric torchaudio torchdiffeq torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any")


def _pip(*args) -> None:
  subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def pack_wheels(dest: str) -> list[str]:
  """Downloads (or builds) one wheel per entry of :data:`WHEELS` into ``dest``."""
  os.makedirs(dest, exist_ok=True)
  for old in glob.glob(os.path.join(dest, "*.whl")):
    os.remove(old)
  binary = [f"{n}=={v}" for n, v in WHEELS.items() if n not in SOURCE_ONLY]
  plat = [a for p in PLATFORMS for a in ("--platform", p)]
  _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
       "--implementation", "cp", *plat, "-d", dest, *binary)
  _pip("wheel", "-q", "--no-deps", "-w", dest, *[f"{n}=={WHEELS[n]}" for n in SOURCE_ONLY])
  wheels = sorted(os.path.basename(p) for p in glob.glob(os.path.join(dest, "*.whl")))
  if len(wheels) != len(WHEELS):
    raise SystemExit(f"expected {len(WHEELS)} wheels in {dest}, found {len(wheels)}: {wheels}")
  return wheels


def pack_dataset(name: str, src_root: str, dest: str, size: int) -> dict:
  """``src_root/<name>`` as the pipeline sees it at ``image_size = size``: every image and
  mask padded to a square and resized to ``size`` x ``size`` by the pipeline's own
  :func:`lib.data.resize_example` (``resize="pad"``), saved as PNG to ``dest``."""
  from PIL import Image
  from lib.data import DATASETS, resize_example
  from lib.datasets import manual
  src = os.path.join(src_root, name)
  channels = DATASETS[name].channels   # HAM10000 is RGB
  manifest = os.path.join(src, "manifest.csv")
  if not os.path.exists(manifest):
    raise SystemExit(f"{manifest} not found: point --data_root (or MEDROBUST_DATA_ROOT) at "
                     "the folder that holds the data sets.")
  shutil.rmtree(dest, ignore_errors=True)
  with open(manifest, newline="") as f:
    reader = csv.DictReader(f)
    fields, rows = reader.fieldnames, list(reader)
  for r in rows:
    image = manual.load_image(os.path.join(src, r["image"]), channels)
    mask = (manual.load_mask([os.path.join(src, r["mask"])], image.shape) if r.get("mask")
            else np.zeros_like(image))
    image, mask = resize_example(image, mask, size, "pad")
    for col, array in (("image", image), ("mask", mask * 255)):
      if r.get(col):
        out = os.path.join(dest, r[col])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
                        ).save(out, optimize=True)
    if "height" in r:
      r["height"] = r["width"] = str(size)
  with open(os.path.join(dest, "manifest.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fields)
    w.writeheader()
    w.writerows(rows)
  for extra in ("README.md", "LICENSE", "LICENSE.txt"):
    if os.path.exists(os.path.join(src, extra)):
      shutil.copyfile(os.path.join(src, extra), os.path.join(dest, extra))
  with open(os.path.join(dest, "PACKED.md"), "w") as f:
    f.write(f"Derived from {src} by bench/gpu/pack.py: every image and mask padded to a "
            f"square and resized to {size} px as lib/data.py does; ids, labels, groups and "
            "splits unchanged.\n")
  return {"images": len(rows), "mib": _mib(dest)}


def double_resampling_error(name: str, src_root: str, size: int) -> dict:
  """What the first pack did wrong, measured: each image downscaled to a longer side of
  ``size`` first and then padded and resized by the pipeline, against the pipeline on the
  full-size image; grey levels (0-255) over all pixels of all images."""
  from PIL import Image
  from lib.data import resize_example
  from lib.datasets import manual
  src = os.path.join(src_root, name)
  with open(os.path.join(src, "manifest.csv"), newline="") as f:
    rows = list(csv.DictReader(f))
  means, p99 = [], []
  for r in rows:
    image = manual.load_gray(os.path.join(src, r["image"]))
    h, w = image.shape[:2]
    s = size / max(h, w)
    small = image if s >= 1 else np.asarray(Image.fromarray(image[..., 0]).resize(
        (max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))[..., None]
    zeros = lambda a: np.zeros_like(a)
    a = resize_example(image, zeros(image), size)[0].astype(int)
    b = resize_example(small, zeros(small), size)[0].astype(int)
    means.append(np.abs(a - b).mean())
    p99.append(np.percentile(np.abs(a - b), 99))
  return {"images": len(rows), "mean_abs": float(np.mean(means)), "p99": float(np.mean(p99))}


def _mib(path: str) -> float:
  if os.path.isfile(path):
    return os.path.getsize(path) / 2**20
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path)
             for f in fs) / 2**20


def travelling_mib() -> float:
  """What a device call sends without carry: tracked and untracked-not-ignored files."""
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=ROOT, check=True, capture_output=True).stdout
  paths = [os.path.join(ROOT, p) for p in out.decode().split("\0") if p]
  return sum(os.path.getsize(p) for p in paths if os.path.isfile(p)) / 2**20


def main(argv=None) -> int:
  sys.path.insert(0, ROOT)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--datasets", default="busi", help="comma-separated: busi, brain_mri")
  p.add_argument("--size", type=int, default=224, help="longest image side in the pack")
  p.add_argument("--data_root", default=os.environ.get("MEDROBUST_DATA_ROOT") or
                 os.path.join(os.path.dirname(ROOT), "shared", "data"))
  p.add_argument("--out", default=PACK)
  p.add_argument("--no_wheels", action="store_true", help="keep the wheels already packed")
  p.add_argument("--measure_double_resampling", action="store_true",
                 help="print how far the first pack's images were from the pipeline's, then stop")
  args = p.parse_args(argv)
  if args.measure_double_resampling:
    for name in filter(None, args.datasets.split(",")):
      print(name, double_resampling_error(name, args.data_root, args.size))
    return 0
  info = {"size": args.size, "datasets": {}}
  if not args.no_wheels:
    info["wheels"] = pack_wheels(os.path.join(args.out, "wheels"))
  for name in filter(None, args.datasets.split(",")):
    info["datasets"][name] = pack_dataset(name, args.data_root,
                                          os.path.join(args.out, "data", name), args.size)
    print(f"{name}: {info['datasets'][name]['images']} images, "
          f"{info['datasets'][name]['mib']:.1f} MiB", flush=True)
  with open(os.path.join(args.out, "pack.json"), "w") as f:
    json.dump(info, f, indent=2)
  tree, pack = travelling_mib(), _mib(args.out)
  print(f"pack {pack:.1f} MiB + checkout {tree:.1f} MiB = {tree + pack:.1f} MiB of "
        f"{LIMIT_MIB:.0f} MiB that a device call may carry")
  if tree + pack > LIMIT_MIB:
    print("too large: pack fewer data sets (--datasets) or a smaller --size", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
