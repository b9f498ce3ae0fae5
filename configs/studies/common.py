"""Shared shape of the study configs (``study.py``; lib/study/ explains the statistics).

A study is models x ``seeds`` x ``folds`` training runs (group-aware stratified k-fold over
all labelled images), evaluated image by image on their held-out folds.
"""

import ml_collections

from configs import attack_sweep

# What is reported for every model of every study: the classifier itself.
CLASSIFICATION = ("auc", "sensitivity", "specificity", "accuracy", "balanced_accuracy")


def model(name: str, config: str, *overrides) -> ml_collections.ConfigDict:
  """A model of the study: a train.py config (``"configs/busi_mtl.py:cpu"``) and
  ``(dotted field, value)`` overrides; a value ``"{run:OTHER}"`` is the run dir of model
  OTHER on the same seed and fold (e.g. ``("init_from", "{run:pgd}")``)."""
  return ml_collections.ConfigDict(dict(name=name, config=config, overrides=tuple(overrides)))


def model_variant(scale: str) -> str:
  """The variant of the train.py configs for a study scale: their ``cpu`` for ``cpu`` and
  ``test`` (the test scale shrinks it further), their default for ``full``."""
  return "cpu" if scale in ("cpu", "test") else ""


def claim(text: str, metric: str, a: str, b, direction: str = "greater"):
  """A claim of the study about ``metric``: ``a - b`` > 0 (``direction="greater"``) or < 0
  for two models ``a``, ``b``; or model ``a`` above / below the number ``b``."""
  return ml_collections.ConfigDict(dict(text=text, metric=metric, a=a, b=b, direction=direction))


def base(name: str, variant: str, title: str, claim_text: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = name
  c.title = title
  c.claim = claim_text
  c.command = f"python study.py --config=configs/studies/{name}.py:{variant} --workdir=runs/study_{name}_{variant}"
  c.results_dir = f"results/{name}_{variant}"
  c.runs_dir = ""                  # '' -> --workdir; another study's work dir shares its runs
  c.stages = ("train", "evaluate", "summarise")
  c.folds = 5
  c.seeds = (0, 1)                 # repetitions: fold assignment and training seed
  c.models = ()
  c.overrides = ()                 # (field, value) pairs applied to every model
  c.attacks = ()                   # entries as in attack.py, measured on every held-out fold
  c.eps = (0.004,)
  c.map_metrics = True             # for every attack, how much the map_method map changed
  c.eps_cascade = False            # accuracy-only attacks: each eps only on the survivors of the
                                   # smaller one (lib.sweep.run_attack_grid)
  c.map_method = "grad_cam"
  c.top_k = 0.05
  c.methods = ()                   # saliency methods whose map quality is measured
  c.smoothgrad_samples = 8
  c.batch_size = 32
  c.num_devices = 0                # devices of every run and evaluation (0: all)
  c.metrics = CLASSIFICATION
  c.comparisons = ()               # (a, b): paired a - b for every metric
  c.claims = ()
  c.n_boot = 1000
  c.curves = ("adv_correct",)      # per-image fields plotted against eps (<field>_vs_eps.png)
  c.figure_eps = 0.004
  c.figure_images = 4
  c.figure_seed = -1               # stage 'figures' redraws them from this repetition (-1: last)
  return c


# ResNet-18 train step, batch 32, 2 shared CPU cores (bench/train_step_sizes.py, output in
# bench/train_step_sizes.txt): 128 px 9.3 s, 96 px 2.8 s; an earlier run 4.8 s vs 1.7 s.
# 96 px is 2.8-3.4x faster per image (more than its 1.8x fewer pixels), which is what lets
# 5 folds x 2 seeds of a study train on this machine in a session or two. Both figures
# predate the canonical-layout convolution gradients (bench/RESULTS.md), which made the
# train step several times faster; the study keeps 96 px so its runs stay comparable.
CPU_IMAGE_SIZE = 96


def scale(c, variant: str, *, cpu_epochs: int = 15):
  """``cpu``: ResNet-18 at 96 px for 2 CPU cores (validation AUC of the 128 px BUSI runs
  levelled off by epoch 13, hence 15 epochs); ``full``: each model config's own scale
  (ResNet-50, 224 px, bf16, 40 epochs) for a GPU; ``test``: a tiny ResNet on 80 synthetic
  lesions at 32 px, 2 folds, one seed, for the tests."""
  if variant == "cpu":
    c.overrides += (("num_epochs", cpu_epochs), ("image_size", CPU_IMAGE_SIZE))
  elif variant == "test":
    c.folds, c.seeds, c.n_boot, c.batch_size, c.num_devices = 2, (0,), 50, 16, 1
    c.overrides += (("model.name", "resnet_tiny"), ("model.width", 8), ("image_size", 32),
                    ("num_epochs", 2), ("batch_size", 16), ("eval_batch_size", 32),
                    ("async_checkpointing", False), ("data.name", "synthetic_lesions"),
                    ("data.synthetic_size", 32), ("data.num_train", 48), ("data.num_val", 16),
                    ("data.num_test", 16), ("model.decoder_channels", 8), ("log_every_steps", 100))
  elif variant != "full":
    raise ValueError(f"Unknown variant {variant!r}: cpu, full or test.")
  return c


def attack(name, **kw):
  return attack_sweep.attack(name, **kw)


explanation = attack_sweep.explanation
