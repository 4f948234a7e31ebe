"""Writes the structures under data/ (deterministic: ideal geometry, OpenMM's water box, a
fixed-length minimization on the Reference platform).

    python tools/make_data.py            # rewrites data/
    python tools/make_data.py --out DIR  # writes elsewhere (the tests compare the two)

Each file: built with workbench.forcefield.builder (seed 0), minimized briefly with amber14
(vacuum: no cutoff; water: PME, 1.0 nm cutoff, flexible water, then every water put back to
the rigid TIP3P geometry by a mass-weighted fit), written as PDB (CRYST1 for the box).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.forcefield.builder import alanine_dipeptide, build_peptide

AMBER = ("amber14-all.xml", "amber14/tip3p.xml")
WATER_BOX = 2.9  # nm: cube edge of the solvated dipeptide (>= 2 x 1.0 nm cutoff)
MAX_ITERATIONS = {"vacuum": 2000, "water": 100}
TIP3P_OH, TIP3P_HOH = 0.09572, 104.52  # nm, degrees
TOLERANCE = 1.0  # kJ/mol/nm


def _structures():
    """name -> (topology, positions nm, box (3, 3) nm or None, kind) before minimization."""
    top, pos = alanine_dipeptide()
    yield "alanine-dipeptide-vacuum.pdb", top, pos, None, "vacuum"
    top, pos, box = alanine_dipeptide(solvated=True, box_size=WATER_BOX, forcefield_files=AMBER)
    yield "alanine-dipeptide-water.pdb", top, pos, box, "water"
    top, pos = build_peptide("AAGWK")
    yield "peptide-AAGWK-vacuum.pdb", top, pos, None, "vacuum"


def minimize(topology, positions, kind: str):
    """Fixed-length L-BFGS minimization with amber14 on the Reference platform: (N, 3) nm and
    the final potential energy in kJ/mol."""
    import openmm
    from openmm import app, unit

    ff = app.ForceField(*AMBER)
    if kind == "water":  # flexible: one L-BFGS pass (constraints make OpenMM repeat it)
        system = ff.createSystem(
            topology,
            nonbondedMethod=app.PME,
            constraints=None,
            nonbondedCutoff=1.0 * unit.nanometer,
            rigidWater=False,
        )
    else:
        system = ff.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    if topology.getPeriodicBoxVectors() is not None:
        context.setPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    context.setPositions(positions * unit.nanometer)
    openmm.LocalEnergyMinimizer.minimize(context, TOLERANCE, MAX_ITERATIONS[kind])
    state = context.getState(getPositions=True, getEnergy=True)
    out = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    if kind == "water":
        out = rigid_waters(topology, out)
        context.setPositions(out * unit.nanometer)
        state = context.getState(getEnergy=True)
    return out, state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def rigid_waters(topology, positions):
    """Each HOH replaced by the ideal TIP3P molecule, fitted (mass-weighted Kabsch) onto it."""
    t = np.radians(TIP3P_HOH / 2)
    ideal = {
        "O": [0.0, 0.0, 0.0],
        "H1": [TIP3P_OH * np.sin(t), TIP3P_OH * np.cos(t), 0.0],
        "H2": [-TIP3P_OH * np.sin(t), TIP3P_OH * np.cos(t), 0.0],
    }
    out = positions.copy()
    for res in topology.residues():
        if res.name != "HOH":
            continue
        idx = [a.index for a in res.atoms()]
        ref = np.array([ideal[a.name] for a in res.atoms()])
        w = np.array([a.element.mass._value for a in res.atoms()])[:, None] / 18.015
        x = positions[idx]
        xc, rc = (w * x).sum(0) / w.sum(), (w * ref).sum(0) / w.sum()
        u, _, vt = np.linalg.svd(((ref - rc) * w).T @ (x - xc))
        d = np.sign(np.linalg.det(u @ vt))
        rot = u @ np.diag([1.0, 1.0, d]) @ vt
        out[idx] = (ref - rc) @ rot + xc
    return out


def pdb_text(topology, positions) -> str:
    """PDB text without OpenMM's dated REMARK line, so the same structure gives the same file."""
    from openmm import app, unit

    buf = io.StringIO()
    app.PDBFile.writeFile(topology, positions * unit.nanometer, buf)
    lines = [ln for ln in buf.getvalue().splitlines() if not ln.startswith("REMARK   1 CREATED")]
    return "\n".join(lines) + "\n"


def make(out_dir) -> dict:
    """Write every file into out_dir; returns name -> (atoms, box edges nm or None, energy)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, top, pos, box, kind in _structures():
        pos, energy = minimize(top, pos, kind)
        (out_dir / name).write_text(pdb_text(top, pos))
        edges = None if box is None else np.diag(box).round(4).tolist()
        summary[name] = (top.getNumAtoms(), edges, energy)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "data"), help="output folder (default data/)")
    args = parser.parse_args(argv)
    for name, (n, edges, energy) in make(args.out).items():
        print(f"{name}: {n} atoms, box {edges} nm, minimized energy {energy:.1f} kJ/mol")


if __name__ == "__main__":
    main()
