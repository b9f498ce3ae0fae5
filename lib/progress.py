"""Progress bars on long work (tqdm, to stderr): attack sweeps (one bar per attack and eps,
in images), explanations (per method), study runs (per run) and data preparation.

One switch turns them all off: ``MEDROBUST_PROGRESS=0`` in the environment, or
``--progress=false`` on any entry point (``lib/cli.py`` sets the variable). They are also
off when stderr is not a terminal (a log file or a batch job's output) unless
``MEDROBUST_PROGRESS=1`` forces them, and in every process but process 0 of a
multi-process job. The log lines (what a sweep, a study or training writes with absl
logging) stay either way: bars are for a person watching, logs for files.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, Optional

ENV = "MEDROBUST_PROGRESS"


def enabled() -> bool:
  """Whether bars are shown in this process (see the module docstring)."""
  value = os.environ.get(ENV, "").strip().lower()
  if value in ("0", "false", "no", "off"):
    return False
  if not (value in ("1", "true", "yes", "on") or sys.stderr.isatty()):
    return False
  try:
    import jax  # pylint: disable=import-outside-toplevel
    return jax.process_index() == 0
  except Exception:  # pylint: disable=broad-except  # JAX not installed: one process
    return True


class _Silent:
  """What :func:`bar` returns when bars are off: the same methods, doing nothing."""

  def update(self, n: int = 1) -> None:
    del n

  def set_postfix_str(self, s: str) -> None:
    del s

  def close(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc) -> None:
    pass


def silent() -> _Silent:
  """A bar that shows nothing (for code that shows one only sometimes)."""
  return _Silent()


def bar(total: Optional[int] = None, desc: str = "", unit: str = "img"):
  """A tqdm bar of ``total`` ``unit``s (rate and ETA included), or a silent stand-in when
  bars are off. Use as a context manager and call ``update(n)``."""
  if not enabled():
    return _Silent()
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
              file=sys.stderr)


def track(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it"):
  """``iterable`` with a bar (or as it is, when bars are off)."""
  if not enabled():
    return iterable
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False,
              file=sys.stderr)
