"""Atomic writes, tolerant logs, named JSON errors and the work-dir lock (issue 27, case 9)."""

import errno
import json
import os
import subprocess
import sys

import pytest

from lib import files, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_write_leaves_the_earlier_copy_and_a_short_message(tmp_path, monkeypatch):
  path = str(tmp_path / "results.json")
  files.atomic_json(path, {"cells": [1, 2, 3]})
  real_open = open

  def full_disk_open(name, mode="r", *args, **kwargs):
    f = real_open(name, mode, *args, **kwargs)
    if ".tmp-" in str(name) and "w" in mode:
      def write(_):
        raise OSError(errno.ENOSPC, "No space left on device")
      f.write = write
    return f
  monkeypatch.setattr("builtins.open", full_disk_open)
  with pytest.raises(files.DiskFullError, match=r"No space left .*results.json \(its earlier copy.*intact"):
    files.atomic_json(path, {"cells": [4]})
  monkeypatch.undo()
  assert files.read_json(path) == {"cells": [1, 2, 3]}
  assert os.listdir(tmp_path) == ["results.json"]          # no temporary file left


def test_a_corrupt_json_file_is_named(tmp_path):
  path = tmp_path / "results.json"
  path.write_text('{"cells": [1, 2')
  with pytest.raises(ValueError, match=r"results.json is not valid JSON"):
    files.read_json(str(path))


def test_a_torn_last_line_of_a_log_is_skipped_and_repaired(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with open(path, "w") as f:
    f.write(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n" + '{"step": 3, "lo')
  assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}]
  writer = report.MetricWriter(str(tmp_path))    # repairs before appending
  writer.write(3, {"loss": 0.5})
  writer.close()
  assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}, {"step": 3, "loss": 0.5}]
  with open(path, "a") as f:
    f.write("garbage\n" + json.dumps({"step": 4}) + "\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 4"):
    files.read_jsonl(path)


def test_a_second_process_on_a_locked_work_dir_stops_naming_the_first(tmp_path):
  workdir = str(tmp_path / "run")
  with files.WorkdirLock(workdir, "train.py --workdir=run"):
    with files.WorkdirLock(workdir):                    # re-entrant in one process
      pass
    code = ("import sys; sys.path.insert(0, %r); from lib import files\n"
            "with files.WorkdirLock(%r): pass") % (ROOT, workdir)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "is in use by pid %d" % os.getpid() in out.stderr
    assert "train.py --workdir=run" in out.stderr
  subprocess.run([sys.executable, "-c", code], check=True)   # released: the next one runs


def test_a_full_disk_ends_an_entry_point_with_one_short_message(tmp_path):
  """Case 12: ENOSPC used to be buried under 1,400 lines of asyncio errors."""
  script = tmp_path / "job.py"
  script.write_text(
      "import sys; sys.path.insert(0, %r)\n"
      "from lib import cli, files\n"
      "def job(config, workdir):\n"
      "  files.atomic_write(workdir + '/x', 'y')\n"
      "  raise files.DiskFullError(28, 'No space left on the device while writing ' + workdir)\n"
      "cli.run(job, %r)\n" % (ROOT, os.path.join(ROOT, "configs", "default.py")))
  out = subprocess.run([sys.executable, str(script), f"--workdir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 28
  assert f"ERROR: No space left on the device while writing {tmp_path}" in out.stderr
  assert "Traceback" not in out.stderr
