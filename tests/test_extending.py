"""docs/EXTENDING.md's worked examples, through the public registration path only: a toy
data set (a TFDS builder in this file), a toy attack and a toy explanation method; a
model trains on the data set and an attack sweep runs the new attack by name."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import attack_sweep, default
from lib import attacks, data, saliency, sweep, trainer

SIZE = 32


# ----------------------------------------------------------------------------- a data set


class ToyStripes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Horizontal (0) or vertical (1) stripes of random phase and contrast on noise."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
        "mask": tfds.features.Image(shape=(SIZE, SIZE, 1)),
        "label": tfds.features.ClassLabel(names=["horizontal", "vertical"]),
        "id": tfds.features.Text(), "group": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s, n) for s, n in (("train", 96), ("val", 32), ("test", 32))}

  def _generate_examples(self, split, n):
    rng = np.random.default_rng(("train", "val", "test").index(split))
    t = np.arange(SIZE)
    for i in range(n):
      label = i % 2
      wave = 0.5 + rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * t / 8 + rng.uniform(0, 6.3))
      image = np.broadcast_to(wave[:, None] if label == 0 else wave[None, :], (SIZE, SIZE))
      image = image + rng.normal(0, 0.05, (SIZE, SIZE))
      key = f"{split}_{i:03d}"
      yield key, {"image": Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)),
                  "mask": Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)), "label": label,
                  "id": key, "group": key}     # PIL images: TFDS encodes them without TF


# ----------------------------------------------------------------------------- an attack


def toy_attack(model, x, y, *, eps, steps: int, key=None, step_size_factor: float = 0.5):
  """Signed gradient ascent on the margin loss with a cosine step schedule from a random
  start, each example's best iterate (a successful one first)."""
  return attacks.projected_gradient(
      attacks.class_objective(attacks.logits_of(model), y, "margin"), x, eps=eps, steps=steps,
      step=attacks.Step("sign", step_size_factor * eps, "cosine"),
      start=attacks.Start(random=True), key=jax.random.PRNGKey(0) if key is None else key)


# ----------------------------------------------------------------------------- a method


def brightness_map(fns, x, target):
  """A map that ignores the model (a sanity-check baseline): the image itself."""
  del fns, target
  return x.mean(-1)


@pytest.fixture
def registered():
  data.register_dataset("toy_stripes", class_names={"binary": ("horizontal", "vertical")},
                        has_masks=False)(ToyStripes)
  attacks.register_attack("toy", label=("{steps}",))(toy_attack)
  saliency.register_method("brightness")(brightness_map)
  yield
  data.DATASETS.unregister("toy_stripes")
  attacks.ATTACKS.unregister("toy")
  saliency.METHODS.unregister("brightness")


def test_a_new_data_set_attack_and_method_run_by_name(registered, tmp_path):
  with pytest.raises(ValueError, match="already registered"):
    attacks.register_attack("toy")(toy_attack)

  c = default.get_config("test")
  c.data.name, c.model.seg_head, c.model.cam_layer = "toy_stripes", False, "last"
  c.num_devices, c.num_epochs, c.learning_rate = 1, 3, 1e-2
  metrics = trainer.train_and_evaluate(c, str(tmp_path / "run"))
  assert metrics["accuracy"] > 0.6            # stripes are easy

  s = attack_sweep.get_config()
  s.checkpoints, s.num_devices, s.batch_size = str(tmp_path / "run"), 1, 16
  s.eps, s.figure_examples, s.map_method = (0.0, 0.05), 0, "brightness"
  s.attacks = (attack_sweep.attack("toy", steps=3), attack_sweep.attack("fgsm"),
               attack_sweep.attack("noise"))
  rows = sweep.run_sweep(s, str(tmp_path / "sweep"))
  toy = {r["eps"]: r for r in rows if r["attack"] == "toy-3"}
  assert set(toy) == {0.0, 0.05} and toy[0.05]["family"] == "iterative"
  assert toy[0.0]["accuracy"] == toy[0.0]["clean_accuracy"]
  assert 0 < toy[0.05]["linf_max"] <= 0.05 + 1e-6
  assert toy[0.05]["accuracy"] < toy[0.05]["clean_accuracy"]
  assert toy[0.05]["map_method"] == "brightness"
  with open(tmp_path / "sweep" / "results.json") as f:
    cell = next(r for r in json.load(f)["cells"] if r["attack"] == "toy-3")
  assert json.loads(cell["spec"]) == {"name": "toy", "steps": 3, "step_size_factor": 0.5}

  x = jnp.ones((2, 8, 8, 1)) * 0.5
  np.testing.assert_allclose(saliency.explain("brightness", None, x), 0.5)


def test_the_worked_examples_of_extending_md_run(tmp_path):
  """Every python block of docs/EXTENDING.md, in order, in one scope; then what each
  registered is used by name."""
  import os
  import re
  import types
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "docs", "EXTENDING.md")) as f:
    blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
  w = jax.random.normal(jax.random.PRNGKey(0), (8 * 8, 2))
  scope = {"my_logits_fn": lambda x: x.reshape(x.shape[0], -1) @ w,
           "x": jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1)),
           "y": jnp.asarray([0, 1, 0, 1])}
  try:
    for block in blocks:
      exec(block, scope)        # pylint: disable=exec-used
    x, y, fns = scope["x"], scope["y"], types.SimpleNamespace(logits_fn=scope["my_logits_fn"])
    assert sweep.attack_label({"name": "toy", "steps": 20}) == "toy-20"
    x_adv = attacks.ATTACKS["toy"](fns, x, y, params={"steps": 5}, eps=0.1)
    assert float(jnp.abs(x_adv - x).max()) <= 0.1 + 1e-6
    assert saliency.explain("gradient_squared", fns, x).shape == (4, 8, 8)
    assert sweep.attack_label({"name": "explanation", "objective": "peak_shift",
                               "method": "grad_cam", "steps": 30}) == "grad_cam-peak_shift-30"
    os.makedirs(tmp_path / "images")
    for i in range(2):
      Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "images" / f"{i}.png")
    with open(tmp_path / "manifest.csv", "w") as f:
      f.write("id,label,image,split,group\n0,benign,images/0.png,train,a\n"
              "1,malignant,images/1.png,test,b\n")
    rows = data.DATASETS["my_ct"].builder.list_examples(str(tmp_path))
    assert [r["image"] for r in rows] == [f"{tmp_path}/images/0.png", f"{tmp_path}/images/1.png"]
    assert data.default_manual_dir("my_ct").endswith(os.path.join("data", "my_ct"))
    assert scope["maps"].shape == x.shape and scope["x_adv"].shape == x.shape
  finally:
    attacks.ATTACKS.unregister("toy")
    saliency.METHODS.unregister("gradient_squared")
    from lib import explanation_attacks
    explanation_attacks.OBJECTIVES.unregister("peak_shift")
    data.DATASETS.unregister("my_ct")
