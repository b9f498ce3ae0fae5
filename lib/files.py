"""What a job writes into its work dir, written so that nothing is lost or half-written.

* :func:`atomic_write` / :func:`atomic_json`: a results file is written to a temporary name
  in the same folder and renamed over the old one, so a crash or a full disk leaves the
  previous complete copy, never a truncated one; a full disk stops with a short message
  naming the file.
* :func:`read_json`: a file that does not parse is named in the error.
* :func:`read_jsonl` / :func:`repair_jsonl`: an append-only log (``metrics.jsonl``) whose
  last line was torn by a crash is read without it, and repaired before appending.
* In a job of several processes only process 0 writes (:func:`is_writer`): the others
  compute the same numbers and return from every write.
* :class:`WorkdirLock`: one job per work dir; a second process on the same dir stops with a
  message naming the first (pid, host, command, start time) instead of interleaving its
  files with it.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from typing import Any

LOCK_NAME = ".lock"
_HELD: dict[str, Any] = {}   # work dir -> [open lock file, depth]: re-entrant in one process


class DiskFullError(OSError):
  """No space left while writing a file; the earlier copy of the file is intact."""


def _disk_full(path: str, e: OSError) -> DiskFullError:
  return DiskFullError(errno.ENOSPC, f"No space left on the device while writing {path} (its "
                       "earlier copy, if any, is intact): free some space and run the same "
                       f"command again; it resumes. ({e.strerror})")


def is_writer() -> bool:
  """Whether this process writes the job's files: process 0 of a multi-process JAX job
  (every process computes the same results; one writes them), and any process outside
  one. Never imports JAX itself (a JAX-free summary is always a writer)."""
  jax = sys.modules.get("jax")
  return jax is None or jax.process_index() == 0


def atomic_write(path: str, data, mode: str = "w") -> None:
  """Writes ``data`` (text, or bytes with ``mode="wb"``) to ``path`` via a temporary file in
  the same folder and an atomic rename; in a multi-process job only process 0 writes
  (:func:`is_writer`), the others return."""
  if not is_writer():
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, mode) as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    try:
      os.remove(tmp)
    except OSError:
      pass
    if e.errno == errno.ENOSPC:
      raise _disk_full(path, e) from None
    raise


def atomic_json(path: str, obj, **kwargs) -> None:
  atomic_write(path, json.dumps(obj, **{"indent": 2, **kwargs}))


def read_json(path: str):
  """``json.load`` of ``path``; a file that does not parse is named in the error."""
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}); it may have been cut short by a crash "
                     "or a full disk. Move it aside to start that part afresh.") from None


def read_jsonl(path: str) -> list[dict]:
  """The records of an append-only JSON-lines log. A torn last line (a crash while
  appending) is skipped with a warning; a bad line elsewhere is an error naming it."""
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append(json.loads(line))
    except ValueError:
      if i == len(lines) - 1:
        logging.warning("%s: ignoring a torn last line (%d bytes).", path, len(line))
        break
      raise ValueError(f"{path}, line {i + 1}: not valid JSON: {line[:80]!r}") from None
  return out


def repair_jsonl(path: str) -> None:
  """Cuts a torn last line (no final newline) off an append-only log before appending."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data.endswith(b"\n"):
      return
    keep = data.rfind(b"\n") + 1
    f.truncate(keep)
  logging.warning("%s: removed a torn last line (%d bytes) left by an interrupted write.",
                  path, len(data) - keep)


class WorkdirLock:
  """Context manager: an exclusive lock on ``<workdir>/.lock`` for the job's lifetime.

  Another process holding it stops this one with its description; the lock goes with the
  process (``flock``), so a killed job never leaves a stale lock. Re-entrant within one
  process (a study's runs inside its work dir). Only process 0 of a multi-process job
  takes it."""

  def __init__(self, workdir: str, job: str = ""):
    self.workdir = os.path.abspath(workdir)
    self.job = job or " ".join(sys.argv) or "python"

  def __enter__(self):
    import jax  # pylint: disable=import-outside-toplevel
    from lib import parallel  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:
      return self._acquire()
    # Process 0 takes the lock and tells the others whether it got it, so that they stop
    # with it instead of waiting for it in their first collective.
    problem = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except RuntimeError as e:
        problem = e
    if not parallel.agree(problem is None):
      raise problem or RuntimeError(f"{self.workdir} is in use by another job (process 0 of "
                                    "this one could not lock it; see its log).")
    return self

  def _acquire(self):
    if self.workdir in _HELD:
      _HELD[self.workdir][1] += 1
      return self
    os.makedirs(self.workdir, exist_ok=True)
    path = os.path.join(self.workdir, LOCK_NAME)
    f = open(path, "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      raise RuntimeError(f"{self.workdir} is in use by {holder}. Wait for it to finish or use "
                         "another --workdir (two jobs in one work dir overwrite each other's "
                         "results).") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}: {self.job}\n")
    f.flush()
    _HELD[self.workdir] = [f, 1]
    return self

  def __exit__(self, *exc):
    held = _HELD.get(self.workdir)
    if held is None:
      return False
    held[1] -= 1
    if held[1] == 0:
      f = held[0]
      del _HELD[self.workdir]
      f.seek(0)
      f.truncate()
      fcntl.flock(f, fcntl.LOCK_UN)
      f.close()
    return False
