"""Rigid TIP3P water (amber14/tip3p, PME, 0.9 nm cutoff, SETTLE) at 300 K and 1 bar: the
density under workbench's Monte Carlo barostat (molecule-centred scaling) against OpenMM's
MonteCarloBarostat with the same settings and run length, in the same process.

Run: python tools/validate_water_npt.py [--edge 2.2] [--ps 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

BAR = 1.0 / 16.6054  # kJ/mol/nm^3
T_K, DT, GAMMA, EVERY = 300.0, 0.002, 1.0, 25
AMU_PER_NM3_TO_G_PER_CM3 = 1.66054e-3


def water_box(edge: float):
    """(topology, positions (N, 3) nm, force-field files) of a cubic TIP3P box of side ``edge``."""
    from openmm import Vec3, app, unit

    ff_files = ["amber14-all.xml", "amber14/tip3p.xml"]
    m = app.Modeller(app.Topology(), [])
    m.addSolvent(app.ForceField(*ff_files), model="tip3p",
                 boxSize=Vec3(edge, edge, edge) * unit.nanometer)
    r = np.array(m.positions.value_in_unit(unit.nanometer))
    return m.topology, r, ff_files


def block_stats(x, n_blocks=10):
    x = np.asarray(x, float)
    b = x[: len(x) // n_blocks * n_blocks].reshape(n_blocks, -1).mean(1)
    return float(x.mean()), float(b.std(ddof=1) / np.sqrt(n_blocks))


def workbench_density(topology, positions, ff_files, cutoff, n_eq, n_run, every, seed):
    from workbench import units
    from workbench.forcefield.openmm import from_topology
    from workbench.sampling import barostat as bs
    from workbench.simulate import Simulation

    system = from_topology(topology, positions, ff_files, nonbonded_method="PME", cutoff=cutoff,
                           constraints="HBonds")
    mass = float(np.sum(system.masses))
    sampler = bs.monte_carlo_barostat(system, BAR, every=EVERY)
    sim = Simulation(system, sampler, {"dt": DT, "kT": units.kT_from_kelvin(T_K), "gamma": GAMMA},
                     report_interval=every, frames_per_chunk=max(n_run // every // 10, 1),
                     seed=seed)
    sim.run(n_eq, progress=False)
    dens, err = [], 0.0
    for _ in range(10):
        frame = sim.advance()
        vol = np.abs(np.linalg.det(frame.boxes))
        dens.append(mass / vol * AMU_PER_NM3_TO_G_PER_CM3)
        from workbench.dynamics import constraints as cmod
        err = max(err, float(np.max(np.abs(np.asarray(
            cmod.constraint_errors(frame.positions[-1], cons))))))
    baro = bs.barostat_state(sim.state)
    return np.concatenate(dens), err, baro.acceptance()


def openmm_density(topology, positions, ff_files, cutoff, n_eq, n_run, every, seed):
    import openmm as mm
    from openmm import app, unit

    system = app.ForceField(*ff_files).createSystem(
        topology, nonbondedMethod=app.PME, nonbondedCutoff=cutoff * unit.nanometer,
        constraints=app.HBonds, rigidWater=True, ewaldErrorTolerance=5e-4)
    system.addForce(mm.MonteCarloBarostat(1.0 * unit.bar, T_K * unit.kelvin, EVERY))
    mass = sum(system.getParticleMass(i).value_in_unit(unit.dalton)
               for i in range(system.getNumParticles()))
    integ = mm.LangevinMiddleIntegrator(T_K * unit.kelvin, GAMMA / unit.picosecond,
                                        DT * unit.picoseconds)
    integ.setRandomNumberSeed(seed)
    ctx = mm.Context(system, integ, mm.Platform.getPlatformByName("CPU"))
    ctx.setPositions(positions * unit.nanometer)
    ctx.setVelocitiesToTemperature(T_K * unit.kelvin, seed)
    integ.step(n_eq)
    dens = []
    for _ in range(n_run // every):
        integ.step(every)
        vol = ctx.getState().getPeriodicBoxVolume().value_in_unit(unit.nanometer**3)
        dens.append(mass / vol * AMU_PER_NM3_TO_G_PER_CM3)
    return np.asarray(dens)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edge", type=float, default=2.2, help="box edge, nm")
    ap.add_argument("--cutoff", type=float, default=0.9, help="nm")
    ap.add_argument("--eq-ps", type=float, default=10.0)
    ap.add_argument("--ps", type=float, default=40.0, help="sampled ps per engine")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from workbench import parallel

    parallel.configure()
    top, r, ff = water_box(args.edge)
    n_eq, n_run, every = int(args.eq_ps / DT), int(args.ps / DT), 250
    t0 = time.perf_counter()
    d_wb, cons_err, acc = workbench_density(top, r, ff, args.cutoff, n_eq, n_run, every,
                                            args.seed)
    t_wb = time.perf_counter() - t0
    t0 = time.perf_counter()
    d_omm = openmm_density(top, r, ff, args.cutoff, n_eq, n_run, every, args.seed)
    t_omm = time.perf_counter() - t0
    (a, da), (b, db) = block_stats(d_wb), block_stats(d_omm)
    z = abs(a - b) / np.hypot(da, db)
    out = {"waters": top.getNumResidues(), "edge_nm": args.edge, "ps": args.ps,
           "workbench_g_cm3": [a, da], "openmm_g_cm3": [b, db], "difference_sigma": z,
           "max_constraint_error": cons_err, "workbench_acceptance": acc,
           "seconds": {"workbench": t_wb, "openmm": t_omm}}
    print(f"{out['waters']} TIP3P waters, {args.ps:g} ps each: density workbench "
          f"{a:.4f} +- {da:.4f}, OpenMM {b:.4f} +- {db:.4f} g/cm^3 ({z:.1f} sigma); "
          f"constraints to {cons_err:.1e} nm; volume acceptance {acc:.2f}; "
          f"{t_wb:.0f} s vs {t_omm:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
