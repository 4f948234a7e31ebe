"""Export to OpenMM (workbench.forcefield.export): a ForceFieldSystem with perturbed per-type
parameters, written back into an OpenMM System, gives on OpenMM's Reference platform the energy
workbench gives for the same parameters, force by force (float64, 1e-6 relative), and differs
from the imported System's (so a writer that wrote nothing would fail). Unchanged parameters
give the imported System back bit for bit; XML and PDB round trips.

Systems: alanine dipeptide with amber14 (vacuum), with amber14 + implicit/obc2.xml
(CustomGBForce) and with amber99sb + amber99_obc (GBSAOBCForce); ACE-AKA-NME with charmm36
(CustomTorsion, CustomBond, CustomNonbonded with NBFIX tables, CMAP, fixed 1-4 pairs); a 2 nm
TIP3P box (PME, dispersion correction, flexible water); a synthetic System of the custom bonded
kinds the force fields do not use (angle, external, compound bond, discrete 1D table, globals)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mdtraj as md
import numpy as np
import openmm as mm
import pytest
from openmm import app, unit

from workbench.forcefield import export
from workbench.forcefield import openmm as wfo
from workbench.forcefield.compare import _openmm_groups

pytestmark = pytest.mark.usefixtures("x64")

TOL = 1e-6


# ---------------------------------------------------------------------------- systems
def _dipeptide(files):
    from workbench.systems import data_file

    return wfo.load(data_file("alanine-dipeptide-vacuum.pdb"), list(files))


def _charmm():
    from workbench.forcefield.builder import build_peptide, charmm_caps

    top, pos = build_peptide("AKA")
    top = charmm_caps(top)
    ff = app.ForceField("charmm36.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff)
    return wfo.from_system(system, pos, top, forcefield=ff)


def _water_box():
    files = ["amber14/tip3p.xml"]
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(app.ForceField(*files), model="tip3p",
                        boxSize=mm.Vec3(2.0, 2.0, 2.0) * unit.nanometer)
    return wfo.from_topology(modeller.topology, modeller.getPositions(), files,
                             nonbonded_method="PME", cutoff=0.7, rigid_water=False,
                             ewald_error_tolerance=1e-5)


def _synthetic():
    """Six particles, no topology: CustomAngle (per-angle + global), CustomExternal,
    CustomCompoundBond (distance and angle of three particles, plus a Discrete1DFunction
    indexed by a per-bond parameter)."""
    rng = np.random.default_rng(5)
    pos = rng.uniform(0.0, 0.6, (6, 3))
    system = mm.System()
    for _ in range(6):
        system.addParticle(12.0)
    angle = mm.CustomAngleForce("ka*(theta-theta0)^2 + shift")
    angle.addPerAngleParameter("ka")
    angle.addPerAngleParameter("theta0")
    angle.addGlobalParameter("shift", 0.7)
    for a, b, c in ((0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5)):
        angle.addAngle(a, b, c, [150.0 + 10 * a, 1.9])
    external = mm.CustomExternalForce("kx*((x-x0)^2 + y^2)")
    external.addPerParticleParameter("kx")
    external.addPerParticleParameter("x0")
    for i in range(6):
        external.addParticle(i, [100.0 + i, 0.1 * i])
    compound = mm.CustomCompoundBondForce(3, "kc*distance(p1,p2)*angle(p1,p2,p3) + tab(idx)")
    compound.addPerBondParameter("kc")
    compound.addPerBondParameter("idx")
    compound.addTabulatedFunction("tab", mm.Discrete1DFunction([0.5, -1.5, 2.5]))
    compound.addBond([0, 2, 4], [3.0, 0.0])
    compound.addBond([1, 3, 5], [4.0, 2.0])
    for f in (angle, external, compound):
        system.addForce(f)
    return wfo.from_system(system, pos)


SYSTEMS = {
    "amber14": lambda: _dipeptide(["amber14-all.xml"]),
    "charmm36": _charmm,
    "obc2": lambda: _dipeptide(["amber14-all.xml", "implicit/obc2.xml"]),
    "gbsaobc": lambda: _dipeptide(["amber99sb.xml", "amber99_obc.xml"]),
    "water-pme": _water_box,
    "synthetic": _synthetic,
}


@pytest.fixture(scope="module")
def systems():
    cache = {}

    def get(name):
        if name not in cache:
            jax.config.update("jax_enable_x64", True)
            cache[name] = SYSTEMS[name]()
        return cache[name]

    return get


# ---------------------------------------------------------------------------- helpers
def _perturb(params, seed):
    """Every leaf times a seeded factor in [0.9, 1.1] per element; square 2D leaves (discrete
    pair tables such as NBFIX acoef(type1, type2)) by a symmetric factor, since the pair order
    inside a pair loop is no convention; CustomNonbonded's ``type`` (a table index) untouched."""
    rng = np.random.default_rng(seed)

    def one(path, x):
        a = np.asarray(x, dtype=float)
        if getattr(path[-1], "key", None) in ("type", "idx"):
            return x
        f = rng.uniform(0.9, 1.1, a.shape)
        if a.ndim == 2 and a.shape[0] == a.shape[1]:
            f = 0.5 * (f + f.T)
        return jnp.asarray(a * f)

    return jax.tree_util.tree_map_with_path(one, params)


def _workbench(ffs, params):
    r = jnp.asarray(ffs.positions)
    aux = ffs.potential.allocate(ffs.positions)
    out = jax.jit(lambda p: ffs.potential.term_energies(r, p, aux))(params)
    return {k: float(v) for k, v in out.items()}


def _openmm(system, ffs):
    return {k: e for k, (e, _) in
            _openmm_groups(system, ffs.positions, ffs.force_index, "Reference").items()}


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1.0)


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(SYSTEMS))
def test_perturbed_export_matches_workbench(systems, name):
    ffs = systems(name)
    nb = ffs.potential.terms.get("NonbondedForce")
    if name == "amber14":  # 1-4 pairs regenerated from the types and the 1-4 scales
        assert len(nb.scaled_pairs) > 0 and len(nb.fixed_pairs) == 0
    if name == "charmm36":  # 1-4 pairs with parameters of their own
        assert len(nb.fixed_pairs) > 0
    params = _perturb(ffs.params, seed=list(SYSTEMS).index(name))
    exported = export.to_openmm(ffs, params)
    got = _openmm(exported, ffs)
    want = _workbench(ffs, params)
    before = _openmm(ffs.system, ffs)
    errors = {k: _rel(want[k], got[k]) for k in want}
    total = abs(sum(want.values()) - sum(got.values())) / abs(sum(got.values()))
    print(f"\n{name}: max term error {max(errors.values()):.2e}, total {total:.2e}; {errors}")
    assert max(errors.values()) <= TOL, errors
    assert total <= TOL
    # the perturbation reached every force: the exported energies are not the imported ones
    moved = {k: _rel(got[k], before[k]) for k in got}
    assert min(moved.values()) > 1e-4, moved
    # the imported System itself is untouched
    assert mm.XmlSerializer.serialize(ffs.system) == mm.XmlSerializer.serialize(
        export.to_openmm(ffs))


@pytest.mark.parametrize("name", ["amber14", "charmm36", "obc2", "water-pme"])
def test_unchanged_export_is_the_imported_system(systems, name):
    ffs = systems(name)
    exported = export.to_openmm(ffs)
    got, want = _openmm(exported, ffs), _openmm(ffs.system, ffs)
    assert all(_rel(got[k], want[k]) <= 1e-10 for k in want), (got, want)
    assert mm.XmlSerializer.serialize(exported) == mm.XmlSerializer.serialize(ffs.system)
    # float32 parameters (the default precision) that were not changed write the originals
    p32 = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), ffs.params)
    assert mm.XmlSerializer.serialize(export.to_openmm(ffs, p32)) == \
        mm.XmlSerializer.serialize(ffs.system)


def test_xml_round_trip(systems, tmp_path):
    ffs = systems("charmm36")
    params = _perturb(ffs.params, seed=3)
    path = tmp_path / "charmm.xml"
    text = export.to_xml(ffs, str(path), params=params)
    assert path.read_text() == text
    again = mm.XmlSerializer.deserialize(path.read_text())
    got, want = _openmm(again, ffs), _openmm(export.to_openmm(ffs, params), ffs)
    assert all(_rel(got[k], want[k]) <= 1e-12 for k in want), (got, want)


def test_write_pdb_round_trip(systems, tmp_path):
    ffs = systems("water-pme")
    rng = np.random.default_rng(0)
    frames = ffs.positions + 0.01 * rng.standard_normal((2, *ffs.positions.shape))
    path = export.write_pdb(ffs, frames, str(tmp_path / "water.pdb"))
    traj = md.load(path)
    assert traj.n_frames == 2 and traj.n_atoms == ffs.n_atoms
    assert traj.topology.n_residues == ffs.topology.getNumResidues()
    np.testing.assert_allclose(traj.xyz, frames, atol=5.1e-5)  # 3 decimals in angstrom
    np.testing.assert_allclose(traj.unitcell_vectors[0], ffs.box, atol=1e-5)
    assert ffs.topology.getPeriodicBoxVectors() is not None  # restored
    # a system without a topology: mdtraj's placeholder, one frame, no box
    vacuum = systems("amber14")
    bare = wfo.from_system(vacuum.system, vacuum.positions)
    assert bare.topology is None
    path = export.write_pdb(bare, jnp.asarray(vacuum.positions), str(tmp_path / "bare.pdb"))
    traj = md.load(path)
    assert traj.n_frames == 1 and traj.unitcell_vectors is None
    np.testing.assert_allclose(traj.xyz[0], vacuum.positions, atol=5.1e-5)
    with pytest.raises(ValueError, match="shape"):
        export.write_pdb(bare, vacuum.positions[:5], str(tmp_path / "bad.pdb"))


def test_unwritable_force_raises_only_when_changed(systems, monkeypatch):
    ffs = systems("amber14")
    monkeypatch.delitem(export.WRITERS, "HarmonicAngleForce")
    # unchanged: copied as it is
    assert mm.XmlSerializer.serialize(export.to_openmm(ffs)) == \
        mm.XmlSerializer.serialize(ffs.system)
    params = dict(ffs.params)
    params["HarmonicAngleForce"] = {k: v * 1.05 for k, v in params["HarmonicAngleForce"].items()}
    with pytest.raises(NotImplementedError, match="HarmonicAngleForce"):
        export.to_openmm(ffs, params)


def test_bad_params_are_refused(systems):
    ffs = systems("synthetic")
    params = {k: dict(v) for k, v in ffs.params.items()}
    params["CustomAngleForce"]["ka"] = jnp.ones(7)
    with pytest.raises(ValueError, match="structural"):
        export.to_openmm(ffs, params)
    del params["CustomAngleForce"]
    with pytest.raises(KeyError, match="one entry per term"):
        export.to_openmm(ffs, params)


def test_shared_global_parameter_must_agree():
    """Two forces with one global parameter: OpenMM keeps one value per Context."""
    system = mm.System()
    for _ in range(2):
        system.addParticle(1.0)
    for _ in range(2):
        f = mm.CustomBondForce("g*r^2")
        f.addGlobalParameter("g", 2.0)
        f.addBond(0, 1, [])
        system.addForce(f)
    ffs = wfo.from_system(system, np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0]]))
    params = {k: dict(v) for k, v in ffs.params.items()}
    params["CustomBondForce"]["g"] = jnp.asarray(3.0)
    with pytest.raises(ValueError, match="global parameter 'g'"):
        export.to_openmm(ffs, params)
    params["CustomBondForce_2"]["g"] = jnp.asarray(3.0)
    out = export.to_openmm(ffs, params)
    assert [out.getForce(k).getGlobalParameterDefaultValue(0) for k in range(2)] == [3.0, 3.0]
