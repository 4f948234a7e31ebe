"""OpenMM ``CMAPTorsionForce`` -> :class:`~workbench.potentials.cmap.CMAPTorsion`: the
converter, registered through :data:`CONVERTERS` (the energy term itself lives in
:mod:`workbench.potentials.cmap` and knows nothing of OpenMM's objects)."""

from __future__ import annotations

import numpy as np

from ..potentials.cmap import CMAPTorsion, map_from_openmm
from ..space import Space
from ..units import strip

__all__ = ["CONVERTERS", "from_openmm_force"]


def from_openmm_force(force, space: Space, labels=None) -> tuple[CMAPTorsion, dict]:
    """Convert an ``openmm.CMAPTorsionForce`` into ``(CMAPTorsion, params)``.

    Only the maps that some torsion uses become types; each is named ``map<k>`` after its
    OpenMM index k (kept in ``constants["openmm_map"]``), plus, with ``labels`` (per-atom
    :class:`~workbench.forcefield.fftypes.AtomTypes`), the residues whose CA-like central atom
    (a3) uses it, e.g. ``map3(ALA,LYS)``. The maps in use must share one grid size."""
    from openmm import unit

    def kj(q):
        return strip(q, unit.kilojoule_per_mole)

    maps = [force.getMapParameters(k) for k in range(force.getNumMaps())]
    rows = [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
    which = np.asarray([int(r[0]) for r in rows], dtype=np.int32)
    atoms = np.asarray([[int(a) for a in r[1:9]] for r in rows], dtype=np.int32).reshape(-1, 8)
    bad = [int(k) for k in which if not 0 <= k < len(maps)]
    if bad:
        raise ValueError(f"CMAPTorsionForce: torsions refer to maps {sorted(set(bad))}, but "
                         f"the force defines {len(maps)} maps")
    used = sorted(set(which.tolist()))
    sizes = {k: int(maps[k][0]) for k in used}
    if len(set(sizes.values())) > 1:
        from .openmm import UnsupportedForceError

        raise UnsupportedForceError(
            f"CMAPTorsionForce maps in use have different grid sizes {sizes}; workbench holds "
            "one (n_maps, size, size) array per force: split the maps into forces by size")
    types = np.searchsorted(np.asarray(used, dtype=np.int32), which).astype(np.int32)
    names = []
    for t, k in enumerate(used):
        name = f"map{k}"
        if labels is not None:
            res = sorted({labels.residue[a] for a in atoms[types == t, 2]})
            name += f"({','.join(res)})"
        names.append(name)
    size = next(iter(sizes.values()), int(maps[0][0]) if maps else 2)
    grids = [map_from_openmm(kj(maps[k][1]), size) for k in used]
    term = CMAPTorsion(atoms, types, tuple(names), space,
                       periodic=bool(force.usesPeriodicBoundaryConditions()),
                       constants={"openmm_map": np.asarray(used, dtype=np.int32)})
    energy = np.stack(grids) if grids else np.zeros((0, size, size))
    return term, term.init_params(energy=energy)


CONVERTERS = {"CMAPTorsionForce": from_openmm_force}
"""OpenMM force class -> converter, read by :func:`workbench.forcefield.openmm.converters`."""
