"""Ready-made systems: lattices and the Lennard-Jones fluid (LAMMPS ``in.lj``), and the
project's data folder. The :class:`~workbench.system.System` class itself lives in
:mod:`workbench.system` (re-exported here).
"""

from __future__ import annotations

import numpy as np

from . import space as spaces
from .potentials.pair import PairPotential
from .system import System, placeholder_topology

__all__ = ["System", "fcc_lattice", "lj_fluid", "fcc_cells_for", "placeholder_topology",
           "data_file"]


def data_file(name: str) -> str:
    """Absolute path of ``data/<name>`` (the project's data folder, made by
    ``tools/make_data.py``), looked up from the working directory upwards and beside the
    package. Raises FileNotFoundError naming where it looked."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    roots, d = [], os.getcwd()
    while True:
        roots.append(d)
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    roots.append(os.path.dirname(here))
    for root in roots:
        path = os.path.join(root, "data", name)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"data/{name} not found in {roots[0]}, its parents or beside the "
                            "workbench package; make it with `python tools/make_data.py`")


def fcc_lattice(n_cells, lattice_constant: float) -> np.ndarray:
    """Positions (4 n^3, 3) of an fcc lattice of n_cells^3 cubic unit cells (n_cells: int or
    3 ints), lattice constant in nm."""
    n = np.broadcast_to(np.asarray(n_cells, dtype=int), (3,))
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 1, 3)
    return ((grid + basis[None]) * lattice_constant).reshape(-1, 3)


def fcc_cells_for(n_atoms: int) -> int:
    """Cubic fcc cells per side holding exactly ``n_atoms`` (= 4 n^3); raises otherwise."""
    n = round((n_atoms / 4) ** (1 / 3))
    if 4 * n**3 != n_atoms:
        lo, hi = max(n - 1, 1), n + 1
        raise ValueError(
            f"an fcc box holds 4 n^3 atoms; {n_atoms} is not of that form "
            f"(nearest: {4 * lo**3}, {4 * n**3}, {4 * hi**3})"
        )
    return n


def lj_fluid(
    n_atoms: int = 4000,
    density: float = 0.8442,
    *,
    cutoff: float = 2.5,
    skin: float = 0.3,
    truncation: str = "cut",
    sigma: float = 1.0,
    epsilon: float = 1.0,
    mass: float = 1.0,
    r_switch: float | None = None,
) -> System:
    """Lennard-Jones fluid in reduced units, started on an fcc lattice (LAMMPS ``in.lj``:
    density 0.8442, cutoff 2.5, skin 0.3). ``n_atoms`` must be 4 n^3."""
    if density <= 0:
        raise ValueError(f"density must be positive, got {density}")
    n = fcc_cells_for(n_atoms)
    a = (4.0 / density) ** (1.0 / 3.0)
    positions = fcc_lattice(n, a)
    space = spaces.periodic(n * a)
    pot = PairPotential(
        "lennard_jones", space, cutoff, truncation=truncation, r_switch=r_switch, skin=skin
    )
    params = pot.init_params(sigma=sigma, epsilon=epsilon)
    return System(pot, params, positions, np.full(n_atoms, float(mass)), space,
                  units="reduced", element="Ar", name="LJ")
