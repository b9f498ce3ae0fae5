"""Per-image records of a study: one row per held-out image of a run (``id``, ``group``,
``label``, ``prob``, ``correct`` and every measured ``<attack>@<eps>:<field>`` and
``<method>:<quality>`` column), as ``per_image.csv`` in a run's evaluation dir and, per
model and repetition, as the committed ``per_image_<model>_seed<s>.csv`` of the results
dir (with each image's ``fold``).

Columns ``id`` and ``group`` are lists of strings, every other column a float64 array.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from lib import files


def write_records(rec: dict, path: str) -> None:
  """Writes ``rec`` as CSV atomically (:func:`lib.files.atomic_write`): a half-written file
  never looks finished."""
  keys = list(rec)
  buffer = io.StringIO(newline="")
  w = csv.writer(buffer)
  w.writerow(keys)
  for i in range(len(rec["id"])):
    w.writerow([rec[k][i] if isinstance(rec[k], list) else repr(float(rec[k][i])) for k in keys])
  files.atomic_write(path, buffer.getvalue())


def read_records(path: str) -> dict:
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  out = {"id": [r["id"] for r in rows], "group": [r["group"] for r in rows]}
  for k in rows[0] if rows else ():
    if k not in out:
      out[k] = np.array([float(r[k]) for r in rows])
  return out


def committed_records(study, results_dir: str) -> dict:
  """``{(model, seed, fold): records}`` of the runs an earlier summary committed
  (``per_image_<model>_seed<s>.csv``: every evaluated fold), split back into their folds.

  The work dir (checkpoints, per-run records) is large and need not outlive the machine;
  the results directory is the durable record. A run summarised once is therefore never
  lost, even when its repetition is not finished (one may take several sessions): a later
  summary (e.g. after the second seed ran elsewhere) takes these records for every run
  whose work dir is gone, and :func:`lib.study.run_study` neither retrains nor re-evaluates
  those runs (delete the file to redo a repetition, e.g. after adding an attack to the
  config). Files written before the ``fold`` column existed get their folds from
  :func:`lib.data.cv_assignment`, a pure function of the groups, labels and seed."""
  out = {}
  for m in study.models:
    for seed in study.seeds:
      path = os.path.join(results_dir, f"per_image_{m.name}_seed{seed}.csv")
      if not os.path.exists(path):
        continue
      rec = read_records(path)
      fold = rec.pop("fold", None)
      if fold is None:
        from lib import data   # imports JAX: only for files without a fold column
        fold = data.cv_assignment(rec["group"], rec["label"].astype(np.int64), study.folds, seed)
      fold = np.asarray(fold, np.int64)
      for f in range(study.folds):
        idx = np.flatnonzero(fold == f)
        if not len(idx):
          continue     # not evaluated when that summary was written
        out[m.name, seed, f] = _take(rec, idx)
  return out


def out_of_fold(recs: dict, names: list[str], seeds, folds: int) -> dict:
  """Per model in ``names``, one record set per repetition in ``seeds`` (all of whose runs
  are in ``recs``, ``{(model, seed, fold): records}``): its ``folds`` test folds pooled, rows
  in the sorted order of the first model's image ids, so that the models' records are
  paired image by image."""
  pooled = {}
  for n in names:
    pooled[n] = []
    for s in seeds:
      order = sorted(sum((recs[names[0], s, f]["id"] for f in range(folds)), []))
      pooled[n].append(_aligned([recs[n, s, f] for f in range(folds)], order))
  return pooled


def with_folds(records: list[dict], folds: list[int]) -> dict:
  """The records of several folds in one, sorted by image id, with a ``fold`` column."""
  rec = _concat([dict(r, fold=np.full(len(r["id"]), f, np.float64))
                 for r, f in zip(records, folds)])
  return _take(rec, np.argsort(np.asarray(rec["id"]), kind="stable"))


def _concat(records: list[dict]) -> dict:
  """Per-image records (columns: lists of strings or arrays) one after the other."""
  return {k: (sum((r[k] for r in records), []) if isinstance(records[0][k], list)
              else np.concatenate([r[k] for r in records])) for k in records[0]}


def _take(rec: dict, idx) -> dict:
  """The rows ``idx`` of per-image records, in that order."""
  return {k: ([v[i] for i in idx] if isinstance(v, list) else v[np.asarray(idx, np.int64)])
          for k, v in rec.items()}


def _aligned(records: list[dict], order: list[str]) -> dict:
  """One repetition's out-of-fold records (its k test folds), rows in ``order`` of ids."""
  pooled = _concat(records)
  pos = {i: n for n, i in enumerate(pooled["id"])}
  return _take(pooled, [pos[i] for i in order])
