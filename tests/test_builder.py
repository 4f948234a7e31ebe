"""Peptide builder and the data files: every standard residue builds, parameterizes with amber14
and charmm36 and has sane geometry; builds are deterministic; data/ matches tools/make_data.py."""

import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = pytest.importorskip("openmm.unit")
md = pytest.importorskip("mdtraj")

from workbench.forcefield.builder import (
    CONFORMATIONS,
    ONE_LETTER,
    alanine_dipeptide,
    build_peptide,
    charmm_caps,
    solvate,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
DATA_FILES = {  # name -> (atoms, cubic box edge nm or None)
    "alanine-dipeptide-vacuum.pdb": (22, None),
    "alanine-dipeptide-water.pdb": (2347, 2.9),
    "peptide-AAGWK-vacuum.pdb": (85, None),
}
BOND_TOL = 0.02  # nm from the force field's r0, before any minimization
ENERGY_BOUND = 250.0  # kJ/mol: vacuum energy of a freshly built capped residue (worst seen ~115)


@pytest.fixture(scope="module")
def amber():
    return app.ForceField("amber14-all.xml")


@pytest.fixture(scope="module")
def charmm():
    return app.ForceField("charmm36.xml")


def energy(system, positions, minimize_steps=0):
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(positions * unit.nanometer)
    if minimize_steps:
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, minimize_steps)
    return (
        context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    )


def bond_deviations(system, positions):
    """|r - r0| (nm) of every HarmonicBondForce term."""
    out = []
    for force in system.getForces():
        if isinstance(force, openmm.HarmonicBondForce):
            for k in range(force.getNumBonds()):
                i, j, r0, _ = force.getBondParameters(k)
                r = np.linalg.norm(positions[i] - positions[j])
                out.append(abs(r - r0.value_in_unit(unit.nanometer)))
    return np.array(out)


def close_contacts(topology, positions):
    """Pairs more than three bonds apart closer than 0.17 nm (with H) or 0.27 nm (heavy)."""
    n = topology.getNumAtoms()
    adj = np.eye(n, dtype=int)
    for a, b in topology.bonds():
        adj[a.index, b.index] = adj[b.index, a.index] = 1
    near = np.linalg.matrix_power(adj, 3) > 0
    heavy = np.array([a.element.symbol != "H" for a in topology.atoms()])
    limit = np.where(heavy[:, None] & heavy[None, :], 0.27, 0.17)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    return np.argwhere(np.triu((d < limit) & ~near, 1))


def dihedral(p0, p1, p2, p3):
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1)
    v, w = b0 - (b0 @ b1) * b1, b2 - (b2 @ b1) * b1
    return np.degrees(np.arctan2(np.cross(b1, v) @ w, v @ w))


def atom_index(topology):
    return {(a.residue.index, a.name): a.index for a in topology.atoms()}


@pytest.mark.parametrize("code", sorted(ONE_LETTER))
def test_every_residue_parameterizes_with_amber14(code, amber):
    top, pos = build_peptide(code)
    names = [r.name for r in top.residues()]
    assert names == ["ACE", ONE_LETTER[code], "NME"]
    assert pos.shape == (top.getNumAtoms(), 3) and np.all(np.isfinite(pos))
    system = amber.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    assert system.getNumParticles() == top.getNumAtoms()
    assert bond_deviations(system, pos).max() < BOND_TOL
    assert len(close_contacts(top, pos)) == 0
    e = energy(system, pos)
    assert np.isfinite(e) and e < ENERGY_BOUND
    if code != "G":  # L-amino acids: improper C-N-CA-CB near -122 degrees
        ix = atom_index(top)
        chi = dihedral(*(pos[ix[1, n]] for n in ("C", "N", "CA", "CB")))
        assert -135 < chi < -110


def test_every_residue_parameterizes_with_charmm36(charmm):
    # charmm36.xml caps through patches (ACE, CT3) on the end residues, so the caps are merged
    # first (charmm_caps); unmerged ACE/NME find no template. Patch matching costs seconds per
    # createSystem call, so all 20 capped residues and the three kinds of charged termini go
    # into one topology, 4 nm apart.
    modeller = app.Modeller(app.Topology(), [])
    molecules = [(code, ("ACE", "NME")) for code in sorted(ONE_LETTER)]
    molecules += [("GDKF", caps) for caps in (None, ("ACE", None), (None, "NME"))]
    for k, (seq, caps) in enumerate(molecules):
        top, pos = build_peptide(seq, caps=caps)
        ctop = charmm_caps(top)
        assert ctop.getNumAtoms() == top.getNumAtoms()
        assert ctop.getNumResidues() == len(seq)
        modeller.add(ctop, (pos + [4.0 * k, 0.0, 0.0]) * unit.nanometer)
        if seq == "A":  # ACE-ALA-NME also matches the whole-molecule templates ALAD and AANM
            alad = modeller.topology.getNumResidues() - 1
    templates = {list(modeller.topology.residues())[alad]: "ALAD"}
    positions = np.asarray(modeller.getPositions().value_in_unit(unit.nanometer))
    system = charmm.createSystem(
        modeller.topology, nonbondedMethod=app.NoCutoff, residueTemplates=templates
    )
    assert system.getNumParticles() == modeller.topology.getNumAtoms()
    assert bond_deviations(system, positions).max() < BOND_TOL
    e = energy(system, positions)
    assert np.isfinite(e) and e < ENERGY_BOUND * len(molecules)


def test_long_peptide_default_and_presets(amber):
    seq = "".join(sorted(ONE_LETTER))  # all 20, two of them in a row nowhere
    for preset in (None, "ppii", "alpha"):
        top, pos = build_peptide(seq, **(CONFORMATIONS[preset] if preset else {}))
        system = amber.createSystem(top, nonbondedMethod=app.NoCutoff)
        assert bond_deviations(system, pos).max() < BOND_TOL
        assert np.isfinite(energy(system, pos, minimize_steps=200))
        if preset != "alpha":  # alpha brings Pro/Thr close to the carbonyl i-3 (documented)
            assert len(close_contacts(top, pos)) == 0


def test_backbone_dihedrals_are_the_requested_ones():
    phi, psi, omega = [-70.0, -150.0, -60.0, 60.0], [140.0, 160.0, -40.0, 45.0], 175.0
    top, pos = build_peptide("AVPG", phi=phi, psi=psi, omega=omega, hydrogens=False)
    ix = atom_index(top)
    for r in range(1, 5):
        prev, nxt = (r - 1, "C"), (r + 1, "N")
        got_phi = dihedral(*(pos[ix[k]] for k in (prev, (r, "N"), (r, "CA"), (r, "C"))))
        got_psi = dihedral(*(pos[ix[k]] for k in ((r, "N"), (r, "CA"), (r, "C"), nxt)))
        want_phi = -63.0 if r == 3 else phi[r - 1]  # proline's ring fixes its phi
        assert got_phi == pytest.approx(want_phi, abs=1e-6)
        assert got_psi == pytest.approx(psi[r - 1], abs=1e-6)
        nxt_ca = (r + 1, "CA") if r < 4 else (5, "C")
        got_omega = dihedral(*(pos[ix[k]] for k in ((r, "CA"), (r, "C"), nxt, nxt_ca)))
        assert abs((got_omega - omega + 180) % 360 - 180) < 1e-6


def test_build_is_deterministic_and_leaves_global_random_alone():
    random.seed(123)
    state = random.getstate()
    top1, pos1 = build_peptide("KHW")
    assert random.getstate() == state
    top2, pos2 = build_peptide("KHW")
    assert [a.name for a in top1.atoms()] == [a.name for a in top2.atoms()]
    np.testing.assert_array_equal(pos1, pos2)


def test_sequence_spellings_agree():
    ref, pos = build_peptide("AGW", hydrogens=False)
    for spelling in (["ALA", "GLY", "TRP"], "ALA-GLY-TRP", "ala gly trp", ["A", "G", "W"]):
        top, p = build_peptide(spelling, hydrogens=False)
        assert [a.name for a in top.atoms()] == [a.name for a in ref.atoms()]
        np.testing.assert_array_equal(p, pos)


def test_protonation_variants(amber):
    top, _ = build_peptide(["HIE", "HIP", "ASH", "LYN", "GLH"])
    assert [r.name for r in top.residues()][1:-1] == ["HIS", "HIS", "ASP", "LYS", "GLU"]
    names = [{a.name for a in r.atoms()} for r in top.residues()][1:-1]
    assert "HE2" in names[0] and "HD1" not in names[0]
    assert {"HD1", "HE2"} <= names[1]
    assert "HD2" in names[2] and "HZ3" not in names[3] and "HE2" in names[4]
    system = amber.createSystem(top, nonbondedMethod=app.NoCutoff)
    charge = sum(
        f.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
        for f in system.getForces()
        if isinstance(f, openmm.NonbondedForce)
        for i in range(f.getNumParticles())
    )
    assert charge == pytest.approx(1.0, abs=1e-6)  # only HIP is charged


@pytest.mark.parametrize("caps", [None, ("ACE", None), (None, "NME")])
def test_charged_termini(caps, amber):
    top, pos = build_peptide("GDKF", caps=caps)
    n_free, c_free = (True, True) if caps is None else (caps[0] is None, caps[1] is None)
    residues = [r for r in top.residues() if r.name not in ("ACE", "NME")]
    assert len(residues) == 4
    assert ("H3" in {a.name for a in residues[0].atoms()}) == n_free  # NH3+
    assert ("OXT" in {a.name for a in residues[-1].atoms()}) == c_free  # COO-
    system = amber.createSystem(top, nonbondedMethod=app.NoCutoff)
    assert bond_deviations(system, pos).max() < BOND_TOL
    assert len(close_contacts(top, pos)) == 0
    assert np.isfinite(energy(system, pos))


def test_alanine_dipeptide_minimizes_to_a_sane_energy(amber):
    top, pos = alanine_dipeptide()
    assert top.getNumAtoms() == 22
    system = amber.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None)
    e = energy(system, pos, minimize_steps=1000)
    assert -95.0 < e < -80.0  # amber14 vacuum, from the default beta start: -87.0


def test_solvate_box_and_ions():
    top, pos = build_peptide("AAGWK")  # net charge +1
    stop, spos, box = solvate(top, pos, padding=0.8)
    names = [r.name for r in stop.residues()]
    assert names.count("CL") == 1 and names.count("NA") == 0
    assert np.allclose(box, np.diag(np.diag(box))) and np.all(np.diag(box) > 2.0)
    assert spos.shape == (stop.getNumAtoms(), 3)
    np.testing.assert_allclose(spos[: len(pos)] - spos[0], pos - pos[0], atol=1e-12)
    solute_centre = 0.5 * (spos[: len(pos)].min(0) + spos[: len(pos)].max(0))
    np.testing.assert_allclose(solute_centre, np.diag(box) / 2, atol=1e-9)
    oxygens = [a.index for a in stop.atoms() if a.residue.name == "HOH" and a.name == "O"]
    assert np.all(spos[oxygens] > -0.05) and np.all(spos[oxygens] < np.diag(box) + 0.05)
    _, _, box2 = solvate(top, pos, box_size=(3.0, 3.1, 3.2), ionic_strength=0.15)
    np.testing.assert_allclose(np.diag(box2), [3.0, 3.1, 3.2])


def test_solvated_dipeptide_is_the_water_data_file_size():
    top, _, box = alanine_dipeptide(solvated=True)
    assert top.getNumAtoms() == DATA_FILES["alanine-dipeptide-water.pdb"][0]
    np.testing.assert_allclose(box, 2.9 * np.eye(3))


@pytest.mark.parametrize(
    "sequence, match",
    [
        ("AXG", r"'X' at position 2.*ACDEFGHIKLMNPQRSTVWY"),
        (["ALA", "FOO"], r"'FOO' at position 2.*ALA, ARG"),
        ("ALA-B", r"'B'"),
        ("", "empty sequence"),
        ([], "empty sequence"),
    ],
)
def test_bad_sequences_raise(sequence, match):
    with pytest.raises(ValueError, match=match):
        build_peptide(sequence)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="phi must be"):
        build_peptide("AAA", phi=[-60.0, -60.0])
    with pytest.raises(ValueError, match="caps"):
        build_peptide("A", caps=("NME", "ACE"))
    top, pos = build_peptide("A", hydrogens=False)
    with pytest.raises(ValueError, match="positions must be"):
        solvate(top, pos[:-1])
    with pytest.raises(ValueError, match="padding"):
        solvate(top, pos, padding=None)
    with pytest.raises(ValueError, match="not both"):
        alanine_dipeptide(solvated=True, box_size=3.0, padding=1.0)


# -- data files ---------------------------------------------------------------------------------


def load_make_data():
    spec = importlib.util.spec_from_file_location("make_data", ROOT / "tools" / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_data_files_parse(name):
    import mdtraj as md

    n_atoms, edge = DATA_FILES[name]
    pdb = app.PDBFile(str(DATA / name))
    traj = md.load(str(DATA / name))
    assert pdb.topology.getNumAtoms() == traj.n_atoms == n_atoms
    if edge is None:
        assert pdb.topology.getPeriodicBoxVectors() is None
    else:
        np.testing.assert_allclose(traj.unitcell_lengths[0], [edge] * 3, atol=1e-4)
        assert edge >= 2.0  # room for a 1.0 nm cutoff
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    method = app.NoCutoff if edge is None else app.PME
    ff.createSystem(pdb.topology, nonbondedMethod=method)


def test_data_files_match_make_data(tmp_path):
    summary = load_make_data().make(tmp_path)
    assert sorted(summary) == sorted(DATA_FILES)
    for name, (n_atoms, _) in DATA_FILES.items():
        old, new = app.PDBFile(str(DATA / name)), app.PDBFile(str(tmp_path / name))
        assert summary[name][0] == n_atoms == old.topology.getNumAtoms()
        key = lambda t: [(a.residue.name, a.name, a.element.symbol) for a in t.atoms()]
        assert key(old.topology) == key(new.topology)
        x_old = old.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        x_new = new.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if np.abs(x_new - x_old).max() <= 1e-3:
            continue
        # A fixed-length L-BFGS run is not bit-reproducible across machines and library
        # builds (its path follows the rounding): measured, the 85-atom peptide lands 0.036 nm
        # (RMSD) from the stored file with 91.4 vs 92.4 kJ/mol. The same structure, then.
        a, b = (md.load(str(d / name)) for d in (DATA, tmp_path))
        assert float(md.rmsd(b, a)[0]) < 0.06, name
        if DATA_FILES[name][1] is None:  # vacuum: the same energy (water: PME, skip)
            assert abs(summary[name][2] - _energy(old)) < 0.05 * abs(summary[name][2]) + 5.0


def _energy(pdb) -> float:
    """amber14 potential energy of a vacuum PDB (kJ/mol; no cutoff, OpenMM Reference)."""
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pdb.positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
        unit.kilojoule_per_mole)
