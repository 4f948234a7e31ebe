"""Observables against independent references: kinetic temperature and tensor formulas, the
ideal-gas law, the virial pressure as -dF/dV from finite differences of the energy under uniform
scaling, the ideal-gas and fcc-lattice radial distribution functions, and the ballistic mean-square
displacement. Reduced units, float64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import observables as obs
from workbench import space as spaces
from workbench.dynamics import integrators as integ
from workbench.potentials import PairPotential


def block_average(x, n_blocks: int = 10) -> tuple[float, float]:
    """Mean of ``x`` (T,) and its standard error from ``n_blocks`` block means."""
    x = np.asarray(x, dtype=float)
    m = len(x) // n_blocks * n_blocks
    b = x[:m].reshape(n_blocks, -1).mean(axis=1)
    return float(b.mean()), float(b.std(ddof=1) / np.sqrt(n_blocks))


# ----------------------------------------------------------------------------- kinetic
def test_kinetic_temperature_and_tensor_formulas():
    rng = np.random.default_rng(0)
    n = 50
    v = rng.normal(size=(n, 3))
    m = rng.uniform(0.5, 3.0, size=n)
    ke = 0.5 * np.sum(m * np.sum(v * v, axis=1))
    for dof in (3 * n, 3 * n - 3):
        assert float(obs.kinetic_temperature(jnp.asarray(v), jnp.asarray(m), dof)) == pytest.approx(
            2 * ke / dof, rel=1e-13
        )
    k = np.asarray(obs.kinetic_tensor(jnp.asarray(v), jnp.asarray(m)))
    ref = sum(m[i] * np.outer(v[i], v[i]) for i in range(n))
    np.testing.assert_allclose(k, ref, rtol=1e-13)
    assert np.trace(k) == pytest.approx(2 * ke, rel=1e-13)
    # Pressure from a given virial: (2 KE + tr W) / (3 V) + tail, and the dof form N kT / V.
    w = rng.normal(size=(3, 3))
    vol = 7.5
    p = float(obs.pressure(jnp.asarray(v), jnp.asarray(m), jnp.asarray(w), vol, tail=0.25))
    assert p == pytest.approx((2 * ke + np.trace(w)) / (3 * vol) + 0.25, rel=1e-13)
    p = float(obs.pressure(jnp.asarray(v), jnp.asarray(m), jnp.asarray(w), vol, dof=3 * n - 3))
    assert p == pytest.approx(n * (2 * ke / (3 * n - 3)) / vol + np.trace(w) / (3 * vol), rel=1e-13)
    pt = np.asarray(obs.pressure_tensor(jnp.asarray(v), jnp.asarray(m), jnp.asarray(w), vol))
    np.testing.assert_allclose(pt, (ref + w) / vol, rtol=1e-13)


def test_maxwell_boltzmann_draw_has_set_temperature():
    """Velocities drawn at kT with per-atom masses: <m v_a^2> = kT per component; COM removed."""
    n, kT = 20000, 1.7
    rng = np.random.default_rng(1)
    m = rng.uniform(0.5, 4.0, size=n)
    v = np.asarray(integ.maxwell_boltzmann(jax.random.PRNGKey(3), jnp.asarray(m), kT))
    mv2 = (m[:, None] * v * v).mean(axis=0)
    np.testing.assert_allclose(mv2, kT, rtol=4 * np.sqrt(2.0 / n))
    np.testing.assert_allclose((m[:, None] * v).sum(0), 0.0, atol=1e-9)


# ----------------------------------------------------------------------------- pressure
def test_ideal_gas_pressure_is_n_kt_over_v():
    """Langevin dynamics without interactions (LJ with epsilon = 0, all pairs): <P> = N kT / V
    within 3 standard errors (and 1.5%), the virial exactly zero."""
    n, kT, rho = 108, 1.3, 0.4
    system = wb.lj_fluid(n_atoms=n, density=rho)
    pot = PairPotential("lennard_jones", system.space, 2.5, truncation="cut", neighbor_list=False)
    params = pot.init_params(epsilon=0.0)
    lang = integ.langevin(pot)
    s = lang.settings(dt=0.005, kT=kT, gamma=10.0)
    state = lang.init(jax.random.PRNGKey(5), system.positions, params, s)
    vol = float(system.space.volume)

    def body(st, _):
        st = lang.step(st, params, s)
        w = pot.virial(st.positions, params, st.aux)
        return st, jnp.stack([obs.pressure(st.velocities, st.masses, w, vol), jnp.max(jnp.abs(w))])

    _, out = jax.jit(lambda st: jax.lax.scan(body, st, None, length=8000))(state)
    out = np.asarray(out)
    assert out[:, 1].max() == 0.0
    mean, err = block_average(out[:, 0], 16)
    expected = n * kT / vol
    print(f"ideal gas P = {mean:.5f} +- {err:.5f}, N kT / V = {expected:.5f}")
    assert err < 0.006 * expected
    assert abs(mean - expected) < 3 * err
    assert abs(mean / expected - 1) < 0.015


def _scaled_energy(kind: str, truncation: str, positions, box, scale, params, **kw) -> float:
    """Energy (float64) with positions and box scaled by ``scale`` (3,), using a fresh
    PairPotential and neighbor list for the scaled box."""
    space = spaces.periodic(np.asarray(box) * scale)
    pot = PairPotential(kind, space, 2.5, truncation=truncation, **kw)
    r = jnp.asarray(positions * scale)
    return float(pot.energy(r, params, pot.allocate(r)))


@pytest.mark.parametrize("truncation", ["cut", "shift", "force_shift", "switch"])
def test_virial_pressure_equals_minus_dU_dV(truncation):
    """tr(W) / (3 V) = -dU/dV under uniform scaling of positions and box, and each diagonal
    element W_aa = -dU/d ln L_a under scaling of one axis (central differences, float64)."""
    kw = {"r_switch": 2.1} if truncation == "switch" else {}
    system = wb.lj_fluid(n_atoms=256, density=0.8, truncation=truncation, **kw)
    rng = np.random.default_rng(7)
    r = system.positions + 0.15 * rng.standard_normal(system.positions.shape)
    box = np.asarray(system.space.lengths)
    vol = float(np.prod(box))
    pot, params = system.potential, system.params
    w = np.asarray(pot.virial(jnp.asarray(r), params, pot.allocate(r)))
    h = 1e-6

    def energy(scale):
        return _scaled_energy("lennard_jones", truncation, r, box, np.asarray(scale), params, **kw)

    # Isotropic: V = V0 s^3, so dU/dV = dU/ds / (3 V0) at s = 1.
    du_ds = (energy([1 + h] * 3) - energy([1 - h] * 3)) / (2 * h)
    p_fd = -du_ds / (3 * vol)
    p_vir = np.trace(w) / (3 * vol)
    print(f"{truncation}: virial P {p_vir:.9f}, -dU/dV {p_fd:.9f}")
    assert abs(p_vir) > 0.1
    assert abs(p_vir - p_fd) < 1e-6 * abs(p_vir)
    for a in range(3):
        scale = np.ones(3)
        scale[a] = 1 + h
        up = energy(scale)
        scale[a] = 1 - h
        down = energy(scale)
        assert w[a, a] == pytest.approx(-(up - down) / (2 * h), rel=1e-6)
    np.testing.assert_allclose(w, w.T, atol=1e-10)


def test_tail_correction_matches_numerical_integral():
    """E_tail / N = 2 pi rho int_rc^inf r^2 u dr and P_tail = -(2 pi / 3) rho^2 int r^3 u' dr."""
    from scipy.integrate import quad

    system = wb.lj_fluid(n_atoms=256, density=0.7, cutoff=2.5, truncation="cut")
    pot = system.potential
    params = pot.init_params(sigma=1.1, epsilon=0.8)
    n, vol = 256, float(system.space.volume)
    rho = n / vol
    e_tail, p_tail = pot.tail_correction(params, n, vol)

    def u(r):
        return 4 * 0.8 * ((1.1 / r) ** 12 - (1.1 / r) ** 6)

    def du(r):
        return 4 * 0.8 * (-12 * 1.1**12 / r**13 + 6 * 1.1**6 / r**7)

    e_ref = 2 * np.pi * rho * quad(lambda r: r * r * u(r), 2.5, np.inf)[0]
    p_ref = -2 * np.pi / 3 * rho**2 * quad(lambda r: r**3 * du(r), 2.5, np.inf)[0]
    assert float(e_tail) / n == pytest.approx(e_ref, rel=1e-9)
    assert float(p_tail) == pytest.approx(p_ref, rel=1e-9)


# ----------------------------------------------------------------------------- RDF
def test_rdf_of_ideal_gas_is_one():
    """Uniform random positions: g(r) = 1 in every bin within 4.5 Poisson standard errors
    (each unordered pair counted once: sigma_g = sqrt(2 / expected ordered count)), and the
    average over bins within 1%."""
    rng = np.random.default_rng(8)
    n, L, n_frames = 1000, 10.0, 5
    space = spaces.periodic(L)
    frames = rng.uniform(0, L, size=(n_frames, n, 3))
    r, g = obs.radial_distribution(space, frames, r_max=4.5, n_bins=30)
    edges = np.linspace(0, 4.5, 31)
    assert np.allclose(r, 0.5 * (edges[1:] + edges[:-1]))
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    expected = shell * (n - 1) / L**3 * n * n_frames
    sigma = np.sqrt(2.0 / expected)
    z = (g - 1) / sigma
    print(f"ideal-gas g(r): max |z| = {np.abs(z[3:]).max():.2f}, mean g = {g[3:].mean():.4f}")
    assert np.all(np.abs(z[3:]) < 4.5)
    assert abs(np.average(g[3:], weights=expected[3:]) - 1) < 0.01
    # Unwrapped positions (shifted by whole boxes) give the same histogram.
    shifted = frames + L * rng.integers(-3, 4, size=frames.shape)
    _, g2 = obs.radial_distribution(space, shifted, r_max=4.5, n_bins=30)
    np.testing.assert_allclose(g2, g, rtol=1e-12)


def test_rdf_of_fcc_lattice_peaks_at_neighbor_shells():
    """fcc lattice (a = 1.6): g is zero below the nearest-neighbour distance a / sqrt(2), peaks in
    the bin holding it, the second peak is at a, and the first shell holds 12 neighbours."""
    a, cells = 1.6, 5
    positions = wb.fcc_lattice(cells, a)
    space = spaces.periodic(cells * a)
    n_bins, r_max = 200, 3.9
    r, g = obs.radial_distribution(space, positions, r_max=r_max, n_bins=n_bins)
    dr = r_max / n_bins
    nn = a / np.sqrt(2)
    assert abs(r[np.argmax(g)] - nn) <= dr
    assert np.all(g[r < nn - dr] == 0)
    # g is normalized by the pair density of the other N - 1 atoms (g = 1 for an ideal gas), so
    # the coordination number is (N - 1) / V * int g 4 pi r^2 dr.
    rho = (len(positions) - 1) / (cells * a) ** 3
    edges = np.linspace(0, r_max, n_bins + 1)
    shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    coordination = np.cumsum(rho * g * shell)
    mid = 0.5 * (nn + a)
    assert coordination[r < mid][-1] == pytest.approx(12.0, abs=1e-9)
    second = (r > mid) & (r < 0.5 * (a + a * np.sqrt(1.5)))
    assert abs(r[second][np.argmax(g[second])] - a) <= dr
    assert coordination[second][-1] == pytest.approx(18.0, abs=1e-9)


def test_rdf_rejects_bad_input():
    space = spaces.periodic(5.0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shape"):
        obs.radial_distribution(space, rng.uniform(size=(10, 2)), r_max=2.0)
    with pytest.raises(ValueError, match="shape"):
        obs.radial_distribution(space, rng.uniform(size=(2, 3, 10, 3)), r_max=2.0)
    with pytest.raises(ValueError, match="shape"):
        obs.radial_distribution(space, rng.uniform(size=(4, 10, 4)), r_max=2.0)
    with pytest.raises(ValueError, match="half the box"):
        obs.radial_distribution(space, rng.uniform(size=(10, 3)), r_max=2.6)
    with pytest.raises(ValueError, match="periodic"):
        obs.radial_distribution(spaces.free(), rng.uniform(size=(10, 3)), r_max=2.0)


# ----------------------------------------------------------------------------- MSD
def test_msd_of_ballistic_path():
    """x(t) = x0 + v t: MSD(lag) = <|v|^2> (lag dt)^2 exactly."""
    rng = np.random.default_rng(9)
    n, t_frames, dt = 40, 30, 0.1
    x0 = rng.uniform(0, 5, size=(n, 3))
    v = rng.normal(size=(n, 3))
    t = dt * np.arange(t_frames)
    frames = x0[None] + v[None] * t[:, None, None]
    lags, msd = obs.mean_square_displacement(frames)
    np.testing.assert_array_equal(lags, np.arange(t_frames))
    np.testing.assert_allclose(
        msd, np.mean(np.sum(v * v, 1)) * (lags * dt) ** 2, rtol=1e-12, atol=1e-14
    )
    lags, msd = obs.mean_square_displacement(frames, lags=[3, 7])
    np.testing.assert_allclose(
        msd, np.mean(np.sum(v * v, 1)) * (np.array([3, 7]) * dt) ** 2, rtol=1e-12
    )


def test_msd_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="shape"):
        obs.mean_square_displacement(rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="shape"):
        obs.mean_square_displacement(rng.normal(size=(5, 10, 2)))
    with pytest.raises(ValueError, match="lags"):
        obs.mean_square_displacement(rng.normal(size=(5, 10, 3)), lags=[5])
    with pytest.raises(ValueError, match="lags"):
        obs.mean_square_displacement(rng.normal(size=(5, 10, 3)), lags=[-1])


def test_pair_histogram_averages_to_the_rdf():
    """The per-frame g(r) of pair_histogram, averaged over frames, is radial_distribution on
    the same bins; bad edges and free space are refused."""
    rng = np.random.default_rng(3)
    box = 3.0
    space = spaces.periodic(box)
    frames = rng.uniform(0.0, box, size=(4, 120, 3))
    edges = np.linspace(0.0, 1.4, 29)
    g = jax.jit(obs.pair_histogram(space, edges))
    mean = np.mean([np.asarray(g(jnp.asarray(f))) for f in frames], axis=0)
    _, ref = obs.radial_distribution(space, frames, 1.4, 28)
    np.testing.assert_allclose(mean, ref, rtol=1e-5)
    with pytest.raises(ValueError, match="increasing"):
        obs.pair_histogram(space, [1.0, 0.5])
    with pytest.raises(ValueError, match="periodic"):
        obs.pair_histogram(spaces.free(), edges)


def test_rdf_uses_each_frames_box():
    """A frame scaled with its box (as a barostat does) has the same g(r) at scaled distances,
    when each frame's box is given; the construction-time box would be wrong for it."""
    a, cells = 1.6, 4
    positions = wb.fcc_lattice(cells, a) + 0.05 * np.random.default_rng(3).normal(
        size=(4 * cells**3, 3))
    space = spaces.periodic(cells * a)
    box = np.asarray(space.box, float)
    _, g0 = obs.radial_distribution(space, positions, r_max=3.0, n_bins=40)
    s = 1.1
    _, g1 = obs.radial_distribution(space, s * positions, r_max=3.0 * s, n_bins=40,
                                    boxes=(s * box)[None])
    np.testing.assert_allclose(g1, g0, rtol=1e-10, atol=1e-12)
    # both frames at once: the average of the two
    _, g2 = obs.radial_distribution(space, np.stack([positions, positions]), r_max=3.0,
                                    n_bins=40, boxes=np.stack([box, box]))
    np.testing.assert_allclose(g2, g0, rtol=1e-12)
    with pytest.raises(ValueError, match=r"boxes must have shape \(1, 3, 3\)"):
        obs.radial_distribution(space, positions, r_max=3.0, boxes=np.stack([box, box]))
