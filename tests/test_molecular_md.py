"""Molecular dynamics with an imported force field: constrained Langevin MD of alanine dipeptide
against an OpenMM run of the same length and settings (mean potential energy and temperature
within statistical error), constraints and temperature bookkeeping, and trajectories that carry
the molecular topology."""

from __future__ import annotations

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


def block_stats(x, n_blocks=10):
    x = np.asarray(x, float)
    m = len(x) // n_blocks * n_blocks
    b = x[:m].reshape(n_blocks, -1).mean(1)
    return b.mean(), b.std(ddof=1) / np.sqrt(n_blocks)


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


@pytest.mark.slow
def test_langevin_matches_openmm_mean_energy_and_temperature(dipeptide):
    """ACE-ALA-NME in OBC2, HBonds, 300 K, 2 fs, friction 5/ps: 40 ps each in workbench
    (constrained BAOAB) and OpenMM (LangevinMiddleIntegrator, Reference platform), after 4 ps of
    equilibration. Means must agree within 4 combined standard errors (10 block averages)."""
    kT = units.kT_from_kelvin(T_K)
    n_eq, n_run, every = 2000, 20000, 50
    sim = Simulation(dipeptide.potential, dipeptide.params, "langevin",
                     dict(dt=DT, kT=kT, gamma=GAMMA), dipeptide.positions,
                     masses=dipeptide.masses, constraints=dipeptide.constraints(),
                     report_interval=every, frames_per_chunk=20, seed=11)
    sim.run(n_eq, progress=False)
    out = sim.run(n_run, progress=False)
    u_wb, u_wb_err = block_stats(out["potential"])
    t_wb, t_wb_err = block_stats(units.kelvin_from_kT(out["kT"]))

    pdb = app.PDBFile(data_file("alanine-dipeptide-vacuum.pdb"))
    system = app.ForceField(*FF).createSystem(pdb.topology, constraints=app.HBonds)
    integ = mm.LangevinMiddleIntegrator(T_K * unit.kelvin, GAMMA / unit.picosecond,
                                        DT * unit.picoseconds)
    integ.setRandomNumberSeed(7)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(pdb.positions)
    ctx.setVelocitiesToTemperature(T_K * unit.kelvin, 5)
    integ.step(n_eq)
    dof = 3 * system.getNumParticles() - system.getNumConstraints() - 3  # CMMotionRemover
    u_omm, t_omm = [], []
    for _ in range(n_run // every):
        integ.step(every)
        st = ctx.getState(getEnergy=True)
        u_omm.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        ke = st.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
        t_omm.append(2 * ke / (dof * units.BOLTZMANN))
    u_o, u_o_err = block_stats(u_omm)
    t_o, t_o_err = block_stats(t_omm)
    print(f"U workbench {u_wb:.2f} +- {u_wb_err:.2f}, OpenMM {u_o:.2f} +- {u_o_err:.2f}; "
          f"T workbench {t_wb:.1f} +- {t_wb_err:.1f}, OpenMM {t_o:.1f} +- {t_o_err:.1f}")
    assert abs(u_wb - u_o) < 4 * np.hypot(u_wb_err, u_o_err)
    assert abs(t_wb - t_o) < 4 * np.hypot(t_wb_err, t_o_err)
    assert abs(t_wb - T_K) < max(4 * t_wb_err, 0.02 * T_K)


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
