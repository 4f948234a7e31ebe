"""Molecular dynamics with an imported force field: constrained Langevin MD of alanine dipeptide
against an OpenMM run of the same length and settings (mean potential energy and temperature
within statistical error), constraints and temperature bookkeeping, and trajectories that carry
the molecular topology."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import mdtraj as md
import numpy as np
import openmm as mm
import pytest
from openmm import app, unit

from workbench import units
from workbench.dynamics import constraints as cons
from workbench.forcefield import openmm as wfo
from workbench.simulate import Simulation
from workbench.systems import data_file

FF = ["amber14-all.xml", "implicit/obc2.xml"]
T_K, DT, GAMMA = 300.0, 0.002, 5.0


def mean_and_error(x):
    """Mean and its standard error for a correlated time series: the variance over the
    effective number of samples n / g, g the statistical inefficiency (pymbar's timeseries:
    the integrated autocorrelation time, as MD analysis uses it). Ten fixed blocks of a 2.4 ps
    water run were shorter than the energy's correlation time, so their error was half the
    spread that OpenMM's own mean showed from seed to seed."""
    from pymbar import timeseries

    x = np.asarray(x, float)
    g = timeseries.statistical_inefficiency(x)
    return x.mean(), x.std(ddof=1) * np.sqrt(g / len(x))


@pytest.fixture(scope="module")
def dipeptide():
    return wfo.load(data_file("alanine-dipeptide-vacuum.pdb"), FF, constraints="HBonds")


def test_constraints_hold_and_dof_count(dipeptide):
    c = dipeptide.constraints()
    assert cons.n_constraints(c) == 12  # every X-H bond of ACE-ALA-NME
    sim = Simulation(dipeptide.potential, dipeptide.params, "langevin",
                     dict(dt=DT, kT=units.kT_from_kelvin(T_K), gamma=GAMMA), dipeptide.positions,
                     masses=dipeptide.masses, constraints=c, report_interval=50, seed=3)
    assert sim.dof == 3 * 22 - 12
    sim.run(200, progress=False)
    err = np.abs(np.asarray(cons.constraint_errors(sim.state.positions, c)))
    assert err.max() < 1e-5  # float32 positions


def compare_with_openmm(system, pdb_name, ff, create, *, gamma, n_eq, n_run, every, seed,
                        platform="CPU", shared_start: int | None = None):
    """Constrained Langevin at 300 K, 2 fs in workbench (g-BAOAB, LangevinMiddle form) and in
    OpenMM (LangevinMiddleIntegrator) from the same start: equilibrate ``n_eq`` steps, then
    sample every ``every`` steps for ``n_run``. OpenMM runs on its CPU platform: a comparison of
    means needs its sampling, not the Reference platform's exact arithmetic, and the CPU platform
    is twice as fast (20,000 steps of the dipeptide: 40 s on Reference). With ``shared_start``,
    OpenMM equilibrates first and workbench starts from its positions and velocities, then runs
    ``shared_start`` steps of its own before sampling (a solvated system's slow relaxation is
    paid once, by the faster engine; a workbench ensemble that differed would still drift away
    from OpenMM's within the sampled window). Returns ((U, dU), (T, dT)) for each engine as
    means and standard errors (:func:`mean_and_error`)."""
    kT = units.kT_from_kelvin(T_K)
    pdb = app.PDBFile(data_file(pdb_name))
    omm = app.ForceField(*ff).createSystem(pdb.topology, **create)
    integ = mm.LangevinMiddleIntegrator(T_K * unit.kelvin, gamma / unit.picosecond,
                                        DT * unit.picoseconds)
    integ.setRandomNumberSeed(7)
    ctx = mm.Context(omm, integ, mm.Platform.getPlatformByName(platform))
    ctx.setPositions(pdb.positions)
    if pdb.topology.getPeriodicBoxVectors() is not None:
        ctx.setPeriodicBoxVectors(*pdb.topology.getPeriodicBoxVectors())
    ctx.setVelocitiesToTemperature(T_K * unit.kelvin, 5)
    integ.step(n_eq)

    positions, velocities, wb_eq = system.positions, None, n_eq
    if shared_start is not None:
        st = ctx.getState(getPositions=True, getVelocities=True, enforcePeriodicBox=False)
        positions = st.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        velocities = st.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)
        wb_eq = shared_start
    # single precision, as users run it and as OpenMM's CPU platform does (the suite is float64)
    params = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating)
        else a, system.params)
    # both runs whole chunks of one length: one compiled chunk (a remainder compiles another)
    with jax.enable_x64(False):
        sim = Simulation(system.potential, params, "langevin",
                         dict(dt=DT, kT=kT, gamma=gamma), positions,
                         masses=system.masses, constraints=system.constraints(),
                         velocities=velocities, report_interval=every,
                         frames_per_chunk=min(20, math.gcd(wb_eq // every, n_run // every)),
                         seed=seed)
        assert sim.state.positions.dtype == jnp.float32
        sim.run(wb_eq, progress=False)
        out = sim.run(n_run, progress=False)
    wb = mean_and_error(out["potential"]), mean_and_error(units.kelvin_from_kT(out["kT"]))

    dof = 3 * omm.getNumParticles() - omm.getNumConstraints() - 3  # CMMotionRemover
    u_omm, t_omm = [], []
    for _ in range(n_run // every):
        integ.step(every)
        st = ctx.getState(getEnergy=True)
        u_omm.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        t_omm.append(2 * ke / (dof * units.BOLTZMANN))
    ref = mean_and_error(u_omm), mean_and_error(t_omm)
    (u_wb, u_wb_err), (t_wb, t_wb_err) = wb
    (u_o, u_o_err), (t_o, t_o_err) = ref
    print(f"U workbench {u_wb:.2f} +- {u_wb_err:.2f}, OpenMM {u_o:.2f} +- {u_o_err:.2f}; "
          f"T workbench {t_wb:.1f} +- {t_wb_err:.1f}, OpenMM {t_o:.1f} +- {t_o_err:.1f}")
    return wb, ref


def assert_agree(wb, ref):
    """Means within 4 combined standard errors; the temperature also within 2% of 300 K."""
    for (a, da), (b, db) in zip(wb, ref):
        assert abs(a - b) < 4 * np.hypot(da, db), (a, da, b, db)
    (t_wb, t_wb_err) = wb[1]
    assert abs(t_wb - T_K) < max(4 * t_wb_err, 0.02 * T_K)


@pytest.mark.slow
def test_langevin_matches_openmm_mean_energy_and_temperature(dipeptide):
    """ACE-ALA-NME in OBC2, HBonds, friction 5/ps: 40 ps each in workbench and OpenMM
    (CPU platform), after 4 ps of equilibration."""
    wb, ref = compare_with_openmm(dipeptide, "alanine-dipeptide-vacuum.pdb", FF,
                                  dict(constraints=app.HBonds), gamma=GAMMA, n_eq=2000,
                                  n_run=20000, every=50, seed=11)
    assert_agree(wb, ref)


@pytest.mark.slow
def test_langevin_in_water_matches_openmm():
    """ACE-ALA-NME in 775 TIP3P waters (2347 atoms), amber14, PME with a 1 nm cutoff, bonds to
    hydrogen constrained and rigid water (SETTLE), 300 K, 2 fs, friction 5/ps: 2 ps of
    equilibration in OpenMM (CPU platform, same settings), from which workbench starts with
    0.2 ps of its own; then 2.4 ps sampled every 10 steps in each engine. After only 0.8 ps of
    equilibration the energy was still relaxing in the sampled window (block errors three times
    OpenMM's, and a 4.3-sigma miss on one seed). Mean potential energy and temperature agree
    within statistical error; the temperature counts 3N less the 2337 constraints."""
    ff = ["amber14-all.xml", "amber14/tip3p.xml"]
    water = wfo.load(data_file("alanine-dipeptide-water.pdb"), ff, nonbonded_method="PME",
                     cutoff=1.0, constraints="HBonds")
    assert water.n_atoms == 2347
    assert cons.n_constraints(water.constraints()) == 12 + 3 * 775
    wb, ref = compare_with_openmm(
        water, "alanine-dipeptide-water.pdb", ff,
        dict(nonbondedMethod=app.PME, nonbondedCutoff=1.0 * unit.nanometer,
             constraints=app.HBonds, rigidWater=True, ewaldErrorTolerance=5e-4),
        gamma=GAMMA, n_eq=1000, n_run=1200, every=10, seed=5, shared_start=100)
    assert_agree(wb, ref)


def test_trajectory_carries_bonds(dipeptide, tmp_path):
    sim = Simulation(dipeptide.potential, dipeptide.params, "langevin",
                     dict(dt=DT, kT=units.kT_from_kelvin(T_K), gamma=GAMMA), dipeptide.positions,
                     masses=dipeptide.masses, constraints=dipeptide.constraints(),
                     report_interval=10, topology=dipeptide.mdtraj_topology(), seed=1)
    for ext in ("h5", "dcd"):
        path = str(tmp_path / f"run.{ext}")
        sim.run(20, trajectory=path, progress=False)
        traj = md.load(path, top=str(tmp_path / "run.pdb")) if ext == "dcd" else md.load(path)
        assert traj.n_frames == 2 and traj.n_atoms == 22
        assert traj.topology.n_bonds == dipeptide.mdtraj_topology().n_bonds == 21
        assert [r.name for r in traj.topology.residues] == ["ACE", "ALA", "NME"]
