"""Benchmarks behind ``workbench bench``: each measures workbench side by side with its peers.
They live in the repository's ``benchmarks/`` folder, outside the installed package;
``workbench bench NAME`` finds them in a checkout (:func:`workbench.cli.bench_module`).

* :mod:`workbench_bench.lj`: the Lennard-Jones fluid of LAMMPS ``in.lj`` (NVE, reduced units),
  against jax-md and OpenMM's CPU platform (:mod:`workbench_bench.peers`).
* :mod:`workbench_bench.peptide`: alanine dipeptide in water (PME) and in OBC2 implicit solvent,
  against OpenMM's CPU platform.

Every benchmark module exposes ``main(argv: list[str] | None) -> int`` (its own argument parser,
``prog="workbench bench NAME"``); :mod:`workbench.cli` dispatches to it. Peers are optional and
imported lazily (``pip install -e ".[bench]"``). See ``benchmarks/README.md``.
"""

import os

__all__ = ["BENCH_DIR", "child_env"]

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""The ``benchmarks/`` folder, which holds this package (outside the installed wheel)."""


def child_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's environment) with :data:`BENCH_DIR` first on
    ``PYTHONPATH``, for benchmark subprocesses that import ``workbench_bench``."""
    out = dict(os.environ if env is None else env)
    rest = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p]
    out["PYTHONPATH"] = os.pathsep.join([BENCH_DIR, *rest])
    return out
