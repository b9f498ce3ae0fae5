"""Study 2 under the worst case: does the advantage of iterative adversarial training over
standard training survive AutoAttack?

  python study.py --config=configs/studies/oncology_autoattack.py:busi_cpu --workdir=runs/study_oncology_autoattack_busi_cpu

The models, folds and seeds are study 2's (``oncology_robustness.py``) and so are the runs:
``runs_dir`` is study 2's work dir, so runs already trained there are evaluated, not
retrained, and runs trained here serve study 2 too. Each held-out fold is attacked with
PGD-10 (study 2's attack, for reference) and AutoAttack (``lib/autoattack.py``) at eps
0.004 (study 2's headline eps) and 0.008, with the eps cascade (an image broken at 0.004
counts as broken at 0.008; only the survivors are attacked again). The claims were written
before the runs.

At CPU scale AutoAttack is the ``fast`` version (APGD-CE 50 steps + Square 1000 queries):
the standard version's Square spends 5000 forward passes on every robust image, hours per
fold on 2 cores. ``full`` (GPU) runs the standard version.
"""

from configs.studies import common, oncology_robustness
from configs.studies.common import attack, claim

EPS = (0.004, 0.008)


def get_config(variant: str = "busi_cpu"):
  c = oncology_robustness.get_config(variant)
  dataset, _, scale = variant.rpartition("_")
  c.name = "oncology_autoattack"
  c.title = f"Oncology robustness ({dataset}) under AutoAttack: naive vs iterative adversarial training"
  c.command = (f"python study.py --config=configs/studies/oncology_autoattack.py:{variant} "
               f"--workdir=runs/study_oncology_autoattack_{variant}")
  c.claim = ("Study 2's claim (iterative adversarial training lifts accuracy under attack) "
             "holds under AutoAttack, the worst case of APGD-CE, APGD-T and Square, not only "
             "under FGSM, BIM and PGD.")
  c.results_dir = f"results/oncology_autoattack_{variant}"
  c.runs_dir = f"runs/study_oncology_robustness_{variant}"
  version = "standard" if scale == "full" else "fast"
  steps = 3 if scale == "test" else 10
  c.attacks = (attack("pgd", steps=steps, step_size_factor=0.25),
               attack("autoattack", version=version))
  c.eps, c.eps_cascade, c.map_metrics = EPS, True, False
  names = (f"pgd-{steps}", f"autoattack-{version}")
  c.metrics = common.CLASSIFICATION + tuple(
      f"mean:{a}@{e:g}:adv_correct" for a in names for e in EPS)
  c.claims = tuple(
      claim(f"adversarial training raises accuracy under AutoAttack ({version}) at eps {e:g}",
            f"mean:autoattack-{version}@{e:g}:adv_correct", "iterative", "standard")
      for e in EPS)
  if scale == "test":
    c.runs_dir = ""
  return c
