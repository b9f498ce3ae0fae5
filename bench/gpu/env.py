"""The machine a GPU run measured on: devices, driver, versions (JSON to ``--out``).

  python bench/gpu/env.py --out $OUT/env.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from importlib import metadata

PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
            "scipy", "ml_collections", "tensorflow-datasets", "grain", "array_record", "torch",
            "torchvision", "torchattacks", "captum", "grad-cam", "pillow", "matplotlib")


def _run(cmd: list[str]) -> str:
  try:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    return f"unavailable: {e}"


def env_info() -> dict:
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {
      "python": platform.python_version(), "machine": platform.machine(),
      "cpus": os.cpu_count(), "versions": versions, "jax_backend": jax.default_backend(),
      "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
      "nvidia_smi": _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,"
                          "clocks.max.sm,clocks.max.mem", "--format=csv,noheader"]),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR", ""),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  info = env_info()
  print(json.dumps(info, indent=2), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(info, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
