"""Alanine dipeptide benchmark (``workbench bench peptide``): workbench against OpenMM's CPU
platform on the same systems, in one run.

Systems (from ``data/``, made by ``tools/make_data.py``):

* ``pme``: alanine dipeptide in a TIP3P box (amber14 + tip3p), PME with a 1.0 nm cutoff, bonds
  to hydrogen constrained, rigid water;
* ``obc2``: alanine dipeptide in OBC2 implicit solvent (amber14 + implicit/obc2.xml), no cutoff,
  bonds to hydrogen constrained.

Both: Langevin at 300 K, friction 1/ps, 2 fs steps (workbench's constrained BAOAB; OpenMM's
LangevinMiddleIntegrator), float32 (OpenMM CPU: mixed single precision). Figures: compile time,
time to the first chunk (build + compile + run, the first thing a user waits for), steady
ns/day over ``--seconds``, and workbench ns/day over OpenMM's (``*_ratio_vs_openmm``). Every
figure is printed; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

from workbench.systems import data_file

__all__ = ["main", "SYSTEMS", "run_workbench", "run_openmm"]

SYSTEMS = {
    "pme": dict(pdb="alanine-dipeptide-water.pdb", forcefield=["amber14-all.xml",
                                                               "amber14/tip3p.xml"],
                method="PME", cutoff=1.0),
    "obc2": dict(pdb="alanine-dipeptide-vacuum.pdb", forcefield=["amber14-all.xml",
                                                                 "implicit/obc2.xml"],
                 method="NoCutoff", cutoff=None),
}
DT_PS, TEMPERATURE_K, FRICTION = 0.002, 300.0, 1.0


def _ns_per_day(steps: int, seconds: float) -> float:
    return steps * DT_PS * 1e-3 / seconds * 86400.0


@contextlib.contextmanager
def compile_timer():
    """Seconds JAX spends tracing, lowering and compiling inside the block (from its monitoring
    events), as ``{"seconds": s}``. Measured this way rather than by an ahead-of-time
    ``lower().compile()`` before the first call: on JAX 0.10 that made the steady steps of this
    benchmark 1.5x slower (37 vs 24 ms per PME step, same process layout, measured)."""
    from jax import monitoring

    out = {"seconds": 0.0}

    def listen(name: str, seconds: float, **_):
        if name.startswith("/jax/core/compile/"):
            out["seconds"] += seconds

    monitoring.register_event_duration_secs_listener(listen)
    try:
        yield out
    finally:
        monitoring.unregister_event_duration_listener(listen)


def run_workbench(name: str, seconds: float, steps_per_chunk: int) -> dict:
    """Build, compile, run ``name`` for about ``seconds``; returns its figures."""
    from workbench import units
    from workbench.forcefield.openmm import load
    from workbench.simulate import Simulation

    spec = SYSTEMS[name]
    t0 = time.perf_counter()
    kw = dict(cutoff=spec["cutoff"]) if spec["cutoff"] else {}
    system = load(data_file(spec["pdb"]), spec["forcefield"], nonbonded_method=spec["method"],
                  constraints="HBonds", **kw)
    sim = Simulation(system.potential, system.params, "langevin",
                     dict(dt=DT_PS, kT=units.kT_from_kelvin(TEMPERATURE_K), gamma=FRICTION),
                     system.positions, masses=system.masses, constraints=system.constraints(),
                     report_interval=steps_per_chunk, frames_per_chunk=1, seed=0)
    built = time.perf_counter() - t0
    with compile_timer() as compiled:
        sim.advance()
    first_chunk = time.perf_counter() - t0
    compile_s = compiled["seconds"]
    steps, t2 = 0, time.perf_counter()
    while time.perf_counter() - t2 < seconds:
        frame = sim.advance()
        steps += steps_per_chunk
    elapsed = time.perf_counter() - t2
    temp = float(units.kelvin_from_kT(frame.thermo["kT"][-1]))
    return {"atoms": system.n_atoms, "build_s": built, "compile_s": compile_s,
            "first_chunk_s": first_chunk, "steps": steps, "seconds": elapsed,
            "ns_per_day": _ns_per_day(steps, elapsed), "temperature_K": temp,
            "regrowths": sim.regrowths}


def run_openmm(name: str, seconds: float, steps_per_call: int) -> dict:
    """The same system in OpenMM (CPU platform, LangevinMiddleIntegrator)."""
    import openmm as mm
    from openmm import app, unit

    spec = SYSTEMS[name]
    t0 = time.perf_counter()
    pdb = app.PDBFile(data_file(spec["pdb"]))
    ff = app.ForceField(*spec["forcefield"])
    kw = dict(nonbondedCutoff=spec["cutoff"] * unit.nanometer) if spec["cutoff"] else {}
    system = ff.createSystem(pdb.topology, nonbondedMethod=getattr(app, spec["method"]),
                             constraints=app.HBonds, rigidWater=True, **kw)
    integ = mm.LangevinMiddleIntegrator(TEMPERATURE_K * unit.kelvin, FRICTION / unit.picosecond,
                                        DT_PS * unit.picoseconds)
    platform_ = mm.Platform.getPlatformByName("CPU")
    ctx = mm.Context(system, integ, platform_, {"Precision": "mixed"}
                     if "Precision" in platform_.getPropertyNames() else {})
    ctx.setPositions(pdb.positions)
    ctx.setVelocitiesToTemperature(TEMPERATURE_K * unit.kelvin, 0)
    integ.step(steps_per_call)
    ctx.getState(getEnergy=True)
    first = time.perf_counter() - t0
    steps, t1 = 0, time.perf_counter()
    while time.perf_counter() - t1 < seconds:
        integ.step(steps_per_call)
        ctx.getState(getEnergy=True)  # a reported frame, as workbench's chunk has
        steps += steps_per_call
    elapsed = time.perf_counter() - t1
    return {"atoms": system.getNumParticles(), "first_chunk_s": first, "steps": steps,
            "seconds": elapsed, "ns_per_day": _ns_per_day(steps, elapsed),
            "threads": platform_.getPropertyDefaultValue("Threads")
            if "Threads" in platform_.getPropertyNames() else None}


def main(argv: list[str] | None = None) -> int:
    """``workbench bench peptide [--systems pme obc2] [--seconds S] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench peptide", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="steady-state time per engine and system (default 20)")
    ap.add_argument("--steps-per-chunk", type=int, default=50,
                    help="steps per compiled chunk / per OpenMM call (default 50)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    result = {"benchmark": "peptide", "dt_ps": DT_PS, "temperature_K": TEMPERATURE_K,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average": list(os.getloadavg())
                          if hasattr(os, "getloadavg") else None}}
    for name in args.systems:
        wb = run_workbench(name, args.seconds, args.steps_per_chunk)
        omm = run_openmm(name, args.seconds, args.steps_per_chunk)
        ratio = wb["ns_per_day"] / omm["ns_per_day"]
        result[name] = {"workbench": wb, "openmm_cpu": omm}
        result[f"{name}_ratio_vs_openmm"] = ratio
        print(f"{name}: {wb['atoms']} atoms | workbench {wb['ns_per_day']:.2f} ns/day "
              f"(compile {wb['compile_s']:.1f} s, first chunk {wb['first_chunk_s']:.1f} s, "
              f"T at the last frame {wb['temperature_K']:.0f} K) | "
              f"OpenMM CPU {omm['ns_per_day']:.2f} ns/day "
              f"(first chunk {omm['first_chunk_s']:.1f} s) | ratio {ratio:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
