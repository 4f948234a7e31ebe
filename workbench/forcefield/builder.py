"""Capped peptides from a sequence, and water boxes around them (OpenMM ``Modeller``).

Heavy atoms are placed from internal coordinates (a Z-matrix): ideal backbone geometry after
Engh & Huber (1991), one compact table of side-chain bond lengths, angles and default chi angles
(a common rotamer of each residue), and backbone dihedrals set per residue. Hydrogens come from
``openmm.app.Modeller.addHydrogens`` (standard protonation at the given pH; the new hydrogens are
relaxed there with the heavy atoms fixed). The result parameterizes with ``amber14-all.xml`` as
it is, and with ``charmm36.xml`` after :func:`charmm_caps` (CHARMM caps are patches on the end
residues). Units: nm and degrees. OpenMM is imported lazily.

Default backbone: the beta region (phi, psi) = (-120, 130) degrees, trans peptide bonds; other
presets are in :data:`CONFORMATIONS` (``build_peptide("AAAA", **CONFORMATIONS["alpha"])``).
Proline's phi is fixed by its ring (-63 degrees) whatever is asked.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CONFORMATIONS",
    "ONE_LETTER",
    "VARIANTS",
    "alanine_dipeptide",
    "build_peptide",
    "charmm_caps",
    "solvate",
]

ONE_LETTER = {
    "A": "ALA", "R": "ARG", "N": "ASN", "D": "ASP", "C": "CYS", "Q": "GLN", "E": "GLU",
    "G": "GLY", "H": "HIS", "I": "ILE", "L": "LEU", "K": "LYS", "M": "MET", "F": "PHE",
    "P": "PRO", "S": "SER", "T": "THR", "W": "TRP", "Y": "TYR", "V": "VAL",
}  # fmt: skip
"""One-letter code -> residue name of the 20 standard amino acids. HIS is protonated by
``addHydrogens``: HIE if only NE2 would hydrogen-bond, else HID (so HID in a short peptide);
name HID, HIE or HIP to choose."""

VARIANTS = {"HID": "HIS", "HIE": "HIS", "HIP": "HIS", "ASH": "ASP", "GLH": "GLU", "LYN": "LYS"}
"""Protonation variants accepted as three-letter names -> the residue they are a form of."""

CONFORMATIONS = {
    "beta": {"phi": -120.0, "psi": 130.0},
    "alpha": {"phi": -57.0, "psi": -47.0},
    "ppii": {"phi": -75.0, "psi": 145.0},
    "c7eq": {"phi": -83.0, "psi": 73.0},
}
"""Backbone presets (degrees) to pass as ``**CONFORMATIONS[name]``. beta and ppii are free of
close contacts for every residue type; alpha puts proline and some side chains close to the
carbonyl three residues back; c7eq (the vacuum minimum of alanine dipeptide) is no chain
conformation. Minimize before dynamics in every case."""

CAPS = ("ACE", "NME")
# CHARMM names of the cap atoms once merged into the neighbouring residue (patches ACE and CT3)
_CHARMM_CAP_NAMES = {
    "ACE": {"CH3": "CAY", "H1": "HY1", "H2": "HY2", "H3": "HY3", "C": "CY", "O": "OY"},
    "NME": {"N": "NT", "H": "HNT", "C": "CAT", "H1": "HT1", "H2": "HT2", "H3": "HT3"},
}
PROLINE_PHI = -63.0
DIPEPTIDE_BOX = 2.9  # nm: default water cube of alanine_dipeptide (>= 2 x a 1.0 nm cutoff)

# Backbone (nm, degrees), Engh & Huber (1991).
_B_CN, _B_NCA, _B_CAC, _B_CO, _B_ACE = 0.1329, 0.1458, 0.1525, 0.1231, 0.1520
_A_CACN, _A_CNCA, _A_NCAC, _A_NCO = 116.2, 121.7, 111.2, 122.7

# Side chains: (atom, three reference atoms "a b c", bond c-atom (nm), angle b-c-atom (deg),
# dihedral a-b-c-atom (deg)). The atom is bonded to c; ring closures come from the residue
# templates (Topology.createStandardBonds). chi angles: a common rotamer of each residue.
_CB = ("CB", "C N CA", 0.1530, 110.5, -122.5)
_SIDE_CHAINS = {
    "GLY": (),
    "ALA": (_CB,),
    "SER": (_CB, ("OG", "N CA CB", 0.1417, 111.1, 62.0)),
    "CYS": (_CB, ("SG", "N CA CB", 0.1808, 114.4, -65.0)),
    "THR": (_CB, ("OG1", "N CA CB", 0.1433, 109.6, 59.0), ("CG2", "N CA CB", 0.1521, 110.5, -61.0)),
    "VAL": (
        _CB,
        ("CG1", "N CA CB", 0.1521, 110.5, 175.0),
        ("CG2", "N CA CB", 0.1521, 110.5, -65.0),
    ),
    "ILE": (
        _CB,
        ("CG1", "N CA CB", 0.1530, 110.4, -65.0),
        ("CG2", "N CA CB", 0.1521, 110.5, 175.0),
        ("CD1", "CA CB CG1", 0.1513, 113.8, 170.0),
    ),
    "LEU": (
        _CB,
        ("CG", "N CA CB", 0.1530, 116.3, -65.0),
        ("CD1", "CA CB CG", 0.1521, 110.7, 175.0),
        ("CD2", "CA CB CG", 0.1521, 110.7, -65.0),
    ),
    "MET": (
        _CB,
        ("CG", "N CA CB", 0.1520, 114.1, -65.0),
        ("SD", "CA CB CG", 0.1803, 112.7, -65.0),
        ("CE", "CB CG SD", 0.1791, 100.9, -70.0),
    ),
    "PRO": (  # C-gamma endo; closes the ring: CD-N 0.1474 nm, CA-N-CD 112.2, CG-CD-N 103.5
        ("CB", "C N CA", 0.1530, 103.2, -122.5),
        ("CG", "N CA CB", 0.1495, 104.3, 27.9),
        ("CD", "CA CB CG", 0.1503, 105.3, -34.8),
    ),
    "PHE": (
        _CB,
        ("CG", "N CA CB", 0.1502, 113.8, -65.0),
        ("CD1", "CA CB CG", 0.1384, 120.7, 95.0),
        ("CD2", "CA CB CG", 0.1384, 120.7, -85.0),
        ("CE1", "CB CG CD1", 0.1382, 120.7, 180.0),
        ("CE2", "CB CG CD2", 0.1382, 120.7, 180.0),
        ("CZ", "CG CD1 CE1", 0.1382, 120.0, 0.0),
    ),
    "TYR": (
        _CB,
        ("CG", "N CA CB", 0.1512, 113.8, -65.0),
        ("CD1", "CA CB CG", 0.1389, 120.8, 95.0),
        ("CD2", "CA CB CG", 0.1389, 120.8, -85.0),
        ("CE1", "CB CG CD1", 0.1382, 121.2, 180.0),
        ("CE2", "CB CG CD2", 0.1382, 121.2, 180.0),
        ("CZ", "CG CD1 CE1", 0.1378, 119.6, 0.0),
        ("OH", "CD1 CE1 CZ", 0.1376, 119.9, 180.0),
    ),
    "TRP": (
        _CB,
        ("CG", "N CA CB", 0.1498, 113.6, -65.0),
        ("CD1", "CA CB CG", 0.1365, 126.9, 95.0),
        ("CD2", "CA CB CG", 0.1433, 126.8, -85.0),
        ("NE1", "CB CG CD1", 0.1374, 110.2, 180.0),
        ("CE2", "CB CG CD2", 0.1409, 107.2, 180.0),
        ("CE3", "CB CG CD2", 0.1398, 133.9, 0.0),
        ("CZ2", "CG CD2 CE2", 0.1394, 122.4, 180.0),
        ("CZ3", "CG CD2 CE3", 0.1382, 118.7, 180.0),
        ("CH2", "CD2 CE2 CZ2", 0.1368, 117.5, 0.0),
    ),
    "HIS": (
        _CB,
        ("CG", "N CA CB", 0.1497, 113.7, -65.0),
        ("ND1", "CA CB CG", 0.1378, 122.7, -70.0),
        ("CD2", "CA CB CG", 0.1354, 131.0, 110.0),
        ("CE1", "CB CG ND1", 0.1321, 109.0, 180.0),
        ("NE2", "CB CG CD2", 0.1374, 107.2, 180.0),
    ),
    "ASP": (
        _CB,
        ("CG", "N CA CB", 0.1516, 112.6, -70.0),
        ("OD1", "CA CB CG", 0.1249, 118.4, -15.0),
        ("OD2", "CA CB CG", 0.1249, 118.4, 165.0),
    ),
    "ASN": (
        _CB,
        ("CG", "N CA CB", 0.1516, 112.6, -65.0),
        ("OD1", "CA CB CG", 0.1231, 120.8, -40.0),
        ("ND2", "CA CB CG", 0.1328, 116.4, 140.0),
    ),
    "GLU": (
        _CB,
        ("CG", "N CA CB", 0.1520, 114.1, -65.0),
        ("CD", "CA CB CG", 0.1516, 112.6, 180.0),
        ("OE1", "CB CG CD", 0.1249, 118.4, -10.0),
        ("OE2", "CB CG CD", 0.1249, 118.4, 170.0),
    ),
    "GLN": (
        _CB,
        ("CG", "N CA CB", 0.1520, 114.1, -65.0),
        ("CD", "CA CB CG", 0.1516, 112.6, 180.0),
        ("OE1", "CB CG CD", 0.1231, 120.8, -25.0),
        ("NE2", "CB CG CD", 0.1328, 116.4, 155.0),
    ),
    "LYS": (
        _CB,
        ("CG", "N CA CB", 0.1520, 114.1, -65.0),
        ("CD", "CA CB CG", 0.1520, 111.3, 180.0),
        ("CE", "CB CG CD", 0.1520, 111.3, 180.0),
        ("NZ", "CG CD CE", 0.1489, 111.9, 180.0),
    ),
    "ARG": (
        _CB,
        ("CG", "N CA CB", 0.1520, 114.1, -65.0),
        ("CD", "CA CB CG", 0.1520, 111.3, 180.0),
        ("NE", "CB CG CD", 0.1460, 112.0, 180.0),
        ("CZ", "CG CD NE", 0.1329, 124.2, 180.0),
        ("NH1", "CD NE CZ", 0.1326, 120.0, 0.0),
        ("NH2", "CD NE CZ", 0.1326, 120.0, 180.0),
    ),
}


@contextlib.contextmanager
def _python_random(seed: int):
    """Seed Python's ``random`` (which ``Modeller`` draws from) and restore its state after."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def _place(a, b, c, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of d with |cd| = bond (nm), angle bcd and dihedral abcd (degrees) (NeRF)."""
    theta, phi = np.radians(angle), np.radians(dihedral)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d = np.array([-np.cos(theta), np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi)])
    return c + bond * (d[0] * bc + d[1] * m + d[2] * n)


def _parse_sequence(sequence) -> list[str]:
    """Residue names (three-letter, variants kept) from one-letter codes or names."""
    if isinstance(sequence, str):
        items = sequence.replace("-", " ").split()
        if len(items) == 1:  # no separators: one-letter codes
            items = list(items[0])
    else:
        items = list(sequence)
    if not items:
        raise ValueError("empty sequence: give at least one residue, e.g. 'A' or ['ALA']")
    names = []
    for i, item in enumerate(items):
        key = str(item).strip().upper()
        name = ONE_LETTER.get(key) if len(key) == 1 else key
        if name not in _SIDE_CHAINS and name not in VARIANTS:
            raise ValueError(
                f"unknown residue {item!r} at position {i + 1}; valid one-letter codes: "
                f"{''.join(sorted(ONE_LETTER))}; valid names: {', '.join(sorted(_SIDE_CHAINS))} "
                f"and protonation variants {', '.join(sorted(VARIANTS))}"
            )
        names.append(name)
    return names


def _per_residue(value, n: int, what: str) -> np.ndarray:
    """A scalar or n values (degrees) -> (n,) float array, with a clear error otherwise."""
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{what} must be one finite angle or {n} of them (one per residue); got {value!r}"
        )
    return arr


def _check_caps(caps) -> tuple[str | None, str | None]:
    if caps is None:
        caps = (None, None)
    caps = tuple(caps)
    if len(caps) != 2 or caps[0] not in ("ACE", None) or caps[1] not in ("NME", None):
        raise ValueError(f"caps must be (ACE or None, NME or None); got {caps!r}")
    return caps


def _heavy_atoms(names, phi, psi, omega, caps):
    """[(residue name, [(atom name, xyz nm)...])] of the chain's heavy atoms."""
    n_cap, c_cap = caps
    # ACE's CH3 and C (virtual ones without the cap) seed the chain in a fixed frame
    t = np.radians(180.0 - _A_CACN)
    ch3, c0 = np.zeros(3), np.array([_B_ACE, 0.0, 0.0])
    chain = [ch3, c0, c0 + _B_CN * np.array([np.cos(t), np.sin(t), 0.0])]
    residues = [("ACE", {"CH3": ch3, "C": c0})] if n_cap == "ACE" else []
    omegas = [180.0, *omega]  # the bond after the (virtual) cap is trans
    for i, name in enumerate(names):
        res = {"N": chain[-1]}
        res["CA"] = _place(chain[-3], chain[-2], chain[-1], _B_NCA, _A_CNCA, omegas[i])
        chain.append(res["CA"])
        phi_i = PROLINE_PHI if name == "PRO" else phi[i]
        res["C"] = _place(chain[-3], chain[-2], chain[-1], _B_CAC, _A_NCAC, phi_i)
        chain.append(res["C"])
        residues.append((name, res))
        if i + 1 < len(names) or c_cap == "NME":
            chain.append(_place(chain[-3], chain[-2], chain[-1], _B_CN, _A_CACN, psi[i]))
    if c_cap == "NME":
        nme = {"N": chain[-1]}
        nme["C"] = _place(chain[-3], chain[-2], chain[-1], _B_NCA, _A_CNCA, omegas[-1])
        residues.append(("NME", nme))
    # carbonyl O: cis to the next CA across the peptide bond, in its plane; OXT at the end
    for k, (name, res) in enumerate(residues):
        if name == "NME":
            continue
        if k + 1 < len(residues):
            nxt = residues[k + 1][1]
            after = nxt["CA"] if "CA" in nxt else nxt["C"]
            res["O"] = _place(after, nxt["N"], res["C"], _B_CO, _A_NCO, 0.0)
        else:
            res["O"] = _place(res["N"], res["CA"], res["C"], _B_CO, 120.5, psi[-1] + 180.0)
            res["OXT"] = _place(res["N"], res["CA"], res["C"], 0.1250, 117.0, psi[-1])
    for name, res in residues:
        for atom, refs, bond, angle, dihedral in _SIDE_CHAINS.get(VARIANTS.get(name, name), ()):
            a, b, c = (res[r] for r in refs.split())
            res[atom] = _place(a, b, c, bond, angle, dihedral)
    return residues


def build_peptide(
    sequence: str | Sequence[str],
    *,
    phi: float | Sequence[float] = -120.0,
    psi: float | Sequence[float] = 130.0,
    omega: float | Sequence[float] = 180.0,
    caps: tuple[str | None, str | None] | None = CAPS,
    hydrogens: bool = True,
    ph: float = 7.0,
    forcefield_files: Sequence[str] = ("amber14-all.xml",),
    seed: int = 0,
):
    """A (capped) peptide: ``(topology, positions)``, an ``openmm.app.Topology`` and (N, 3) nm.

    sequence: one-letter codes (``"AAGWK"``; a string without separators is always read as
        one-letter codes, so ``"ALA"`` is Ala-Leu-Ala), or residue names (``["ALA", "GLY"]``,
        ``"ALA-GLY"``, ``"ALA GLY"``); names may be protonation variants (:data:`VARIANTS`:
        HID, HIE, HIP, ASH, GLH, LYN), otherwise protonation is the standard one at ``ph``.
    phi, psi: backbone dihedrals in degrees, one value for all residues or one per residue
        (default: beta region, -120 / 130); proline's phi is always -63 (its ring).
    omega: peptide-bond dihedral(s) CA(i)-C(i)-N(i+1)-CA(i+1) in degrees, one or one per residue
        (the bond after each residue); the ACE bond is trans.
    caps: (``"ACE"`` or None, ``"NME"`` or None); None gives a charged terminus (N-terminal
        NH3+, C-terminal COO-).
    hydrogens: add hydrogens with ``Modeller.addHydrogens`` (relaxed there, heavy atoms fixed,
        with ``forcefield_files`` on the Reference platform); False returns heavy atoms only.
        ``Modeller`` starts hydrogens at random offsets: ``seed`` fixes them (Python's
        ``random`` is seeded for the call and restored after).

    Heavy atoms come from ideal internal coordinates, so the same input gives the same output.
    Everything here is structural (it builds a new system). Raises ValueError for an empty
    sequence, an unknown residue, or angles of the wrong count.
    """
    import openmm
    from openmm import app, unit

    names = _parse_sequence(sequence)
    caps = _check_caps(caps)
    n = len(names)
    phi, psi, omega = (
        _per_residue(v, n, k) for v, k in ((phi, "phi"), (psi, "psi"), (omega, "omega"))
    )
    residues = _heavy_atoms(names, phi, psi, omega, caps)

    top = app.Topology()
    chain = top.addChain("A")
    xyz = []
    for k, (name, atoms) in enumerate(residues):
        res = top.addResidue(VARIANTS.get(name, name), chain, id=str(k + 1))
        for atom, pos in atoms.items():
            element = "C" if name == "NME" and atom == "C" else atom[0]
            top.addAtom(atom, app.Element.getBySymbol(element), res)
            xyz.append(pos)
    top.createStandardBonds()
    positions = np.asarray(xyz, dtype=float)
    if not hydrogens:
        return top, positions

    modeller = app.Modeller(top, positions * unit.nanometer)
    variants = [name if name in VARIANTS else None for name, _ in residues]
    with _python_random(seed):
        modeller.addHydrogens(
            app.ForceField(*forcefield_files),
            pH=ph,
            variants=variants,
            platform=openmm.Platform.getPlatformByName("Reference"),
        )
    positions = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer), dtype=float)
    return modeller.topology, positions


def charmm_caps(topology):
    """The same atoms, in the same order, with ACE and NME merged into the neighbouring residue
    and renamed (CAY, HY1-3, CY, OY; NT, HNT, CAT, HT1-3), as CHARMM's ACE and CT3 patches expect:
    ``charmm36.xml`` has no separate cap residues. Returns a new ``openmm.app.Topology``; the
    positions stay valid. A lone ACE-ALA-NME also matches charmm36's whole-molecule templates
    ALAD and AANM, so give ``residueTemplates={residue: "ALAD"}`` to ``createSystem`` there.
    """
    from openmm import app

    residues = list(topology.residues())
    host = {}
    for k, res in enumerate(residues):
        j = k + 1 if res.name == "ACE" else k - 1 if res.name == "NME" else k
        if res.name in _CHARMM_CAP_NAMES and not (
            0 <= j < len(residues)
            and residues[j].chain is res.chain
            and residues[j].name not in _CHARMM_CAP_NAMES
        ):
            raise ValueError(f"{res.name} {res.id} has no amino acid to merge into")
        host[res] = residues[j]
    new = app.Topology()
    new.setPeriodicBoxVectors(topology.getPeriodicBoxVectors())
    chains, merged, atoms = {}, {}, {}
    for res in residues:
        target = host[res]
        if target.chain not in chains:
            chains[target.chain] = new.addChain(target.chain.id)
        if target not in merged:
            merged[target] = new.addResidue(target.name, chains[target.chain], target.id)
    for res in residues:
        names = _CHARMM_CAP_NAMES.get(res.name, {})
        for atom in res.atoms():
            atoms[atom] = new.addAtom(
                names.get(atom.name, atom.name), atom.element, merged[host[res]]
            )
    for a, b in topology.bonds():
        new.addBond(atoms[a], atoms[b])
    return new


def solvate(
    topology,
    positions,
    *,
    forcefield_files: Sequence[str] = ("amber14-all.xml", "amber14/tip3p.xml"),
    water_model: str = "tip3p",
    padding: float | None = 1.0,
    box_size: float | Sequence[float] | None = None,
    ionic_strength: float = 0.0,
    neutralize: bool = True,
    seed: int = 0,
):
    """Solute in a rectangular water box: ``(topology, positions (N, 3) nm, box (3, 3) nm)``,
    solute first, then water and ions; the box spans [0, L) on each axis, the solute at its centre.

    padding: nm between the solute and the box faces (used when ``box_size`` is None); box_size:
    one edge or three edges in nm. ionic_strength: molar NaCl; neutralize adds Na+/Cl- to zero
    net charge. Uses ``Modeller.addSolvent`` (OpenMM's pre-equilibrated water box); ions replace
    randomly chosen waters, fixed by ``seed``. Structural: builds a new system.
    """
    import openmm
    from openmm import app, unit

    positions = np.asarray(positions, dtype=float)
    if positions.shape != (topology.getNumAtoms(), 3) or not np.all(np.isfinite(positions)):
        raise ValueError(
            f"positions must be finite with shape ({topology.getNumAtoms()}, 3) nm; "
            f"got {positions.shape}"
        )
    if ionic_strength < 0:
        raise ValueError(f"ionic_strength must be >= 0 molar; got {ionic_strength}")
    kwargs = {}
    if box_size is not None:
        edges = np.broadcast_to(np.asarray(box_size, dtype=float), (3,))
        if np.any(edges <= 0):
            raise ValueError(f"box_size must be positive (nm); got {box_size!r}")
        kwargs["boxSize"] = openmm.Vec3(*edges) * unit.nanometer
    elif padding is not None:
        if padding <= 0:
            raise ValueError(f"padding must be positive (nm); got {padding}")
        kwargs["padding"] = padding * unit.nanometer
    else:
        raise ValueError("give padding (nm around the solute) or box_size (nm)")
    modeller = app.Modeller(topology, positions * unit.nanometer)
    with _python_random(seed):
        modeller.addSolvent(
            app.ForceField(*forcefield_files),
            model=water_model,
            ionicStrength=ionic_strength * unit.molar,
            neutralize=neutralize,
            **kwargs,
        )
    box = np.asarray(
        [list(v) for v in modeller.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)]
    )
    out = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer), dtype=float)
    # Modeller centres the box on the solute; shift so the box spans [0, L) on each axis
    centre = 0.5 * (positions.min(0) + positions.max(0))
    return modeller.topology, out + (0.5 * np.diag(box) - centre), box


def alanine_dipeptide(
    solvated: bool = False,
    *,
    phi: float = -120.0,
    psi: float = 130.0,
    box_size: float | None = None,
    padding: float | None = None,
    forcefield_files: Sequence[str] = ("amber14-all.xml", "amber14/tip3p.xml"),
    seed: int = 0,
):
    """ACE-ALA-NME (22 atoms): ``(topology, positions)``, or with ``solvated=True``
    ``(topology, positions, box (3, 3) nm)`` in TIP3P water: a cube of edge ``box_size`` nm, or
    ``padding`` nm around the solute, by default a 2.9 nm cube (2,347 atoms, room for a 1.0 nm
    cutoff; ``data/alanine-dipeptide-water.pdb`` before minimization). phi, psi in degrees."""
    if box_size is not None and padding is not None:
        raise ValueError("give box_size or padding (nm), not both")
    top, pos = build_peptide(
        "A", phi=phi, psi=psi, forcefield_files=forcefield_files[:1], seed=seed
    )
    if not solvated:
        return top, pos
    if box_size is None and padding is None:
        box_size = DIPEPTIDE_BOX
    return solvate(
        top, pos, forcefield_files=forcefield_files, box_size=box_size, padding=padding, seed=seed
    )
