"""``workbench bench grad``: gradients through trajectories, memory and time.

d(final potential energy)/d(epsilon) through 1,000 Langevin steps (dt 0.005, kT 1.44,
friction 1) of 500 Lennard-Jones atoms (density 0.8442, cutoff 2.5, skin 0.3), in float32 and
float64, for:

* ``forward``: the trajectory alone (jitted scan), the time unit of the ratios;
* ``plain``: reverse mode through a plain ``lax.scan`` of the same steps, the reference (what
  jax-md's examples do with ``jax.grad`` over ``lax.fori_loop``/``scan``; jax-md itself does
  not install next to this JAX version, see benchmarks/RESULTS.md);
* ``checkpoint``: :func:`workbench.gradients.trajectory.trajectory` with ``checkpoint="sqrt"``
  (memory sublinear in the steps);
* ``checkpoint_forces``: the same segments, also keeping each step's forces
  (``store_forces=True``), so the backward pass's recomputation evaluates no forces
  (targets: at most 1 GB and 3x the forward time);
* ``reversible`` (float64): the constant-memory exactly reversible velocity Verlet, NVE, with
  its own NVE forward run as the unit;
* ``reweighting`` (float32 run): d<U>/d(params) and d g(r)/d(params) (30 bins to 2.5 sigma)
  by the fluctuation formula from ``--frames`` frames (10,000; one every 10 steps of the same
  Langevin run), against the time of sampling them (:class:`workbench.simulate.Simulation`);
* ``jax_md`` (when jax-md is installed: ``pip install -e '.[bench]'``): the same problem in
  jax-md (``simulate.nvt_langevin``, a plain-cut LJ on its neighbor list, updated every step
  under ``lax.fori_loop``) differentiated by plain reverse mode, as its examples do. Its
  compiled footprint is measured first; it runs only when that fits in ``--max-gb``.

Memory is XLA's compiled footprint (temporaries + arguments + outputs, from
``memory_analysis()``), the peak the program can reach. Each precision runs in its own process
(JAX's 64-bit switch is global).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from workbench_bench import child_env

__all__ = ["main", "measure"]


def _footprint(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def _timed(fn, *args, repeats: int = 2) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def measure(dtype: str, steps: int = 1000, atoms: int = 500, max_gb: float = 12.0,
            frames: int = 10000) -> dict:
    """The figures for one precision (this process's JAX precision must match ``dtype``)."""
    import jax
    import jax.numpy as jnp

    import workbench as wb
    from workbench.dynamics import integrators as integ
    from workbench.gradients import trajectory as tj

    system = wb.lj_fluid(n_atoms=atoms, density=0.8442, cutoff=2.5, skin=0.3)
    pot = system.potential
    obs = tj.final_potential_energy(pot)
    out = {"dtype": dtype, "atoms": atoms, "steps": steps}

    def loss(run, state, settings):
        def f(eps):
            p = dict(system.params, epsilon=system.params["epsilon"] * eps)
            return run(state, p, settings)[1][-1]
        return f

    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.005, kT=1.44, gamma=1.0)
    state = lang.init(jax.random.PRNGKey(0), system.positions, system.params, settings,
                      masses=system.masses)
    one = jnp.asarray(1.0, state.positions.dtype)
    fwd = jax.jit(loss(tj.trajectory(lang, steps, observable=obs, every=steps,
                                     checkpoint=None), state, settings))
    t_fwd = _timed(fwd, one)
    out["forward"] = {"seconds": t_fwd, "bytes": _footprint(fwd.lower(one).compile())}
    for name, mode, store in (("plain", None, False), ("checkpoint", "sqrt", False),
                              ("checkpoint_forces", "sqrt", True)):
        g = jax.jit(jax.value_and_grad(loss(tj.trajectory(
            lang, steps, observable=obs, every=steps, checkpoint=mode, store_forces=store),
            state, settings)))
        t = _timed(g, one)
        value, grad = g(one)
        out[name] = {"seconds": t, "ratio_to_forward": t / t_fwd,
                     "bytes": _footprint(g.lower(one).compile()), "gradient": float(grad)}
    if dtype == "float64":
        vv = integ.velocity_verlet(pot)
        vs = vv.settings(dt=0.005)
        v0 = jax.random.normal(jax.random.PRNGKey(1), system.positions.shape) * 1.2
        s0 = vv.init(jax.random.PRNGKey(0), system.positions, system.params, vs,
                     masses=system.masses, velocities=v0)
        nve = jax.jit(loss(tj.trajectory(vv, steps, observable=obs, every=steps,
                                         checkpoint=None), s0, vs))
        t_nve = _timed(nve, one)
        g = jax.jit(jax.value_and_grad(loss(tj.reversible_verlet(
            pot, steps, observable=obs, every=steps), s0, vs)))
        t = _timed(g, one)
        ck = jax.jit(jax.grad(loss(tj.trajectory(vv, steps, observable=obs, every=steps),
                                   s0, vs)))
        out["reversible"] = {"seconds": t, "nve_forward_seconds": t_nve,
                             "ratio_to_forward": t / t_nve,
                             "bytes": _footprint(g.lower(one).compile()),
                             "gradient": float(g(one)[1]),
                             "checkpointed_gradient": float(ck(one))}
    if dtype == "float32" and frames:
        out["reweighting"] = reweighting(atoms, frames)
    from workbench_bench.peers import PeerUnavailable

    try:
        out["jax_md"] = jax_md_peer(steps, atoms, max_gb)
    except PeerUnavailable as exc:
        out["jax_md"] = {"unavailable": str(exc)}
    return out


def reweighting(atoms: int, n_frames: int, every: int = 10) -> dict:
    """Seconds to sample ``n_frames`` frames and to reweight d<U>/dparams and dg(r)/dparams
    from them (first call, compile included; and a second call)."""
    import numpy as np

    import workbench as wb
    from workbench.gradients import reweight as rw
    from workbench.observables import pair_histogram
    from workbench.simulate import Simulation

    system = wb.lj_fluid(n_atoms=atoms, density=0.8442, cutoff=2.5, skin=0.3)
    pot, kT = system.potential, 1.44
    chunk = min(n_frames, 1000)
    sim = Simulation(pot, system.params, "langevin", dict(dt=0.005, kT=kT, gamma=1.0),
                     system.positions, masses=system.masses, seed=2, report_interval=every,
                     frames_per_chunk=chunk)
    sim.advance()  # equilibration and compilation, not timed
    t = time.perf_counter()
    frames = np.concatenate([sim.advance().positions for _ in range(-(-n_frames // chunk))])
    t_sample = time.perf_counter() - t
    samples = rw.Samples.from_frames(frames[:n_frames])
    aux = pot.allocate(frames[0])
    out = {"frames": int(n_frames), "steps_between": every, "sampling_seconds": t_sample}
    for name, obs in (("U", rw.potential_energy(pot)),
                      ("rdf", pair_histogram(system.space, np.linspace(0.8, 2.5, 31)))):
        times = []
        for _ in range(2):
            t = time.perf_counter()
            est = rw.ensemble_gradient(obs, pot, system.params, samples, kT, aux, min_ess=0.0)
            np.asarray(est.gradient["epsilon"])
            times.append(time.perf_counter() - t)
        out[name] = {"first_seconds": times[0], "seconds": times[1],
                     "ratio_to_sampling": times[1] / t_sample, "ess": float(est.ess)}
    return out


def jax_md_peer(steps: int, atoms: int, max_gb: float) -> dict:
    """jax-md's forward run and its plain reverse-mode gradient of the final potential energy
    with respect to epsilon, on the system :func:`measure` uses (same positions and settings;
    jax-md draws its own start velocities)."""
    import warnings

    import jax
    import jax.numpy as jnp

    import workbench as wb
    from workbench_bench.peers import _require, _version, jax_md_lj

    jax_md = _require("jax_md", "jax-md")
    from jax_md import simulate

    warnings.filterwarnings("ignore", message="Explicitly requested dtype float64")
    system = wb.lj_fluid(n_atoms=atoms, density=0.8442, cutoff=2.5, skin=0.3)
    neighbor_fn, energy_fn, shift = jax_md_lj(float(system.space.box[0, 0]))
    positions = jnp.asarray(system.positions)
    nbrs0 = neighbor_fn.allocate(positions, extra_capacity=8)

    def loss(eps):
        init_fn, apply_fn = simulate.nvt_langevin(
            lambda r, neighbor, **kw: energy_fn(r, neighbor=neighbor, epsilon=eps, **kw),
            shift, dt=0.005, kT=1.44, gamma=1.0)
        state = init_fn(jax.random.PRNGKey(0), positions, mass=1.0, neighbor=nbrs0)

        def body(i, carry):
            st, nb = carry
            nb = nb.update(st.position)
            return apply_fn(st, neighbor=nb), nb

        st, nb = jax.lax.fori_loop(0, steps, body, (state, nbrs0))
        return energy_fn(st.position, neighbor=nb, epsilon=eps)

    one = jnp.asarray(1.0, positions.dtype)
    fwd = jax.jit(loss)
    t_fwd = _timed(fwd, one)
    out = {"version": _version("jax-md", jax_md),
           "forward": {"seconds": t_fwd, "bytes": _footprint(fwd.lower(one).compile())}}
    g = jax.jit(jax.value_and_grad(loss))
    need = _footprint(g.lower(one).compile())
    out["plain"] = {"bytes": need}
    if need > max_gb * 1e9:
        out["plain"]["note"] = f"not run: needs {need / 1e9:.1f} GB (limit --max-gb {max_gb})"
        return out
    t = _timed(g, one)
    out["plain"].update(seconds=t, ratio_to_forward=t / t_fwd, gradient=float(g(one)[1]))
    return out


def _child(dtype: str, steps: int, atoms: int, max_gb: float, frames: int) -> dict:
    env = child_env(dict(os.environ, JAX_ENABLE_X64="1" if dtype == "float64" else "0"))
    cmd = [sys.executable, "-m", "workbench_bench.grad", "--one", dtype, "--steps", str(steps),
           "--atoms", str(atoms), "--max-gb", str(max_gb), "--frames", str(frames)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"bench grad ({dtype}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _report(r: dict) -> None:
    mb = 1e-6
    print(f"{r['dtype']}: {r['atoms']} LJ atoms, {r['steps']} Langevin steps | forward "
          f"{r['forward']['seconds']:.2f} s", flush=True)
    for name in ("plain", "checkpoint", "checkpoint_forces"):
        if name in r:
            x = r[name]
            mem = f"{x['bytes'] * mb:8.1f} MB" if "bytes" in x else "       -   "
            print(f"  {name:17s} {x['seconds']:7.2f} s ({x['ratio_to_forward']:5.1f}x forward) "
                  f"{mem}", flush=True)
    if "reversible" in r:
        x = r["reversible"]
        print(f"  reversible   {x['seconds']:7.2f} s ({x['ratio_to_forward']:5.1f}x NVE forward) "
              f"{x['bytes'] * mb:8.1f} MB | gradient {x['gradient']:.6g} vs checkpointed "
              f"{x['checkpointed_gradient']:.6g}", flush=True)
    if "reweighting" in r:
        x = r["reweighting"]
        for name in ("U", "rdf"):
            print(f"  reweighting d<{name}>/dparams from {x['frames']} frames: "
                  f"{x[name]['seconds']:.2f} s ({x[name]['first_seconds']:.2f} s with compile) "
                  f"= {x[name]['ratio_to_sampling']:.3f}x the sampling "
                  f"({x['sampling_seconds']:.1f} s)", flush=True)
    peer = r.get("jax_md", {})
    if "unavailable" in peer:
        print(f"  jax-md: {peer['unavailable']}", flush=True)
    elif peer:
        x = peer["plain"]
        head = (f"  jax-md {peer['version']}: forward {peer['forward']['seconds']:.2f} s | plain "
                f"reverse mode {x['bytes'] * mb:8.1f} MB")
        if "seconds" in x:
            print(f"{head}, {x['seconds']:.2f} s ({x['ratio_to_forward']:.1f}x its forward), "
                  f"gradient {x['gradient']:.6g}", flush=True)
        else:
            print(f"{head}: {x['note']}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``workbench bench grad [--steps N] [--atoms N] [--dtype float32 float64] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench grad", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--atoms", type=int, default=500)
    ap.add_argument("--dtype", nargs="*", default=["float32", "float64"],
                    choices=["float32", "float64"])
    ap.add_argument("--frames", type=int, default=10000,
                    help="frames for the reweighting gradients (float32 run; 0: skip)")
    ap.add_argument("--max-gb", type=float, default=12.0,
                    help="run jax-md's gradient only if its compiled footprint fits (GB)")
    ap.add_argument("--one", choices=["float32", "float64"], help=argparse.SUPPRESS)
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    if args.one:  # child process: one precision, JSON on the last line
        print(json.dumps(measure(args.one, args.steps, args.atoms, args.max_gb, args.frames)))
        return 0
    result = {"benchmark": "grad",
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "runs": []}
    for dtype in args.dtype:
        r = _child(dtype, args.steps, args.atoms, args.max_gb, args.frames)
        _report(r)
        result["runs"].append(r)
        for name in ("checkpoint", "checkpoint_forces"):
            if name in r:
                result[f"{name}_ratio_{dtype}"] = r[name]["ratio_to_forward"]
                result[f"{name}_bytes_{dtype}"] = r[name]["bytes"]
        if dtype == "float32" and "checkpoint_forces" in r:  # the headline figures
            result["checkpointed_peak_gb"] = r["checkpoint_forces"]["bytes"] / 1e9
            result["checkpointed_time_ratio"] = r["checkpoint_forces"]["ratio_to_forward"]
            result["checkpointed_sqrt_peak_gb"] = r["checkpoint"]["bytes"] / 1e9
            result["checkpointed_sqrt_time_ratio"] = r["checkpoint"]["ratio_to_forward"]
        if "reweighting" in r:
            for name in ("U", "rdf"):
                result[f"reweighting_{name}_time_ratio"] = \
                    r["reweighting"][name]["ratio_to_sampling"]
        peer = r.get("jax_md", {}).get("plain")
        if peer:  # the peer's figures (time only when it fitted in --max-gb)
            result[f"jax_md_plain_peak_gb_{dtype}"] = peer["bytes"] / 1e9
            if "ratio_to_forward" in peer:
                result[f"jax_md_plain_time_ratio_{dtype}"] = peer["ratio_to_forward"]
        if "reversible" in r:  # needs 64-bit integers: the float64 run's figures
            result["constant_memory_peak_gb"] = r["reversible"]["bytes"] / 1e9
            result["constant_memory_time_ratio"] = r["reversible"]["ratio_to_forward"]
            result["constant_memory_dtype"] = dtype
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
