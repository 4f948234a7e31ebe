"""Gradients of Monte Carlo averages by reweighting, d<O>/dtheta = <dO/dtheta> - Cov(O, dU/dtheta)
/ kT, against exact derivatives (a particle in a double well, by quadrature) and against finite
differences of independent long Monte Carlo runs (the double well, and the Lennard-Jones
fluid's energy and pressure with respect to epsilon)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench.gradients import reweight as rw
from workbench.potentials.base import FunctionPotential
from workbench.sampling import montecarlo as mcm
from workbench.simulate import Simulation

from test_lj_eos import block_average
from test_metadynamics import double_well, exact_well_averages

KT = 2.5
WELL = FunctionPotential(double_well)


def _well_observable(r, p, aux, box):
    """[x^2 (nm^2), U (kJ/mol)]: one observable independent of h, one that depends on it."""
    return jnp.stack([r[0, 0] ** 2, double_well(r, p)])


def _sample_well(h, seed, chains=64, steps=20_000, thin=10, *, potential=WELL,
                 params=None) -> np.ndarray:
    """Frames (chains * steps / thin, 1, 3), chain after chain, from all-particle Metropolis
    chains (adapted, then production) of a one-particle ``potential`` (default the double well
    at barrier h; ``params`` override), started half in each well."""
    sampler = mcm.metropolis(potential, mode="all", step_size=0.3, target=0.5)
    settings = sampler.settings(kT=KT)
    params = {"h": jnp.asarray(h)} if params is None else params

    @functools.partial(jax.jit, static_argnums=1)
    def run(s, n):
        def body(c, _):
            c = jax.lax.fori_loop(0, thin, lambda i, c: sampler.step(c, params, settings), c)
            return c, c.positions

        return jax.vmap(lambda c: jax.lax.scan(body, c, None, length=n // thin))(s)

    x0 = np.tile(np.array([[[-1.0, 0.0, 0.0]]]), (chains, 1, 1))
    x0[::2, 0, 0] = 1.0
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)
    s = jax.vmap(lambda k, x: sampler.init(k, x, params, settings))(keys, jnp.asarray(x0))
    s, _ = run(s, 2000)
    s, x = run(jax.vmap(mcm.production)(s), steps)
    return np.asarray(x).reshape(-1, 1, 3)


def test_double_well_gradient_matches_exact_and_independent_runs(x64):
    h, dh = 5.0, 1.0  # a 2 kT barrier: both wells sampled directly
    est = rw.ensemble_gradient(_well_observable, WELL, {"h": jnp.asarray(h)},
                               rw.Samples.from_frames(_sample_well(h, 1)), KT, n_blocks=16)
    g, g_err = est.gradient["h"], est.stderr["h"]
    exact = (exact_well_averages(h + 1e-5) - exact_well_averages(h - 1e-5)) / 2e-5
    np.testing.assert_allclose(est.value, exact_well_averages(h), rtol=5e-3)
    print("reweighting", g, "+-", g_err, "exact", exact)
    assert np.all(np.abs(g - exact) < 4.0 * g_err), (g, g_err, exact)
    assert np.all(g_err < 0.05 * np.abs(exact))  # the check has teeth: 5% resolution
    # finite differences of two independent long runs at h -+ dh (other seeds)
    runs = []
    for hh, seed in [(h - dh, 2), (h + dh, 3)]:
        x = _sample_well(hh, seed)[:, 0, 0]
        obs = np.stack([x * x, hh * (x * x - 1.0) ** 2], axis=1)
        runs.append([block_average(obs[:, k], 16) for k in range(2)])
    fd = np.array([(runs[1][k][0] - runs[0][k][0]) / (2 * dh) for k in range(2)])
    fd_err = np.array([np.hypot(runs[1][k][1], runs[0][k][1]) / (2 * dh) for k in range(2)])
    fd_bias = np.abs((exact_well_averages(h + dh) - exact_well_averages(h - dh)) / (2 * dh) - exact)
    print("independent runs", fd, "+-", fd_err, "(difference-quotient bias", fd_bias, ")")
    assert np.all(np.abs(g - fd) < 4.0 * np.hypot(g_err, fd_err) + fd_bias)


def _lj_run(system, eps_scale: float, seed: int, chunks: int) -> np.ndarray:
    """Frames (100 * chunks, N, 3) of single-particle Metropolis sweeps (5 sweeps apart)."""
    params = dict(system.params, epsilon=system.params["epsilon"] * eps_scale)
    sampler = mcm.metropolis(system.potential, mode="single", step_size=0.1)
    sim = Simulation(system.potential, params, sampler, dict(kT=2.0), system.positions,
                     masses=system.masses, seed=seed, report_interval=5, frames_per_chunk=100)
    sim.advance()
    sim.state = mcm.production(sim.state)
    return np.concatenate([sim.advance().positions for _ in range(chunks)])


def test_lennard_jones_gradients_match_independent_runs(x64):
    """108 atoms at T* = 2, rho* = 0.5: d<U/N>/d epsilon and d<P>/d epsilon from one run
    against the difference of runs at epsilon 0.9 and 1.1."""
    n, T = 108, 2.0
    system = wb.lj_fluid(n_atoms=n, density=0.5, cutoff=2.5, skin=0.5, truncation="cut")
    pot, params = system.potential, system.params
    pressure = rw.virial_pressure(pot, T)

    def obs(r, p, aux, box):
        return jnp.stack([pot.energy(r, p, aux, box) / n, pressure(r, p, aux, box)])

    frames = _lj_run(system, 1.0, 1, 16)
    aux = pot.allocate(frames[0])
    est = rw.ensemble_gradient(obs, pot, params, rw.Samples.from_frames(frames), T, aux)
    g, g_err = est.gradient["epsilon"][:, 0], est.stderr["epsilon"][:, 0]
    means = {}
    for scale, seed in [(0.9, 2), (1.1, 3)]:
        p = dict(params, epsilon=params["epsilon"] * scale)
        fr = _lj_run(system, scale, seed, 16)
        o = np.asarray(jax.jit(jax.vmap(lambda r: obs(r, p, rw._fresh(pot, r, aux, None),
                                                      None)))(fr))
        means[scale] = [block_average(o[:, k]) for k in range(2)]
    fd = np.array([(means[1.1][k][0] - means[0.9][k][0]) / 0.2 for k in range(2)])
    fd_err = np.array([np.hypot(means[1.1][k][1], means[0.9][k][1]) / 0.2 for k in range(2)])
    print("reweighting", g, "+-", g_err, "; independent runs", fd, "+-", fd_err)
    assert np.all(g_err < 0.1 * np.abs(g))
    assert np.all(np.abs(g - fd) < 4.0 * np.hypot(g_err, fd_err)), (g, g_err, fd, fd_err)


def test_reweighted_average_composes_and_never_retraces(x64):
    frames = _sample_well(5.0, 4, chains=16, steps=4000)
    samples = rw.Samples.from_frames(frames)
    traces = []

    def mean_x2(h):
        traces.append(1)
        return rw.reweighted_average(_well_observable, WELL, {"h": h}, samples, KT).value[0]

    # jit(grad(jit(f))) equals the fluctuation formula of ensemble_gradient
    g = jax.jit(jax.grad(jax.jit(mean_x2)))
    est = rw.ensemble_gradient(_well_observable, WELL, {"h": jnp.asarray(5.0)}, samples, KT,
                               n_blocks=1)
    assert float(g(jnp.asarray(5.0))) == pytest.approx(float(est.gradient["h"][0]), rel=1e-10)
    n = len(traces)
    for h in (5.5, 6.0, 4.5):  # new values: no new trace
        g(jnp.asarray(h))
    assert len(traces) == n
    # vmap over parameter values, and second derivatives
    hs = jnp.array([4.5, 5.0, 5.5])
    np.testing.assert_allclose(jax.vmap(jax.grad(mean_x2))(hs),
                               [float(jax.grad(mean_x2)(h)) for h in hs], rtol=1e-10)
    assert np.isfinite(float(jax.grad(jax.grad(mean_x2))(jnp.asarray(5.0))))
    # reweighting to other parameters than those sampled: the exact average, fewer samples
    res = rw.reweighted_average(_well_observable, WELL, {"h": jnp.asarray(5.5)}, samples, KT,
                                ref_params={"h": jnp.asarray(5.0)})
    np.testing.assert_allclose(np.asarray(res.value), exact_well_averages(5.5), rtol=0.03)
    assert 0.5 * samples.n_frames < float(res.ess) < samples.n_frames
    # the host-side estimate compiles once: new parameter values and new frames, no new trace
    seen = []

    def counted(r, p, aux, box):
        seen.append(1)
        return _well_observable(r, p, aux, box)

    rw.ensemble_gradient(counted, WELL, {"h": jnp.asarray(5.0)}, samples, KT, n_blocks=1)
    n = len(seen)  # one compilation (the value and jacrev each trace the observable)
    for h, fr in ((5.5, samples), (6.0, rw.Samples.from_frames(frames[::-1]))):
        rw.ensemble_gradient(counted, WELL, {"h": jnp.asarray(h)}, fr, KT, n_blocks=1)
    assert n > 0 and len(seen) == n


def test_lists_grow_to_fit_every_frame(x64):
    """A template with too little room for the frames: the gradient grows it, and the average
    equals the one with a generous list."""
    system = wb.lj_fluid(n_atoms=108, density=0.5, cutoff=2.5, skin=0.3, truncation="cut")
    pot, params = system.potential, system.params
    frames = _lj_run(system, 1.0, 5, 1)[:40]
    samples = rw.Samples.from_frames(frames)
    tight = wb.neighbors.allocate(pot.space, frames[0], 2.5, 0.3, capacity_factor=0.8)
    grown = rw.fit_template(pot, samples, tight)
    assert grown.capacity > tight.capacity
    generous = pot.allocate(frames[0])
    ref = jax.vmap(lambda r: pot.energy(r, params, rw._fresh(pot, r, generous, None)))(
        jnp.asarray(frames))
    assert not bool(rw.frame_values(rw.potential_energy(pot), pot, params, samples, grown)[2])
    est = rw.ensemble_gradient(rw.potential_energy(pot), pot, params, samples, 2.0, tight,
                               n_blocks=4, min_ess=10)
    assert float(est.value) == pytest.approx(float(np.mean(ref)), rel=1e-12)


def test_small_effective_sample_size_warns_and_bad_input_is_named(x64):
    frames = _sample_well(5.0, 6, chains=2, steps=2000)
    params = {"h": jnp.asarray(5.0)}
    spread = rw.Samples.from_frames(frames, log_weight=np.linspace(0.0, 60.0, len(frames)))
    with pytest.warns(rw.LowESSWarning, match="effective sample size"):
        rw.ensemble_gradient(_well_observable, WELL, params, spread, KT, n_blocks=2)
    with pytest.raises(ValueError, match=r"\(F, N, 3\)"):
        rw.Samples.from_frames(frames[:, 0])
    with pytest.raises(ValueError, match="log_weight"):
        rw.Samples.from_frames(frames, log_weight=np.zeros(3))
    with pytest.raises(ValueError, match="box"):
        rw.Samples.from_frames(frames, box=np.eye(3))
    with pytest.raises(ValueError, match="frames per block"):
        rw.ensemble_gradient(_well_observable, WELL, params, rw.Samples.from_frames(frames[:5]),
                             KT, n_blocks=10)
