"""Minimizers differentiated implicitly (float64): a Lennard-Jones cluster, whose minimum scales
exactly with sigma and does not move with epsilon, and alanine dipeptide's minimized backbone
dihedral against finite differences of re-minimizations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space
from workbench.gradients import implicit
from workbench.potentials import PairPotential


@pytest.fixture(scope="module")
def cluster():
    jax.config.update("jax_enable_x64", True)
    pot = PairPotential("lennard_jones", space.free(), cutoff=50.0, truncation="cut",
                        neighbor_list=False)  # no atom pair reaches the cutoff: exact scaling
    params = pot.init_params(sigma=1.0, epsilon=1.0)
    x0 = np.random.default_rng(0).normal(size=(13, 3)) * 0.6
    return pot, params, x0


def _gyration(x):
    c = x - x.mean(0, keepdims=True)
    return jnp.sqrt(jnp.mean(jnp.sum(c * c, -1)))


@pytest.mark.parametrize("method", ["lbfgs", "fire"])
def test_cluster_minimum_scales_with_sigma_and_ignores_epsilon(cluster, method):
    """x*(sigma, eps) = sigma x*(1, 1): dRg/dsigma = Rg / sigma and dRg/deps = 0 exactly."""
    pot, params, x0 = cluster
    if method == "fire":  # FIRE's fixed first steps need a start without overlaps
        x0 = np.asarray(implicit.minimizer(pot, ftol=1e-3)(x0, params)[0])
        x0 = x0 + np.random.default_rng(1).normal(size=x0.shape) * 0.05
    solve = implicit.minimizer(pot, method=method, ftol=1e-9, max_steps=50_000)

    def rg(sigma, eps):
        p = dict(params, sigma=params["sigma"] * sigma, epsilon=params["epsilon"] * eps)
        return _gyration(solve(x0, p)[0])

    x, info = jax.jit(solve)(x0, params)
    assert float(info["max_force"]) < 1e-9 and int(info["steps"]) < 50_000
    g_sigma, g_eps = jax.jit(jax.grad(rg, argnums=(0, 1)))(1.0, 1.0)
    value = float(rg(1.0, 1.0))
    assert float(g_sigma) == pytest.approx(value, rel=1e-7)
    assert abs(float(g_eps)) < 1e-7


def test_implicit_gradient_composes_without_retracing(cluster):
    pot, params, x0 = cluster
    solve = implicit.minimizer(pot, ftol=1e-9)
    traces = []

    def energy_at_min(sigma):
        traces.append(1)
        p = dict(params, sigma=params["sigma"] * sigma)
        x, _ = solve(x0, p)
        return pot.energy(x, p)

    g = jax.jit(jax.grad(jax.jit(energy_at_min)))
    n = len(traces)
    values = [float(g(s)) for s in (1.0, 1.05, 0.95)]
    assert len(traces) - n <= 2  # one trace of grad, one of the inner jit: none per value
    # envelope theorem: dU*/dsigma = dU/dsigma at x*, and U* does not depend on sigma (scaling)
    assert all(abs(v) < 1e-6 for v in values), values
    def rg(s):
        return _gyration(solve(x0, dict(params, sigma=params["sigma"] * s))[0])

    sigmas = jnp.array([0.9, 1.0, 1.1])  # every minimum scales: dRg/dsigma = Rg / sigma
    gs, values = jax.vmap(jax.grad(rg))(sigmas), jax.vmap(rg)(sigmas)
    np.testing.assert_allclose(np.asarray(gs), np.asarray(values / sigmas), rtol=1e-6)


def test_alanine_dipeptide_minimum_follows_a_torsion_barrier():
    """ACE-ALA-NME in vacuum (amber14): d(phi at the minimum)/d(k of one torsion type) against
    central differences of two re-minimizations."""
    jax.config.update("jax_enable_x64", True)
    from workbench.forcefield.openmm import load
    from workbench.sampling import cv
    from workbench.systems import data_file

    s = load(data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"],
             nonbonded_method="NoCutoff")
    phi = cv.backbone_torsions(s.topology, 1)[0]
    solve = implicit.minimizer(s.potential, ftol=1e-8, max_steps=20_000)
    k = s.params["PeriodicTorsionForce"]["k"]
    x0 = np.asarray(solve(s.positions, s.params)[0])  # start every solve at the minimum

    def phi_min(d):
        p = {t: dict(v) for t, v in s.params.items()}
        p["PeriodicTorsionForce"]["k"] = k.at[0].add(d)
        x, _ = solve(x0, p)
        return cv.values([phi], x)[0]

    # one program for value and gradient (the differences read its values): jax.grad of a
    # jitted phi_min would compile the forward and backward apart, and phi_min a third time
    vg = jax.jit(jax.value_and_grad(phi_min))
    g = float(vg(0.0)[1])
    assert abs(g) > 1e-4
    h = 1e-3
    fd = (float(vg(h)[0]) - float(vg(-h)[0])) / (2 * h)
    assert g == pytest.approx(fd, rel=1e-4, abs=1e-7)


def test_bad_minimizer_input_is_named(cluster):
    pot = cluster[0]
    with pytest.raises(ValueError, match="method"):
        implicit.minimizer(pot, method="newton")
    with pytest.raises(ValueError, match="ftol"):
        implicit.minimizer(pot, ftol=0.0)
