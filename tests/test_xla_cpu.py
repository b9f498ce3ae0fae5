"""lib.xla_cpu.configure and the import of lib, each in a fresh process whose XLA_FLAGS the
test chooses (XLA reads it once per process, and conftest has set it for this one)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lib import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = f"{xla_cpu.YNN_FLAG}={xla_cpu.YNN_DEFAULT}"
# jaxlib's own choice, as a user would set it to opt out
USER = (f"{xla_cpu.YNN_FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION")
COUNT = "--xla_force_host_platform_device_count=2"

needs_flag = pytest.mark.skipif(
    not xla_cpu._ynn_flag_exists(),  # pylint: disable=protected-access
    reason="this jaxlib is outside the versions configure() adds the flag for")


def _run(code: str, xla_flags=None):
  """Runs ``code`` in a fresh interpreter at the repository root with XLA_FLAGS set to
  ``xla_flags`` (None: unset); returns (the JSON it printed last, its stderr)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("xla_flags", [None, COUNT])
def test_importing_lib_and_the_entry_points_changes_no_flag_and_creates_no_backend(xla_flags):
  out, _ = _run("""
      import json, os
      import lib, lib.models
      after_lib = os.environ.get("XLA_FLAGS")
      import train, attack, explain, study  # the entry points; cli.run() is not called
      from lib import xla_cpu
      print(json.dumps({"after_lib": after_lib, "after_all": os.environ.get("XLA_FLAGS"),
                        "backend": xla_cpu.backend_initialized()}))
      """, xla_flags)
  # cli.run() calls configure() first; it is in time only if no import made a backend
  assert out == {"after_lib": xla_flags, "after_all": xla_flags, "backend": False}


@needs_flag
def test_configure_appends_its_flag_once_and_xla_takes_it():
  out, stderr = _run("""
      import json, os
      from lib import xla_cpu
      first, after_first = xla_cpu.configure(), os.environ["XLA_FLAGS"]
      second, after_second = xla_cpu.configure(), os.environ["XLA_FLAGS"]
      import jax, jax.numpy as jnp
      devices = len(jax.devices())          # XLA parsed both flags (an unknown one aborts)
      float(jnp.ones(3).sum())
      print(json.dumps({"first": first, "after_first": after_first, "second": second,
                        "after_second": after_second, "devices": devices}))
      """, COUNT)
  assert out == {"first": [DEFAULT], "after_first": f"{COUNT} {DEFAULT}",
                 "second": [], "after_second": f"{COUNT} {DEFAULT}", "devices": 2}
  assert "configure() ran after" not in stderr


@needs_flag
@pytest.mark.parametrize("xla_flags,added,flags", [
    (None, [DEFAULT], DEFAULT), ("", [DEFAULT], DEFAULT), (USER, [], USER),
    (f"--xla_cpu_enable_fast_math=false {USER}", [], f"--xla_cpu_enable_fast_math=false {USER}")])
def test_configure_sets_the_flag_unless_the_user_did(xla_flags, added, flags):
  out, _ = _run("""
      import json, os
      from lib import xla_cpu
      added = xla_cpu.configure()
      print(json.dumps({"added": added, "flags": os.environ.get("XLA_FLAGS")}))
      """, xla_flags)
  assert out == {"added": added, "flags": flags}


@needs_flag
def test_configure_after_the_backend_exists_warns():
  out, stderr = _run("""
      import json, os
      import jax
      from lib import xla_cpu
      before = xla_cpu.backend_initialized()
      jax.devices()
      print(json.dumps({"before": before, "after": xla_cpu.backend_initialized(),
                        "added": xla_cpu.configure()}))
      """)
  assert out == {"before": False, "after": True, "added": [DEFAULT]}
  assert "configure() ran after JAX created its backends" in stderr


def test_configure_adds_nothing_for_a_jaxlib_without_the_flag(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: (0, 13, 0))
  assert xla_cpu.configure() == () and "XLA_FLAGS" not in os.environ
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: None)
  assert xla_cpu.configure() == () and "XLA_FLAGS" not in os.environ
