"""The System object: one source of potential, params, masses, constraints, topology and units
for the drivers; unit-mistake checks; exact step counts; save/load; PDB frames."""

import warnings

import mdtraj as md
import numpy as np
import pytest

import workbench as wb
from workbench import units
from workbench.dynamics import integrators as integ
from workbench.forcefield import openmm as ffo
from workbench.simulate import Simulation
from workbench.system import System, UnitWarning, check_settings
from workbench.systems import data_file


@pytest.fixture(scope="module")
def fluid():
    return wb.lj_fluid(n_atoms=256, density=0.8442)


@pytest.fixture(scope="module")
def peptide():
    """Alanine dipeptide in vacuum, amber14, bonds to hydrogen constrained."""
    return ffo.load(data_file("alanine-dipeptide-vacuum.pdb"), ("amber14-all.xml",),
                    constraints="HBonds")


KT300 = units.kT_from_kelvin(300.0)


def test_system_validates_its_pieces(fluid):
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        System(fluid.potential, fluid.params, np.zeros((4, 2)))
    bad = fluid.positions.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(atoms \[3\]\)"):
        fluid.replace(positions=bad)
    with pytest.raises(ValueError, match=r"masses must be positive"):
        fluid.replace(masses=-np.ones(fluid.n_atoms))
    with pytest.raises(ValueError, match=r"shape \(256,\)"):
        fluid.replace(masses=np.ones(3))
    with pytest.raises(ValueError, match="units"):
        fluid.replace(units="si")
    s = System(fluid.potential, fluid.params, fluid.positions)
    assert s.masses_defaulted and np.all(s.masses == 1.0) and s.space is fluid.potential.space


def test_simulation_reads_everything_from_the_system(peptide):
    assert peptide.units == "molecular" and peptide.constraints() is not None
    sim = Simulation(peptide, "langevin", dict(dt=0.002, kT=KT300, gamma=1.0),
                     report_interval=10)
    assert sim.integrator.constraints is peptide.constraints()
    np.testing.assert_allclose(np.asarray(sim.state.masses), peptide.masses)
    out = sim.run(200, progress=False)
    # constraints held, so the temperature stays near 300 K (14,000 K without them and 1 amu)
    assert 150 < np.mean(out["temperature"]) < 500
    np.testing.assert_allclose(out["temperature"], out["kT"] / units.BOLTZMANN)
    assert np.all(np.isnan(out["pressure_bar"]))  # free space: no pressure


def test_overrides_are_explicit(peptide):
    pos = peptide.positions + 0.001
    sim = Simulation(peptide, "langevin", dict(dt=0.001, kT=KT300, gamma=1.0),
                     positions=pos, constraints=None)
    assert sim.integrator.constraints is None  # dropped on purpose: no warning
    assert sim.system.positions is not peptide.positions


def test_dropped_constraints_and_default_masses_warn(peptide):
    bare = integ.langevin(peptide.potential)
    with pytest.warns(UnitWarning, match="constraints but the integrator"):
        Simulation(peptide, bare, dict(dt=0.001, kT=KT300, gamma=1.0))
    with pytest.warns(UnitWarning, match="masses not given for a force-field potential"):
        Simulation(peptide.potential, peptide.params, "langevin",
                   dict(dt=0.001, kT=KT300, gamma=1.0), peptide.positions)
    with pytest.warns(UnitWarning, match="left at their default of 1 amu"):
        Simulation(peptide.replace(masses=None, constraint_set=None), "langevin",
                   dict(dt=0.001, kT=KT300, gamma=1.0), constraints=None)


def test_likely_unit_mistakes_are_named(peptide, fluid):
    with pytest.raises(ValueError, match=r"kT=300 kJ/mol is 36,08[12] K.*kT_from_kelvin\(300\)"):
        Simulation(peptide, "langevin", dict(dt=0.002, kT=300.0, gamma=1.0))
    with pytest.warns(UnitWarning, match=r"dt=0.5 ps is 500 fs"):
        check_settings("molecular", dict(dt=0.5, kT=2.5))
    with pytest.raises(ValueError, match="not a finite number"):
        check_settings("reduced", dict(dt=float("nan")))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_settings("reduced", dict(dt=0.05, kT=300.0))  # reduced units: no opinion
    sim = Simulation(peptide, "langevin", dict(dt=0.002, kT=KT300, gamma=1.0))
    with pytest.raises(ValueError, match="kelvin"):
        sim.set_settings(kT=310.0)


@pytest.mark.parametrize("n", [0, 7, 10, 40, 53, 95])
def test_run_takes_exactly_n_steps(fluid, n):
    kw = dict(report_interval=10, frames_per_chunk=4, seed=3)
    sim = Simulation(fluid, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0), **kw)
    out = sim.run(n, progress=False)
    assert int(sim.state.step) == n
    np.testing.assert_array_equal(out["step"], np.arange(10, n + 1, 10))
    assert sim.time == pytest.approx(n * 0.005)
    # chunking never changes the trajectory
    ref = Simulation(fluid, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0), report_interval=1,
                     seed=3)
    ref.run(n, progress=False)
    np.testing.assert_allclose(np.asarray(sim.state.positions), np.asarray(ref.state.positions),
                               atol=1e-9)


def test_remainders_compile_once(fluid):
    sim = Simulation(fluid, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0), report_interval=10,
                     frames_per_chunk=4)
    sim.run(53, progress=False)
    first = sim.compile_count
    sim.set_params({**fluid.params, "epsilon": 1.05 * fluid.params["epsilon"]})
    sim.run(53, progress=False)
    assert sim.compile_count == first == 3  # the chunk, one frame, three steps


def test_pair_system_saves_and_loads(tmp_path, fluid):
    fitted = fluid.replace(params={k: v * 1.1 for k, v in fluid.params.items()})
    path = str(tmp_path / "fluid.npz")
    fitted.save(path)
    back = System.load(path)
    assert back.units == "reduced" and back.n_atoms == fluid.n_atoms
    np.testing.assert_array_equal(back.positions, fitted.positions)
    assert back.energy() == pytest.approx(fitted.energy(), rel=1e-12)
    assert back.energy() != pytest.approx(fluid.energy(), rel=1e-3)
    with pytest.raises(ValueError, match="end in .npz"):
        fluid.save(str(tmp_path / "fluid.pickle"))


def test_forcefield_system_saves_and_loads(tmp_path, peptide):
    params = dict(peptide.params)
    params["PeriodicTorsionForce"] = {k: v * 1.2 for k, v in
                                      peptide.params["PeriodicTorsionForce"].items()}
    fitted = peptide.replace(params=params)
    path = str(tmp_path / "peptide.npz")
    fitted.save(path)
    back = System.load(path)
    assert isinstance(back, ffo.ForceFieldSystem)
    assert back.forcefield_files == ("amber14-all.xml",)
    assert back.constraints() is not None
    assert back.energy() == pytest.approx(fitted.energy(), rel=1e-10)
    assert back.type_names("PeriodicTorsionForce", "k") == \
        peptide.type_names("PeriodicTorsionForce", "k")


def test_frames_export_to_pdb(tmp_path, peptide):
    path = str(tmp_path / "frames.pdb")
    frames = np.stack([peptide.positions, peptide.positions + 0.01])
    peptide.write_pdb(path, frames)
    t = md.load(path)
    assert t.n_frames == 2 and t.n_atoms == peptide.n_atoms
    np.testing.assert_allclose(t.xyz, frames, atol=6e-4)
    assert [a.name for a in t.topology.atoms] == \
        [a.name for a in peptide.mdtraj_topology().atoms]


def test_fit_takes_a_system_and_returns_the_fitted_one(fluid):
    from workbench.gradients.fit import fit

    def loss(p):
        return (p["epsilon"][0] - 1.3) ** 2 + (p["sigma"][0] - 0.9) ** 2

    result = fit(loss, fluid, steps=300, learning_rate=0.02, progress=False)
    assert result.system is not None and result.system.potential is fluid.potential
    np.testing.assert_allclose(np.asarray(result.system.params["epsilon"]), [1.3], atol=1e-3)
    np.testing.assert_allclose(np.asarray(result.system.params["sigma"]), [0.9], atol=1e-3)


def test_samplers_take_a_system(peptide, fluid):
    from workbench.sampling import barostat, montecarlo, replica

    assert integ.langevin(peptide).constraints is peptide.constraints()
    assert replica.replica_exchange(peptide).integrator.constraints is peptide.constraints()
    with pytest.raises(ValueError, match="does not support constraints"):
        integ.brownian(peptide)
    with pytest.raises(ValueError, match="Monte Carlo moves do not keep constraints"):
        montecarlo.metropolis(peptide, mode="all")
    npt = barostat.monte_carlo_barostat(fluid, 1.0)
    assert npt.potential is fluid.potential
