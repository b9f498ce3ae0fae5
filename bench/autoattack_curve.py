"""Speed of a robust-accuracy curve under AutoAttack: ours (the sweep's path, one compilation
per attack, the eps cascade) against torchattacks eps by eps (issue 23's speed evidence).

  bench/.venv-peers/bin/python bench/autoattack_curve.py --images 32 --batch 16 --record

The network and images are bench/peers.py's (a randomly initialised torchvision ResNet-18,
10 classes, moved into our Flax ResNet; smooth random images, here made gray and rounded to
8 bits so both frameworks see the same uint8 images; labels are the network's clean
predictions). The curve is the sweep's default grid (0 and six eps up to 8/255), L-inf.

* **ours**: :func:`lib.sweep.run_attack_grid` with ``attacks: autoattack`` (``standard`` and
  ``fast``), ``map_metrics=False`` and ``eps_cascade=True``, exactly what
  ``attack.py --config=configs/attack_sweep.py:autoattack`` runs per checkpoint: once with
  its compilation (the first checkpoint of an architecture) and once more with the compiled
  function (every further checkpoint of a sweep or study).
* **torchattacks 3.5.1**, eps by eps (its ``AutoAttack`` class cannot cascade across eps
  and runs 10 steps, so its attacks are cascaded here as fra31/auto-attack does): standard =
  APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square-5000 with 100 steps each; the time
  without FAB-T (the attacks ours runs) is reported too. fast = APGD-CE-50 + Square-1000.
  eps 0 is not attacked (nothing can change).

Ratios are of wall times on the same idle cores, one after the other.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from lib import xla_cpu  # noqa: E402
xla_cpu.configure()

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

import peers  # noqa: E402
from autoattack_agreement import report, torch_cascade  # noqa: E402
from lib import parallel, sweep  # noqa: E402

EPS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.031)


def torch_fast(model, x, y, eps, seed=0):
  """torchattacks APGD-CE-50 then Square-1000 on the images still robust."""
  stages = [torchattacks.APGD(model, eps=eps, steps=50, loss="ce", n_restarts=1, seed=seed),
            torchattacks.Square(model, eps=eps, n_queries=1000, n_restarts=1, seed=seed)]
  return torch_cascade(model, x, y, eps, 0, 0, 0, seed=seed, stages=stages)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--images", type=int, default=32)
  p.add_argument("--batch", type=int, default=16, help="our sweep's batch size")
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--record", action="store_true")
  a = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  s = peers.Setup("resnet18", a.size, a.images, num_classes=a.classes)
  gray = np.round(s.x.mean(-1) * 255).astype(np.uint8)
  x3 = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=-1)
  xt = s.to_torch(x3)
  with torch.no_grad():
    yt = s.torch_model(xt).argmax(1)
  arrays = {"image": gray[..., None], "label": yt.numpy().astype(np.int32)}   # (N, S, S, 1)
  mesh = parallel.make_mesh(1)
  ours, torch_acc, times = {}, {}, {}
  for version in ("standard", "fast"):
    config = ml_collections.ConfigDict(dict(eps=EPS, batch_size=a.batch, seed=0,
                                            map_metrics=False, eps_cascade=True))
    cache: dict = {}   # the second pass is a further checkpoint of the architecture
    for name in (f"ours {version}", f"ours {version}, compiled"):
      t0 = time.perf_counter()
      rows, _ = sweep.run_attack_grid(s.model, s.variables, arrays, config,
                                      {"name": "autoattack", "version": version}, mesh,
                                      in_channels=3, cache=cache)
      times[name] = time.perf_counter() - t0
    ours[version] = {r["eps"]: (r["accuracy"], r["attacked"]) for r in rows}
    print(version, ours[version], f"{times[f'ours {version}']:.1f} s", flush=True)
  stage_times: dict = {}
  for version in ("standard", "fast"):
    t0 = time.perf_counter()
    torch_acc[version] = {0.0: float((yt == yt).float().mean())}
    for e in EPS[1:]:
      if version == "standard":
        torch_acc[version][e] = torch_cascade(s.torch_model, xt, yt, e, a.classes, 100, 5000,
                                              stage_times=stage_times)
      else:
        torch_acc[version][e] = torch_fast(s.torch_model, xt, yt, e)
      print("torch", version, e, torch_acc[version][e], flush=True)
    times[f"torchattacks {version}"] = time.perf_counter() - t0
  times["torchattacks standard without FAB-T"] = times["torchattacks standard"] - stage_times.get("FAB", 0.0)

  lines = [f"### AutoAttack robust-accuracy curve: ours (sweep, eps cascade) vs torchattacks eps by eps "
           f"({datetime.date.today()}, ResNet-18 random init, {a.classes} classes, {a.images} images "
           f"at {a.size} px, our batch {a.batch}, L-inf; load before {os.getloadavg()[0]:.1f})", "",
           "| eps | ours standard (images attacked) | torchattacks standard | ours fast (attacked) | torchattacks fast |",
           "|---|---|---|---|---|"]
  for e in EPS:
    lines.append(f"| {e:g} | {ours['standard'][e][0]:.3f} ({ours['standard'][e][1]}) "
                 f"| {torch_acc['standard'][e]:.3f} | {ours['fast'][e][0]:.3f} ({ours['fast'][e][1]}) "
                 f"| {torch_acc['fast'][e]:.3f} |")
  ratio = lambda t, o: times[t] / times[o]
  lines += ["", "Wall time of the whole curve: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()),
            f"Speed-up (torchattacks time / ours), first checkpoint (compilation included) and "
            f"further ones: standard {ratio('torchattacks standard', 'ours standard'):.2f}x and "
            f"{ratio('torchattacks standard', 'ours standard, compiled'):.2f}x "
            f"(against torchattacks without FAB-T, the attacks ours runs: "
            f"{ratio('torchattacks standard without FAB-T', 'ours standard'):.2f}x and "
            f"{ratio('torchattacks standard without FAB-T', 'ours standard, compiled'):.2f}x), "
            f"fast {ratio('torchattacks fast', 'ours fast'):.2f}x and "
            f"{ratio('torchattacks fast', 'ours fast, compiled'):.2f}x.", ""]
  report(lines, a.record)


if __name__ == "__main__":
  main()
