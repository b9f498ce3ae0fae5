"""Adversarial robustness and explainability of medical image classifiers (JAX).

Importing ``lib`` (or any of its modules) has no side effects: it sets no environment
variable and runs no JAX computation. The XLA:CPU defaults our CPU measurements were made
with are set by :func:`lib.xla_cpu.configure`, which the entry points (``lib/cli.py``), the
CPU benchmarks and the tests call before JAX creates its backend; a script or notebook of
your own calls it first::

    import lib.xla_cpu
    lib.xla_cpu.configure()
"""
