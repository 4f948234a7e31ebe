"""OpenMM force fields in workbench: every term against OpenMM's Reference platform (float64),
parameters keyed by force-field type (gradients, tuning a type moves all its instances, checked
against OpenMM with the same change), and named errors for bad input.

Systems: villin headpiece (the PDB that ships with OpenMM, not used by the examples) in vacuum
and in its TIP3P water box, and the small water box OpenMM ships."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import openmm as mm
import pytest
from openmm import app, unit

from workbench.forcefield import openmm as wfo
from workbench.forcefield.compare import compare, format_table
from workbench.potentials.base import EnergyTerm

DATA = os.path.join(os.path.dirname(app.__file__), "data")
VILLIN = os.path.join(DATA, "test.pdb")


def _villin_vacuum():
    pdb = app.PDBFile(VILLIN)
    mod = app.Modeller(pdb.topology, pdb.positions)
    mod.deleteWater()
    mod.delete([r for r in mod.topology.residues() if r.name.upper() in ("NA", "CL")])
    return mod.topology, mod.positions


@pytest.fixture(scope="module")
def villin_vacuum():
    top, pos = _villin_vacuum()
    ff = app.ForceField("amber14-all.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff)
    return wfo.from_system(system, pos, top, forcefield=ff), ff


def _check(rows):
    assert all(c.ok for c in rows), "\n" + format_table(rows)


def test_villin_vacuum_nocutoff_matches_openmm(villin_vacuum):
    system, _ = villin_vacuum
    assert set(system.potential.terms) == {"HarmonicBondForce", "HarmonicAngleForce",
                                           "PeriodicTorsionForce", "NonbondedForce"}
    assert any("CMMotionRemover" in n for n in system.notes)
    _check(compare(system))


def test_villin_cutoff_nonperiodic_matches_openmm():
    top, pos = _villin_vacuum()
    ff = app.ForceField("amber14-all.xml")
    sys_ = ff.createSystem(top, nonbondedMethod=app.CutoffNonPeriodic,
                           nonbondedCutoff=0.9 * unit.nanometer)
    s = wfo.from_system(sys_, pos, top, forcefield=ff)
    assert s.potential.terms["NonbondedForce"].method == "CutoffNonPeriodic"
    _check(compare(s))


@pytest.mark.slow
def test_villin_water_pme_switch_dispersion_matches_openmm():
    """8867 atoms, PME (OpenMM's alpha and grid from the tolerance), LJ switch from 0.9 nm,
    dispersion correction, flexible water."""
    pdb = app.PDBFile(VILLIN)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    sys_ = ff.createSystem(pdb.topology, nonbondedMethod=app.PME,
                           nonbondedCutoff=1.0 * unit.nanometer, rigidWater=False,
                           switchDistance=0.9 * unit.nanometer)
    s = wfo.from_system(sys_, pdb.positions, pdb.topology, forcefield=ff)
    nb = s.potential.terms["NonbondedForce"]
    assert nb.method == "PME" and nb.switch_distance == pytest.approx(0.9)
    assert nb.dispersion_correction
    rows = compare(s)
    _check(rows)
    assert max(c.energy_error for c in rows) < 1e-9  # in practice agreement is ~1e-12


@pytest.mark.parametrize("method", ["CutoffPeriodic", "Ewald", "PME"])
def test_water_box_periodic_methods_match_openmm(method):
    """OpenMM's 2685-atom TIP3P box (3 nm) with reaction field, Ewald and PME."""
    pdb = app.PDBFile(os.path.join(DATA, "tip3p.pdb"))
    ff = app.ForceField("amber14/tip3p.xml")
    sys_ = ff.createSystem(pdb.topology, nonbondedMethod=getattr(app, method),
                           nonbondedCutoff=0.9 * unit.nanometer, rigidWater=False,
                           ewaldErrorTolerance=1e-4)
    s = wfo.from_system(sys_, pdb.positions, pdb.topology, forcefield=ff)
    _check(compare(s))
    # the hand-written pair forces equal minus the gradient of the energy
    nb, p = s.potential.terms["NonbondedForce"], s.params["NonbondedForce"]
    r = jnp.asarray(s.positions)
    aux = s.potential.allocate(s.positions)
    ev = jax.jit(nb.energy_forces)(r, p, aux)
    g = jax.jit(jax.grad(nb.energy))(r, p, aux)
    np.testing.assert_allclose(np.asarray(ev.forces), -np.asarray(g), rtol=1e-9, atol=1e-7)
    # the hand-written pair virial equals the strain derivative of the energy by autodiff
    e_fast, w_fast = jax.jit(nb.energy_virial)(r, p, aux)
    e_auto, w_auto = jax.jit(lambda *a: EnergyTerm.energy_virial(nb, *a))(r, p, aux)
    np.testing.assert_allclose(float(e_fast), float(e_auto), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(w_fast), np.asarray(w_auto), rtol=1e-9,
                               atol=1e-9 * float(np.abs(w_auto).max()))


def test_load_from_pdb_and_xml_keeps_types(tmp_path):
    top, pos = _villin_vacuum()
    path = str(tmp_path / "villin.pdb")
    with open(path, "w") as fh:
        app.PDBFile.writeFile(top, pos, fh)
    s = wfo.load(path, ["amber14-all.xml"])
    tors = s.potential.terms["PeriodicTorsionForce"]
    assert tors.n_types < tors.n_instances
    assert any(name.startswith("protein-C-protein-N") or "-" in name for name in tors.type_names)
    nb = s.potential.terms["NonbondedForce"]
    assert any(n.startswith("LEU:") for n in nb.charge_type_names)
    assert len(nb.scaled_pairs) > 0 and len(nb.fixed_pairs) == 0  # amber 1-4s follow the types
    _check(compare(s))


# ---------------------------------------------------------------------------- types
def _openmm_energy(system, positions, force_name):
    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(system))
    for k, f in enumerate(copy.getForces()):
        f.setForceGroup(1 if type(f).__name__ == force_name else 0)
    ctx = mm.Context(copy, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * unit.nanometer)
    st = ctx.getState(getEnergy=True, groups={1})
    return st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_tuning_one_torsion_type_moves_every_instance_as_in_openmm(villin_vacuum):
    s, _ = villin_vacuum
    term = s.potential.terms["PeriodicTorsionForce"]
    counts = np.bincount(term.types)
    t = int(np.argmax(counts))  # the most common torsion type
    assert counts[t] > 3
    params = dict(s.params["PeriodicTorsionForce"])
    params["k"] = params["k"].at[t].add(1.5)
    r = jnp.asarray(s.positions)
    e_new = float(term.energy(r, params))
    # the same change made to every instance in OpenMM
    f = s.system.getForce(s.force_index["PeriodicTorsionForce"])
    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(s.system))
    fc = copy.getForce(s.force_index["PeriodicTorsionForce"])
    for m in np.nonzero(term.types == t)[0]:
        p1, p2, p3, p4, n, phase, k = f.getTorsionParameters(int(m))
        fc.setTorsionParameters(int(m), p1, p2, p3, p4, n, phase,
                                k + 1.5 * unit.kilojoule_per_mole)
    e_ref = _openmm_energy(copy, s.positions, "PeriodicTorsionForce")
    assert e_new == pytest.approx(e_ref, rel=1e-10)


def test_type_parameter_gradients_match_finite_differences(villin_vacuum):
    s, _ = villin_vacuum
    r = jnp.asarray(s.positions)
    pot, params = s.potential, s.params
    energy = jax.jit(lambda p: pot.energy(r, p))
    grad = jax.grad(lambda p: pot.energy(r, p))(params)
    rng = np.random.default_rng(0)
    checks = [("PeriodicTorsionForce", "k"), ("HarmonicAngleForce", "theta0"),
              ("HarmonicBondForce", "r0"), ("NonbondedForce", "charge"),
              ("NonbondedForce", "epsilon"), ("NonbondedForce", "sigma"),
              ("NonbondedForce", "coulomb14scale")]
    for term, name in checks:
        leaf = params[term][name]
        idx = () if leaf.ndim == 0 else (int(rng.integers(leaf.shape[0])),)
        h = 1e-4 * max(1.0, abs(float(leaf[idx])))  # the energy sums large excluded terms

        def shifted(d, term=term, name=name, idx=idx):
            p = {k: dict(v) for k, v in params.items()}
            p[term][name] = leaf.at[idx].add(d)
            return float(energy(p))

        fd = (shifted(h) - shifted(-h)) / (2 * h)
        got = float(grad[term][name][idx])
        assert got == pytest.approx(fd, rel=1e-5, abs=1e-6), (term, name, idx)


def test_per_instance_view(villin_vacuum):
    s, _ = villin_vacuum
    bonds = s.potential.terms["HarmonicBondForce"]
    inst = bonds.instance_params(s.params["HarmonicBondForce"])
    f = s.system.getForce(s.force_index["HarmonicBondForce"])
    for m in (0, 7, bonds.n_instances - 1):
        _, _, r0, k = f.getBondParameters(m)
        assert float(inst["r0"][m]) == pytest.approx(r0.value_in_unit(unit.nanometer))
        assert float(inst["k"][m]) == pytest.approx(
            k.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2))


# ---------------------------------------------------------------------------- errors
def test_unsupported_force_is_named():
    system = mm.System()
    for _ in range(2):
        system.addParticle(1.0)
    system.addForce(mm.AndersenThermostat(300, 1.0))
    with pytest.raises(wfo.UnsupportedForceError, match="AndersenThermostat"):
        wfo.from_system(system, np.zeros((2, 3)))


def test_missing_template_is_a_named_error(tmp_path):
    path = tmp_path / "odd.pdb"
    path.write_text(
        "ATOM      1  C1  XYZ A   1       0.000   0.000   0.000  1.00  0.00           C\n"
        "ATOM      2  C2  XYZ A   1       1.500   0.000   0.000  1.00  0.00           C\nEND\n")
    with pytest.raises(wfo.ForceFieldError, match="XYZ"):
        wfo.load(str(path), ["amber14-all.xml"])


def test_bad_files_and_small_boxes(tmp_path):
    with pytest.raises(wfo.ForceFieldError, match="not found"):
        wfo.load(str(tmp_path / "missing.pdb"))
    with pytest.raises(wfo.ForceFieldError, match="force field"):
        wfo.load(os.path.join(DATA, "tip3p.pdb"), ["no-such-forcefield.xml"])
    with pytest.raises(wfo.ForceFieldError, match="half the box"):
        wfo.load(os.path.join(DATA, "tip3p.pdb"), ["amber14/tip3p.xml"],
                 nonbonded_method="PME", cutoff=1.6)
    with pytest.raises(wfo.ForceFieldError, match="no box"):
        top, pos = _villin_vacuum()
        top.setPeriodicBoxVectors(None)
        path = str(tmp_path / "nobox.pdb")
        with open(path, "w") as fh:
            app.PDBFile.writeFile(top, pos, fh)
        wfo.load(path, ["amber14-all.xml"], nonbonded_method="PME")


# ---------------------------------------------------------------------------- the example molecule
@pytest.mark.parametrize("forcefield,method", [
    (["amber14-all.xml"], "NoCutoff"),
    (["amber19-all.xml"], "NoCutoff"),                       # with CMAP
    (["amber14-all.xml", "implicit/obc2.xml"], "NoCutoff"),  # CustomGBForce
    (["amber14-all.xml", "implicit/gbn2.xml"], "NoCutoff"),
], ids=["amber14", "amber19-cmap", "obc2", "gbn2"])
def test_alanine_dipeptide_matches_openmm(forcefield, method):
    from workbench.systems import data_file

    s = wfo.load(data_file("alanine-dipeptide-vacuum.pdb"), forcefield, nonbonded_method=method)
    _check(compare(s))


@pytest.mark.slow
def test_solvated_alanine_dipeptide_pme_matches_openmm():
    from workbench.systems import data_file

    s = wfo.load(data_file("alanine-dipeptide-water.pdb"), ["amber14-all.xml", "amber14/tip3p.xml"],
                 nonbonded_method="PME", cutoff=1.0, rigid_water=False)
    _check(compare(s))


def test_new_type_parameter_values_do_not_retrace():
    """Every term of an imported force field: three parameter values, one trace."""
    from workbench.systems import data_file

    s = wfo.load(data_file("alanine-dipeptide-vacuum.pdb"), ["amber19-all.xml"])
    r = jnp.asarray(s.positions)
    traces = {"n": 0}

    def energy(params):
        traces["n"] += 1
        return s.potential.energy(r, params)

    energy = jax.jit(energy)
    for scale in (1.0, 1.1, 1.2):
        p = jax.tree_util.tree_map(lambda x: x * scale, s.params)
        assert np.isfinite(float(energy(p)))
    assert traces["n"] == 1
