"""Study 1, supplement: the top-k, centre-of-mass and targeted Grad-CAM attacks across eps.

  python study.py --config=configs/studies/busi_gradcam_map_attacks.py:cpu --workdir=runs/study_busi_gradcam_map_attacks_cpu

Study 1 (``busi_gradcam.py``) runs these three objectives at eps 0.008 only, for CPU time;
this runs them at each of its eps (0.004, 0.008, 8/255) on study 1's own trained models
(``runs_dir``: nothing is retrained; its records stay separate). At CPU scale it uses the
repetition whose runs are on the machine, seed 1 (seed 0's work dirs were deleted after its
records were committed), so its model comparisons rest on 5 runs per model and are not the
two-seed comparisons of the study itself: it reports how far each objective moves the map,
not a claim.
"""

from configs.studies import busi_gradcam, common

OBJECTIVES = ("top_k", "center_of_mass", "targeted")
FIELDS = (("median", "spearman"), ("mean", "top_k_intersection"), ("mean", "com_shift_px"),
          ("mean", "kept"), ("mean", "lesion_energy_adv"))


def get_config(variant: str = "cpu"):
  c = busi_gradcam.get_config(variant)
  c.name = "busi_gradcam_map_attacks"
  c.results_dir = f"results/busi_gradcam_map_attacks_{variant}"
  c.runs_dir = f"runs/study_busi_gradcam_{variant}"
  c.command = (f"python study.py --config=configs/studies/busi_gradcam_map_attacks.py:{variant} "
               f"--workdir=runs/study_busi_gradcam_map_attacks_{variant}")
  c.title = "Breast ultrasound (BUSI): top-k, centre-of-mass and targeted Grad-CAM attacks across eps"
  c.claim = ("(Supplement to study 1, no claim.) How far the top-k, centre-of-mass and "
             "targeted Grad-CAM attacks move the map at each eps.")
  steps = 3 if variant == "test" else busi_gradcam.STEPS
  c.eps = (0.004, 0.008) if variant == "test" else busi_gradcam.EPS
  c.attacks = tuple(busi_gradcam.gradcam_attack("grad_cam", o, steps=steps) for o in OBJECTIVES)
  c.methods = ()
  c.metrics = common.CLASSIFICATION + tuple(
      f"{how}:grad_cam-{o}-{steps}@{e:g}:{field}"
      for o in OBJECTIVES for e in c.eps for how, field in FIELDS)
  c.claims = ()
  c.curves = tuple(field for _, field in FIELDS)
  if variant == "cpu":
    c.seeds = (1,)
  return c
