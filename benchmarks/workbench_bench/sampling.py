"""Sampling benchmark (``workbench bench sampling``), every figure measured in one run:

* ``metadynamics_overhead``: well-tempered metadynamics on alanine dipeptide (vacuum, amber14,
  bonds to hydrogen constrained, Langevin 2 fs, phi/psi on a 2-D periodic grid, a hill every 500
  steps) against the same unbiased Langevin steps: (t_metad - t_md) / t_md per step. Target < 0.1.
* ``mbar_speedup_vs_pymbar``: MBAR on the same data (harmonic oscillators, ``--states`` states x
  ``--samples`` samples, float64) by workbench and by pymbar: pymbar's solve time over ours, with
  the largest difference of the free energies (kT).
* replica exchange throughput: 8 temperature replicas of alanine dipeptide (vacuum), replica-steps
  per second with every replica on one CPU device and split over all of them.

``--json FILE`` writes every figure. Peers: pymbar (test extra).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from workbench.systems import data_file

__all__ = ["main", "dipeptide", "metadynamics_overhead", "mbar_comparison", "replica_throughput"]


def dipeptide():
    """Alanine dipeptide in vacuum (amber14, HBonds) and its phi, psi CVs."""
    from workbench.forcefield.openmm import load
    from workbench.sampling import cv

    system = load(data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"],
                  nonbonded_method="NoCutoff", constraints="HBonds")
    return system, cv.backbone_torsions(system.topology, 1)


def _time_scan(step, state, steps: int, repeats: int) -> float:
    """Best seconds per step of a jitted scan of ``steps`` steps (compiled first)."""
    import jax

    run = jax.jit(lambda s: jax.lax.scan(lambda c, _: (step(c), None), s, None, length=steps)[0])
    state = jax.block_until_ready(run(state))
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        state = jax.block_until_ready(run(state))
        best = min(best, time.perf_counter() - t)
    return best / steps


def solvated_dipeptide():
    """Alanine dipeptide in 775 TIP3P waters (amber14, PME at 1 nm, HBonds, rigid water)."""
    from workbench.forcefield.openmm import load
    from workbench.sampling import cv

    system = load(data_file("alanine-dipeptide-water.pdb"), ["amber14-all.xml",
                                                             "amber14/tip3p.xml"],
                  nonbonded_method="PME", cutoff=1.0, constraints="HBonds")
    return system, cv.backbone_torsions(system.topology, 1)


def metadynamics_overhead(steps: int = 5000, repeats: int = 5, solvated: bool = False) -> dict:
    """Seconds per step of metadynamics and of plain Langevin on alanine dipeptide (in vacuum,
    or solvated with PME)."""
    from workbench import units
    from workbench.dynamics import integrators as integ
    from workbench.sampling import metadynamics as md

    system, cvs = solvated_dipeptide() if solvated else dipeptide()
    kT = units.kT_from_kelvin(300.0)
    sampler = md.metadynamics(system.potential, cvs, sigma=0.35, height=1.2, bias_factor=6.0,
                              pace=500, bins=100, constraints=system.constraints())
    plain = integ.langevin(system.potential, system.constraints())
    settings = plain.settings(dt=0.002, kT=kT, gamma=1.0)
    s_md = plain.init(_key(0), system.positions, system.params, settings, masses=system.masses)
    s_mt = sampler.init(_key(0), system.positions, system.params, settings, masses=system.masses)
    t_md = _time_scan(lambda s: plain.step(s, system.params, settings, energy=False), s_md,
                      steps, repeats)
    t_mt = _time_scan(lambda s: sampler.step(s, system.params, settings, energy=False), s_mt,
                      steps, repeats)
    return {"atoms": system.n_atoms, "md_us_per_step": t_md * 1e6,
            "metad_us_per_step": t_mt * 1e6, "metadynamics_overhead": (t_mt - t_md) / t_md,
            "pace": 500, "grid": [100, 100], "solvated": solvated}


def _key(seed: int):
    import jax

    return jax.random.PRNGKey(seed)


def replica_throughput(rounds: int = 50, exchange_every: int = 100, replicas: int = 8) -> dict:
    """Replica-steps per second of temperature replica exchange, one device against all."""
    import jax

    from workbench.sampling import replica as rx

    system, _ = dipeptide()
    re = rx.replica_exchange(system.potential, exchange_every=exchange_every,
                             constraints=system.constraints())
    settings = rx.ladder(re.integrator.settings, 2.494, 6.0, replicas, dt=0.002, gamma=1.0)
    states, stats = re.init(_key(1), system.positions, system.params, settings,
                            masses=system.masses)
    run = jax.jit(lambda st, sa, se: re.run(st, sa, system.params, se, rounds)[:2])
    out = {"replicas": replicas, "atoms": system.n_atoms, "devices": len(jax.devices())}
    for name, args in (("one_device", (states, stats, settings)),
                       ("all_devices", rx.shard_replicas((states, stats, settings)))):
        st, sa = jax.block_until_ready(run(*args))
        best = np.inf
        for _ in range(3):
            t = time.perf_counter()
            st, sa = jax.block_until_ready(run(st, sa, args[2]))
            best = min(best, time.perf_counter() - t)
        out[f"{name}_replica_steps_per_s"] = replicas * rounds * exchange_every / best
        out[f"{name}_acceptance"] = [float(a) for a in sa.acceptance()]
    return out


def _oscillator_data(states: int, samples: int, seed: int = 0):
    """u_kn (K, N) of harmonic oscillators u_k(x) = k_k (x - x0_k)^2 / 2 (kT = 1), N/K samples
    from each state; exact f_k = -ln sqrt(2 pi / k_k)."""
    rng = np.random.default_rng(seed)
    k = rng.uniform(1.0, 3.0, states)
    x0 = np.linspace(0.0, 4.0, states)
    per = samples // states
    x = np.concatenate([x0[i] + rng.normal(size=per) / np.sqrt(k[i]) for i in range(states)])
    u = 0.5 * k[:, None] * (x[None, :] - x0[:, None]) ** 2
    return u, np.full(states, per)


def mbar_comparison(states: int = 100, samples: int = 100_000) -> dict:
    """MBAR solve time of workbench and pymbar on the same data (switches JAX to float64)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import pymbar

    from workbench.sampling.mbar import mbar

    u, n = _oscillator_data(states, samples)
    u_j, n_j = jnp.asarray(u), jnp.asarray(n, jnp.float64)
    solve = jax.jit(lambda u, n: mbar(u, n).f)
    jax.block_until_ready(solve(u_j, n_j))  # compile
    t = time.perf_counter()
    f_wb = np.asarray(jax.block_until_ready(solve(u_j, n_j)))
    t_wb = time.perf_counter() - t
    t = time.perf_counter()
    ref = pymbar.MBAR(u, n)
    t_pm = time.perf_counter() - t
    f_pm = np.asarray(ref.f_k)
    return {"states": states, "samples": samples, "workbench_s": t_wb, "pymbar_s": t_pm,
            "pymbar_version": pymbar.__version__, "mbar_speedup_vs_pymbar": t_pm / t_wb,
            "max_f_difference_kT": float(np.max(np.abs((f_wb - f_wb[0]) - (f_pm - f_pm[0]))))}


def main(argv: list[str] | None = None) -> int:
    """``workbench bench sampling [--states K] [--samples N] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench sampling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--states", type=int, default=100, help="MBAR states (default 100)")
    ap.add_argument("--samples", type=int, default=100_000,
                    help="MBAR samples in all (default 100000)")
    ap.add_argument("--steps", type=int, default=5000, help="steps per timed metadynamics scan")
    ap.add_argument("--rounds", type=int, default=50,
                    help="replica-exchange rounds (of 100 steps) per timed run")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["metad", "solvated", "mbar", "replica"],
                    help="parts to leave out (solvated: the PME system's metadynamics overhead)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    result: dict = {"benchmark": "sampling",
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                "load_average": list(os.getloadavg())
                                if hasattr(os, "getloadavg") else None}}
    if "metad" not in args.skip:
        m = metadynamics_overhead(args.steps)
        result["metadynamics"] = m
        result["metadynamics_overhead"] = m["metadynamics_overhead"]
        print(f"metadynamics: {m['atoms']} atoms | MD {m['md_us_per_step']:.1f} us/step | "
              f"metad {m['metad_us_per_step']:.1f} us/step | overhead "
              f"{100 * m['metadynamics_overhead']:.1f}% (target < 10%)", flush=True)
    if "metad" not in args.skip and "solvated" not in args.skip:
        w = metadynamics_overhead(min(args.steps, 200), 3, solvated=True)
        result["metadynamics_solvated"] = w
        result["metadynamics_overhead_solvated"] = w["metadynamics_overhead"]
        print(f"metadynamics: {w['atoms']} atoms (PME) | MD {w['md_us_per_step']:.1f} us/step | "
              f"metad {w['metad_us_per_step']:.1f} us/step | overhead "
              f"{100 * w['metadynamics_overhead']:.1f}%", flush=True)
    if "replica" not in args.skip:
        r = replica_throughput(args.rounds)
        result["replica_exchange"] = r
        print(f"replica exchange: {r['replicas']} replicas x {r['atoms']} atoms | one device "
              f"{r['one_device_replica_steps_per_s']:.0f} | {r['devices']} devices "
              f"{r['all_devices_replica_steps_per_s']:.0f} replica-steps/s", flush=True)
    if "mbar" not in args.skip:  # last: pymbar switches JAX to float64 for the whole process
        b = mbar_comparison(args.states, args.samples)
        result["mbar"] = b
        result["mbar_speedup_vs_pymbar"] = b["mbar_speedup_vs_pymbar"]
        print(f"MBAR {b['states']} states x {b['samples']} samples | workbench "
              f"{b['workbench_s']:.2f} s | pymbar {b['pymbar_version']} {b['pymbar_s']:.2f} s | "
              f"speedup {b['mbar_speedup_vs_pymbar']:.2f}x | max |df| "
              f"{b['max_f_difference_kT']:.1e} kT", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
