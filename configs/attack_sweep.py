"""Attack sweep: checkpoints x attacks x eps on one split.

  python attack.py --config=configs/attack_sweep.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/sweep

Each entry of ``attacks`` names an attack of lib/attacks.py, or ``explanation`` for an
attack of lib/explanation_attacks.py (``method``, ``objective``, ``mode``...); the step size
is ``step_size_factor * eps``; an entry's own ``eps`` tuple restricts it to those eps.
Every cell also measures how much the explanation (``map_method`` for class attacks, the
attacked method for explanation attacks) changed.

``:quick`` is a small grid (FGSM, PGD-10 and a Grad-CAM ``keep`` attack at one eps) for
the demo, ``:cpu`` the class attacks used for the BUSI ResNet-18 models on 2 CPU cores,
``:autoattack`` robust accuracy under Square and AutoAttack (fast and standard; the
reports flag a Square much stronger than PGD as gradient masking; accuracy only, so the
iterative and gradient-free attacks use the eps cascade: each eps attacks only the images
the smaller eps left robust, and the report lists those cells), ``:explain`` the
explanation attacks of the breast-ultrasound study on them, ``:strength``
study 4's Grad-CAM ``keep`` attack (10 signed steps of eps/4) against 5x the steps, Adam
steps and restarts, on 32 test images (label-stratified; is the 10-step attack strong enough?):

  python attack.py --config=configs/attack_sweep.py:strength \
      --config.checkpoints=runs/study_robust_saliency_cpu/standard/seed1_fold0,runs/study_robust_saliency_cpu/pgd/seed1_fold0 \
      --workdir=results/robust_gradcam_cpu/attack_strength
"""

import ml_collections


def attack(name, **kw):
  return ml_collections.ConfigDict(dict(name=name, **kw))


def explanation(method="grad_cam", objective="dissimilarity", mode="keep", steps=30, **kw):
  """An explanation attack (lib/explanation_attacks.py) as an ``attacks`` entry."""
  kw.setdefault("step_size_factor", 0.1)
  return attack("explanation", method=method, objective=objective, mode=mode, steps=steps, **kw)


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.checkpoints = ""               # comma-separated train.py work directories
  c.which = "best"                 # best | latest checkpoint of each run
  c.split = "test"
  c.eps = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.031)
  # A tuple, so the command line can replace it:
  #   --config.attacks="({'name': 'fgsm'}, {'name': 'pgd', 'steps': 20})"
  c.attacks = (
      attack("noise"),
      attack("fgsm"),
      attack("bim", steps=10, step_size_factor=0.25),
      attack("pgd", steps=10, step_size_factor=0.25, restarts=1),
      attack("apgd", steps=50, loss="ce"),
  )
  c.batch_size = 32                # sharded over all devices; the last batch is padded
  c.num_devices = 0
  c.max_images = 0                 # 0: the whole split, else a label-stratified subset
  c.seed = 0
  c.figure_examples = 4            # images per example figure (0: none)
  c.figure_eps = 0.004
  c.map_metrics = True             # measure the change of the explanation in every cell
  c.map_method = "grad_cam"        # ... of this method, for class attacks
  c.top_k = 0.05                   # top-k intersection: k as a fraction of the pixels
  c.resume = True                  # skip (model, attack) pairs already in workdir/results.json
  # Accuracy-only cells (map_metrics off) of iterative and gradient-free attacks: each eps
  # attacks only the images still robust at the smaller one (lib.sweep.run_attack_grid).
  c.eps_cascade = True
  if variant == "quick":
    c.eps = (0.0, 0.002, 0.004, 0.008)
    c.attacks = (attack("fgsm"), attack("pgd", steps=10, step_size_factor=0.25),
                 explanation("grad_cam", mode="keep", steps=10, step_size_factor=0.25,
                             eps=(0.008,)))
  elif variant == "cpu":  # the BUSI ResNet-18 models on 2 CPU cores (~15 min per model)
    c.eps = (0.0, 0.001, 0.002, 0.004, 0.008)
    c.attacks = (attack("noise"), attack("fgsm"), attack("pgd", steps=10, step_size_factor=0.25),
                 attack("apgd", steps=20, loss="ce"))
  elif variant == "autoattack":   # robust accuracy against the worst case (lib/autoattack.py)
    c.eps = (0.0, 0.001, 0.002, 0.004, 0.008)
    c.attacks = (attack("noise"), attack("fgsm"), attack("pgd", steps=10, step_size_factor=0.25),
                 attack("square", queries=1000), attack("autoattack", version="fast"),
                 attack("autoattack", version="standard"))
    c.figure_examples, c.map_metrics = 0, False   # accuracy only: the eps cascade applies
  elif variant == "explain":  # the breast-ultrasound study's attacks on the BUSI ResNet-18s
    c.eps = (0.002, 0.004, 0.008)
    c.attacks = (
        attack("pgd", steps=10, step_size_factor=0.25),
        explanation("grad_cam", mode="keep"),
        explanation("grad_cam", mode="flip"),
        explanation("grad_cam", "top_k", eps=(0.004,)),
        explanation("grad_cam", "center_of_mass", eps=(0.004,)),
        explanation("grad_cam", "targeted", eps=(0.004,)),
        explanation("gradient", mode="keep", surrogate=True, beta=10.0, eps=(0.004,)),
    )
    c.figure_eps = 0.004
  elif variant == "strength":
    c.eps = (0.008, 0.031)
    c.max_images, c.figure_examples = 32, 0
    c.attacks = (
        explanation("grad_cam", mode="keep", steps=10, step_size_factor=0.25),   # study 4's
        explanation("grad_cam", mode="keep", steps=50),
        explanation("grad_cam", mode="keep", steps=50, step_size_factor=0.25, step_rule="adam",
                    step_schedule="cosine"),
        explanation("grad_cam", mode="keep", steps=50, restarts=3),
    )
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':quick', ':cpu', ':autoattack', "
                     "':explain', ':strength' or nothing.")
  return c
