"""Umbrella sampling as one batch of windows, with MBAR and WHAM, against the exact free energy
of a particle in a 1-D double well (see test_metadynamics for the system)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.potentials.base import FunctionPotential
from workbench.sampling import bias, cv
from workbench.sampling import umbrella as us

from test_metadynamics import BARRIER, KT, double_well, exact_double_well


@pytest.fixture(scope="module")
def windows():
    centers = np.linspace(-1.6, 1.6, 17)
    sampler = us.umbrella(FunctionPotential(double_well), cv.Position(0, 0), centers, k=300.0)
    params = {"h": jnp.asarray(BARRIER)}
    settings = sampler.inner.settings(dt=0.01, kT=KT, gamma=5.0)
    start = np.zeros((17, 1, 3))
    start[:, 0, 0] = centers
    states = sampler.init_windows(jax.random.PRNGKey(0), start, params, settings)

    @jax.jit
    def run(states, bias_params):
        def sample(c, _):
            c = jax.lax.fori_loop(0, 10, lambda i, s: sampler.step_windows(
                s, params, settings, bias_params, energy=False), c)
            return c, sampler.cv_values(c)[:, 0]
        return jax.lax.scan(sample, states, None, length=5000)

    bp = sampler.window_params()
    states, _ = run(states, bp)  # equilibration
    states, s = run(states, bp)
    assert run._cache_size() == 1
    return sampler, np.asarray(s).T  # (windows, samples)


def _error(x, f):
    exact = exact_double_well(x)
    region = np.abs(x) <= 1.45
    d = (f - exact)[region]
    assert np.all(np.isfinite(d))
    return np.abs(d - d.mean()).max() / KT


def test_umbrella_mbar_and_wham_recover_the_double_well(windows):
    sampler, s = windows
    grid = bias.Grid.for_cvs(sampler.cvs, lower=-1.8, upper=1.8, bins=72)
    (x,), f_mbar, result = us.free_energy_mbar(s, sampler.centers, sampler.k, KT, grid)
    assert _error(x, f_mbar) < 0.2
    (x,), f_wham, wres = us.wham(s, sampler.centers, sampler.k, KT, grid)
    assert _error(x, f_wham) < 0.2
    # window free energies: WHAM's binned solution is MBAR's within the binning error (the end
    # windows also lose the samples that fall off the grid)
    fine = bias.Grid.for_cvs(sampler.cvs, lower=-2.0, upper=2.0, bins=320)
    _, _, wres = us.wham(s, sampler.centers, sampler.k, KT, fine)
    f_w, f_m = np.asarray(wres.f), np.asarray(result.f - result.f[0])
    np.testing.assert_allclose(f_w[1:-1] - f_w[1], f_m[1:-1] - f_m[1], atol=0.05)


def test_window_batch_follows_new_centres_without_recompiling(windows):
    sampler, _ = windows
    params = {"h": jnp.asarray(BARRIER)}
    settings = sampler.inner.settings(dt=0.01, kT=KT, gamma=5.0)
    states = sampler.init_windows(jax.random.PRNGKey(1), np.zeros((1, 3)), params, settings)
    step = jax.jit(lambda st, bp: jax.lax.fori_loop(
        0, 500, lambda i, s: sampler.step_windows(s, params, settings, bp), st))
    for shift in (0.0, 0.1, 0.2):
        bp = sampler.window_params(centers=sampler.centers + shift)
        out = step(states, bp)
    assert step._cache_size() == 1
    mean = np.asarray(sampler.cv_values(out))[:, 0]
    # stiff windows in the flat-ish middle hold the particle near their centres
    assert np.all(np.abs(mean - (sampler.centers[:, 0] + 0.2)) < 0.5)


def test_bias_matrix_wraps_periodic_cvs():
    u = us.bias_matrix(np.array([[3.0], [-3.0]]), np.array([[-3.0]]), np.array([[2.0]]), 1.0,
                       (2 * np.pi,))
    d = 6.0 - 2 * np.pi
    np.testing.assert_allclose(np.asarray(u), [[0.5 * 2.0 * d * d, 0.0]], atol=1e-6)


def test_bad_umbrella_input_is_named():
    pot = FunctionPotential(double_well)
    with pytest.raises(ValueError, match="centers"):
        us.umbrella(pot, [cv.Position(0, 0), cv.Position(0, 1)], [0.0, 1.0], k=1.0)
    with pytest.raises(ValueError, match="positive"):
        us.umbrella(pot, cv.Position(0, 0), [0.0, 1.0], k=-1.0)


MB_A = np.array([-200.0, -100.0, -170.0, 15.0])
MB_a = np.array([-1.0, -1.0, -6.5, 0.7])
MB_b = np.array([0.0, 0.0, 11.0, 0.6])
MB_c = np.array([-10.0, -10.0, -6.5, 0.7])
MB_X0 = np.array([1.0, 0.0, -0.5, -1.0])
MB_Y0 = np.array([0.0, 0.5, 1.5, 1.0])
MB_SCALE = 0.1  # kJ/mol: the classic surface / 10, barriers of a few kT at kT = 2.5


def mueller_brown(x, y):
    dx, dy = x - MB_X0, y - MB_Y0
    return MB_SCALE * jnp.sum(MB_A * jnp.exp(MB_a * dx * dx + MB_b * dx * dy + MB_c * dy * dy))


def binned_mueller_brown(grid, kT=KT) -> np.ndarray:
    """The exact free energy of bins centred on ``grid``'s points, -kT ln <exp(-U/kT)>_bin
    (9 x 9 sub-points per bin), minimum 0: what a histogram estimate converges to."""
    xg, yg = grid.axes()
    sub = (np.arange(9) - 4) / 9.0
    xs = xg[:, None, None, None] + sub[None, None, :, None] * grid.spacing[0]
    ys = yg[None, :, None, None] + sub[None, None, None, :] * grid.spacing[1]
    xs, ys = np.broadcast_arrays(xs, ys)
    u = np.asarray(jax.jit(jax.vmap(mueller_brown))(jnp.asarray(xs.ravel()),
                                                     jnp.asarray(ys.ravel()))).reshape(xs.shape)
    exact = -kT * np.log(np.mean(np.exp(-(u - u.min()) / kT), axis=(-1, -2)))
    return exact - exact.min()


def test_two_dimensional_umbrella_recovers_mueller_brown():
    """81 windows on a 9 x 9 grid over the Mueller-Brown surface (one particle; z harmonic),
    WHAM on 0.1 nm bins against the exact bin-averaged free energy -kT ln <exp(-U/kT)>_bin,
    over the region below 3 kT."""
    def energy(r, p):
        return mueller_brown(r[0, 0], r[0, 1]) + 50.0 * r[0, 2] ** 2

    cvs = [cv.Position(0, 0), cv.Position(0, 1)]
    gx, gy = np.meshgrid(np.linspace(-1.4, 1.0, 9), np.linspace(-0.4, 2.0, 9), indexing="ij")
    centers = np.stack([gx.ravel(), gy.ravel()], -1)
    sampler = us.umbrella(FunctionPotential(energy), cvs, centers, k=150.0)
    settings = sampler.inner.settings(dt=0.005, kT=KT, gamma=5.0)
    start = np.zeros((len(centers), 1, 3))
    start[:, 0, :2] = centers
    states = sampler.init_windows(jax.random.PRNGKey(5), start, {}, settings)

    def run(states, n):
        def sample(c, _):
            c = jax.lax.fori_loop(0, 10, lambda i, s: sampler.step_windows(
                s, {}, settings, energy=False), c)
            return c, sampler.cv_values(c)
        return jax.lax.scan(sample, states, None, length=n)

    states, _ = jax.jit(run, static_argnums=1)(states, 1000)
    _, s = jax.jit(run, static_argnums=1)(states, 8000)
    s = np.asarray(s).transpose(1, 0, 2)  # (windows, samples, 2)
    grid = bias.Grid.for_cvs(cvs, lower=[-1.5, -0.5], upper=[1.1, 2.1], bins=[26, 26])
    (xg, yg), f, result = us.wham(s, centers, 150.0, KT, grid)
    assert f.shape == (27, 27)
    exact = binned_mueller_brown(grid)
    region = exact < 3.0 * KT
    d = (f - exact)[region]
    assert np.all(np.isfinite(d))
    err = np.abs(d - d.mean()).max() / KT
    print(f"2-D umbrella + WHAM on Mueller-Brown: max error {err:.3f} kT over "
          f"{region.sum()} bins")
    assert err < 0.2
