"""The shared shape of the absl entry points: ``--config`` (ml_collections) + ``--workdir``.

:func:`run` first sets the XLA:CPU defaults (:func:`lib.xla_cpu.configure`); none of the
modules the entry points import runs a JAX computation at import time, so that happens
before JAX creates its backend.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from absl import app, flags, logging
from ml_collections import config_flags

from lib import experiment, files, parallel, progress, xla_cpu


def run(job: Callable, default_config: str, *, lock_config: bool = False) -> None:
  """Sets the XLA:CPU defaults, defines the flags and runs ``job(config, workdir)`` under
  ``absl.app``."""
  added = xla_cpu.configure()   # before the first JAX computation (XLA reads XLA_FLAGS once)
  config_flags.DEFINE_config_file("config", default_config, "Config file (with :variant).",
                                  lock_config=lock_config)
  flags.DEFINE_string("workdir", None, "Output directory.")
  flags.mark_flags_as_required(["workdir"])
  flags.DEFINE_bool("progress", True, "Progress bars on long work (stderr, process 0, a "
                    "terminal only; lib/progress.py). false = off, like MEDROBUST_PROGRESS=0.")
  flags.DEFINE_enum("multihost", "auto", parallel.MULTIHOST,
                    "Join a multi-process job (jax.distributed.initialize): auto = when the "
                    "environment names several processes (lib.launch, JAX_COORDINATOR_ADDRESS, "
                    "SLURM srun, mpirun); on = always (Cloud TPU pod slices); off = never.")

  def main(argv):
    del argv
    experiment.setup_logging()
    config = flags.FLAGS.config
    if not flags.FLAGS.progress:
      os.environ[progress.ENV] = "0"
    parallel.initialize_distributed(flags.FLAGS.multihost)
    if added:
      logging.info("XLA:CPU defaults (lib.xla_cpu.configure) added to XLA_FLAGS: %s",
                   " ".join(added))
    logging.info("Config:\n%s", config)
    try:
      job(config, flags.FLAGS.workdir)
    except OSError as e:
      if e.errno != errno.ENOSPC:
        stop_multiprocess_job(e)
        raise
      stop_on_full_disk(e)
    except BaseException as e:  # pylint: disable=broad-except
      stop_multiprocess_job(e)
      raise

  app.run(main)


def stop_multiprocess_job(e: BaseException) -> None:
  """In a job of several processes, ends this one at once after logging the error. Python's
  normal exit would first wait (up to 5 minutes) at JAX's shutdown barrier for the other
  processes, which may be waiting for this one in a collective: the job would hang instead
  of failing. With one process it returns (the error unwinds as usual)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1 or isinstance(e, SystemExit) and not e.code:
    return
  logging.exception("Process %d of %d failed; ending it now (the others stop when they next "
                    "need it; lib.launch stops them at once).", jax.process_index(),
                    jax.process_count())
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)   # pylint: disable=protected-access  # skips the shutdown barrier


def stop_on_full_disk(e: OSError) -> None:
  """Ends the process with one short message when the disk is full. Unwinding normally
  would bury it under pages of errors from background writers (orbax's async checkpoints,
  asyncio) that fail the same way; every file this code writes is written atomically, so
  what was complete before stays complete, and the same command resumes."""
  message = e.strerror if isinstance(e, files.DiskFullError) else (
      f"No space left on the device ({e.filename or e}): free some space and run the same "
      "command again; it resumes from the last complete checkpoint.")
  logging.error("%s", message)
  print(f"ERROR: {message}", file=sys.stderr, flush=True)
  os._exit(28)   # pylint: disable=protected-access  # errno ENOSPC; skips the noisy unwinding
