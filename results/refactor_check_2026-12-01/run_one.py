"""Train + evaluate one run of the committed busi_gradcam:cpu study (plain, seed 1, fold 3)
with the code of the current directory; writes per_image.csv into OUT."""
import os, sys, time, json
sys.path.insert(0, os.getcwd())
try:
  from lib import xla_cpu
  xla_cpu.configure()
except ImportError:  # the old tree: import lib sets the flag
  import lib
from lib import study
work, out, train = sys.argv[1], sys.argv[2], sys.argv[3] == "train"
s = study.load_train_config("configs/studies/busi_gradcam.py:cpu")
m = [m for m in s.models if m.name == "plain"][0]
t0 = time.time()
if train:
  rd = study.train_run(s, m, 1, 3, work)
else:
  rd = study.run_dir(s, work, "plain", 1, 3)
print("train", time.time() - t0, flush=True)
os.makedirs(out, exist_ok=True)
t0 = time.time()
study.evaluate_run(s, rd, out_dir=out, model_name="plain")
print("eval", time.time() - t0, flush=True)
