"""Parameter gradients of free energies by reweighting (workbench.gradients.free_energy): a
tilted double well, whose free-energy difference between the wells and free-energy profile and
their derivatives are exact by quadrature, sampled directly by Monte Carlo, and across an
8 kT barrier by umbrella windows combined by MBAR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.gradients import free_energy as fe
from workbench.gradients import reweight as rw
from workbench.potentials.base import FunctionPotential
from workbench.sampling import cv
from workbench.sampling import umbrella as us

from test_reweight import _sample_well

KT = 2.5


def tilted_well(r, p):
    """U = h (x^2 - 1)^2 + c x + 50 (y^2 + z^2) kJ/mol (x in nm)."""
    x = r[0, 0]
    return p["h"] * (x * x - 1.0) ** 2 + p["c"] * x + 50.0 * (r[0, 1] ** 2 + r[0, 2] ** 2)


WELL = FunctionPotential(tilted_well)
X = cv.Position(0, 0)
LEFT, RIGHT = fe.cv_region(X, -10.0, 0.0), fe.cv_region(X, 0.0, 10.0)
EDGES = np.linspace(-1.6, 1.6, 17)


def _params(h, c):
    return {"h": jnp.asarray(h), "c": jnp.asarray(c)}


def exact(h, c):
    """Exact [F_right - F_left, F of each bin of EDGES (relative to the whole line)] (kJ/mol),
    by quadrature in x (y and z cancel)."""
    x = np.linspace(-3.0, 3.0, 600_001)
    u = h * (x * x - 1.0) ** 2 + c * x
    w = np.exp(-(u - u.min()) / KT)
    z = w.sum()
    df = -KT * np.log(w[x >= 0].sum() / w[x < 0].sum())
    idx = np.digitize(x, EDGES) - 1
    p = np.array([w[idx == b].sum() for b in range(len(EDGES) - 1)]) / z
    return np.concatenate([[df], -KT * np.log(p)])


def exact_gradient(h, c, eps=1e-5):
    """d exact / d(h, c) by central differences of the quadrature: (2, 1 + bins)."""
    return np.stack([(exact(h + eps, c) - exact(h - eps, c)) / (2 * eps),
                     (exact(h, c + eps) - exact(h, c - eps)) / (2 * eps)])


def _sample(h, c, seed, chains=64, steps=20_000):
    return _sample_well(h, seed, chains, steps, potential=WELL, params=_params(h, c))


def _estimates(params, samples):
    def both(p, s):
        df = fe.free_energy_difference(LEFT, RIGHT, WELL, p, s, KT)
        prof = fe.free_energy_profile(lambda r, b: X(r, b), [EDGES], WELL, p, s, KT)
        return jnp.concatenate([df[None], prof])

    out = fe.block_estimate(both, params, samples, n_blocks=16)
    g = np.stack([out["gradient"]["h"], out["gradient"]["c"]])
    g_err = np.stack([out["stderr"]["h"], out["stderr"]["c"]])
    return out["value"], out["value_stderr"], g, g_err


def test_well_free_energy_and_profile_gradients_match_exact(x64):
    h, c = 5.0, 1.5  # a 2 kT barrier: plain Monte Carlo crosses it
    samples = rw.Samples.from_frames(_sample(h, c, 1))
    value, value_err, g, g_err = _estimates(_params(h, c), samples)
    ref, g_ref = exact(h, c), exact_gradient(h, c)
    # the bins the chains visit often enough for a stable error estimate
    keep = np.concatenate([[True], ref[1:] < ref[1:].min() + 3.0 * KT])
    print("dF", value[0], "+-", value_err[0], "exact", ref[0])
    print("d dF/d(h, c)", g[:, 0], "+-", g_err[:, 0], "exact", g_ref[:, 0])
    assert abs(value[0] - ref[0]) < 4.0 * value_err[0] + 1e-3
    assert np.all(np.abs(value - ref)[keep] < 4.0 * value_err[keep] + 1e-3)
    assert np.all(np.abs(g - g_ref)[:, keep] < 4.0 * g_err[:, keep] + 1e-3)
    # the check has teeth: d dF/dc (the tilt moves the wells apart) resolved to 1%, and
    # d dF/dh (small: the wells differ little in shape) to 0.01
    assert g_err[1, 0] < 0.01 * abs(g_ref[1, 0]) and g_err[0, 0] < 0.01
    # jax.grad of the pure function equals the conditional-average formula
    u = jax.vmap(lambda r: jax.grad(lambda p: tilted_well(r, p))(_params(h, c)))(
        jnp.asarray(samples.positions))
    xs = np.asarray(samples.positions)[:, 0, 0]
    formula = np.mean(np.asarray(u["c"])[xs >= 0]) - np.mean(np.asarray(u["c"])[xs < 0])
    grad = jax.grad(lambda p: fe.free_energy_difference(LEFT, RIGHT, WELL, p, samples, KT))
    assert float(grad(_params(h, c))["c"]) == pytest.approx(formula, rel=1e-9)


def _windows(h, c, centers, k, seed, steps=20_000, stride=20):
    sampler = us.umbrella(WELL, [X], centers[:, None], k, integrator="langevin")
    settings = sampler.inner.settings(dt=0.002, kT=KT, gamma=10.0)
    x0 = np.zeros((len(centers), 1, 3))
    x0[:, 0, 0] = centers
    states = sampler.init_windows(jax.random.PRNGKey(seed), x0, _params(h, c), settings)
    states, _, _ = sampler.advance(states, _params(h, c), settings, steps // stride, stride)
    states, s, frames, _ = sampler.sample(states, _params(h, c), settings, steps // stride,
                                          stride)
    return np.asarray(s), np.asarray(frames)


def test_umbrella_mbar_free_energy_gradient_across_a_high_barrier(x64):
    """h = 20 kJ/mol (8 kT): no direct crossing; 25 windows along x, pooled by MBAR, give the
    unbiased weights of every frame, and the reweighted dF and its gradient."""
    h, c = 20.0, 2.0
    centers = np.linspace(-1.5, 1.5, 25)
    s, frames = _windows(h, c, centers, 400.0, 3, steps=60_000, stride=60)
    log_w, _ = us.unbiased_log_weights(s, centers[:, None], 400.0, KT, [None])
    samples = rw.Samples.from_frames(frames.reshape(-1, 1, 3), log_weight=log_w)
    df = fe.free_energy_difference(LEFT, RIGHT, WELL, _params(h, c), samples, KT)
    g = jax.grad(lambda p: fe.free_energy_difference(LEFT, RIGHT, WELL, p, samples, KT))(
        _params(h, c))
    ref, g_ref = exact(h, c)[0], exact_gradient(h, c)[:, 0]
    print("umbrella dF", float(df), "exact", ref, "; gradient", float(g["h"]), float(g["c"]),
          "exact", g_ref)
    # umbrella + MBAR across 8 kT converges slowly (seeds spread by ~0.3 kT at this length);
    # the derivative, a difference of conditional averages, is far better determined
    assert float(df) == pytest.approx(ref, abs=0.4 * KT)
    np.testing.assert_allclose([float(g["h"]), float(g["c"])], g_ref, rtol=0.05, atol=0.02)


def test_free_energy_functions_compose_and_never_retrace(x64):
    samples = rw.Samples.from_frames(_sample(5.0, 1.0, 4, chains=8, steps=2000))
    traces = []

    def df(c):
        traces.append(1)
        return fe.free_energy_difference(LEFT, RIGHT, WELL, _params(5.0, c), samples, KT)

    g = jax.jit(jax.grad(jax.jit(df)))
    g(jnp.asarray(1.0))
    n = len(traces)
    for c in (0.5, 1.5, 2.0):
        g(jnp.asarray(c))
    assert len(traces) == n
    cs = jnp.array([0.5, 1.0, 1.5])
    np.testing.assert_allclose(jax.vmap(jax.grad(df))(cs), [float(jax.grad(df)(c)) for c in cs],
                               rtol=1e-10)
    prof = jax.jit(jax.jacrev(lambda p: fe.free_energy_profile(
        lambda r, b: X(r, b), [EDGES], WELL, p, samples, KT)))(_params(5.0, 1.0))
    assert np.all(np.isfinite(np.asarray(prof["c"])))  # empty bins: zero gradient, no NaN
    with pytest.raises(ValueError, match="edges"):
        fe.free_energy_profile(lambda r, b: X(r, b), [np.array([0.0])], WELL, _params(5.0, 1.0),
                               samples, KT)
