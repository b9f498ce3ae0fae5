"""torchvision ResNet weights into the Flax ResNet (lib/torch_weights.py)."""


import jax
import numpy as np
import pytest

from configs import default
from lib import checkpoint, experiment, models, torch_weights


def _randomised(variables, seed=0):
  """Every leaf random (BatchNorm variances positive), so nothing passes by default."""
  rng = np.random.default_rng(seed)
  def fill(path, x):
    x = np.asarray(x)
    if jax.tree_util.keystr(path).endswith("['var']"):
      return rng.uniform(0.5, 2.0, x.shape).astype(x.dtype)
    return (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
  return jax.tree_util.tree_map_with_path(fill, jax.device_get(variables))


def _model(name="resnet_tiny", **kw):
  return models.ARCHITECTURES[name](**kw)


def _images(n=2, size=32, channels=3, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (n, size, size, channels)).astype(np.float32)


@pytest.mark.parametrize("arch", ["resnet_tiny", "resnet_tiny_bottleneck"])
def test_safetensors_round_trip_restores_every_tensor_and_the_logits(arch, tmp_path):
  model = _model(arch, in_channels=3, seg_head=True)
  ours = _randomised(models.init_variables(model, 0, 32), seed=0)
  path = str(tmp_path / "w.safetensors")
  torch_weights.write_safetensors(path, torch_weights.to_torchvision(ours))
  sd = torch_weights.read_safetensors(path)
  assert "layer1.0.conv1.weight" in sd and sd["conv1.weight"].shape[:2] == (8, 3)  # O, I, kh, kw
  other = _randomised(models.init_variables(model, 1, 32), seed=1)
  loaded, report = torch_weights.load_torchvision(path, other)
  for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(loaded),
                       jax.tree_util.tree_leaves(ours)):
    if "decoder" in jax.tree_util.keystr(p):
      continue
    np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))
  assert any("decoder" in r for r in report)
  x = _images()
  np.testing.assert_allclose(model.apply(loaded, x, method=models.ResNet.logits),
                             model.apply(ours, x, method=models.ResNet.logits), atol=1e-6)


def test_grayscale_model_sums_the_rgb_stem_and_matches_repeated_gray_input():
  rgb_model, gray_model = _model(in_channels=3), _model(in_channels=1)
  rgb = _randomised(models.init_variables(rgb_model, 0, 32))
  gray, report = torch_weights.from_torchvision(
      torch_weights.to_torchvision(rgb), models.init_variables(gray_model, 1, 32))
  assert any("summed" in r for r in report)
  np.testing.assert_allclose(gray["params"]["stem_conv"]["kernel"],
                             rgb["params"]["stem_conv"]["kernel"].sum(2, keepdims=True), rtol=1e-6)
  g = _images(channels=1)
  np.testing.assert_allclose(gray_model.apply(gray, g, method=models.ResNet.logits),
                             rgb_model.apply(rgb, np.repeat(g, 3, -1), method=models.ResNet.logits),
                             atol=1e-5)


def test_another_number_of_classes_keeps_the_initialised_head():
  sd = torch_weights.to_torchvision(_randomised(models.init_variables(
      _model(num_classes=1000), 0, 32)))
  mine = models.init_variables(_model(num_classes=2), 1, 32)
  loaded, report = torch_weights.from_torchvision(sd, mine)
  np.testing.assert_array_equal(loaded["params"]["fc"]["kernel"], mine["params"]["fc"]["kernel"])
  np.testing.assert_array_equal(loaded["params"]["stage4"]["block0"]["conv2"]["kernel"],
                                sd["layer4.0.conv2.weight"].transpose(2, 3, 1, 0))
  assert any(r.startswith("fc.weight: kept") for r in report)


def test_state_dict_of_another_architecture_is_refused_with_its_name():
  sd = torch_weights.to_torchvision(models.init_variables(_model("resnet_tiny_bottleneck"), 0, 32))
  assert torch_weights.looks_like(sd) == "resnet_tiny_bottleneck"
  with pytest.raises(checkpoint.CheckpointMismatchError, match="resnet_tiny_bottleneck"):
    torch_weights.from_torchvision(sd, models.init_variables(_model("resnet_tiny"), 0, 32))


def test_train_config_starts_from_a_torchvision_file(tmp_path):
  c = default.get_config("test")
  c.num_devices = 1
  model = experiment.build_model(c)
  donor = _randomised(models.init_variables(model, 3, c.image_size))
  path = str(tmp_path / "imagenet.safetensors")
  torch_weights.write_safetensors(path, torch_weights.to_torchvision(donor))
  c.init_from_torch = path
  state = experiment.init_state(c, model, steps_per_epoch=1)
  np.testing.assert_array_equal(state.params["stage2"]["block0"]["conv1"]["kernel"],
                                donor["params"]["stage2"]["block0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["stem_bn"]["var"],
                                donor["batch_stats"]["stem_bn"]["var"])
  c.init_from = str(tmp_path)
  with pytest.raises(ValueError, match="not both"):
    experiment.init_state(c, model, steps_per_epoch=1)


def test_corrupt_or_missing_file_says_which(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.safetensors"):
    torch_weights.read_state_dict(str(tmp_path / "nope.safetensors"))
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
  with pytest.raises(ValueError, match="bad.safetensors"):
    torch_weights.read_state_dict(str(bad))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_model_gives_the_same_logits(arch, tmp_path):
  torch = pytest.importorskip("torch", reason="torch is not installed (bench/setup_peers.sh "
                              "makes an environment with it)")
  tv = pytest.importorskip("torchvision", reason="torchvision is not installed")
  torch.manual_seed(0)
  net = getattr(tv.models, arch)(num_classes=3)
  with torch.no_grad():               # non-trivial BatchNorm statistics and affine parameters
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  net.eval()
  path = str(tmp_path / "net.pth")
  torch.save(net.state_dict(), path)
  mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  model = _model(arch, in_channels=3, num_classes=3, mean=mean, std=std)
  variables, _ = torch_weights.load_torchvision(path, models.init_variables(model, 0, 64))
  x = _images(n=4, size=64)
  with torch.no_grad():
    xt = (torch.from_numpy(x).permute(0, 3, 1, 2) - torch.tensor(mean)[:, None, None]) / \
        torch.tensor(std)[:, None, None]
    expected = net(xt).numpy()
  got = np.asarray(model.apply(variables, x, method=models.ResNet.logits))
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_safetensors_reader_and_writer_agree_with_the_safetensors_package(tmp_path):
  """Issue 26: our reader was tested only against our writer. Both directions against the
  reference implementation (the `safetensors` package), every dtype we map, odd shapes."""
  import ml_dtypes
  st = pytest.importorskip("safetensors.numpy", reason="the safetensors package (test extra)")
  rng = np.random.default_rng(0)
  tensors = {"f32": rng.normal(size=(3, 5)).astype(np.float32),
             "f16": rng.normal(size=(7,)).astype(np.float16),
             "bf16": rng.normal(size=(2, 2, 3)).astype(ml_dtypes.bfloat16),
             "f64": rng.normal(size=(1,)), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
             "i32": np.array([-1, 2], np.int32), "u8": np.arange(5, dtype=np.uint8),
             "scalar": np.array(3.5, np.float32), "empty": np.zeros((0, 4), np.float32)}
  theirs = str(tmp_path / "theirs.safetensors")
  st.save_file(tensors, theirs)
  got = torch_weights.read_safetensors(theirs)
  assert set(got) == set(tensors)
  for k, v in tensors.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
  mine = str(tmp_path / "mine.safetensors")
  torch_weights.write_safetensors(mine, tensors)
  back = st.load_file(mine)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
    np.testing.assert_array_equal(back[k], v, err_msg=k)
