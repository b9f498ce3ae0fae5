"""ResNet classifiers with an optional lesion-segmentation head (multi-task learning).

He et al. 2016, "Deep Residual Learning for Image Recognition": ResNet-18/34 use
basic blocks, ResNet-50/101 bottleneck blocks (stride on the 3x3 convolution, the
torchvision "v1.5" layout, so torchvision weights map one to one).

The multi-task variant of the breast-ultrasound study adds a small FPN-style decoder
over the encoder stages that predicts the lesion mask at input resolution.

Contracts (docs/DESIGN.md):
  * images are float32 in [0, 1], NHWC; normalisation happens inside the model, so
    every attack budget is in pixel units;
  * the model exposes pure eval-mode functions (BatchNorm running statistics, no state
    update) through :func:`model_fns`: ``logits_fn(x)``, ``features_fn(x) -> A`` and
    ``head_fn(A) -> logits`` for CAM methods.

``cam_layer`` picks where ``features_fn`` cuts the network:
  * ``"last"``: output of the last stage (stride 32; 4x4 at 128 px);
  * ``"penultimate"``: output of the stage before (stride 16); ``head_fn`` then runs
    the last stage, the pooling and the classifier, so Grad-CAM there is Grad-CAM of
    an inner layer, not a CAM;
  * ``"dilated"``: the last stage runs with stride 1 and dilation 2 (output stride 16,
    Yu & Koltun 2016 / DeepLab), same parameters as the standard network.

``activation="softplus"`` swaps every ReLU for softplus(beta) = log(1 + exp(beta x)) /
beta, the smooth surrogate of Ghorbani et al. 2019 / Dombrowski et al. 2019 used to get
non-zero second derivatives for attacks on gradient explanations; the parameters are
the same, so the surrogate is a copy of the ReLU model with another ``activation``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lib import xla_cpu

Array = jax.Array

# The XLA:CPU convolution our ResNets are built with; it lives in lib/xla_cpu.py with the
# other XLA:CPU work-arounds, and this name is kept for existing code.
conv_general_dilated = xla_cpu.conv_general_dilated

CAM_LAYERS = ("last", "penultimate", "dilated")


def make_activation(name: str, beta: float = 10.0) -> Callable[[Array], Array]:
  """Returns relu, or softplus(beta) (the smooth surrogate of relu)."""
  if name == "relu":
    return nn.relu
  if name == "softplus":
    return lambda x: jax.nn.softplus(beta * x) / beta
  raise ValueError(f"Unknown activation {name!r}; use 'relu' or 'softplus'.")


def _pad3(dilation: int):
  """Symmetric padding of a 3x3 convolution, as torchvision's ``padding=dilation``.

  Flax's "SAME" pads a strided convolution asymmetrically (nothing at the top and left
  of even-sized inputs), which puts the input gradient's energy in the top-left corner
  of every saliency map and breaks the one-to-one mapping of torchvision weights.
  """
  return [(dilation, dilation), (dilation, dilation)]


class _Block(nn.Module):
  """Fields shared by the residual blocks."""
  filters: int
  conv: Any
  norm: Any
  act: Callable
  strides: int = 1
  dilation: int = 1
  last_scale_init: Any = nn.initializers.ones


class BasicBlock(_Block):
  """Two 3x3 convolutions with an identity or projection shortcut (ResNet-18/34)."""
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    d = (self.dilation, self.dilation)
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, kernel_dilation=d,
                  padding=_pad3(self.dilation), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y, use_running_average=not train))
    y = self.conv(self.filters, (3, 3), kernel_dilation=d, padding=_pad3(self.dilation),
                  name="conv2")(y)
    y = self.norm(scale_init=self.last_scale_init, name="bn2")(y, use_running_average=not train)
    if x.shape[-1] != self.filters or self.strides != 1:
      x = self.conv(self.filters, (1, 1), (self.strides,) * 2, padding="VALID",
                    name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, use_running_average=not train)
    return self.act(x + y)


class Bottleneck(_Block):
  """1x1 -> 3x3 (strided) -> 1x1 with 4x expansion (ResNet-50/101)."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    d = (self.dilation, self.dilation)
    out = self.filters * self.expansion
    y = self.conv(self.filters, (1, 1), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y, use_running_average=not train))
    y = self.conv(self.filters, (3, 3), (self.strides,) * 2, kernel_dilation=d,
                  padding=_pad3(self.dilation), name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y, use_running_average=not train))
    y = self.conv(out, (1, 1), name="conv3")(y)
    y = self.norm(scale_init=self.last_scale_init, name="bn3")(y, use_running_average=not train)
    if x.shape[-1] != out or self.strides != 1:
      x = self.conv(out, (1, 1), (self.strides,) * 2, padding="VALID", name="downsample_conv")(x)
      x = self.norm(name="downsample_bn")(x, use_running_average=not train)
    return self.act(x + y)


class Stage(nn.Module):
  """One ResNet stage: ``num_blocks`` blocks, the first one strided."""
  block: Any
  num_blocks: int
  filters: int
  conv: Any
  norm: Any
  act: Callable
  strides: int = 2
  dilation: int = 1
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    for i in range(self.num_blocks):
      x = self.block(self.filters, self.conv, self.norm, self.act,
                     strides=self.strides if i == 0 else 1, dilation=self.dilation,
                     last_scale_init=scale_init, name=f"block{i}")(x, train)
    return x


class SegmentationDecoder(nn.Module):
  """FPN-style decoder (Lin et al. 2017) over the encoder stages -> mask logits.

  Lateral 1x1 convolutions bring every stage to ``channels``; a top-down path adds the
  upsampled coarser map; a 3x3 conv + BN + activation at stride 4 and a 1x1 conv give
  one logit per pixel, resized bilinearly to the input resolution.
  """
  channels: int
  conv: Any
  norm: Any
  act: Callable

  @nn.compact
  def __call__(self, stage_outputs: Sequence[Array], out_hw, train: bool):
    p = None
    for i in reversed(range(len(stage_outputs))):
      lateral = self.conv(self.channels, (1, 1), name=f"lateral{i + 1}")(stage_outputs[i])
      if p is not None:
        p = jax.image.resize(p, lateral.shape[:3] + (p.shape[-1],), "bilinear")
        lateral = lateral + p
      p = lateral
    p = self.conv(self.channels, (3, 3), name="smooth")(p)
    p = self.act(self.norm(name="smooth_bn")(p, use_running_average=not train))
    mask_logits = self.conv(1, (1, 1), use_bias=True, dtype=jnp.float32, name="mask_logits")(p)
    return jax.image.resize(mask_logits, (p.shape[0],) + tuple(out_hw) + (1,), "bilinear")


class ResNet(nn.Module):
  """ResNet with optional segmentation head. See the module docstring.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: BasicBlock or Bottleneck.
    num_classes: classifier outputs.
    width: channels of the first stage (64 in the standard networks).
    in_channels: 1 (grayscale) or 3 (RGB); inputs with another channel count fail.
    mean, std: per-channel normalisation applied inside the model to [0, 1] inputs.
    seg_head: add the lesion-mask decoder (multi-task learning).
    decoder_channels: channels of the decoder.
    cam_layer: "last", "penultimate" or "dilated" (see module docstring).
    activation, softplus_beta: "relu" or "softplus" (surrogate) and its beta.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32.
    bn_axis_name: axis for cross-replica BatchNorm statistics inside a data-parallel
      step (``"batch"``); None outside one.
    zero_init_residual: start each block's last BatchNorm scale at 0 (Goyal et al. 2017).
      Off by default, as in torchvision: with it, an under-trained network sees the
      input only through the strided 1x1 shortcuts, which sample the top-left pixel of
      every 2x2 cell, and its gradient maps pile up in the image's top-left corner.
    im2col_max_pixels: on CPU, convolutions with output maps of at most this many pixels
      run as im2col + matmul (:func:`lib.xla_cpu.conv_general_dilated`; 64 is the measured
      break-even); 0 (default, as the function's) = always XLA's convolution. Opt-in
      because it changes float rounding, and the tiny synthetic model of the test suite
      then trains to another optimum on which one explanation-attack test's margin fails;
      to be re-validated.
  """
  stage_sizes: Sequence[int]
  block: Any
  num_classes: int = 2
  width: int = 64
  in_channels: int = 1
  mean: Sequence[float] = (0.449,)
  std: Sequence[float] = (0.226,)
  seg_head: bool = False
  decoder_channels: int = 64
  cam_layer: str = "last"
  activation: str = "relu"
  softplus_beta: float = 10.0
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  zero_init_residual: bool = False
  im2col_max_pixels: int = 0

  def setup(self):
    if self.cam_layer not in CAM_LAYERS:
      raise ValueError(f"cam_layer must be one of {CAM_LAYERS}, got {self.cam_layer!r}")
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=self.dtype, padding="SAME",
        conv_general_dilated=functools.partial(xla_cpu.conv_general_dilated,
                                               im2col_max_pixels=self.im2col_max_pixels))
    norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                             axis_name=self.bn_axis_name)
    act = make_activation(self.activation, self.softplus_beta)
    self._act = act
    self.stem_conv = conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)])
    self.stem_bn = norm()
    last = len(self.stage_sizes) - 1
    for i, n in enumerate(self.stage_sizes):
      dilated = self.cam_layer == "dilated" and i == last
      setattr(self, f"stage{i + 1}", Stage(
          self.block, n, self.width * 2**i, conv, norm, act,
          strides=1 if i == 0 or dilated else 2, dilation=2 if dilated else 1,
          zero_init_residual=self.zero_init_residual))
    self.fc = nn.Dense(self.num_classes, dtype=self.dtype)
    if self.seg_head:
      self.decoder = SegmentationDecoder(self.decoder_channels, conv, norm, act)

  @property
  def num_stages(self) -> int:
    return len(self.stage_sizes)

  def _stage(self, i: int) -> Stage:
    return getattr(self, f"stage{i + 1}")

  def _stem(self, x, train):
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(f"Expected images of shape (B, H, W, {self.in_channels}) in [0, 1], "
                       f"got {x.shape}.")
    mean = jnp.asarray(self.mean, jnp.float32)
    std = jnp.asarray(self.std, jnp.float32)
    x = ((x - mean) / std).astype(self.dtype)
    x = self._act(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    return nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])

  def _cam_stage(self) -> int:
    """Index of the stage whose output ``features`` returns."""
    return self.num_stages - 2 if self.cam_layer == "penultimate" else self.num_stages - 1

  def _classify(self, a, start_stage: int, train: bool):
    for i in range(start_stage, self.num_stages):
      a = self._stage(i)(a, train)
    a = jnp.mean(a, axis=(1, 2))
    return self.fc(a).astype(jnp.float32)

  def __call__(self, x, train: bool = False):
    """Returns ``(logits, mask_logits)``; ``mask_logits`` is None without seg head."""
    h = self._stem(x, train)
    outs = []
    for i in range(self.num_stages):
      h = self._stage(i)(h, train)
      outs.append(h)
    logits = self._classify(h, self.num_stages, train)
    mask_logits = None
    if self.seg_head:
      mask_logits = self.decoder(outs, x.shape[1:3], train).astype(jnp.float32)[..., 0]
    return logits, mask_logits

  def logits(self, x):
    """Class logits in eval mode."""
    return self(x, train=False)[0]

  def features(self, x):
    """Activations A of the CAM layer in eval mode, (B, h, w, c)."""
    h = self._stem(x, False)
    for i in range(self._cam_stage() + 1):
      h = self._stage(i)(h, False)
    return h

  def head(self, a):
    """Logits from CAM-layer activations: the rest of the network, in eval mode."""
    return self._classify(a, self._cam_stage() + 1, False)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
# Tiny variants for tests and the CPU demo: same code paths, a fraction of the cost.
ResNetTiny = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block=BasicBlock, width=8,
                               decoder_channels=8)
ResNetTinyBottleneck = functools.partial(ResNet, stage_sizes=(1, 1, 1, 1), block=Bottleneck,
                                         width=8, decoder_channels=8)

ARCHITECTURES = {
    "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
    "resnet101": ResNet101, "resnet_tiny": ResNetTiny,
    "resnet_tiny_bottleneck": ResNetTinyBottleneck,
}

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(model_config, *, bn_axis_name: Optional[str] = None, **overrides) -> ResNet:
  """Builds the model a config's ``model`` block describes.

  ``overrides`` replace fields, e.g. ``activation="softplus"`` for the surrogate or
  ``bn_axis_name="batch"`` inside a data-parallel step.
  """
  name = model_config.name
  if name not in ARCHITECTURES:
    raise ValueError(f"Unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}.")
  kwargs = dict(
      num_classes=model_config.num_classes,
      in_channels=model_config.in_channels,
      seg_head=model_config.seg_head,
      cam_layer=model_config.cam_layer,
      activation=model_config.activation,
      softplus_beta=model_config.softplus_beta,
      dtype=DTYPES[model_config.dtype],
      bn_axis_name=bn_axis_name,
  )
  if model_config.get("width"):
    kwargs["width"] = model_config.width
  if model_config.get("im2col_max_pixels"):
    kwargs["im2col_max_pixels"] = model_config.im2col_max_pixels
  if model_config.get("decoder_channels"):
    kwargs["decoder_channels"] = model_config.decoder_channels
  if model_config.get("mean"):
    kwargs["mean"] = tuple(model_config.mean)
    kwargs["std"] = tuple(model_config.std)
  kwargs.update(overrides)
  return ARCHITECTURES[name](**kwargs)


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """Pure eval-mode functions of one model and its variables (docs/DESIGN.md contract)."""
  logits_fn: Callable[[Array], Array]
  features_fn: Callable[[Array], Array]
  head_fn: Callable[[Array], Array]
  predict_fn: Callable[[Array], tuple]


def model_fns(model: ResNet, variables) -> ModelFns:
  """Closes the model over its variables: ``logits_fn``, ``features_fn``, ``head_fn``.

  All run BatchNorm with running statistics and never update them, so attacks and
  explanations can call them freely. ``predict_fn`` returns ``(logits, mask_logits)``.
  """
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  apply = functools.partial(model.apply, variables)
  return ModelFns(
      logits_fn=lambda x: apply(x, method=ResNet.logits),
      features_fn=lambda x: apply(x, method=ResNet.features),
      head_fn=lambda a: apply(a, method=ResNet.head),
      predict_fn=lambda x: apply(x, train=False),
  )


def surrogate_fns(model: ResNet, variables) -> Callable[[float], ModelFns]:
  """``beta -> ModelFns`` of the softplus(beta) copy of ``model`` with the same weights:
  the smooth surrogate that explanation attacks differentiate through (Dombrowski et al.
  2019). ``beta`` may be traced, so it can be annealed inside a compiled attack."""
  return lambda beta: model_fns(model.clone(activation="softplus", softplus_beta=beta), variables)


def init_variables(model: ResNet, seed: int, image_size: int):
  """Initialises parameters and BatchNorm statistics for square inputs.

  The initialisers draw from the ``rbg`` PRNG: XLA:CPU compiles one threefry hash per
  parameter slowly (10 s against 3.7 s for the tiny test network); the draws are
  deterministic for a seed on a given backend, which is all initialisation needs.
  """
  x = jnp.zeros((1, image_size, image_size, model.in_channels), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(jax.random.key(seed, impl="rbg"), x)


def count_params(tree) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
