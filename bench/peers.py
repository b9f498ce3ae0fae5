"""Side by side with the PyTorch tools users would otherwise pick, one process, one machine.

  bash bench/run_peers.sh                      # sets up bench/.venv-peers, then:
  bench/.venv-peers/bin/python bench/peers.py --arch resnet18 --size 128 --batch 16
  bench/.venv-peers/bin/python bench/peers.py --arch resnet50 --size 224 --batch 8 --only pgd,grad_cam

A randomly initialised torchvision ResNet (RGB, ImageNet normalisation in front, random
BatchNorm statistics) is moved into our Flax ResNet with lib/torch_weights.py; both
frameworks then get the same images. For every pair the harness first checks that both
compute the same thing (logits, images, maps or gradients within a tolerance), then times
ours and the peer alternately (``--repeats`` rounds after warm-up, so load drifts on a
shared machine hit both) and reports the medians and the ratio peer / ours (> 1: we are
faster). Pairs:

  pgd           PGD L-inf, 10 steps, random start        vs torchattacks.PGD
  fgsm          FGSM                                     vs torchattacks.FGSM
  smoothgrad    SmoothGrad, N samples                    vs captum NoiseTunnel(Saliency)
  ig            Integrated Gradients, N intervals        vs captum IntegratedGradients
  grad_cam      Grad-CAM on a batch                      vs pytorch-grad-cam GradCAM
  grad_cam_pp   Grad-CAM++ on a batch                    vs pytorch-grad-cam GradCAMPlusPlus
  cam_attack    Grad-CAM ``keep`` attack, 10 steps       vs double backprop in plain PyTorch
  train_step    standard train step (AdamW)              vs the same step in PyTorch
  adv_step      our standard train step                  vs our FGSM-RS / PGD-7 steps (ratio = cost)
  eps_sweep     7 eps with eps traced (one compilation)  vs 7 single-eps compilations

Run it on an otherwise idle machine: with a training job on the same two cores torch's
OpenMP threads lose far more than XLA's (a shared-core run made torchattacks.PGD 3.3x
slower and ours 1.1x; bench/RESULTS.md), which inflates the ratios. The header records
the load average at the start.

Prints a markdown table; ``--record`` appends the rows to bench/results.json (name, our
median, the peer's, ratio peer/ours, check passed) and the table to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402

import adv_train_step  # noqa: E402
from lib import attacks, explanation_attacks, models, parallel, saliency, sweep, torch_weights, xla_cpu  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Pair:
  """One comparison: two zero-argument callables doing the same work, and its check."""
  name: str
  work: str
  ours: Callable[[], object]
  peer: Callable[[], object]
  peer_name: str
  check: Callable[[], tuple[bool, str]]


class Setup:
  """The same weights and images in both frameworks."""

  def __init__(self, arch: str, size: int, batch: int, seed: int = 0, im2col_max_pixels: int = 64,
               device: str = "cpu", num_classes: int = 2):
    torch.manual_seed(seed)
    self.device = torch.device(device)
    net = getattr(torchvision.models, arch)(num_classes=num_classes)
    with torch.no_grad():
      for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.uniform_(-0.1, 0.1)
          m.running_var.uniform_(0.5, 1.5)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    self.net = net.to(self.device).eval()
    self.torch_model = torch.nn.Sequential(_Normalize(), self.net).eval()
    self.model = models.ARCHITECTURES[arch](in_channels=3, num_classes=num_classes, mean=MEAN, std=STD,
                                            im2col_max_pixels=im2col_max_pixels)
    self.variables, _ = torch_weights.from_torchvision(
        sd, models.init_variables(self.model, 0, size))
    self.variables = jax.device_put(self.variables)
    self.fns = models.model_fns(self.model, self.variables)
    rng = np.random.default_rng(seed)
    # smooth random images (low-frequency noise), so maps and gradients are not white noise
    low = rng.uniform(0, 1, (batch, size // 8, size // 8, 3)).astype(np.float32)
    self.x = np.asarray(jax.image.resize(low, (batch, size, size, 3), "bilinear")).clip(0, 1)
    self.xt = self.to_torch(self.x)
    with torch.no_grad():
      self.yt = self.torch_model(self.xt).argmax(1)
    self.y = self.yt.cpu().numpy().astype(np.int32)

  def to_torch(self, nhwc) -> torch.Tensor:
    """NHWC numpy -> NCHW tensor on the peer's device."""
    return torch.from_numpy(np.ascontiguousarray(nhwc)).permute(0, 3, 1, 2).contiguous().to(
        self.device)


class _Normalize(torch.nn.Module):
  def forward(self, x):
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(STD, dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def _nhwc(t) -> np.ndarray:
  t = t.detach().cpu() if hasattr(t, "detach") else torch.as_tensor(t)
  return t.permute(0, 2, 3, 1).numpy() if t.ndim == 4 else t.numpy()


def _corr(a, b) -> float:
  """Smallest per-image Pearson correlation of two batches of maps."""
  a = np.asarray(a, np.float64).reshape(len(a), -1)
  b = np.asarray(b, np.float64).reshape(len(b), -1)
  return float(min(np.corrcoef(u, v)[0, 1] for u, v in zip(a, b)))


def _close_share(a, b, tol=1e-5) -> float:
  return float(np.mean(np.abs(np.asarray(a) - np.asarray(b)) <= tol))


def _block(fn):
  return lambda: jax.block_until_ready(fn())


# ----------------------------------------------------------------------------- pairs

def attack_pairs(s: Setup, eps: float, steps: int):
  import torchattacks  # pylint: disable=import-outside-toplevel
  alpha = eps / 4
  x, y = jnp.asarray(s.x), jnp.asarray(s.y)
  pgd = jax.jit(lambda x, y: attacks.pgd(s.fns.logits_fn, x, y, eps=eps, step_size=alpha,
                                          steps=steps, key=jax.random.PRNGKey(0)))
  bim = jax.jit(lambda x, y: attacks.bim(s.fns.logits_fn, x, y, eps=eps, step_size=alpha,
                                          steps=steps))
  fgsm = jax.jit(lambda x, y: attacks.fgsm(s.fns.logits_fn, x, y, eps=eps))
  t_pgd = torchattacks.PGD(s.torch_model, eps=eps, alpha=alpha, steps=steps, random_start=True)
  t_bim = torchattacks.PGD(s.torch_model, eps=eps, alpha=alpha, steps=steps, random_start=False)
  t_fgsm = torchattacks.FGSM(s.torch_model, eps=eps)

  def check(ours, peer):
    """Deterministic versions (PGD without random start = BIM) agree: the same logits, and
    the same final images up to pixels where a near-zero gradient's sign flipped on float
    rounding at some step (after that the two paths differ slightly), so the loss they
    reach agrees too. One step (FGSM) agrees on every pixel."""
    def run():
      a, b = np.asarray(ours(x, y)), _nhwc(peer(s.xt, s.yt))
      share = _close_share(a, b, tol=1e-4)
      ce = lambda z: float(F.cross_entropy(s.torch_model(s.to_torch(z)), s.yt))
      loss_a, loss_b = ce(a), ce(b)
      logits = np.abs(np.asarray(s.fns.logits_fn(x)) -
                      s.torch_model(s.xt).detach().cpu().numpy()).max()
      ok = share >= 0.9 and abs(loss_a - loss_b) <= 0.02 * abs(loss_b) and logits < 1e-3
      return ok, (f"logits max diff {logits:.1e}; {share:.2%} of pixels equal (1e-4); "
                  f"loss reached {loss_a:.4f} vs {loss_b:.4f}")
    return run

  return [
      Pair("pgd", f"PGD L-inf, {steps} steps, eps {eps}, random start (check: without)",
           _block(lambda: pgd(x, y)), lambda: t_pgd(s.xt, s.yt), "torchattacks.PGD",
           check(bim, t_bim)),
      Pair("fgsm", f"FGSM, eps {eps}", _block(lambda: fgsm(x, y)),
           lambda: t_fgsm(s.xt, s.yt), "torchattacks.FGSM", check(fgsm, t_fgsm)),
  ]


def attribution_pairs(s: Setup, samples: int, ig_steps: int, sigma: float = 0.1):
  from captum.attr import IntegratedGradients, NoiseTunnel, Saliency  # pylint: disable=import-outside-toplevel
  x, y = jnp.asarray(s.x), jnp.asarray(s.y)
  key = jax.random.PRNGKey(0)
  sg = jax.jit(lambda x, y: saliency.smoothgrad(s.fns.logits_fn, x, y, key=key, samples=samples,
                                                sigma=sigma))
  grad = jax.jit(lambda x, y: saliency.gradient(s.fns.logits_fn, x, y))
  ig = jax.jit(lambda x, y: saliency.integrated_gradients(s.fns.logits_fn, x, y, steps=ig_steps))
  nt = NoiseTunnel(Saliency(s.torch_model))
  cig = IntegratedGradients(s.torch_model)
  points = ig_steps + 1                # the trapezoid rule on ig_steps intervals
  t_sg = lambda: nt.attribute(s.xt, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma,
                              target=s.yt, abs=False)
  t_ig = lambda: cig.attribute(s.xt, baselines=0.0, target=s.yt, n_steps=points,
                               method="riemann_trapezoid", internal_batch_size=len(s.y) * 8)

  def check_sg():
    # The same gradient; SmoothGrad maps with other noise draws agree as well as two of
    # ours with different keys do (the noise floor).
    # (relative L2, as for IG: the smooth test images make neighbouring stem activations
    # nearly equal, so some max-pool windows hold near-ties that float rounding decides,
    # differently for two convolution libraries; that moves single pixels by percents:
    # 2.4e-2 at the worst pixel, 2.9e-3 in L2, with logits equal to 4e-6)
    g = _nhwc(Saliency(s.torch_model).attribute(s.xt, target=s.yt, abs=False))
    ours_g = np.asarray(grad(x, y))
    err = float(np.linalg.norm(ours_g - g) / np.linalg.norm(g))
    err_max = np.abs(ours_g - g).max() / np.abs(g).max()
    ours = lambda k: np.abs(np.asarray(saliency.smoothgrad(
        s.fns.logits_fn, x, y, key=jax.random.PRNGKey(k), samples=samples, sigma=sigma))).sum(-1)
    floor = _corr(ours(1), ours(2))
    c = _corr(ours(1), np.abs(_nhwc(t_sg())).sum(-1))
    return err < 1e-2 and c > 0.9 * floor, (
        f"plain gradient rel. L2 diff {err:.1e} (max {err_max:.1e}); SmoothGrad maps correlate >= {c:.3f} with "
        f"captum's, {floor:.3f} between two of ours (other noise)")

  def check_ig():
    # captum's riemann_trapezoid weights are 1/n (halved at the ends) on n points, so they
    # sum to (n - 1)/n instead of 1; rescaled, it is the trapezoid rule we use. At a few
    # path points a ReLU or max-pool input within float rounding of a tie makes the two
    # frameworks' gradients differ locally (seen: 4 % max at one of 9 points, 1e-6 at the
    # others), so the test is on the relative L2 error.
    a, b = np.asarray(ig(x, y)), _nhwc(t_ig()) * points / (points - 1)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    return err < 1e-2, (f"same quadrature (captum x n/(n-1)): rel. L2 diff {err:.1e}, rel. "
                        f"max diff {np.abs(a - b).max() / np.abs(b).max():.1e}")

  return [
      Pair("smoothgrad", f"SmoothGrad, {samples} samples", _block(lambda: sg(x, y)), t_sg,
           "captum NoiseTunnel(Saliency)", check_sg),
      Pair("ig", f"Integrated Gradients, {ig_steps} intervals", _block(lambda: ig(x, y)), t_ig,
           "captum IntegratedGradients", check_ig),
  ]


def cam_pairs(s: Setup):
  from pytorch_grad_cam import GradCAM, GradCAMPlusPlus  # pylint: disable=import-outside-toplevel
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # pylint: disable=import-outside-toplevel
  x, y = jnp.asarray(s.x), jnp.asarray(s.y)
  targets = [ClassifierOutputTarget(int(c)) for c in s.y]
  out = []
  for name, ours_fn, peer_cls in (("grad_cam", saliency.grad_cam, GradCAM),
                                  ("grad_cam_pp", saliency.grad_cam_pp, GradCAMPlusPlus)):
    # Both give maps at input resolution normalised to [0, 1] per image.
    fn = jax.jit(lambda x, y, f=ours_fn: saliency.normalize(
        f(s.fns.features_fn, s.fns.head_fn, x, y)))
    cam = peer_cls(model=s.torch_model, target_layers=[s.net.layer4[-1]])
    peer = lambda cam=cam: cam(input_tensor=s.xt, targets=targets)

    def check(fn=fn, peer=peer):
      c = _corr(fn(x, y), peer())
      return c > 0.99, f"maps correlate >= {c:.4f} (bilinear vs OpenCV resize)"
    out.append(Pair(name, f"{name.replace('_', '-')} on a batch", _block(lambda fn=fn: fn(x, y)),
                    peer, f"pytorch-grad-cam {peer_cls.__name__}", check))
  return out


def torch_cam_keep_attack(s: Setup, x, y0, eps, alpha, steps):
  """The Grad-CAM ``keep`` attack by double backprop in plain PyTorch (no library has it):
  maximise 1 - Pearson(CAM(x'), CAM(x)) - CE(x', y0) with signed steps, last iterate."""
  net = s.net
  def features(z):
    z = _Normalize()(z)
    z = net.maxpool(net.relu(net.bn1(net.conv1(z))))
    return net.layer4(net.layer3(net.layer2(net.layer1(z))))
  head = lambda a: net.fc(torch.flatten(net.avgpool(a), 1))

  def cam_and_logits(z, create_graph):
    a = features(z)
    logits = head(a)
    score = logits.gather(1, y0[:, None]).sum()
    g = torch.autograd.grad(score, a, create_graph=create_graph)[0]
    cam = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    return F.interpolate(cam, size=z.shape[2:], mode="bilinear", align_corners=False)[:, 0], logits

  def pearson(a, b):
    a, b = a.flatten(1), b.flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)

  x0 = x.clone().requires_grad_(True)
  cam0 = cam_and_logits(x0, False)[0].detach()

  def loss_grad(xa):
    xa = xa.clone().requires_grad_(True)
    cam, logits = cam_and_logits(xa, True)
    loss = (1 - pearson(cam, cam0)) - F.cross_entropy(logits, y0, reduction="none")
    return torch.autograd.grad(loss.sum(), xa)[0]

  xa = x.clone()
  for _ in range(steps):
    xa = xa + alpha * loss_grad(xa).sign()
    xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0, 1).detach()
  return xa, loss_grad


def cam_attack_pair(s: Setup, eps: float, steps: int):
  alpha = eps / 4
  x = jnp.asarray(s.x)
  ours = jax.jit(lambda x: explanation_attacks.explanation_attack(
      s.fns, x, eps=eps, step_size=alpha, steps=steps, method="grad_cam", random_init=False))

  def check():
    y0 = jnp.asarray(s.y)
    loss = explanation_attacks.explanation_objective(s.fns, x, y0, method="grad_cam")
    ours_g = jax.grad(lambda z: loss(z, 0.0)[0].sum())(x + 1e-3 * jnp.sign(jnp.sin(x * 50)))
    _, grad_fn = torch_cam_keep_attack(s, s.xt, s.yt, eps, alpha, 0)
    xt = s.xt + 1e-3 * torch.sign(torch.sin(s.xt * 50))
    peer_g = _nhwc(grad_fn(xt))
    ours_g = np.asarray(ours_g)
    cos = float((ours_g * peer_g).sum() / (np.linalg.norm(ours_g) * np.linalg.norm(peer_g)))
    agree = float(np.mean(np.sign(ours_g) == np.sign(peer_g)))
    return cos > 0.999, f"loss gradients: cosine {cos:.5f}, sign agreement {agree:.2%}"

  return Pair("cam_attack", f"Grad-CAM keep attack, {steps} steps (double backprop)",
              _block(lambda: ours(x)), lambda: torch_cam_keep_attack(s, s.xt, s.yt, eps, alpha,
                                                                     steps)[0],
              "plain PyTorch double backprop", check)


def train_pairs(s: Setup, arch: str, size: int, batch: int, adv_steps: int):
  variants = {"standard": ("none", 0), "fgsm_rs": ("fgsm_rs", 1),
              f"pgd-{adv_steps}": ("pgd", adv_steps)}
  steps, state, (np_batch, put) = adv_train_step.compile_train_steps(
      arch, size, batch, variants, in_channels=3, mean=MEAN, std=STD, variables=s.variables,
      im2col_max_pixels=s.model.im2col_max_pixels)
  net = getattr(torchvision.models, arch)(num_classes=2)
  net.load_state_dict(s.net.state_dict())
  tmodel = torch.nn.Sequential(_Normalize(), net).to(s.device).train()
  opt = torch.optim.AdamW(tmodel.parameters(), lr=1e-3, weight_decay=1e-4)
  xt = s.to_torch(np_batch["image"])
  yt = torch.from_numpy(np_batch["label"]).long().to(s.device)

  def torch_step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(tmodel(xt), yt)
    loss.backward()
    opt.step()
    return loss

  def check():
    ours = float(steps["standard"](state, put)[1]["loss"])
    net_copy = getattr(torchvision.models, arch)(num_classes=2)
    net_copy.load_state_dict(s.net.state_dict())
    with torch.no_grad():
      peer = float(F.cross_entropy(
          torch.nn.Sequential(_Normalize(), net_copy).to(s.device).train()(xt), yt))
    return abs(ours - peer) < 1e-4, f"first-step loss {ours:.6f} vs {peer:.6f} (train-mode BN)"

  run = lambda name: _block(lambda: steps[name](state, put))
  pairs = [Pair("train_step", "train step, standard (AdamW)", run("standard"), torch_step,
                "PyTorch (same step)", check)]
  for name in list(variants)[1:]:
    k = variants[name][1]
    pairs.append(Pair(f"adv_step_{name}", f"our {name} step (peer column) vs our standard "
                      f"step: the ratio is its cost, about k + 1 = {k + 1} expected",
                      run("standard"), run(name), f"ours, {name} step",
                      lambda: (True, "timing only")))
  return pairs


def eps_sweep_pair(s: Setup, eps_values, steps: int):
  """The sweep's way (eps traced: one compilation for all eps) vs one run per eps (each
  compiles its own attack, as 7 separate attack.py runs or an eps baked in would)."""
  mesh = parallel.make_mesh(1)
  spec = {"name": "pgd", "steps": steps, "step_size_factor": 0.25}
  x, y, key = jnp.asarray(s.x), jnp.asarray(s.y), jax.random.PRNGKey(0)
  counts = {}

  def traced():
    counter = sweep.TraceCounter()
    fn = sweep.compile_attack(s.model, spec, mesh, counter)
    batch = parallel.global_batch(mesh, {"x": s.x, "y": s.y})
    out = [fn(s.variables, jnp.float32(e), key, batch, np.int32(0)) for e in eps_values]
    jax.block_until_ready(out)
    counts["ours"] = counter.count

  def per_eps():
    counter = sweep.TraceCounter()
    out = []
    for e in eps_values:
      run = sweep.make_attack(spec)
      fn = jax.jit(counter.wrap(lambda v, x, y, k, e=e: run(
          models.model_fns(s.model, v), x, y, e, k)))
      out.append(fn(s.variables, x, y, key))
    jax.block_until_ready(out)
    counts["peer"] = counter.count

  def check():
    return counts.get("ours") == 1 and counts.get("peer") == len(eps_values), (
        f"compilations: {counts.get('ours')} vs {counts.get('peer')}")

  return Pair("eps_sweep", f"PGD-{steps} over {len(eps_values)} eps, compile included",
              traced, per_eps, f"{len(eps_values)} single-eps compilations", check)


# ----------------------------------------------------------------------------- timing

def _synced(fn):
  """``fn`` that returns only when the GPU has finished its work (CUDA runs async)."""
  if not torch.cuda.is_available():
    return fn
  def run():
    out = fn()
    torch.cuda.synchronize()
    return out
  return run


def time_pair(pair: Pair, repeats: int, warmup: int) -> dict:
  peer_fn = _synced(pair.peer)
  for _ in range(warmup):
    pair.ours()
    peer_fn()
  ours, peer = [], []
  for _ in range(repeats):       # alternate, so load drifts hit both
    t0 = time.perf_counter()
    pair.ours()
    ours.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    peer_fn()
    peer.append(time.perf_counter() - t0)
  return {"ours_s": statistics.median(ours), "peer_s": statistics.median(peer),
          "ratio": statistics.median(peer) / statistics.median(ours)}


def versions() -> dict:
  import captum  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  import torchattacks  # pylint: disable=import-outside-toplevel
  from importlib.metadata import version  # pylint: disable=import-outside-toplevel
  return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
          "torch": torch.__version__, "torchvision": torchvision.__version__,
          "torchattacks": torchattacks.__version__, "captum": captum.__version__,
          "grad-cam": version("grad-cam")}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--arch", default="resnet18")
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--eps", type=float, default=0.004)
  p.add_argument("--steps", type=int, default=10, help="attack steps (PGD, Grad-CAM attack)")
  p.add_argument("--adv_steps", type=int, default=7, help="PGD steps of the adversarial step")
  p.add_argument("--samples", type=int, default=16, help="SmoothGrad samples")
  p.add_argument("--ig_steps", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--only", default="", help="comma-separated pair names (default: all)")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  p.add_argument("--im2col_max_pixels", type=int, default=64,
                 help="0: XLA's convolution everywhere (before the small-map fix)")
  p.add_argument("--record", action="store_true", help="append to bench/results.json, RESULTS.md")
  p.add_argument("--device", default="cpu", help="the peers' torch device: cpu or cuda (ours: "
                 "JAX's default device)")
  p.add_argument("--out", default="", help="JSON file of the rows, rewritten after every pair")
  p.add_argument("--tf32", action="store_true",
                 help="on GPUs let both frameworks use TF32 for float32 convolutions and "
                      "matrix products (default: true float32 on both sides, as the checks "
                      "assume)")
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  if args.device != "cpu":
    # torch runs cuDNN convolutions in TF32 by default and JAX's default precision allows
    # it too; the first H200 run compared them so and its logits differed by 4e-2
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    jax.config.update("jax_default_matmul_precision", "default" if args.tf32 else "highest")
  s = Setup(args.arch, args.size, args.batch, im2col_max_pixels=args.im2col_max_pixels,
            device=args.device)
  only = set(filter(None, args.only.split(",")))
  builders = {
      ("pgd", "fgsm"): lambda: attack_pairs(s, args.eps, args.steps),
      ("smoothgrad", "ig"): lambda: attribution_pairs(s, args.samples, args.ig_steps),
      ("grad_cam", "grad_cam_pp"): lambda: cam_pairs(s),
      ("cam_attack",): lambda: [cam_attack_pair(s, args.eps, args.steps)],
      ("train_step", "adv_step"): lambda: train_pairs(s, args.arch, args.size, args.batch,
                                                      args.adv_steps),
      ("eps_sweep",): lambda: [eps_sweep_pair(s, (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.031),
                                              args.steps)],
  }
  where = (f"{platform.machine()} CPU ({os.cpu_count()} cores, torch threads {args.threads})"
           if args.device == "cpu" else
           f"{torch.cuda.get_device_name()} (torch {args.device}, JAX {jax.devices()[0]})")
  precision = "float32" + (" (TF32 allowed)" if args.tf32 and args.device != "cpu" else "")
  header = (f"{args.arch} at {args.size} px, batch {args.batch}, {precision}, {where}, im2col up to "
            f"{args.im2col_max_pixels} px maps, "
            f"{args.repeats} alternating rounds after {args.warmup} warm-up, "
            f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load average at start "
            f"{os.getloadavg()[0]:.2f}")
  print(header, "\n", json.dumps(versions()), flush=True)
  rows = []
  order = [n for n in args.only.split(",") if n]   # --only's order is the running order
  rank = lambda names: min((order.index(n) for n in names if n in order), default=len(order))
  for names, build in sorted(builders.items(), key=lambda kv: rank(kv[0])):
    if only and not only & set(names):
      continue
    for pair in build():
      if only and pair.name not in only and not any(pair.name.startswith(n) for n in only):
        continue
      t = time_pair(pair, 1 if pair.name == "eps_sweep" else args.repeats,
                    0 if pair.name == "eps_sweep" else args.warmup)
      ok, detail = pair.check()
      row = {"name": pair.name, "work": pair.work, "peer": pair.peer_name, **t,
             "check_passed": bool(ok), "check": detail, "arch": args.arch, "size": args.size,
             "batch": args.batch}
      rows.append(row)
      print(f"{pair.name:22s} ours {t['ours_s']:8.3f} s  peer {t['peer_s']:8.3f} s  "
            f"ratio {t['ratio']:5.2f}  check {'ok' if ok else 'FAILED'}: {detail}", flush=True)
      if args.out:
        with open(args.out, "w") as f:
          json.dump({"header": header, "versions": versions(), "rows": rows}, f, indent=2)
  table = markdown(rows)
  print("\n" + table)
  if args.record:
    record(args, header, rows, table)


def markdown(rows) -> str:
  lines = ["| pair | work | peer | ours (s) | peer (s) | peer / ours | same result |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['name']} | {r['work']} | {r['peer']} | {r['ours_s']:.3f} | "
                 f"{r['peer_s']:.3f} | **{r['ratio']:.2f}** | "
                 f"{'yes' if r['check_passed'] else 'NO'}: {r['check']} |")
  return "\n".join(lines)


def record(args, header, rows, table) -> None:
  path = os.path.join(HERE, "results.json")
  history = json.load(open(path)) if os.path.exists(path) else []
  history.append({"date": datetime.date.today().isoformat(), "args": vars(args),
                  "versions": versions(), "cores": os.cpu_count(),
                  "rows": [{k: r[k] for k in ("name", "ours_s", "peer_s", "ratio", "check_passed",
                                              "check", "peer", "work")} for r in rows]})
  with open(path, "w") as f:
    json.dump(history, f, indent=2)
  cmd = "bench/.venv-peers/bin/python bench/peers.py " + " ".join(sys.argv[1:])
  with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
    f.write(f"\n### {header}\n\n`{cmd}`\n\n{json.dumps(versions())}\n\n{table}\n")


if __name__ == "__main__":
  xla_cpu.configure()  # the entry points' XLA:CPU defaults, before the first JAX computation
  main()
