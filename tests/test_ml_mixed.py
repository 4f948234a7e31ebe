"""Hybrid ML/MM: the selection's intramolecular MM terms are removed exactly (OpenMM's Reference
platform: E_mixed_MM = E_full - E_solute alone), the rest is the imported force field, and the
network adds the selection's energy; alanine dipeptide in water runs with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import Simulation, data_file
from workbench.ml import Model
from workbench.ml.mixed import mixed_openmm_system, mixed_system

jax.config.update("jax_enable_x64", True)


def _openmm_energy(system, positions):
    import openmm
    from openmm import unit

    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001),
                         openmm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(positions * unit.nanometer)
    return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


@pytest.fixture(scope="module")
def cluster():
    """The dipeptide with its 12 nearest waters, in vacuum (amber14 + TIP3P, no cutoff)."""
    import mdtraj as md
    from openmm import app

    traj = md.load(data_file("alanine-dipeptide-water.pdb"))
    solute = traj.topology.select("not water")
    waters = traj.topology.select("water and name O")
    d = np.linalg.norm(traj.xyz[0, waters] - traj.xyz[0, solute].mean(0), axis=1)
    keep = [a.index for o in waters[np.argsort(d)[:12]]
            for a in traj.topology.atom(int(o)).residue.atoms]
    sub = traj.atom_slice(np.concatenate([solute, np.sort(keep)]))
    top = sub.topology.to_openmm()
    top.setPeriodicBoxVectors(None)
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    return top, sub.xyz[0].astype(float), ff, solute


def test_intramolecular_mm_terms_of_the_selection_are_removed_exactly(cluster):
    from openmm import app

    top, pos, ff, solute = cluster
    full = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    mixed = mixed_openmm_system(full, solute)
    alone_top = app.Modeller(top, pos)
    alone_top.delete([r for r in top.residues() if r.name == "HOH"])
    alone = ff.createSystem(alone_top.topology, nonbondedMethod=app.NoCutoff, constraints=None)
    e_full, e_mixed = _openmm_energy(full, pos), _openmm_energy(mixed, pos)
    e_alone = _openmm_energy(alone, pos[: len(solute)])
    assert e_mixed == pytest.approx(e_full - e_alone, rel=1e-9, abs=1e-6)


def test_mixed_system_energy_is_mm_plus_the_network_on_the_selection(cluster):
    from workbench.forcefield.openmm import from_topology

    top, pos, _, solute = cluster
    ffsys = from_topology(top, pos, ("amber14-all.xml", "amber14/tip3p.xml"), rigid_water=False)
    model = Model.create("painn", ("H", "C", "N", "O"), cutoff=0.4, seed=0, features=8, layers=1,
                         n_rbf=4)
    hybrid = mixed_system(ffsys, model, solute)
    energies = hybrid.potential.term_energies(jnp.asarray(pos), hybrid.params, None)
    mm = sum(float(v) for k, v in energies.items() if k != "NeuralPotential")
    expected_mm = _openmm_energy(mixed_openmm_system(ffsys.system, solute), pos)
    assert mm == pytest.approx(expected_mm, rel=1e-6)
    z = np.array([a.element.atomic_number for a in top.atoms()])[solute]
    alone = model.potential(z)
    e_ml = alone.energy(jnp.asarray(pos[solute]), model.params, None)
    assert float(energies["NeuralPotential"]) == pytest.approx(float(e_ml), rel=1e-12)


def test_alanine_dipeptide_in_water_runs_with_a_network_solute():
    from workbench.forcefield import load

    ffsys = load(data_file("alanine-dipeptide-water.pdb"), ("amber14-all.xml", "amber14/tip3p.xml"),
                 nonbonded_method="PME", cutoff=0.9, constraints="HBonds")
    solute = np.array([a.index for a in ffsys.topology.atoms() if a.residue.name != "HOH"])
    model = Model.create("painn", ("H", "C", "N", "O"), cutoff=0.4, seed=0, features=8, layers=1,
                         n_rbf=4)
    hybrid = mixed_system(ffsys, model, solute)
    sim = Simulation(hybrid, "langevin", dict(dt=0.001, kT=2.494, gamma=1.0), seed=1,
                     report_interval=10, frames_per_chunk=2)
    log = sim.run(40, progress=False)
    assert np.all(np.isfinite(log["potential"])) and len(log["potential"]) == 4
