"""The Lennard-Jones case of ``workbench bench lj`` (LAMMPS ``in.lj``), shared by the workbench
engine (:mod:`.lj`) and the peers (:mod:`.peers`) so that neither imports the other: the state
point, the start state, and starting and probing an engine."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["DENSITY", "TEMPERATURE", "CUTOFF", "SKIN", "DT", "MASS", "LJCase", "check_atoms",
           "lj_case", "start", "probe_chunk"]

DENSITY = 0.8442
TEMPERATURE = 1.44
CUTOFF = 2.5
SKIN = 0.3
DT = 0.005
MASS = 1.0


# ------------------------------------------------------------------------------ the system
@dataclass(frozen=True, eq=False)
class LJCase:
    """The benchmark system. positions, velocities: (N, 3) float64 (sigma, sigma/tau);
    box_length: cubic box edge (sigma); seed: the velocity draw's seed."""

    n_atoms: int
    positions: np.ndarray
    velocities: np.ndarray
    box_length: float
    seed: int

    @property
    def kinetic_energy(self) -> float:
        """0.5 m sum v^2 (epsilon)."""
        return 0.5 * MASS * float(np.sum(self.velocities**2))


def check_atoms(n_atoms: int) -> int:
    """Cubic fcc cells per side for ``n_atoms`` (must be 4 n^3 with n >= 4, so that
    cutoff + skin fits in half the box); raises ValueError naming the nearest valid sizes."""
    from workbench.systems import fcc_cells_for

    n = fcc_cells_for(int(n_atoms))
    a = (4.0 / DENSITY) ** (1.0 / 3.0)
    if n * a < 2.0 * (CUTOFF + SKIN):
        raise ValueError(
            f"{n_atoms} atoms give a box of {n * a:.2f} sigma, smaller than twice cutoff + skin "
            f"({2 * (CUTOFF + SKIN):.1f}); use at least 256 atoms (4 * 4^3)"
        )
    return n


def lj_case(n_atoms: int, seed: int = 0) -> LJCase:
    """Build the in.lj start state for ``n_atoms`` = 4 n^3 atoms (seeded velocities)."""
    from workbench.systems import fcc_lattice

    n = check_atoms(n_atoms)
    a = (4.0 / DENSITY) ** (1.0 / 3.0)
    positions = fcc_lattice(n, a)
    rng = np.random.default_rng(seed)
    v = rng.normal(size=positions.shape) * math.sqrt(TEMPERATURE / MASS)
    v -= v.mean(axis=0)
    dof = 3 * n_atoms - 3
    v *= math.sqrt(TEMPERATURE * dof / (MASS * np.sum(v**2)))
    return LJCase(int(n_atoms), positions, v, float(n * a), int(seed))


def start(cls: type, case: LJCase, chunk: int, variant: str | None = None):
    """Build an engine of class ``cls`` and run its first chunk; returns (engine, setup_s,
    compile_s)."""
    t0 = time.perf_counter()
    eng = cls(case, chunk, variant)
    t1 = time.perf_counter()
    eng.advance(1)
    return eng, t1 - t0, time.perf_counter() - t1


def probe_chunk(eng) -> float:
    """Wall time (s) of one more chunk of a started engine, steady state: a chunk that had to
    grow the neighbor list (and be recomputed) is not representative, so it is probed again."""
    for _ in range(3):
        regrowths = eng.regrowths
        t0 = time.perf_counter()
        eng.advance(1)
        elapsed = time.perf_counter() - t0
        if eng.regrowths == regrowths:
            break
    return elapsed
