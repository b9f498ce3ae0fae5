"""Adversarial robustness and explainability of medical image classifiers (JAX).

Importing ``lib`` sets one XLA:CPU default, before JAX creates its CPU backend: the
convolutions run on XLA's Eigen path and only matrix products on YNNPACK
(``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``). On the
2-core AMD EPYC (AVX2) we benchmark on, YNNPACK's convolutions are 1.3-1.6x slower than
Eigen's for ResNet shapes: an FGSM step of ResNet-18 at 128 px went from 0.58 to 0.41 s,
of ResNet-50 at 224 px from 1.85 to 1.28 s (bench/RESULTS.md, bench/resnet_convs.py).
The flag is added only where it was checked to exist (jaxlib 0.10.2-0.12) and only when
``XLA_FLAGS`` does not already set it: to keep XLA's own choice, set it yourself, e.g.
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION``.
It only affects the CPU backend, and only if ``lib`` is imported before the first JAX
computation of the process.
"""

import os as _os


def _xla_cpu_defaults() -> None:
  flag = "--xla_cpu_experimental_ynn_fusion_type"
  flags = _os.environ.get("XLA_FLAGS", "")
  if flag in flags:
    return
  try:
    from importlib import metadata
    version = tuple(int(p) for p in metadata.version("jaxlib").split(".")[:3])
  except Exception:  # pylint: disable=broad-except  # not installed / odd version string
    return
  if (0, 10, 2) <= version < (0, 13, 0):
    _os.environ["XLA_FLAGS"] = f"{flags} {flag}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT".strip()


_xla_cpu_defaults()
