"""Grid biases and well-tempered metadynamics against exact free energies: a particle in a 1-D
double well (F(x) = U(x) exactly, the other two coordinates separate) and the 2-D Mueller-Brown
surface."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.gradients import reweight as rw
from workbench.potentials.base import FunctionPotential
from workbench.sampling import bias, cv
from workbench.sampling import metadynamics as md

KT = 2.5  # kJ/mol
BARRIER = 5.0 * KT


def double_well(r, p):
    """U = h (x^2 - 1)^2 + 50 (y^2 + z^2) kJ/mol, x in nm: F(x) = U(x, 0, 0) + const."""
    x = r[0, 0]
    return p["h"] * (x * x - 1.0) ** 2 + 50.0 * (r[0, 1] ** 2 + r[0, 2] ** 2)


def exact_double_well(x):
    return BARRIER * (x * x - 1.0) ** 2


def exact_well_averages(h, kT=KT):
    """Exact [<x^2> (nm^2), <U> (kJ/mol)] of :func:`double_well` at barrier parameter h:
    quadrature in x; y and z add kT to <U>."""
    x = np.linspace(-3.0, 3.0, 200_001)
    u = h * (x * x - 1.0) ** 2
    p = np.exp(-(u - u.min()) / kT)
    p /= p.sum()
    return np.array([np.sum(x * x * p), np.sum(u * p) + kT])


def test_hermite_grid_reproduces_a_gaussian_and_its_gradient(x64):
    cvs = [cv.Position(0, 0), cv.Dihedral(0, 1, 2, 3)]
    grid = bias.Grid.for_cvs(cvs, lower=[-2.0, None], upper=[2.0, None], bins=[80, 72])
    centre, sigma = jnp.array([0.3, 3.0]), jnp.array([0.2, 0.4])
    table = bias.gaussian_on_grid(grid, centre, sigma, 1.5)

    def exact(s):
        d = cv.wrap((s - centre)[None], cv.periods(cvs))[0]
        return 1.5 * jnp.exp(-0.5 * jnp.sum((d / sigma) ** 2))

    rng = np.random.default_rng(0)
    for _ in range(50):  # includes points across the periodic seam at +-pi
        s = jnp.array([rng.uniform(-1.9, 1.9), rng.uniform(-np.pi, np.pi)])
        got = bias.hermite_interpolate(grid, table, s)
        assert float(got) == pytest.approx(float(exact(s)), abs=5e-5)
        g = jax.grad(lambda x: bias.hermite_interpolate(grid, table, x))(s)
        np.testing.assert_allclose(np.asarray(g), np.asarray(jax.grad(exact)(s)), atol=5e-3)
    # exactly periodic: the same value one period apart
    s = jnp.array([0.1, 3.1])
    assert float(bias.hermite_interpolate(grid, table, s)) == pytest.approx(
        float(bias.hermite_interpolate(grid, table, s - jnp.array([0.0, 2 * np.pi]))), abs=1e-12)


@pytest.mark.parametrize("periodic", [False, True])
def test_local_hills_equal_whole_grid_hills(x64, periodic):
    """Hills added on windows around their centres (the fast path) equal the whole-grid
    Gaussians within the 6-sigma truncation, also across the periodic seam, at bounded edges,
    and for hills wider than a periodic axis."""
    cvs = [cv.Dihedral(0, 1, 2, 3) if periodic else cv.Position(0, 0), cv.Dihedral(0, 1, 2, 3)]
    lower = [None if periodic else -2.0, None]
    upper = [None if periodic else 2.0, None]
    grid = bias.Grid.for_cvs(cvs, lower=lower, upper=upper, bins=[60, 40])
    sigma = jnp.array([0.2, 0.3])
    centers = jnp.array([[0.1, 0.2], [3.05, -3.0], [-1.95, 3.1], [1.99, -0.4]])
    heights = jnp.array([1.0, 0.5, 2.0, 0.7])
    want = sum(bias.gaussian_on_grid(grid, c, sigma, h) for c, h in zip(centers, heights))
    got = bias.add_hills(grid, grid.zeros(), centers, sigma, heights,
                         bias.hill_reach(grid, sigma))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    wide = jnp.array([3.0, 3.0])  # wider than the periodic axis: the whole axis, once
    want = bias.gaussian_on_grid(grid, centers[1], wide, 1.0)
    got = bias.add_hills(grid, grid.zeros(), centers[1:2], wide, jnp.ones(1),
                         bias.hill_reach(grid, wide))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)


def test_grid_bias_forces_equal_finite_differences(x64):
    c = cv.Distance(0, 1)
    grid = bias.Grid.for_cvs([c], lower=0.0, upper=2.0, bins=100)
    term = bias.GridBias([c], grid)
    table = sum(bias.gaussian_on_grid(grid, jnp.array([m]), jnp.array([0.15]), h)
                for m, h in [(0.5, 1.0), (0.8, 2.0), (1.1, 0.5)])
    r = jnp.array([[0.0, 0.0, 0.0], [0.5, 0.4, 0.3]])
    f = term.energy_forces(r, {"table": table}).forces
    h = 1e-6
    for a in range(3):
        dr = jnp.zeros_like(r).at[1, a].set(h)
        p = {"table": table}
        num = -(term.energy(r + dr, p) - term.energy(r - dr, p)) / (2 * h)
        assert float(f[1, a]) == pytest.approx(float(num), rel=1e-6)
    np.testing.assert_allclose(np.asarray(f[0]), -np.asarray(f[1]), rtol=1e-12)


def _run_walkers(sampler, params, settings, walkers, steps, chunks, record):
    """Run ``chunks`` x ``steps`` steps of the walkers; after each chunk call record(state)."""
    start = np.tile(np.array([[-1.0, 0.0, 0.0]]), (walkers, 1, 1))
    start[walkers // 2:, 0, 0] = 1.0
    state = sampler.init_walkers(jax.random.PRNGKey(3), start, params, settings)

    @jax.jit
    def chunk(state):
        def body(c, _):
            c = sampler.step_walkers(c, params, settings, energy=False)
            s = c.positions[:, 0, 0]
            table = md.bias_state(c).table
            v = jax.vmap(lambda x: sampler.bias.bias_at(x[None], {"table": table}))(s)
            return c, (s, v - md.rct(sampler, md.bias_state(c), settings.kT))
        return jax.lax.scan(body, state, None, length=steps)

    for _ in range(chunks):
        state, out = chunk(state)
        record(state, out)
    return state


def test_well_tempered_metadynamics_recovers_the_double_well():
    params = {"h": jnp.asarray(BARRIER)}
    sampler = md.metadynamics(FunctionPotential(double_well), cv.Position(0, 0), sigma=0.1,
                              height=0.5, bias_factor=10.0, pace=50, lower=-2.5, upper=2.5,
                              bins=250)
    settings = sampler.inner.settings(dt=0.01, kT=KT, gamma=5.0)
    estimates, samples = [], []

    def record(state, out):
        estimates.append(md.free_energy(sampler, md.bias_state(state))[1])
        samples.append(tuple(np.asarray(o) for o in out))

    state = _run_walkers(sampler, params, settings, walkers=8, steps=10000, chunks=16,
                         record=record)
    assert int(md.bias_state(state).n_hills) == 8 * 16 * 10000 // 50
    x = sampler.bias.grid.axes()[0]
    exact = exact_double_well(x)
    region = exact < 3.0 * KT  # the sampled region, wells and barrier (5 kT: region < 3 kT)
    region &= np.abs(x) < 1.6

    def error(f):
        d = (f - exact)[region]
        return np.abs(d - d.mean()).max() / KT

    # sum of hills, averaged over the second half of the run (the bias then only fluctuates)
    hills = np.mean(estimates[len(estimates) // 2:], axis=0)
    print("metad errors (kT): hills", error(hills))
    assert error(hills) < 0.2, error(hills)
    # reweighting (Tiwary-Parrinello) over the second half
    s = np.concatenate([a for a, _ in samples[len(samples) // 2:]]).ravel()
    lw = np.concatenate([b for _, b in samples[len(samples) // 2:]]).ravel() / KT
    _, f_rw = md.reweighted_free_energy(sampler.bias.grid, s, lw, KT)
    assert np.all(np.isfinite(f_rw[region]))
    print("reweighting", error(f_rw))
    assert error(f_rw) < 0.2, error(f_rw)
    # gradients of unbiased averages from the biased samples (weights (V - c) / kT): d<x^2>/dh
    # by reweighting against the exact derivative (y and z do not depend on h: left at 0)
    frames = np.zeros((len(s[::10]), 1, 3))
    frames[:, 0, 0] = s[::10]
    est = rw.ensemble_gradient(lambda r, p, aux, box: r[0, 0] ** 2, FunctionPotential(double_well),
                               params, rw.Samples.from_frames(frames, log_weight=lw[::10]), KT,
                               n_blocks=8)
    h = float(params["h"])
    exact = (exact_well_averages(h + 1e-5) - exact_well_averages(h - 1e-5))[0] / 2e-5
    print("d<x^2>/dh", est.gradient["h"], "+-", est.stderr["h"], "exact", exact, "ESS", est.ess)
    assert abs(float(est.gradient["h"]) - exact) < max(4.0 * float(est.stderr["h"]),
                                                       0.05 * abs(exact))
    assert float(est.stderr["h"]) < 0.1 * abs(exact)


def test_well_tempered_metadynamics_recovers_mueller_brown():
    """32 walkers on the 2-D Mueller-Brown surface (the umbrella test's: surface / 10 at kT 2.5),
    CVs x and y: the sum of hills (second-half average) against the exact F = U on the grid
    points, and Tiwary-Parrinello reweighting on 0.1 nm bins against the exact bin-averaged F,
    both over the region below 3 kT."""
    from test_umbrella import binned_mueller_brown, mueller_brown

    def energy(r, p):
        return mueller_brown(r[0, 0], r[0, 1]) + 50.0 * r[0, 2] ** 2

    cvs = [cv.Position(0, 0), cv.Position(0, 1)]
    sampler = md.metadynamics(FunctionPotential(energy), cvs, sigma=0.05, height=0.03,
                              bias_factor=10.0, pace=100, lower=[-1.8, -0.7], upper=[1.4, 2.3],
                              bins=[64, 60])
    settings = sampler.inner.settings(dt=0.005, kT=KT, gamma=5.0)
    start = np.zeros((32, 1, 3))
    start[:, 0, :2] = [-0.55, 1.45]  # all walkers start in the deepest basin
    state = sampler.init_walkers(jax.random.PRNGKey(2), start, {}, settings)

    @jax.jit
    def chunk(state):
        def body(c, _):
            c = jax.lax.fori_loop(0, 10, lambda i, c: sampler.step_walkers(
                c, {}, settings, energy=False), c)
            s = c.positions[:, 0, :2]
            v = jax.vmap(lambda x: sampler.bias.bias_at(x, {"table": md.bias_state(c).table}))(s)
            return c, (s, v - md.rct(sampler, md.bias_state(c), settings.kT))
        return jax.lax.scan(body, state, None, length=8000)

    hills, samples = [], []
    for _ in range(16):
        state, out = chunk(state)
        hills.append(md.free_energy(sampler, md.bias_state(state))[1])
        samples.append([np.asarray(o) for o in out])
    xg, yg = sampler.bias.grid.axes()
    xx, yy = np.meshgrid(xg, yg, indexing="ij")
    u = np.asarray(jax.vmap(mueller_brown)(jnp.asarray(xx.ravel()), jnp.asarray(yy.ravel())))
    exact = u.reshape(xx.shape) - u.min()
    region = exact < 3.0 * KT
    d = (np.mean(hills[8:], axis=0) - exact)[region]
    err_hills = np.abs(d - d.mean()).max() / KT
    s = np.concatenate([a for a, _ in samples[8:]]).reshape(-1, 2)
    lw = np.concatenate([b for _, b in samples[8:]]).ravel() / KT
    grid = bias.Grid.for_cvs(cvs, lower=[-1.5, -0.5], upper=[1.1, 2.1], bins=[26, 26])
    _, f = md.reweighted_free_energy(grid, s, lw, KT)
    exact_bins = binned_mueller_brown(grid)
    d = (f - exact_bins)[exact_bins < 3.0 * KT]
    assert np.all(np.isfinite(d))
    err_rw = np.abs(d - d.mean()).max() / KT
    print(f"Mueller-Brown metadynamics: max error {err_hills:.3f} kT (sum of hills, "
          f"{region.sum()} points), {err_rw:.3f} kT (reweighting, {d.size} bins)")
    assert err_hills < 0.2 and err_rw < 0.2


def test_metadynamics_runs_in_the_simulation_driver_without_recompiling():
    from workbench.simulate import Simulation

    params = {"h": jnp.asarray(BARRIER)}
    sampler = md.metadynamics(FunctionPotential(double_well), cv.Position(0, 0), sigma=0.1,
                              height=0.5, bias_factor=10.0, pace=10, lower=-2.5, upper=2.5,
                              bins=250)
    sim = Simulation(FunctionPotential(double_well), params, sampler,
                     dict(dt=0.01, kT=KT, gamma=5.0), np.array([[-1.0, 0.0, 0.0]]),
                     report_interval=100, frames_per_chunk=2, seed=1)
    frame = sim.advance()
    assert int(md.bias_state(sim.state).n_hills) == 20
    # the reported energy is the system's, not the biased one
    r = frame.positions[-1]
    assert frame.thermo["potential"][-1] == pytest.approx(
        float(double_well(jnp.asarray(r), params)), rel=1e-5)
    assert float(md.bias_energy(sampler, sim.state)) > 0.0
    for h in (10.0, 11.0, 12.0):  # new parameter values: one compiled chunk
        sim.set_params({"h": jnp.asarray(h)})
        sim.advance()
    assert sim.compile_count == 1
    assert int(md.bias_state(sim.state).n_hills) == 80


def test_bad_metadynamics_input_is_named():
    pot = FunctionPotential(double_well)
    with pytest.raises(ValueError, match="bias_factor"):
        md.metadynamics(pot, cv.Position(0, 0), sigma=0.1, height=1.0, bias_factor=1.0,
                        lower=-1, upper=1)
    with pytest.raises(ValueError, match="lower and upper"):
        md.metadynamics(pot, cv.Position(0, 0), sigma=0.1, height=1.0)
    with pytest.raises(ValueError, match="narrower than the grid spacing"):
        md.metadynamics(pot, cv.Position(0, 0), sigma=0.001, height=1.0, lower=-1, upper=1)
    with pytest.raises(ValueError, match="1 or 2 CVs"):
        md.metadynamics(pot, [cv.Position(0, a) for a in range(3)], sigma=0.1, height=1.0,
                        lower=-1, upper=1)
