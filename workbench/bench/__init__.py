"""Benchmarks behind ``workbench bench``: each measures workbench side by side with its peers.

* :mod:`workbench.bench.lj`: the Lennard-Jones fluid of LAMMPS ``in.lj`` (NVE, reduced units),
  against jax-md and OpenMM's CPU platform (:mod:`workbench.bench.peers`).
* :mod:`workbench.bench.peptide`: alanine dipeptide in water (PME) and in OBC2 implicit solvent,
  against OpenMM's CPU platform.

Every benchmark module exposes ``main(argv: list[str] | None) -> int`` (its own argument parser,
``prog="workbench bench NAME"``); :mod:`workbench.cli` dispatches to it. Peers are optional and
imported lazily (``pip install -e ".[bench]"``). See ``benchmarks/README.md``.
"""

__all__ = ["BENCHMARKS"]

BENCHMARKS = {
    "grad": "gradients through 1,000 LJ Langevin steps: checkpointed, plain and reversible",
    "lj": "Lennard-Jones fluid (LAMMPS in.lj): atom-steps/s, compile and cold-start times",
    "panels": "live panels: chunk latency and frame rate (workbench.bench.panels)",
    "peptide": "alanine dipeptide in water (PME) and in OBC2 against OpenMM-CPU: ns/day",
    "sampling": "metadynamics overhead, MBAR against pymbar, replica-exchange throughput",
    "startup": "seconds to the first frame / chunk, cold and with a warm compile cache",
}
"""Benchmark name -> one-line description (module ``workbench.bench.<name>``)."""
