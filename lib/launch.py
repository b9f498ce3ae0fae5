"""Starts a multi-process JAX job on this machine: the JAX counterpart of ``torchrun
--nproc_per_node``, to rehearse a multi-host run (a GPU cluster, a TPU pod) on a laptop.

  python -m lib.launch --processes=2 --devices_per_process=2 -- \\
      train.py --config=configs/default.py:test --workdir=runs/two_processes

starts ``--processes`` copies of the script (``SCRIPT.py ARGS`` or ``-m MODULE ARGS``),
each one JAX process of one job: a coordinator on a free loopback port, the variables
the entry points read to join it (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; lib/parallel.py :func:`~lib.parallel.initialize_distributed`) and,
on CPU, ``--devices_per_process`` fake CPU devices each
(``--xla_force_host_platform_device_count``; with ``--platform=gpu``, the GPUs
``JAX_LOCAL_DEVICE_IDS``). Collectives between the processes go over gloo (CPU) or NCCL.

Every line a process prints is shown prefixed with ``[p<i>]`` and, with ``--log_dir``,
also written to ``<log_dir>/process_<i>.log``. The launcher waits for all of them; when one
fails (a non-zero exit, a signal), it stops the others at once with a message naming the
one that failed (JAX's own heartbeat would take minutes) and exits with its code. The
exit code is 0 only when every process succeeded.

It imports no JAX, so it starts in well under a second.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

PREFIX = "lib.launch:"


def free_port() -> int:
  """A TCP port on the loopback interface that nothing listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _xla_flags(existing: str, devices: int) -> str:
  """``existing`` XLA_FLAGS with the host device count set to ``devices``."""
  kept = [f for f in existing.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def process_env(index: int, processes: int, port: int, *, devices_per_process: int = 0,
                platform: str = "cpu", base: Optional[dict] = None) -> dict:
  """The environment of process ``index`` of ``processes``."""
  env = dict(os.environ if base is None else base)
  env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(processes),
             JAX_PROCESS_ID=str(index), PYTHONUNBUFFERED="1")
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    if devices_per_process:
      env["XLA_FLAGS"] = _xla_flags(env.get("XLA_FLAGS", ""), devices_per_process)
  elif devices_per_process:
    first = index * devices_per_process
    env["JAX_LOCAL_DEVICE_IDS"] = ",".join(str(first + i) for i in range(devices_per_process))
  return env


def command(script: Sequence[str]) -> list[str]:
  """``SCRIPT.py ARGS`` or ``-m MODULE ARGS`` -> the command line of one process."""
  script = list(script)
  if script and script[0] == "--":
    script = script[1:]
  if not script:
    raise ValueError("Nothing to launch: give SCRIPT.py [ARGS...] or -m MODULE [ARGS...] "
                     "after the launcher's flags.")
  if script[0] in (sys.executable, "python", "python3"):
    script = script[1:]
  return [sys.executable] + script


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"was killed by signal {-code}"
  return f"exited with code {code}"


def _pump(stream, index: int, out, log_path: Optional[str]) -> None:
  log = open(log_path, "w", buffering=1) if log_path else None  # pylint: disable=consider-using-with
  try:
    for line in iter(stream.readline, ""):
      out.write(f"[p{index}] {line}" if line.endswith("\n") else f"[p{index}] {line}\n")
      out.flush()
      if log:
        log.write(line)
  finally:
    if log:
      log.close()


def _stop(procs, grace: float) -> None:
  """SIGTERM to every running process's group, SIGKILL to those still there after ``grace``."""
  for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
    running = [p for p in procs if p.poll() is None]
    for p in running:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait
    while any(p.poll() is None for p in running) and time.monotonic() < deadline:
      time.sleep(0.05)


def launch(script: Sequence[str], *, processes: int, devices_per_process: int = 0,
           platform: str = "cpu", log_dir: Optional[str] = None, port: int = 0,
           timeout: float = 0.0, grace: float = 10.0, out=None, env: Optional[dict] = None,
           cwd: Optional[str] = None) -> int:
  """Runs ``script`` as ``processes`` JAX processes of one job (in folder ``cwd``); returns
  the exit code (0 when all succeeded, else the first failure's code, 128 + N for signal
  N). ``timeout`` (seconds, 0: none) stops a job that runs longer."""
  if processes < 1:
    raise ValueError(f"--processes must be at least 1, got {processes}")
  if platform not in ("cpu", "gpu"):
    raise ValueError(f"--platform must be cpu or gpu, got {platform!r}")
  out = out or sys.stdout
  cmd = command(script)
  port = port or free_port()
  if log_dir:
    os.makedirs(log_dir, exist_ok=True)
  procs, pumps = [], []
  for i in range(processes):
    p = subprocess.Popen(  # pylint: disable=consider-using-with
        cmd, env=process_env(i, processes, port, devices_per_process=devices_per_process,
                             platform=platform, base=env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
        start_new_session=True, cwd=cwd)   # its own process group: stopping it stops its children
    procs.append(p)
    out.write(f"{PREFIX} started process {i} of {processes} (pid {p.pid}): {' '.join(cmd)}\n")
    t = threading.Thread(target=_pump, args=(p.stdout, i, out,
                                             os.path.join(log_dir, f"process_{i}.log") if log_dir else None),
                         daemon=True)
    t.start()
    pumps.append(t)
  out.flush()

  failed: Optional[tuple] = None
  start = time.monotonic()
  try:
    while True:
      codes = [p.poll() for p in procs]
      bad = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if bad:
        failed = bad[0]
        break
      if all(c == 0 for c in codes):
        break
      if timeout and time.monotonic() - start > timeout:
        failed = (None, 124)
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    failed = (None, 130)
  if failed is not None:
    index, code = failed
    others = [i for i, p in enumerate(procs) if p.poll() is None]
    why = (f"process {index} (pid {procs[index].pid}) {_describe(code)}" if index is not None
           else "interrupted" if code == 130 else f"the job ran past --timeout={timeout:g} s")
    out.write(f"{PREFIX} {why}; stopping "
              + (f"process(es) {', '.join(map(str, others))}." if others else "nothing else.")
              + "\n")
    out.flush()
    _stop(procs, grace)
  for t in pumps:
    t.join(timeout=5)
  if failed is None:
    out.write(f"{PREFIX} all {processes} processes finished.\n")
    out.flush()
    return 0
  code = failed[1]
  return 128 - code if code < 0 else code


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m lib.launch", description=__doc__.split("\n\n")[0],
      usage="python -m lib.launch --processes=N [--devices_per_process=M] [options] -- "
            "SCRIPT.py [ARGS...] | -m MODULE [ARGS...]")
  parser.add_argument("--processes", type=int, required=True, help="processes to start")
  parser.add_argument("--devices_per_process", type=int, default=0,
                      help="CPU: fake devices per process; GPU: GPUs per process (0: JAX's default)")
  parser.add_argument("--platform", default="cpu", choices=("cpu", "gpu"))
  parser.add_argument("--log_dir", default=None, help="also write process_<i>.log here")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--timeout", type=float, default=0.0, help="seconds; 0: none")
  parser.add_argument("script", nargs=argparse.REMAINDER, help="SCRIPT.py ARGS or -m MODULE ARGS")
  args = parser.parse_args(argv)
  # A launcher stopped by SIGTERM (a scheduler, a timeout) stops its processes first.
  signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
  try:
    return launch(args.script, processes=args.processes,
                  devices_per_process=args.devices_per_process, platform=args.platform,
                  log_dir=args.log_dir, port=args.port, timeout=args.timeout)
  except ValueError as e:
    parser.error(str(e))
    return 2


if __name__ == "__main__":
  sys.exit(main())
