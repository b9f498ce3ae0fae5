"""AutoAttack against torchattacks on the same network and images (issue 23's evidence).

  bench/.venv-peers/bin/python bench/autoattack_agreement.py --classes 10 --batch 64 --eps 0.001,0.002
  bench/.venv-peers/bin/python bench/autoattack_agreement.py --classes 2 --batch 64 --record
  bench/.venv-peers/bin/python bench/autoattack_agreement.py --checkpoint runs/busi_r18_96 \
      --batch 0 --eps 0.002,0.004 --record        # a trained model, its whole test split
  bench/.venv-peers/bin/python bench/autoattack_agreement.py --only square --record

A randomly initialised torchvision ResNet-18 (bench/peers.py ``Setup``: random BatchNorm
statistics, smooth random images, labels = its own clean predictions, so clean accuracy is
100 %) is moved into our Flax ResNet; or, with ``--checkpoint``, one of our trained runs is
moved into torchvision's ResNet (labels are the true ones). For each eps (L-inf) the robust accuracy of

* ours: ``lib.autoattack.autoattack`` standard (APGD-CE, APGD-T, Square; no FAB-T) and fast,
  and Square alone (1000 queries, three seeds);
* torchattacks 3.5.1: APGD-CE, APGD-T (only with 4 or more classes: below that its targeted
  DLR fails), FAB-T and Square, each with the reference's 100 steps / 5000 queries (its
  ``AutoAttack`` class passes no step count and runs 10; fra31/auto-attack uses 100),
  cascaded as AutoAttack does; and its Square alone (1000 queries, three seeds).

The claim checked: our AutoAttack's robust accuracy is no higher than torchattacks' (one
image allowed), and Square alone agrees within the spread of seeds. Wall times are for
the whole eps curve, on the same cores, one after the other (torchattacks eps by eps,
ours with one compilation per attack).
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402

import peers  # noqa: E402
from lib import autoattack, models  # noqa: E402


def torch_cascade(model, x, y, eps, classes, steps, queries, seed=0, stages=None,
                  stage_times=None):
  """torchattacks' attacks in AutoAttack's order (or ``stages``), each on the images still
  robust; robust accuracy. ``stage_times`` (a dict) accumulates seconds per attack class."""
  if stages is None:
    stages = [torchattacks.APGD(model, eps=eps, steps=steps, loss="ce", n_restarts=1, seed=seed)]
    if classes >= 4:
      stages.append(torchattacks.APGDT(model, eps=eps, steps=steps, n_classes=classes,
                                       n_restarts=1, seed=seed))
    stages += [torchattacks.FAB(model, eps=eps, steps=steps, multi_targeted=True,
                                n_classes=classes, n_restarts=1, seed=seed),
               torchattacks.Square(model, eps=eps, n_queries=queries, n_restarts=1, seed=seed)]
  robust = torch.ones(len(y), dtype=torch.bool)
  with torch.no_grad():
    robust &= model(x).argmax(1) == y
  for attack in stages:
    idx = robust.nonzero().flatten()
    if len(idx) == 0:
      break
    t0 = time.perf_counter()
    adv = attack(x[idx], y[idx])
    with torch.no_grad():
      robust[idx] &= model(adv).argmax(1) == y[idx]
    if stage_times is not None:
      name = type(attack).__name__
      stage_times[name] = stage_times.get(name, 0.0) + time.perf_counter() - t0
  return robust.float().mean().item()


class Checkpoint:
  """A trained run of ours (``--checkpoint``) and its test images, in both frameworks: our
  restored model, and torchvision's ResNet with our weights (``to_torchvision``; a
  grayscale model's first convolution takes one channel) behind our normalisation. The
  logits of the two are compared before anything is attacked."""

  def __init__(self, workdir: str, max_images: int, seed: int = 0):
    import torchvision  # noqa: PLC0415
    from lib import data, experiment, torch_weights  # noqa: PLC0415
    config, self.model, variables = experiment.restore_model(workdir, "best")
    arrays = data.subset(data.load_split(config.data, "test", config.image_size), max_images, seed)
    c = config.model.in_channels
    self.x = data.to_model_input(arrays["image"], c)
    self.fns = models.model_fns(self.model, variables)
    net = getattr(torchvision.models, config.model.name)(num_classes=config.model.num_classes)
    if c != 3:
      net.conv1 = torch.nn.Conv2d(c, 64, kernel_size=7, stride=2, padding=3, bias=False)
    state = {k: torch.from_numpy(v) for k, v in torch_weights.to_torchvision(variables).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    mean = torch.tensor(self.model.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(self.model.std, dtype=torch.float32)[:, None, None]
    self.torch_model = torch.nn.Sequential(_Affine(mean, std), net.eval()).eval()
    self.xt = torch.from_numpy(np.ascontiguousarray(self.x)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
      logits_t = self.torch_model(self.xt).numpy()
    logits_j = np.asarray(jax.jit(self.fns.logits_fn)(jnp.asarray(self.x)))
    self.logit_gap = float(np.abs(logits_t - logits_j).max())
    # the true labels: clean accuracy below 100 % is part of robust accuracy
    self.y = arrays["label"].astype(np.int32)
    self.yt = torch.from_numpy(self.y.astype(np.int64))
    self.name = f"{config.model.name} trained on {config.data.name} ({workdir}), {len(self.y)} test images"


class _Affine(torch.nn.Module):
  def __init__(self, mean, std):
    super().__init__()
    self.mean, self.std = mean, std

  def forward(self, x):
    return (x - self.mean) / self.std


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--classes", type=int, default=10)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--eps", default="0.001,0.002,0.004")
  p.add_argument("--queries", type=int, default=5000)
  p.add_argument("--checkpoint", default="", help="a train.py work dir: its model and test split")
  p.add_argument("--only", choices=("all", "square"), default="all",
                 help="square: only Square-1000 (3 seeds each), no cascades")
  p.add_argument("--record", action="store_true")
  a = p.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  if a.checkpoint:
    s = Checkpoint(a.checkpoint, a.batch)
    a.classes = s.model.num_classes
    what = f"{s.name}; torch vs ours logits max |diff| {s.logit_gap:.1e}"
    print(what, flush=True)
  else:
    s = peers.Setup("resnet18", a.size, a.batch, num_classes=a.classes)
    what = f"ResNet-18 random init, {a.classes} classes, {a.batch} images at {a.size} px"
  f = jax.jit(s.fns.logits_fn)
  x, y = jnp.asarray(s.x), jnp.asarray(s.y)
  eps_list = [float(e) for e in a.eps.split(",")]
  acc = lambda xa: float((np.argmax(np.asarray(f(xa)), -1) == np.asarray(y)).mean())
  rows, times = [], {}

  def timed(name, fn):
    t0 = time.perf_counter()
    out = fn()
    times[name] = times.get(name, 0.0) + time.perf_counter() - t0
    return out

  aa = {v: jax.jit(lambda xx, yy, e, k, v=v: autoattack.autoattack(f, xx, yy, eps=e, version=v, key=k))
        for v in ("standard", "fast")}
  sq = jax.jit(lambda xx, yy, e, k: autoattack.square(f, xx, yy, eps=e, queries=1000, key=k))
  full = a.only == "all"
  for e in eps_list:
    row = {"eps": e}
    for v in ("standard", "fast") if full else ():
      row[f"ours_{v}"] = timed(f"ours AutoAttack {v}", lambda: acc(aa[v](x, y, jnp.float32(e), jax.random.PRNGKey(0))))
    row["ours_square"] = [acc(sq(x, y, jnp.float32(e), jax.random.PRNGKey(k))) for k in range(3)]
    if full:
      row["torch_aa"] = timed("torchattacks cascade", lambda: torch_cascade(
          s.torch_model, s.xt, s.yt, e, a.classes, 100, a.queries))
    sqs = []
    for k in range(3):
      adv = torchattacks.Square(s.torch_model, eps=e, n_queries=1000, seed=k)(s.xt, s.yt)
      with torch.no_grad():
        sqs.append((s.torch_model(adv).argmax(1) == s.yt).float().mean().item())
    row["torch_square"] = sqs
    rows.append(row)
    print(row, flush=True)

  n = len(s.y)
  apgdt = "APGD-T, " if a.classes >= 4 else ""
  lines = [f"### AutoAttack vs torchattacks ({datetime.date.today()}, {what}, L-inf; "
           f"load {os.getloadavg()[0]:.1f})", ""]
  sq_cells = lambda r: (f"{', '.join(f'{v:.3f}' for v in r['ours_square'])} "
                        f"| {', '.join(f'{v:.3f}' for v in r['torch_square'])} |")
  ok = True
  if full:
    lines += [f"| eps | ours standard | ours fast | torchattacks APGD-CE, {apgdt}FAB-T, Square (100 steps) "
              "| ours Square-1000 (3 seeds) | torchattacks Square-1000 (3 seeds) |",
              "|---|---|---|---|---|---|"]
    for r in rows:
      ok &= r["ours_standard"] <= r["torch_aa"] + 1.0 / n + 1e-9
      lines.append(f"| {r['eps']:g} | {r['ours_standard']:.3f} | {r['ours_fast']:.3f} "
                   f"| {r['torch_aa']:.3f} | " + sq_cells(r))
  else:
    lines += ["| eps | ours Square-1000 (3 seeds) | torchattacks Square-1000 (3 seeds) |",
              "|---|---|---|"]
    lines += [f"| {r['eps']:g} | " + sq_cells(r) for r in rows]
  spread = all(min(r["ours_square"]) <= max(r["torch_square"]) + 1.0 / n + 1e-9 and
               max(r["ours_square"]) >= min(r["torch_square"]) - 1.0 / n - 1e-9 for r in rows)
  lines += [""]
  if times:
    lines += ["Wall time over the eps curve: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())]
  if full:
    lines += [f"Ours no higher than torchattacks (one image allowed) at every eps: {ok}."]
  lines += [f"Square-1000: the seeds' ranges overlap (one image allowed) at every eps: {spread}.", ""]
  report(lines, a.record)


def report(lines, record: bool) -> None:
  """Prints the lines; with ``record``, appends them to bench/RESULTS.md."""
  text = "\n".join(lines)
  print(text)
  if record:
    with open(os.path.join(HERE, "RESULTS.md"), "a") as fh:
      fh.write("\n" + text)


if __name__ == "__main__":
  main()
