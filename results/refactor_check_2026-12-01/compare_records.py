import sys, numpy as np
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", ".."))
from lib.study import records
a = records.read_records(sys.argv[1]); b = records.read_records(sys.argv[2])
assert a["id"] == b["id"], "ids differ"
cols = [k for k in a if k not in ("id", "group")]
print(len(a["id"]), "images,", len(cols), "columns; missing in b:", sorted(set(cols) - set(b)), "extra in b:", sorted(set(b) - set(a)))
worst = sorted(((float(np.nanmax(np.abs(a[k] - b[k]))) if len(a[k]) else 0.0, k) for k in cols if k in b), reverse=True)
print("identical columns:", sum(w == 0 for w, _ in worst), "of", len(worst))
print("largest differences:", worst[:6])
