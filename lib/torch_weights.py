"""torchvision ResNet weights <-> the Flax ResNet of lib/models.py.

Most breast-ultrasound papers start from ImageNet-pretrained torchvision ResNets; this
module puts such a state dict (a local ``.pth`` / ``.pt`` file, or a ``.safetensors`` file
read without torch) into our variables, BatchNorm running statistics included, and
writes ours back in torchvision's layout (for PyTorch tools and the benchmarks). Nothing
is downloaded: the user points at a file.

The layouts correspond one to one (lib/models.py builds torchvision's "v1.5" ResNet:
stride on the 3x3 convolution, symmetric padding):

  ===========================================  ====================================
  torchvision                                   Flax (``params`` / ``batch_stats``)
  ===========================================  ====================================
  ``conv1.weight`` (O, I, kh, kw)               ``stem_conv/kernel`` (kh, kw, I, O)
  ``bn1.{weight, bias}``                        ``stem_bn/{scale, bias}``
  ``bn1.{running_mean, running_var}``           ``stem_bn/{mean, var}``
  ``layer{i}.{j}.conv{k}`` / ``.bn{k}``         ``stage{i}/block{j}/conv{k}`` / ``bn{k}``
  ``layer{i}.{j}.downsample.0`` / ``.1``        ``.../downsample_conv`` / ``downsample_bn``
  ``fc.weight`` (O, I), ``fc.bias``             ``fc/kernel`` (I, O), ``fc/bias``
  ===========================================  ====================================

Grayscale models (``in_channels=1``) get the RGB stem kernel summed over its input
channels: a gray image repeated three times gives the same first activations, exactly so
when the three channels are normalised alike (our default mean 0.449 / std 0.226 are
the averages of ImageNet's). A classifier of another size (1000 ImageNet classes into a
2-class model) is left at its initialisation, as is the segmentation decoder, which
torchvision does not have. Everything else must match: a missing tensor, a shape that
differs, or a tensor the model has no place for raises
:class:`lib.checkpoint.CheckpointMismatchError` naming it and the architecture the state
dict looks like.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping

import ml_dtypes
import numpy as np

from lib import models
from lib.checkpoint import CheckpointMismatchError

# safetensors dtype codes <-> numpy (bfloat16 through ml_dtypes, which jax ships).
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
           "var": "running_var"}
_IGNORED_SUFFIXES = ("num_batches_tracked",)


# ----------------------------------------------------------------------------- files

def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """The tensors of a ``.safetensors`` file as numpy arrays (no torch needed)."""
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise ValueError(f"{path} is not a safetensors file (only {len(raw)} bytes).")
  (n,) = struct.unpack("<Q", raw[:8])
  try:
    header = json.loads(raw[8:8 + n])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path} is not a safetensors file (unreadable header: {e}).") from e
  data = memoryview(raw)[8 + n:]
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
    begin, end = info["data_offsets"]
    dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
    tensors[name] = np.frombuffer(data[begin:end], dtype).reshape(info["shape"]).copy()
  return tensors


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes numpy arrays as a ``.safetensors`` file (readable by torch's safetensors)."""
  codes = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    a = np.asarray(tensors[name], order="C")   # ascontiguousarray would make a scalar 1-d
    buf = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape),
                    "data_offsets": [offset, offset + len(buf)]}
    chunks.append(buf)
    offset += len(buf)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)          # align the data to 8 bytes
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)) + blob)
    for c in chunks:
      f.write(c)
  os.replace(tmp, path)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torchvision state dict from ``.safetensors`` (no torch) or ``.pth`` / ``.pt``.

  Pickled files need torch and are loaded with ``weights_only=True``; a checkpoint that
  wraps the state dict (``{"state_dict": ...}`` or ``{"model": ...}``) and DataParallel's
  ``module.`` prefixes are unwrapped.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Weights file {path} not found.")
  if path.endswith(".safetensors"):
    sd = read_safetensors(path)
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise ImportError(f"Reading {path} needs torch; install it, or convert the file to "
                        ".safetensors (read without torch).") from e
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
      if isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
    sd = {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
          for k, v in obj.items() if hasattr(v, "numpy")}
  return {k.removeprefix("module."): v for k, v in sd.items()}


# ----------------------------------------------------------------------------- names

def torch_name(path: tuple[str, ...]) -> str | None:
  """The torchvision key of one Flax leaf, e.g. ``("params", "stage1", "block0", "conv1",
  "kernel") -> "layer1.0.conv1.weight"``; None for leaves torchvision lacks (decoder)."""
  _, *modules, leaf = path
  parts = []
  for m in modules:
    if m == "decoder":
      return None
    if m.startswith("stage"):
      parts.append("layer" + m[len("stage"):])
    elif m.startswith("block"):
      parts.append(m[len("block"):])
    else:
      parts.append({"stem_conv": "conv1", "stem_bn": "bn1", "downsample_conv": "downsample.0",
                    "downsample_bn": "downsample.1"}.get(m, m))
  return ".".join(parts + [_LEAVES[leaf]])


def _leaves(tree, prefix=()):
  for k, v in tree.items():
    if isinstance(v, Mapping):
      yield from _leaves(v, prefix + (k,))
    else:
      yield prefix + (k,), v


def _set(tree: dict, path, value) -> None:
  for k in path[:-1]:
    tree = tree[k]
  tree[path[-1]] = value


def _to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel":
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
  return value


def _from_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
  if leaf == "kernel":
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
  return value


def looks_like(state_dict: Mapping[str, Any]) -> str:
  """The torchvision architecture a state dict's keys describe, e.g. ``"resnet50"``."""
  blocks = [len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{i}.")})
            for i in range(1, 5)]
  bottleneck = any(".conv3." in k for k in state_dict)
  for name, arch in models.ARCHITECTURES.items():
    kw = arch.keywords
    if tuple(kw["stage_sizes"]) == tuple(blocks) and (kw["block"] is models.Bottleneck) == bottleneck:
      width = state_dict["conv1.weight"].shape[0] if "conv1.weight" in state_dict else None
      if width == kw.get("width", 64):
        return name
  return (f"an unknown ResNet ({'bottleneck' if bottleneck else 'basic'} blocks "
          f"{tuple(blocks)})")


# ----------------------------------------------------------------------------- convert

def to_torchvision(variables) -> dict[str, np.ndarray]:
  """Our variables as a torchvision state dict (numpy arrays; decoder left out)."""
  sd = {}
  for path, value in _leaves(variables):
    name = torch_name(path)
    if name is not None:
      sd[name] = _to_torch_layout(np.asarray(value, np.float32), path[-1])
  return sd


def from_torchvision(state_dict: Mapping[str, np.ndarray], variables, *, source: str = "state dict"):
  """``(variables, report)``: ``variables`` with every tensor of a torchvision ResNet
  state dict put in its place (see the module docstring).

  ``report`` lists what was adapted or kept at its initialisation. Raises
  CheckpointMismatchError when the state dict belongs to another architecture.
  """
  out = {col: _copy_tree(tree) for col, tree in variables.items()}
  used, report, mismatched = set(), [], []
  for path, mine in _leaves(variables):
    name = torch_name(path)
    if name is None:
      continue
    if name not in state_dict:
      if name.startswith("fc."):
        report.append(f"{name}: kept at initialisation (not in the file)")
      else:
        mismatched.append(f"{name} is missing")
      continue
    value = _from_torch_layout(np.asarray(state_dict[name], np.float32), path[-1])
    used.add(name)
    if name == "conv1.weight" and value.shape[2] != mine.shape[2] and mine.shape[2] == 1:
      value = value.sum(axis=2, keepdims=True)
      report.append(f"conv1.weight: summed over its {state_dict[name].shape[1]} input "
                    "channels for grayscale input")
    if name.startswith("fc.") and value.shape != mine.shape:
      report.append(f"{name}: kept at initialisation (the file has {tuple(value.shape)}, "
                    f"the model {tuple(mine.shape)}: another number of classes)")
      continue
    if value.shape != mine.shape:
      mismatched.append(f"{name} has shape {tuple(state_dict[name].shape)}, the model "
                        f"needs {tuple(_to_torch_layout(np.zeros(mine.shape), path[-1]).shape)}")
      continue
    _set(out, path, value.astype(np.asarray(mine).dtype))
  extra = sorted(k for k in set(state_dict) - used
                 if not k.endswith(_IGNORED_SUFFIXES) and not k.startswith("fc."))
  if extra:
    mismatched.append(f"{len(extra)} tensors have no place in the model (e.g. {extra[0]})")
  if mismatched:
    raise CheckpointMismatchError(
        f"Cannot load {source}: it looks like torchvision {looks_like(state_dict)}, which "
        f"does not fit this model: " + "; ".join(mismatched[:3]) +
        (f"; and {len(mismatched) - 3} more" if len(mismatched) > 3 else "") + ".")
  if "decoder" in variables.get("params", {}):
    report.append("decoder: kept at initialisation (torchvision has no segmentation head)")
  return out, report


def _copy_tree(tree):
  return {k: _copy_tree(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def load_torchvision(path: str, variables):
  """:func:`from_torchvision` of the file at ``path`` (``.safetensors`` or ``.pth``)."""
  return from_torchvision(read_state_dict(path), variables, source=path)
