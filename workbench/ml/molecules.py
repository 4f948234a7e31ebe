"""The small molecules of the ML training data, as OpenMM topologies with start coordinates:
ethanol (CHARMM36's ETOH residue) and water clusters (its TIP3 template), atom names as in
``charmm36.xml`` so that ``ForceField("charmm36.xml", "charmm36/water.xml")`` parameterizes them.
Used by ``tools/make_ml_data.py`` (sampling), the notebooks (ML/MM of ethanol in water) and
the tests. Coordinates in nm."""

from __future__ import annotations

import numpy as np

__all__ = ["MOLECULES", "topology", "CHARMM"]

CHARMM = ("charmm36.xml", "charmm36/water.xml")
"""The force-field files these topologies are named for."""

ETHANOL = [("C1", "C", (0.0, 0.0, 0.0)), ("O1", "O", (0.1425, 0.0, 0.0)),
           ("HO1", "H", (0.1745, 0.0905, 0.0)), ("H11", "H", (-0.0363, -0.0513, 0.0888)),
           ("H12", "H", (-0.0363, -0.0513, -0.0888)), ("C2", "C", (-0.0513, 0.1435, 0.0)),
           ("H21", "H", (-0.1603, 0.1435, 0.0)), ("H22", "H", (-0.0150, 0.1948, 0.0888)),
           ("H23", "H", (-0.0150, 0.1948, -0.0888))]  # fmt: skip
ETHANOL_BONDS = [("C1", "O1"), ("O1", "HO1"), ("C1", "H11"), ("C1", "H12"), ("C1", "C2"),
                 ("C2", "H21"), ("C2", "H22"), ("C2", "H23")]
WATER = [("OH2", "O", (0.0, 0.0, 0.0)), ("H1", "H", (0.09572, 0.0, 0.0)),
         ("H2", "H", (-0.02400, 0.09266, 0.0))]
WATER_BONDS = [("OH2", "H1"), ("OH2", "H2")]
TRIMER = [(0.0, 0.0, 0.0), (0.28, 0.0, 0.0), (0.14, 0.24, 0.0)]  # oxygen positions, nm

MOLECULES = {"ethanol": [("ETOH", ETHANOL, ETHANOL_BONDS, (0.0, 0.0, 0.0))],
             "water3": [("HOH", WATER, WATER_BONDS, c) for c in TRIMER]}
"""Name -> residues (name, atoms, bonds, offset nm)."""


def topology(name: str):
    """``(openmm.app.Topology, positions (N, 3) nm)`` of molecule ``name`` (see
    :data:`MOLECULES`)."""
    from openmm import app

    if name not in MOLECULES:
        raise ValueError(f"unknown molecule {name!r}; choose one of {sorted(MOLECULES)}")
    top = app.Topology()
    chain = top.addChain()
    pos = []
    for resname, atoms, bonds, offset in MOLECULES[name]:
        res = top.addResidue(resname, chain)
        made = {}
        for atom, element, xyz in atoms:
            made[atom] = top.addAtom(atom, app.Element.getBySymbol(element), res)
            pos.append(np.add(xyz, offset))
        for a, b in bonds:
            top.addBond(made[a], made[b])
    return top, np.asarray(pos, float)
