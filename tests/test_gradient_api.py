"""workbench.gradients.gradient: every method on one observable, checked against central finite
differences of the same value (float64, within 1e-4 relative) or, for reweighting, the exact
derivative of an ensemble average; bad options are named."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import space
from workbench.dynamics import integrators as integ
from workbench.gradients import gradient, reweight as rw
from workbench.gradients.estimate import FiniteDifference, Implicit, Reweight
from workbench.potentials import PairPotential


def _rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _leaves(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def test_backprop_matches_finite_differences(x64):
    system = wb.lj_fluid(n_atoms=108, density=0.6, cutoff=2.5, skin=0.3, truncation="switch",
                         r_switch=2.0)
    pot, params = system.potential, system.params
    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.004, kT=1.2, gamma=1.0)
    state = lang.init(jax.random.PRNGKey(0), system.positions, params, settings)

    def u_per_atom(r, p, aux, box):
        return pot.energy(r, p, aux, box) / r.shape[0]

    opts = dict(integrator=lang, state=state, settings=settings, n_steps=60, every=10)
    bp = gradient(u_per_atom, params, "backprop", **opts)
    fd = gradient(u_per_atom, params, "finite_difference", of="backprop", h=1e-6, **opts)
    assert bp.method == "backprop" and bp.diagnostics["n_steps"] == 60
    np.testing.assert_allclose(bp.value, fd.value, rtol=1e-12)
    assert _rel(_leaves(bp.gradient), _leaves(fd.gradient)) < 1e-4
    assert bp.diagnostics["gradient_norm"] > 0
    # the same gradient with the system answering potential, state and masses
    via_system = gradient(u_per_atom, system, "backprop", integrator=lang,
                          settings=dict(dt=0.004, kT=1.2, gamma=1.0), n_steps=60, every=10)
    np.testing.assert_allclose(_leaves(via_system.gradient), _leaves(bp.gradient), rtol=1e-12)


def test_new_start_and_parameters_never_recompile(x64):
    """gradient() compiles once per structure: a new start state, new settings values and new
    parameter values reuse the program (the observable is traced once)."""
    system = wb.lj_fluid(n_atoms=108, density=0.6, cutoff=2.5, skin=0.3, truncation="switch",
                         r_switch=2.0)
    pot = system.potential
    lang = integ.langevin(pot)
    traces = []

    def u(r, p, aux, box):
        traces.append(1)
        return pot.energy(r, p, aux, box)

    grads = []
    for seed, kT, eps in ((0, 1.2, 1.0), (1, 1.3, 1.1)):
        settings = lang.settings(dt=0.004, kT=kT, gamma=1.0)
        params = dict(system.params, epsilon=system.params["epsilon"] * eps)
        state = lang.init(jax.random.PRNGKey(seed), system.positions, params, settings)
        grads.append(gradient(u, params, "backprop", integrator=lang, state=state,
                              settings=settings, n_steps=20, every=10))
        if seed == 0:
            n = len(traces)
    assert n > 0 and len(traces) == n, "the second call traced the observable again"
    assert _leaves(grads[0].gradient)[0] != _leaves(grads[1].gradient)[0]
    # a new structure (another length) is a new program
    gradient(u, params, "backprop", integrator=lang, state=state, settings=settings,
             n_steps=30, every=10)
    assert len(traces) > n


def test_a_start_with_a_smaller_list_reuses_the_program(x64):
    """A neighbor list's capacity comes from its start's positions: a second start whose list
    needs fewer slots is refitted to the compiled capacity (no trace, same gradient as with its
    own list); one that needs more compiles."""
    from workbench.gradients import estimate

    system = wb.lj_fluid(n_atoms=108, density=0.6, cutoff=2.5, skin=0.3, truncation="switch",
                         r_switch=2.0)
    pot = system.potential
    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.004, kT=1.2, gamma=1.0)
    lattice = np.asarray(system.positions)
    jittered = lattice + np.random.default_rng(4).uniform(-0.25, 0.25, lattice.shape)
    big = lang.init(jax.random.PRNGKey(0), jittered, system.params, settings)
    small = lang.init(jax.random.PRNGKey(1), lattice, system.params, settings)
    assert small.aux.capacity < big.aux.capacity
    traces = []

    def u(r, p, aux, box):
        traces.append(1)
        return pot.energy(r, p, aux, box)

    def grad(state):
        return gradient(u, system.params, "backprop", integrator=lang, state=state,
                        settings=settings, n_steps=20, every=10).gradient

    grad(big)
    n = len(traces)
    refitted = grad(small)
    assert len(traces) == n, "a start with a smaller list compiled again"
    estimate._COMPILED.clear()
    estimate._LISTS.clear()
    own = grad(small)  # with its own list, in a program of its own
    assert len(traces) > n
    for a, b in zip(_leaves(refitted), _leaves(own)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def test_implicit_matches_finite_differences(x64):
    pot = PairPotential("lennard_jones", space.free(), cutoff=50.0, truncation="cut",
                        neighbor_list=False)
    params = pot.init_params(sigma=1.0, epsilon=1.0)
    x0 = np.random.default_rng(0).normal(size=(13, 3)) * 0.6

    def moment(r, p, aux, box):  # a vector observable of the shape: Rg^2 and <r_ij>
        c = r - r.mean(0, keepdims=True)
        d = r[:, None] - r[None, :]
        dist = jnp.sqrt(jnp.sum(d * d, -1) + jnp.eye(r.shape[0]))  # no sqrt(0) on the diagonal
        n = r.shape[0]
        return jnp.stack([jnp.mean(jnp.sum(c * c, -1)),
                          (jnp.sum(dist) - n) / (n * (n - 1))])

    opts = dict(potential=pot, positions=x0, minimizer_options=dict(ftol=1e-10,
                                                                    max_steps=50_000))
    im = gradient(moment, params, "implicit", **opts)
    fd = gradient(moment, params, "finite_difference", of="implicit", h=1e-5, **opts)
    assert im.value.shape == (2,) and im.gradient["sigma"].shape == (2,) + params["sigma"].shape
    assert im.diagnostics["max_force"] < 1e-10
    assert _rel(_leaves(im.gradient), _leaves(fd.gradient)) < 1e-4
    # exact: the minimum scales with sigma (lengths of degree 2 and 1), not with epsilon
    np.testing.assert_allclose(np.ravel(im.gradient["sigma"]), [2, 1] * im.value, rtol=1e-7)
    assert np.all(np.abs(im.gradient["epsilon"]) < 1e-7)
    # the same estimate from estimator objects (options as fields, as diffrax's adjoints)
    obj = gradient(moment, params, Implicit(**opts))
    np.testing.assert_allclose(_leaves(obj.gradient), _leaves(im.gradient), rtol=1e-12)
    fd_obj = gradient(moment, params, FiniteDifference(Implicit(**opts), h=1e-5))
    np.testing.assert_allclose(_leaves(fd_obj.gradient), _leaves(fd.gradient), rtol=1e-12)
    with pytest.raises(TypeError, match="carries its own options"):
        gradient(moment, params, Implicit(**opts), h=1e-3)
    with pytest.raises(ValueError, match="Backprop or an Implicit"):
        FiniteDifference(Reweight(pot, None, 1.0))


def test_reweight_against_exact_and_option_errors(x64):
    from test_reweight import KT, WELL, _sample_well, _well_observable
    from test_metadynamics import exact_well_averages

    params = {"h": jnp.asarray(5.0)}
    samples = rw.Samples.from_frames(_sample_well(5.0, 7, chains=32, steps=10_000))
    est = gradient(_well_observable, params, "reweight", potential=WELL, samples=samples,
                   kT=KT, n_blocks=8)
    exact = (exact_well_averages(5.0 + 1e-5) - exact_well_averages(5.0 - 1e-5)) / 2e-5
    assert est.diagnostics["ess"] == pytest.approx(samples.n_frames)
    assert np.all(np.abs(est.gradient["h"] - exact) < 4 * est.stderr["h"])
    with pytest.raises(TypeError, match="unknown options.*'step'"):
        gradient(_well_observable, params, "reweight", potential=WELL, samples=samples, kT=KT,
                 step=3)
    with pytest.raises(TypeError, match="needs kT"):
        gradient(_well_observable, params, "reweight", potential=WELL, samples=samples)
    with pytest.raises(ValueError, match="unknown gradient method"):
        gradient(_well_observable, params, "adjoint")
    with pytest.raises(ValueError, match="independent runs"):
        gradient(_well_observable, params, "finite_difference", of="reweight")
