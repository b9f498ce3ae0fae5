"""Attack sweep: checkpoints x attacks x eps on one split.

  python attack.py --config=configs/attack_sweep.py \
      --config.checkpoints=runs/busi_mtl_cpu,runs/busi_baseline_cpu --workdir=runs/sweep

Each entry of ``attacks`` names an attack of lib/attacks.py; the step size is
``step_size_factor * eps``. ``:quick`` is a small grid (FGSM and PGD-10) for the demo,
``:cpu`` the grid used for the BUSI ResNet-18 models on 2 CPU cores.
"""

import ml_collections


def attack(name, **kw):
  return ml_collections.ConfigDict(dict(name=name, **kw))


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
  c.max_images = 0                 # 0: the whole split
  c.seed = 0
  c.figure_examples = 4            # images per example figure (0: none)
  c.figure_eps = 0.004
  if variant == "quick":
    c.eps = (0.0, 0.002, 0.004, 0.008)
    c.attacks = (attack("fgsm"), attack("pgd", steps=10, step_size_factor=0.25))
  elif variant == "cpu":  # the BUSI ResNet-18 models on 2 CPU cores (~15 min per model)
    c.eps = (0.0, 0.001, 0.002, 0.004, 0.008)
    c.attacks = (attack("noise"), attack("fgsm"), attack("pgd", steps=10, step_size_factor=0.25),
                 attack("apgd", steps=20, loss="ce"))
  elif variant:
    raise ValueError(f"Unknown variant {variant!r}; use ':quick', ':cpu' or nothing.")
  return c
