"""What every benchmark here shares: the common flags and the JSON record of a run."""

import argparse
import json
import os
import platform

import jax


def parser(batch: int, steps: int) -> argparse.ArgumentParser:
  """``--arch --size --batch --steps --repeats`` with this benchmark's defaults."""
  p = argparse.ArgumentParser()
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=batch)
  p.add_argument("--steps", type=int, default=steps)
  p.add_argument("--repeats", type=int, default=3)
  return p


def append_record(name: str, args, rows) -> None:
  """Appends this run (arguments, machine, versions, rows) to bench/<name>."""
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
  record = {"args": vars(args), "backend": jax.default_backend(), "jax": jax.__version__,
            "machine": platform.machine(), "cores": os.cpu_count(), "rows": rows}
  history = json.load(open(out)) if os.path.exists(out) else []
  with open(out, "w") as f:
    json.dump(history + [record], f, indent=2)
