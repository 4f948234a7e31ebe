"""Alanine dipeptide in vacuum (amber14, H-bond constraints, 300 K, 2 fs Langevin): the phi/psi
free-energy surface from well-tempered metadynamics (multiple walkers; sum of hills and
Tiwary-Parrinello reweighting) against 2-D umbrella sampling + MBAR, compared at the basins.

Run: python tools/validate_alanine_fes.py [--metad-ns 8] [--umbrella-ps 100] [--json FILE]
About 50 minutes on 2 CPU cores at the defaults (metadynamics 16, umbrella 34); results go to
benchmarks/RESULTS.md by hand. The umbrella windows are 15 degrees apart with k = 200
kJ/mol/rad^2: with 30 degrees and k = 60 the windows on the phi barriers could not hold their
place (the barrier is more curved than the restraint), and MBAR joined the phi > 0 basins to
the rest across that gap 0.7 kcal/mol too high.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

BASINS = {  # (phi, psi) degrees: the usual vacuum minima
    "C7eq": (-83.0, 73.0),
    "C5": (-155.0, 160.0),
    "alphaR": (-75.0, -25.0),
    "C7ax": (70.0, -70.0),
    "alphaL": (60.0, 40.0),
}
KCAL = 4.184


def basin_values(axes, f, radius_deg: float = 25.0) -> dict[str, float]:
    """Minimum of F (kJ/mol) within ``radius_deg`` of each basin centre (periodic distance)."""
    phi, psi = np.meshgrid(np.degrees(axes[0]), np.degrees(axes[1]), indexing="ij")
    out = {}
    for name, (a, b) in BASINS.items():
        dp = (phi - a + 180.0) % 360.0 - 180.0
        ds = (psi - b + 180.0) % 360.0 - 180.0
        near = dp * dp + ds * ds < radius_deg**2
        out[name] = float(np.min(np.where(near, f, np.inf)))
    return out


def metadynamics_run(system, cvs, kT, ns: float, walkers: int, seed: int):
    import jax

    from workbench.sampling import cv as cvs_mod
    from workbench.sampling import metadynamics as md

    sampler = md.metadynamics(system.potential, cvs, sigma=0.35, height=1.2, bias_factor=6.0,
                              pace=500, bins=72, constraints=system.constraints())
    settings = sampler.inner.settings(dt=0.002, kT=kT, gamma=1.0)
    start = np.broadcast_to(np.asarray(system.positions), (walkers,) + system.positions.shape)
    state = sampler.init_walkers(jax.random.PRNGKey(seed), start, system.params, settings,
                                 masses=system.masses)
    stride = 250  # 0.5 ps between samples

    @jax.jit
    def chunk(state):
        def body(c, _):
            c = jax.lax.fori_loop(0, stride, lambda i, c: sampler.step_walkers(
                c, system.params, settings, energy=False), c)
            s = jax.vmap(lambda r, b: cvs_mod.values(cvs, r, b))(c.positions, c.box)
            v = jax.vmap(lambda x: sampler.bias.bias_at(x, {"table": md.bias_state(c).table}))(s)
            return c, (s, v - md.rct(sampler, md.bias_state(c), settings.kT))
        return jax.lax.scan(body, state, None, length=200)  # 100 ps per chunk

    chunks = max(int(round(ns * 10)), 2)
    hills, samples = [], []
    for i in range(chunks):
        state, out = chunk(state)
        hills.append(md.free_energy(sampler, state)[1])
        samples.append([np.asarray(o) for o in out])
        print(f"  metadynamics: {(i + 1) * 0.1:.1f} ns per walker", flush=True)
    axes = sampler.bias.grid.axes()
    half = chunks // 2
    f_hills = np.mean(hills[half:], axis=0)
    s = np.concatenate([a for a, _ in samples[half:]]).reshape(-1, 2)
    lw = np.concatenate([b for _, b in samples[half:]]).ravel() / float(kT)
    _, f_rw = md.reweighted_free_energy(sampler.bias.grid, s, lw, float(kT))
    return axes, f_hills - f_hills.min(), f_rw


def omegas(system):
    """The two peptide-bond dihedrals (ACE-ALA and ALA-NME) as CVs."""
    from workbench.sampling import cv

    idx = {(a.residue.name, a.name): a.index for a in system.topology.atoms()}
    return [cv.Dihedral(idx["ACE", "CH3"], idx["ACE", "C"], idx["ALA", "N"], idx["ALA", "CA"]),
            cv.Dihedral(idx["ALA", "CA"], idx["ALA", "C"], idx["NME", "N"], idx["NME", "C"])]


def pulled_starts(system, cvs, centers, k, kT, seed) -> np.ndarray:
    """(W, N, 3): every window pulled from the data file's structure to its (phi, psi) over 40
    ps, with both peptide bonds held trans by a second restraint. Pulled without it, some
    windows (alphaL) flipped a peptide bond to cis on the way and never flipped back; built
    structures at strained (phi, psi) overlapped atoms."""
    import jax

    from workbench.sampling import umbrella as us

    full = np.concatenate([centers, np.full((len(centers), 2), np.pi)], axis=1)
    kk = np.broadcast_to(np.array([k, k, 500.0, 500.0]), full.shape)
    pull = us.umbrella(system.potential, list(cvs) + omegas(system), full, kk,
                       constraints=system.constraints())
    settings = pull.inner.settings(dt=0.002, kT=kT, gamma=1.0)
    states = pull.init_windows(jax.random.PRNGKey(seed), system.positions, system.params,
                               settings, masses=system.masses)
    states, _, _ = pull.advance(states, system.params, settings, 80, 250)
    return np.asarray(states.positions)


def umbrella_run(system, cvs, kT, ps: float, per_axis: int, k: float, seed: int):
    import jax

    from workbench.sampling import bias
    from workbench.sampling import umbrella as us

    g = np.linspace(-np.pi, np.pi, per_axis, endpoint=False)
    gx, gy = np.meshgrid(g, g, indexing="ij")
    centers = np.stack([gx.ravel(), gy.ravel()], -1)
    sampler = us.umbrella(system.potential, cvs, centers, k, constraints=system.constraints())
    settings = sampler.inner.settings(dt=0.002, kT=kT, gamma=1.0)
    starts = pulled_starts(system, cvs, centers, k, kT, seed + 100)
    states = sampler.init_windows(jax.random.PRNGKey(seed), starts, system.params, settings,
                                  masses=system.masses)
    stride = 250

    def run(states, n):
        def body(c, _):
            c = jax.lax.fori_loop(0, stride, lambda i, c: sampler.step_windows(
                c, system.params, settings, energy=False), c)
            return c, sampler.cv_values(c)
        return jax.lax.scan(body, states, None, length=n)

    run = jax.jit(run, static_argnums=1)
    states, _ = run(states, 40)  # 20 ps to reach the windows
    samples = []
    n_chunks = max(int(round(ps / 25.0)), 1)
    for i in range(n_chunks):
        states, s = run(states, 50)  # 25 ps
        samples.append(np.asarray(s))
        print(f"  umbrella: {(i + 1) * 25} ps per window", flush=True)
    s = np.concatenate(samples).transpose(1, 0, 2)  # (windows, samples, 2)
    good = np.all(np.isfinite(s), axis=(1, 2))
    if not good.all():
        print(f"  dropping {int((~good).sum())} windows that blew up: "
              f"{np.degrees(centers[~good]).round().tolist()}", flush=True)
    grid = bias.Grid.for_cvs(cvs, bins=72)
    axes, f, _ = us.free_energy_mbar(s[good], centers[good], k, float(kT), grid)
    return axes, f, int((~good).sum())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metad-ns", type=float, default=8.0, help="ns per walker")
    ap.add_argument("--walkers", type=int, default=8)
    ap.add_argument("--umbrella-ps", type=float, default=100.0, help="ps per window")
    ap.add_argument("--windows-per-axis", type=int, default=24)
    ap.add_argument("--k", type=float, default=200.0, help="umbrella kJ/mol/rad^2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    ap.add_argument("--metad-cache", default=None,
                    help="npz file: reuse the metadynamics surfaces saved there, else save them")
    args = ap.parse_args(argv)

    from workbench import parallel

    parallel.configure(1)
    from workbench import units
    from workbench.cli import bench_module

    dipeptide = bench_module("sampling").dipeptide

    system, cvs = dipeptide()
    kT = units.kT_from_kelvin(300.0)
    t0 = time.perf_counter()
    if args.metad_cache and os.path.exists(args.metad_cache):
        z = np.load(args.metad_cache)
        m_axes, f_hills, f_rw = [z["phi"], z["psi"]], z["hills"], z["reweighted"]
    else:
        m_axes, f_hills, f_rw = metadynamics_run(system, cvs, kT, args.metad_ns, args.walkers,
                                                 args.seed)
        if args.metad_cache:
            np.savez(args.metad_cache, phi=m_axes[0], psi=m_axes[1], hills=f_hills,
                     reweighted=f_rw)
    t_metad = time.perf_counter() - t0
    t0 = time.perf_counter()
    u_axes, f_us, dropped = umbrella_run(system, cvs, kT, args.umbrella_ps,
                                         args.windows_per_axis, args.k, args.seed + 1)
    t_us = time.perf_counter() - t0
    result = {"settings": vars(args), "seconds": {"metadynamics": t_metad, "umbrella": t_us},
              "umbrella_windows_dropped": dropped,
              "basins_kJ_per_mol": {}}
    ref = basin_values(u_axes, f_us)
    rows = {"umbrella+MBAR": ref, "metad hills": basin_values(m_axes, f_hills),
            "metad reweighting": basin_values(m_axes, f_rw)}
    for name, vals in rows.items():
        base = vals["C7eq"]
        result["basins_kJ_per_mol"][name] = {b: v - base for b, v in vals.items()}
    ref_rel = result["basins_kJ_per_mol"]["umbrella+MBAR"]
    for name in ("metad hills", "metad reweighting"):
        rel = result["basins_kJ_per_mol"][name]
        diffs = {b: (rel[b] - ref_rel[b]) / KCAL for b in BASINS
                 if np.isfinite(rel[b]) and np.isfinite(ref_rel[b])}
        result[f"max_abs_diff_kcal_{name.replace(' ', '_')}"] = max(abs(v) for v in diffs.values())
        result[f"diff_kcal_{name.replace(' ', '_')}"] = diffs
    print("basin free energies relative to C7eq (kcal/mol):")
    print("basin    " + "".join(f"{n:>20}" for n in rows))
    for b in BASINS:
        print(f"{b:8s} " + "".join(f"{result['basins_kJ_per_mol'][n][b] / KCAL:20.2f}"
                                   for n in rows))
    for name in ("metad_hills", "metad_reweighting"):
        print(f"max |difference| {name}: {result['max_abs_diff_kcal_' + name]:.2f} kcal/mol")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
