"""MBAR against pymbar on the same data (free energies to 1e-6 kT, uncertainties), against the
exact free energies of harmonic oscillators, and under jit / vmap / grad (checked by finite
differences and a trace count)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import sampling as M


def oscillators(seed=0, n_per_state=(400, 300, 500, 0, 250)):
    """Samples of 1-D harmonic oscillators u_k(x) = k_k (x - x0_k)^2 / 2 (kT units), drawn
    exactly from each state with N_k > 0; exact f_k = -log sqrt(2 pi / k_k) (relative to state
    0). Returns (u_kn, N_k, exact f)."""
    rng = np.random.default_rng(seed)
    k = np.array([1.0, 2.0, 4.0, 3.0, 0.5])
    x0 = np.array([0.0, 0.5, 1.0, 0.3, -0.5])
    x = np.concatenate([rng.normal(x0[i], 1.0 / np.sqrt(k[i]), n)
                        for i, n in enumerate(n_per_state)])
    u_kn = 0.5 * k[:, None] * (x[None, :] - x0[:, None]) ** 2
    f = -np.log(np.sqrt(2 * np.pi / k))
    return u_kn, np.array(n_per_state, float), f - f[0]


def test_matches_pymbar_and_exact(x64):
    pymbar = pytest.importorskip("pymbar")
    u_kn, n_k, exact = oscillators()
    res = M.mbar(u_kn, n_k)
    with jax.numpy_rank_promotion("allow"):  # pymbar's JAX solvers broadcast NumPy-style
        ref = pymbar.MBAR(u_kn, n_k.astype(int), solver_protocol="robust")
        ref_f = ref.compute_free_energy_differences()
    np.testing.assert_allclose(np.asarray(res.delta_f), ref_f["Delta_f"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(res.df), ref_f["dDelta_f"], rtol=1e-4, atol=1e-8)
    assert float(res.gradient_norm) < 1e-10
    # and the physics: within 4 standard errors of the exact free energies
    err = np.abs(np.asarray(res.f) - exact)
    assert np.all(err[1:] < 4 * np.asarray(res.df)[0, 1:] + 1e-12), (err, res.df[0])


def test_reweighting_an_unsampled_state(x64):
    u_kn, n_k, exact = oscillators(seed=1)
    res = M.mbar(u_kn, n_k)
    # state 3 has no samples; reweighting its potentials recovers the MBAR free energy, and
    # <x^2 k/2> = 1/2 in any harmonic state
    f3, mean_u = M.reweight(res, u_kn[3], u_kn[3])
    assert abs(float(f3) - float(res.f[3])) < 1e-10
    assert abs(float(mean_u) - 0.5) < 0.05
    assert abs(float(f3) - exact[3]) < 4 * float(res.df[0, 3])


def test_gradient_matches_finite_differences(x64):
    u_kn, n_k, _ = oscillators(seed=2, n_per_state=(60, 50, 40, 0, 30))
    u_kn = jnp.asarray(u_kn)

    def f_of(state, scale):  # stretch one state's potential
        return M.mbar(u_kn.at[state].multiply(scale), n_k).f[state]

    h = 1e-5
    for state in (2, 3):  # sampled (the implicit derivative) and unsampled
        g = jax.grad(lambda s: f_of(state, s))(1.0)
        fd = (f_of(state, 1.0 + h) - f_of(state, 1.0 - h)) / (2 * h)
        assert abs(float(g) - float(fd)) < 1e-6 * max(1.0, abs(float(fd))), (state, g, fd)
    # an unsampled state leaves the mixture alone, so d f_3 / d scale = <u_3> in state 3
    res = M.mbar(u_kn, n_k)
    _, mean_u3 = M.reweight(res, u_kn[3], u_kn[3])
    g3 = jax.grad(lambda s: f_of(3, s))(1.0)
    assert abs(float(g3) - float(mean_u3)) < 1e-9


def test_jit_vmap_and_one_trace(x64):
    sets = [oscillators(seed=s)[:2] for s in range(3)]
    u = jnp.stack([jnp.asarray(a) for a, _ in sets])
    n_k = jnp.asarray(sets[0][1])
    traces = []

    @jax.jit
    def solve(u_kn):
        traces.append(1)
        return M.mbar(u_kn, n_k).f

    batched = jax.vmap(lambda x: M.mbar(x, n_k).f)(u)
    for i in range(3):
        np.testing.assert_allclose(np.asarray(solve(u[i])), np.asarray(batched[i]), atol=1e-9)
    assert len(traces) == 1


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="u_kn must be"):
        M.mbar(np.zeros(5), np.ones(1))
    with pytest.raises(ValueError, match="N_k must"):
        M.mbar(np.zeros((2, 10)), np.array([3.0, 3.0]))
