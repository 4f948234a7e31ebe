"""Latency of the live panels (``workbench bench panels``), measured headlessly.

1. *Time to first frame*: from the start of the cell (build the system, create the session and
   the :class:`~workbench.panels.Workbench`, start the run) until the first computed frame has
   been pushed into the nglview view (``set_coordinates``). Imports and JAX start-up happen
   before, as in a notebook's first cell. Target: at most 5 s for 1000 LJ atoms on 2 cores.
2. *Slider latency*: from a slider change (the widget value is set, as the browser would) until
   the runner delivers the first frame computed with the new value, and until that frame is in
   the view. Repeated at random (seeded) points within a chunk. Target: at most 200 ms at 1000
   atoms, which needs chunks well below that: ``--steps-per-chunk`` (structural) sets it.

3. *Gradient latency*: notebook 06's default system (108 LJ atoms tuned to a target g(r) and
   pressure by reweighting 150 frames): from a slider change until the gradient panel shows
   d(loss)/d(parameter) at the new value. Small moves reweight the samples in hand; large ones
   (``--gradient-jump``) first re-sample by MD. Target: about a second.

The 1000-atom system is a simple cubic lattice of 10^3 atoms at density 0.8442 (LJ, cutoff
2.5, skin 0.3, Langevin at kT = 1.44, dt = 0.005); ``--atoms`` takes any cube (n^3, simple
cubic) or 4 n^3 (fcc). Figures are printed; ``--json FILE`` writes them too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import numpy as np

__all__ = ["lattice_system", "main", "measure_gradient"]


def lattice_system(n_atoms: int, density: float = 0.8442, cutoff: float = 2.5,
                   skin: float = 0.3):
    """An LJ system of exactly ``n_atoms`` on a simple cubic (n^3) or fcc (4 n^3) lattice."""
    from workbench import space as spaces
    from workbench.potentials.pair import PairPotential
    from workbench.systems import System, fcc_cells_for, fcc_lattice

    side = round(n_atoms ** (1 / 3))
    if side**3 == n_atoms:
        a = (1.0 / density) ** (1 / 3)
        grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        positions, length = (grid + 0.5) * a, side * a
    else:
        cells = fcc_cells_for(n_atoms)  # raises with the nearest valid sizes
        a = (4.0 / density) ** (1 / 3)
        positions, length = fcc_lattice(cells, a), cells * a
    space = spaces.periodic(length)
    pot = PairPotential("lennard_jones", space, cutoff, truncation="shift", skin=skin)
    return System(pot, pot.init_params(sigma=1.0, epsilon=1.0), positions,
                  np.ones(n_atoms), space, units="reduced")


def _warm_up() -> float:
    """Imports and JAX start-up (a notebook's earlier cells); returns seconds."""
    t0 = time.perf_counter()
    import ipywidgets  # noqa: F401
    import jax.numpy as jnp
    import matplotlib  # noqa: F401
    import nglview  # noqa: F401

    from workbench import panels  # noqa: F401

    jnp.zeros(3).block_until_ready()
    return time.perf_counter() - t0


def _wait(condition, what: str, limit_s: float = 600.0) -> None:
    end = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > end:
            raise RuntimeError(f"benchmark gave up waiting for {what}")
        time.sleep(0.001)


def measure_first_frame(n_atoms: int, steps_per_chunk: int, seed: int = 0):
    """Returns (figures dict, session, workbench) with the run still going."""
    from workbench.panels import Workbench
    from workbench.session import Session

    t0 = time.perf_counter()
    system = lattice_system(n_atoms)
    t_system = time.perf_counter()
    session = Session(system, "langevin", {"dt": 0.005, "kT": 1.44, "gamma": 1.0}, seed=seed,
                      report_interval=steps_per_chunk, units="reduced")
    t_session = time.perf_counter()
    view = Workbench(session)
    t_panel = time.perf_counter()
    session.start()
    sim = view.simulation
    _wait(lambda: sim.first_view_update_at is not None or session.status == "error",
          "the first frame")
    if session.status == "error":
        raise RuntimeError(session.error_message)
    first_record = session.records[0]
    figures = {
        "time_to_first_frame_s": sim.first_view_update_at - t0,
        "build_system_s": t_system - t0,
        "create_session_s": t_session - t_system,
        "create_panels_s": t_panel - t_session,
        "first_chunk_s": first_record.seconds,
        "start_to_view_s": sim.first_view_update_at - t_panel,
    }
    return figures, session, view


def measure_slider(session, view, trials: int, seed: int = 0) -> dict:
    """Slider-to-frame latency while the run goes; values alternate around epsilon = 1."""
    rng = np.random.default_rng(seed)
    compiles = session.compile_count
    for _ in range(3):  # a few steady chunks first
        n = session.frames_total
        _wait(lambda n=n: session.frames_total > n, "steady chunks")
    chunk_s = float(np.median([r.seconds for r in session.records[-3:]]))
    first_trial_chunk = session.chunks_done
    computed, shown = [], []
    slider = view.parameters.sliders["epsilon"]
    for i in range(trials):
        value = round(1.0 + (0.05 if i % 2 == 0 else -0.05) + 0.01 * (i // 2 % 4), 2)
        hit = threading.Event()
        arrival: dict = {}

        def on_frames(batch, value=value, hit=hit, arrival=arrival):
            if not hit.is_set() and abs(batch.record.params["epsilon"] - value) < 1e-6:
                arrival["t"] = time.perf_counter()
                arrival["frames_total"] = batch.first_frame + len(batch.positions)
                hit.set()

        off = session.observe(on_frames, "frames")
        n = session.frames_total
        _wait(lambda n=n: session.frames_total > n, "a chunk boundary")
        time.sleep(rng.uniform(0.0, chunk_s))  # land anywhere within a chunk
        t0 = time.perf_counter()
        slider.value = value  # as the browser does: the observer calls session.set_params
        _wait(hit.is_set, "a frame with the new value")
        off()
        computed.append(arrival["t"] - t0)
        sim = view.simulation

        def in_view(sim=sim, t=arrival["t"]) -> bool:
            return sim.last_view_update_at is not None and sim.last_view_update_at >= t

        _wait(in_view, "the view update")
        shown.append(sim.last_view_update_at - t0)
    during = [r.seconds for r in session.records if r.index >= first_trial_chunk]
    return {
        "trials": trials,
        "chunk_s_median": float(np.median(during)),
        "chunk_s_max": float(np.max(during)),
        "slider_to_frame_ms_median": 1e3 * float(np.median(computed)),
        "slider_to_frame_ms_max": 1e3 * float(np.max(computed)),
        "slider_to_view_ms_median": 1e3 * float(np.median(shown)),
        "slider_to_view_ms_max": 1e3 * float(np.max(shown)),
        "recompiles_during_slider_changes": session.compile_count - compiles,
    }


def _fit_objective(frames: int):
    """Notebook 06's objective: LJ (108 atoms, rho* 0.8, T* 1.5, switched cutoff 2.2) against
    the g(r) and pressure of epsilon = sigma = 1, by reweighting ``frames`` frames."""
    import jax.numpy as jnp

    from workbench.gradients import fit as ft
    from workbench.gradients import reweight as rw
    from workbench.observables import pair_histogram
    from workbench.simulate import Simulation
    from workbench.systems import lj_fluid

    kT = 1.5
    fluid = lj_fluid(n_atoms=108, density=0.8, cutoff=2.2, skin=0.3, truncation="switch",
                     r_switch=1.8)
    pot = fluid.potential
    obs = {"g": pair_histogram(pot.space, np.linspace(0.8, 2.4, 33)),
           "P": rw.virial_pressure(pot, kT)}

    def sampler(params, seed):
        sim = Simulation(pot, params, "langevin", dict(dt=0.005, kT=kT, gamma=1.0),
                         fluid.positions, masses=fluid.masses, seed=seed, report_interval=20,
                         frames_per_chunk=50)
        sim.advance()
        return ft.simulation_sampler(sim, frames, equilibrate=1)

    true = {k: jnp.asarray([1.0], jnp.float32) for k in ("epsilon", "sigma")}
    start = {"epsilon": jnp.asarray([0.85], jnp.float32), "sigma": jnp.asarray([1.05], jnp.float32)}
    samples = sampler(true, 1)(true)
    aux = pot.allocate(samples.positions[0])
    target = rw.reweighted_average(lambda *a: {k: f(*a) for k, f in obs.items()}, pot, true,
                                   samples, kT, aux).value

    def loss(av, p):
        return jnp.sum((av["g"] - target["g"]) ** 2) + 0.5 * (av["P"] - target["P"]) ** 2

    objective = ft.EnsembleObjective(sampler(start, 2), obs, loss, pot, kT, aux, min_ess=0.6)
    return fluid, start, objective


def measure_gradient(trials: int, jump: float, seed: int = 0, frames: int = 150) -> dict:
    """Slider-to-gradient latency on notebook 06's default system (see the module docstring):
    epsilon moved by +-0.01 (reweighting only) and by +-``jump`` (re-sampling)."""
    import dataclasses

    from workbench.panels import GradientPanel, ParameterPanel
    from workbench.session import GradientSession, Session

    fluid, start, objective = _fit_objective(frames)
    session = Session(dataclasses.replace(fluid, params=start), "langevin",
                      dict(dt=0.005, kT=1.5, gamma=1.0), report_interval=20, frames_per_chunk=5,
                      units="reduced", seed=seed)
    grads = GradientSession(session, {"reweight": objective})
    panel = GradientPanel(grads)
    sliders = ParameterPanel(session, include=["epsilon", "sigma"])
    out: dict = {"frames": frames}
    try:
        panel.refresh(timeout=600)  # the first gradient: sampling and compilation
        session.start()
        for label, step in (("reweight", 0.01), ("resample", jump)):
            times, shown, resampled = [], [], []
            for i in range(trials):
                value = round(float(start["epsilon"][0]) + (step if i % 2 == 0 else 0.0), 4)
                done = threading.Event()

                def on_gradient(r, value=value, done=done):
                    if abs(r.params["epsilon"] - value) < 1e-5:
                        done.set()

                off = grads.observe(on_gradient, "gradient")
                before = panel.plot.value
                t0 = time.perf_counter()
                sliders.sliders["epsilon"].value = value
                _wait(done.is_set, "the new gradient")
                times.append(time.perf_counter() - t0)
                off()
                resampled.append(grads.last.resampled)
                _wait(lambda b=before: panel.plot.value != b, "the redrawn chart")
                shown.append(time.perf_counter() - t0)
            out[f"{label}_slider_to_gradient_s_median"] = float(np.median(times))
            out[f"{label}_slider_to_gradient_s_max"] = float(np.max(times))
            out[f"{label}_slider_to_chart_s_median"] = float(np.median(shown))
            out[f"{label}_resampled_fraction"] = float(np.mean(resampled))
    finally:
        session.stop()
        grads.close()
        panel.close()
        sliders.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``workbench bench panels [--atoms N] [--steps-per-chunk K]
    [--trials T] [--json FILE]``."""
    ap = argparse.ArgumentParser(prog="workbench bench panels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--atoms", type=int, default=1000,
                    help="n^3 (simple cubic) or 4 n^3 (fcc) atoms (default 1000)")
    ap.add_argument("--steps-per-chunk", type=int, default=5,
                    help="MD steps per compiled chunk (structural; default 5)")
    ap.add_argument("--trials", type=int, default=10, help="slider changes (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gradient-trials", type=int, default=6,
                    help="slider changes per gradient case (default 6; 0 skips them)")
    ap.add_argument("--gradient-jump", type=float, default=0.1,
                    help="epsilon move that forces re-sampling (default 0.1)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    warm = _warm_up()
    first, session, view = measure_first_frame(args.atoms, args.steps_per_chunk, args.seed)
    try:
        slider = measure_slider(session, view, args.trials, args.seed)
    finally:
        session.stop()
        view.close()
    rate = session.steps_per_second
    gradient = measure_gradient(args.gradient_trials, args.gradient_jump, args.seed) \
        if args.gradient_trials > 0 else {}
    result = {
        "benchmark": "panels",
        "atoms": args.atoms,
        "lattice": "simple cubic" if round(args.atoms ** (1 / 3)) ** 3 == args.atoms else "fcc",
        "steps_per_chunk": args.steps_per_chunk,
        "steps_per_second": rate,
        "imports_and_jax_start_s": warm,
        **first,
        **slider,
        "gradient": gradient,
        "targets": {"time_to_first_frame_s": 5.0, "slider_to_frame_ms": 200.0,
                    "slider_to_gradient_s": 1.0},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    print(f"workbench bench panels: {args.atoms} LJ atoms ({result['lattice']}), "
          f"{args.steps_per_chunk} steps per chunk, {os.cpu_count()} CPUs")
    print(f"  imports + JAX start-up (earlier cells)   {warm:8.2f} s")
    print(f"  time to first frame in the view          {first['time_to_first_frame_s']:8.2f} s"
          "   (target <= 5 s)")
    print(f"    build system / session / panels         {first['build_system_s']:.2f} / "
          f"{first['create_session_s']:.2f} / {first['create_panels_s']:.2f} s")
    print(f"    first chunk (compile + run)             {first['first_chunk_s']:.2f} s")
    print(f"  chunk during the slider trials           {1e3 * slider['chunk_s_median']:8.1f} ms "
          f"median, {1e3 * slider['chunk_s_max']:.1f} ms max   ({rate:,.0f} steps/s)")
    print(f"  slider -> first frame with new value     "
          f"{slider['slider_to_frame_ms_median']:8.1f} ms median, "
          f"{slider['slider_to_frame_ms_max']:.1f} ms max   (target <= 200 ms)")
    print(f"  slider -> that frame in the view         "
          f"{slider['slider_to_view_ms_median']:8.1f} ms median, "
          f"{slider['slider_to_view_ms_max']:.1f} ms max")
    print(f"  recompilations from slider changes       "
          f"{slider['recompiles_during_slider_changes']:8d}")
    if gradient:
        print("  gradient panel (notebook 06: 108 LJ atoms, 150 frames reweighted)")
        for label, what in (("reweight", "small move, reweighting"),
                            ("resample", f"move of {args.gradient_jump}, re-sampling")):
            print(f"    slider -> gradient ({what:28s}) "
                  f"{gradient[f'{label}_slider_to_gradient_s_median']:6.2f} s median, "
                  f"{gradient[f'{label}_slider_to_gradient_s_max']:.2f} s max; chart "
                  f"{gradient[f'{label}_slider_to_chart_s_median']:.2f} s "
                  f"(re-sampled {100 * gradient[f'{label}_resampled_fraction']:.0f}%)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"  wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
