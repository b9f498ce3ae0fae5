"""The prepared GPU run: every step bounded in time, everything written to ``--out`` as it goes.

  bash bench/gpu/run.sh                 # on the GPU machine (installs the packed wheels first)
  python bench/gpu/run.py --dry_run     # the same steps at toy scale on the CPU (the tests)

Steps, in order (each a subprocess; its output is streamed to the console and to
``<out>/run.log``; a step that outlives its share is stopped and the run goes on):

  env          devices, driver, versions                          -> env.json
  throughput   our steps at ResNet-50, 224 px, bf16, a full batch -> throughput.json
               (bench/gpu/throughput.py: train step standard and PGD-7, eval, PGD-10,
               Grad-CAM attack, Grad-CAM, SmoothGrad, IG, APGD; images/s, compile time, MFU)
  peers        bench/peers.py with torch on the same GPU           -> peers.json
               (PGD vs torchattacks, Grad-CAM vs pytorch-grad-cam, the Grad-CAM attack vs
               double backprop in PyTorch, the train step vs PyTorch's; float32 both)
  oncology     study.py oncology_robustness.py:busi_full (ResNet-50, 224 px, bf16; standard
               vs iterative adversarial training; FGSM/BIM/PGD/APGD at eps up to 0.008),
               one repetition (seed 0) of its 5 folds, as far as time allows
  gradcam      study.py busi_gradcam.py:full (plain vs multi-task, Grad-CAM attacks), the
               same way, with the time left
  summarise    each study's summary of what finished (partial results are marked so in its
               README: later runs add folds and seeds; everything resumes)
  pack         results/<study>/ and the runs' logs and metrics  -> results.tar.gz

``<out>`` ends up with at most 8 files (what a device call returns): run.log, env.json,
throughput.json, peers.json, steps.json, results.tar.gz. ``--budget`` (seconds, default
540) is the whole run's; each step gets ``min(its share, what is left - the reserve for
summarise and pack)``. The JAX persistent compilation cache (``runs/gpu/jax_cache``,
or ``$JAX_COMPILATION_CACHE_DIR``) makes a second run on a warm machine skip compilation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = sys.executable


@dataclasses.dataclass
class Step:
  name: str
  argv: list
  share: float          # at most this many seconds
  final: bool = False   # runs in the reserve at the end (summarise, pack)
  env: dict = dataclasses.field(default_factory=dict)


def study_argv(config: str, workdir: str, seeds: str, extra=()) -> list:
  return [PY, "study.py", f"--config={config}", f"--workdir={workdir}",
          f"--config.seeds={seeds}", *extra]


def plan(args) -> list[Step]:
  """The steps of a real run (``args.dry_run``: the same code paths at toy scale)."""
  out, work = args.out, args.workdir
  if args.dry_run:
    tp = ["--arch", "resnet_tiny", "--size", "32", "--batch", "8", "--repeats", "1",
          "--steps", "2", "--adv_steps", "2", "--samples", "2", "--ig_steps", "2"]
    peers = ["--arch", "resnet18", "--size", "32", "--batch", "2", "--repeats", "1",
             "--steps", "2", "--samples", "2", "--ig_steps", "2", "--only", "pgd,grad_cam"]
    studies = {"oncology": "configs/studies/oncology_robustness.py:busi_test",
               "gradcam": "configs/studies/busi_gradcam.py:test"}
    study_extra = lambda name: [f"--config.results_dir={work}/results/{name}"]
  else:
    tp = ["--arch", "resnet50", "--size", "224", "--batch", str(args.batch),
          "--dtype", "bfloat16", "--repeats", "5"]
    peers = ["--arch", "resnet50", "--size", "224", "--batch", "64", "--repeats", "5",
             "--samples", "16", "--ig_steps", "32",
             "--only", args.peer_pairs or "pgd,cam_attack,train_step,grad_cam,smoothgrad"]
    studies = {"oncology": "configs/studies/oncology_robustness.py:busi_full",
               "gradcam": "configs/studies/busi_gradcam.py:full"}
    study_extra = lambda name: []
  # the full-scale studies have no overrides of their own: 8 input threads instead of 2
  threads = [] if args.dry_run else ["--config.overrides=(('data.num_threads', 8),)"]
  steps = [
      Step("env", [PY, "bench/gpu/env.py", "--out", f"{out}/env.json"], 30),
      Step("throughput", [PY, "bench/gpu/throughput.py", *tp, "--budget", str(args.throughput_s),
                          *(["--only", args.rows] if args.rows else []),
                          "--out", f"{out}/throughput.json"], args.throughput_s + 45),
      # torch and JAX share the GPU in one process: JAX takes half instead of 75 %
      Step("peers", [PY, "bench/peers.py", "--device", args.peer_device, *peers,
                     "--out", f"{out}/peers.json"], args.peers_s,
           env={"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45"}),
  ]
  for name, config in studies.items():
    steps.append(Step(name, study_argv(config, f"{work}/study_{name}", args.seeds,
                                       threads + study_extra(name)), args.budget))
  for name, config in studies.items():
    steps.append(Step(f"summarise_{name}", study_argv(
        config, f"{work}/study_{name}", args.seeds,
        threads + study_extra(name) + ["--config.stages=('summarise',)"]), 60, final=True))
  return steps


def run_step(step: Step, timeout: float, log) -> dict:
  """Runs ``step`` in its own process group, streaming its output; stops it at ``timeout``."""
  t0 = time.time()
  header = f"\n===== {step.name} (at most {timeout:.0f} s): {' '.join(step.argv)}\n"
  print(header, end="", flush=True)
  log.write(header)
  proc = subprocess.Popen(step.argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", start_new_session=True,
                          env={**os.environ, **step.env})

  def pump():
    for line in proc.stdout:
      sys.stdout.write(line)
      log.write(line)
    log.flush()
  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  timed_out = False
  try:
    proc.wait(timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    timed_out = True
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
      try:
        os.killpg(proc.pid, sig)
      except ProcessLookupError:
        break
      try:
        proc.wait(timeout=grace)
        break
      except subprocess.TimeoutExpired:
        continue
  reader.join(timeout=5)
  result = {"step": step.name, "rc": proc.returncode, "seconds": round(time.time() - t0, 1),
            "timed_out": timed_out}
  line = f"----- {step.name}: {result}\n"
  print(line, end="", flush=True)
  log.write(line)
  log.flush()
  return result


def pack_results(out: str, work: str, results_dirs: list[str]) -> str:
  """``results.tar.gz``: the studies' results folders and the runs' small files (logs,
  metrics, per-image records, configs; no checkpoints)."""
  path = os.path.join(out, "results.tar.gz")
  keep = (".json", ".csv", ".md", ".png", ".txt", ".log")
  with tarfile.open(path, "w:gz") as tar:
    for d in results_dirs:
      if os.path.isdir(os.path.join(ROOT, d)):
        tar.add(os.path.join(ROOT, d), arcname=d)
    for root, dirs, files in os.walk(os.path.join(ROOT, work)):
      dirs[:] = [x for x in dirs if x not in ("checkpoints", "jax_cache", "tfds", "results")]
      for f in files:
        p = os.path.join(root, f)
        if f.endswith(keep) and os.path.getsize(p) < 4 * 2**20:
          tar.add(p, arcname=os.path.relpath(p, ROOT))
  return path


def results_dirs(args) -> list[str]:
  if args.dry_run:
    return [f"{args.workdir}/results"]
  return ["results/oncology_robustness_busi_full", "results/busi_gradcam_full"]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu/out")
  p.add_argument("--workdir", default="runs/gpu")
  p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run")
  p.add_argument("--reserve", type=float, default=50.0, help="seconds kept for summarise + pack")
  p.add_argument("--throughput_s", type=float, default=110.0)
  p.add_argument("--peers_s", type=float, default=75.0)
  p.add_argument("--rows", default="", help="throughput rows to measure (default: all, in "
                 "order, until --throughput_s), e.g. grad_cam,smoothgrad-16,ig-32,apgd-20")
  p.add_argument("--peer_pairs", default="", help="peers.py --only (default: pgd,cam_attack,"
                 "train_step,grad_cam,smoothgrad)")
  p.add_argument("--batch", type=int, default=256, help="throughput batch")
  p.add_argument("--seeds", default="(0,)", help="the studies' repetitions this run")
  p.add_argument("--peer_device", default="cuda")
  p.add_argument("--only", default="", help="comma-separated step names (default: all)")
  p.add_argument("--dry_run", action="store_true", help="toy scale on the CPU, same code paths")
  args = p.parse_args(argv)
  deadline = time.time() + args.budget
  os.makedirs(args.out, exist_ok=True)
  os.makedirs(os.path.join(ROOT, args.workdir), exist_ok=True)
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, args.workdir, "jax_cache"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("TFDS_DATA_DIR", os.path.join(ROOT, args.workdir, "tfds"))
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  only = set(filter(None, args.only.split(",")))
  results = []
  with open(os.path.join(args.out, "run.log"), "a") as log:
    for step in plan(args):
      if only and step.name not in only and not step.name.endswith(tuple(only)):
        continue
      if step.name == "peers" and not _has_torch():
        results.append({"step": "peers", "skipped": "torch is not installed"})
        log.write("----- peers: skipped, torch is not installed\n")
        continue
      left = deadline - time.time() - (0 if step.final else args.reserve)
      if left < 5:
        results.append({"step": step.name, "skipped": "no time left"})
        log.write(f"----- {step.name}: skipped, no time left\n")
        continue
      results.append(run_step(step, min(step.share, left), log))
      _write(args.out, results)
  pack_results(args.out, args.workdir, results_dirs(args))
  _write(args.out, results)
  print(json.dumps(results, indent=1))
  return 0 if all(r.get("rc", 0) == 0 or r.get("timed_out") for r in results) else 1


def _has_torch() -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec("torch") is not None


def _write(out: str, results: list) -> None:
  with open(os.path.join(out, "steps.json"), "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
