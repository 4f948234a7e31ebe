"""The energy-term contract: defaults equal the fast paths, a Sum shares one neighbor list and
one box, every public entry point composes under jit/grad/vmap in any nesting, and new parameter
values never retrace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import neighbors as nl
from workbench import observables
from workbench import space as spaces
from workbench.dynamics import integrators as integ
from workbench.dynamics.minimize import minimize
from workbench.potentials import FunctionPotential, PairPotential, Sum
from workbench.potentials.base import EnergyTerm, NeighborSpec, strain_virial


@pytest.fixture(scope="module")
def fluid():
    return wb.lj_fluid(108, density=0.8, cutoff=2.0, skin=0.3, truncation="force_shift")


def test_strain_virial_equals_pair_virial(fluid):
    pot, params = fluid.potential, fluid.params
    r = jnp.asarray(fluid.positions) + 0.05 * jax.random.normal(jax.random.PRNGKey(0), (108, 3))
    aux = pot.allocate(np.asarray(r))
    e_fast, w_fast = pot.energy_virial(r, params, aux)
    # orthorhombic: the diagonal (the minimum image reads only the box diagonal)
    e_auto, w_auto = strain_virial(lambda x, b: pot.energy(x, params, aux, b), r,
                                   pot.default_box(), diagonal_only=True)
    assert float(e_auto) == pytest.approx(float(e_fast), rel=1e-12)
    np.testing.assert_allclose(np.diag(np.asarray(w_auto)), np.diag(np.asarray(w_fast)),
                               rtol=1e-9, atol=1e-9)
    # the default path of EnergyTerm gives the same through a plain function of the box
    wrapped = FunctionPotential(lambda x, p, b: pot.energy(x, p, aux, b), pot.space, takes_box=True)
    np.testing.assert_allclose(np.asarray(wrapped.virial(r, params)), np.diag(np.diag(w_fast)),
                               rtol=1e-9, atol=1e-9)
    # a triclinic space (the same cube) follows shears: the full tensor, symmetric
    tri = PairPotential("lennard_jones", spaces.triclinic(np.asarray(pot.space.box)), pot.cutoff,
                        truncation="force_shift", skin=0.3)
    aux_t = tri.allocate(np.asarray(r))
    _, w_full = strain_virial(lambda x, b: tri.energy(x, params, aux_t, b), r, tri.default_box())
    np.testing.assert_allclose(np.asarray(w_full), np.asarray(w_fast), rtol=1e-9, atol=1e-9)


def test_default_forces_are_minus_the_gradient():
    class Harmonic(EnergyTerm):
        space = spaces.free()

        def energy(self, positions, params, aux=None, box=None):
            return 0.5 * params["k"] * jnp.sum(positions**2)

    term = Harmonic()
    r = jnp.arange(6.0).reshape(2, 3)
    ev, aux = term.evaluate(r, {"k": 2.0})
    np.testing.assert_allclose(np.asarray(ev.forces), -2.0 * np.asarray(r))
    assert aux is None and term.allocate(r) is None
    f, _ = term.forces(r, {"k": 2.0})
    np.testing.assert_allclose(np.asarray(f), -2.0 * np.asarray(r))


def test_sum_shares_one_list_for_the_longest_cutoff(fluid):
    space = fluid.space
    short = PairPotential("lennard_jones", space, 1.5, truncation="shift", skin=0.3)
    long = PairPotential("soft_sphere", space, 2.0, skin=0.2)
    total = Sum({"a": short, "b": long})
    assert total.neighbor_spec() == NeighborSpec(2.0, 0.3, 1.2, "auto")
    r = fluid.positions
    aux = total.allocate(r)
    assert isinstance(aux, nl.NeighborList) and aux.cutoff == 2.0
    params = {"a": short.init_params(), "b": long.init_params(sigma=1.1)}
    both = total.energy(jnp.asarray(r), params, aux)
    alone = (short.energy(jnp.asarray(r), params["a"], short.allocate(r))
             + long.energy(jnp.asarray(r), params["b"], long.allocate(r)))
    assert float(both) == pytest.approx(float(alone), rel=1e-12)


def test_sum_with_a_trap_reports_pressure_and_unit_cell(fluid, tmp_path):
    centre = jnp.full((1, 3), float(fluid.space.lengths[0]) / 2)
    trap = FunctionPotential(lambda r, p: 0.5 * p["k"] * jnp.sum((r - centre) ** 2))
    total = Sum({"lj": fluid.potential, "trap": trap})
    params = {"lj": fluid.params, "trap": {"k": jnp.asarray(0.01)}}
    sim = wb.Simulation(total, params, "langevin", dict(dt=0.005, kT=1.0, gamma=1.0),
                        fluid.positions, report_interval=10)
    path = str(tmp_path / "traj.h5")
    out = sim.run(20, trajectory=path, progress=False)
    assert np.all(np.isfinite(out["pressure"]))
    import mdtraj as md

    traj = md.load(path)
    np.testing.assert_allclose(traj.unitcell_lengths[0], np.asarray(fluid.space.lengths),
                               rtol=1e-6)


def _langevin_then_energy(pot, params, aux, n_steps=5):
    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.002, kT=1.0, gamma=1.0)

    def f(eps, state):
        p = {**params, "epsilon": params["epsilon"] * eps}

        def body(s, _):
            return lang.step(s, p, settings), None

        s, _ = jax.lax.scan(body, state, None, length=n_steps)
        return pot.energy(s.positions, p, s.aux, s.box)

    return f, lang, settings


def test_jit_grad_jit_through_langevin_steps_with_lists(fluid):
    """The failure the contract rework fixed: jit(grad(jit(f))) with f scanning steps that
    rebuild lists inside the trace and ending in energy()."""
    pot, params = fluid.potential, fluid.params
    f, lang, settings = _langevin_then_energy(pot, params, None)
    state = lang.init(jax.random.PRNGKey(1), fluid.positions, params, settings)
    g = jax.jit(jax.grad(jax.jit(f)))(jnp.asarray(1.0), state)
    h = 1e-5
    fd = (f(1.0 + h, state) - f(1.0 - h, state)) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=1e-5)
    # vmap over parameter values inside grad inside jit
    gv = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, None)))(jnp.asarray([0.9, 1.0, 1.1]), state)
    assert float(gv[1]) == pytest.approx(float(g), rel=1e-10)


def test_grad_of_grad_and_box_derivative(fluid):
    pot, params = fluid.potential, fluid.params
    r = jnp.asarray(fluid.positions) + 0.03
    aux = pot.allocate(np.asarray(r))
    box = pot.default_box()
    # d^2 E / d eps d r equals the derivative of the forces in eps
    mixed = jax.jacfwd(jax.grad(lambda x, e: pot.energy(x, {**params, "epsilon": e}, aux, box)),
                       argnums=1)(r, params["epsilon"])
    forces_eps = jax.jacfwd(lambda e: pot.evaluate(r, {**params, "epsilon": e}, aux, box)[0].forces)
    np.testing.assert_allclose(np.asarray(mixed)[..., 0], -np.asarray(forces_eps(params["epsilon"]))[..., 0],
                               rtol=1e-8, atol=1e-8)
    # the box derivative through the custom JVP equals finite differences of a box scale
    def e_scale(s):
        return pot.energy(r * s, params, aux, box * s)
    g = jax.grad(e_scale)(1.0)
    h = 1e-6
    fd = (e_scale(1.0 + h) - e_scale(1.0 - h)) / (2 * h)
    assert float(g) == pytest.approx(float(fd), rel=1e-6)


def _count_traces(fn):
    count = {"n": 0}

    def wrapped(*a, **k):
        count["n"] += 1
        return fn(*a, **k)

    return wrapped, count


def test_public_entry_points_trace_once_for_new_values(fluid):
    pot, params = fluid.potential, fluid.params
    r = jnp.asarray(fluid.positions)
    aux = pot.allocate(fluid.positions)
    for method in ("energy", "evaluate", "forces", "energy_virial"):
        fn, count = _count_traces(getattr(pot, method))
        jitted = jax.jit(fn)
        for eps in (1.0, 1.1, 1.2):
            jitted(r, {**params, "epsilon": params["epsilon"] * eps}, aux)
        assert count["n"] == 1, method
    lang = integ.langevin(pot)
    step, count = _count_traces(lang.step)
    step = jax.jit(step)
    state = lang.init(jax.random.PRNGKey(0), fluid.positions, params,
                      lang.settings(dt=0.002, kT=1.0, gamma=1.0))
    for kT in (1.0, 1.1, 1.2):
        state = step(state, params, lang.settings(dt=0.002, kT=kT, gamma=1.0))
    assert count["n"] == 1
    # Integrator.init compiles its start-up program once per integrator
    program = integ._start_program()
    before = program._cache_size()
    for kT in (1.0, 1.3, 1.6):
        lang.init(jax.random.PRNGKey(2), fluid.positions, params,
                  lang.settings(dt=0.002, kT=kT, gamma=1.0), aux=aux)
    assert program._cache_size() - before <= 1
    # radial_distribution compiles once for new frames and boxes of the same shape
    from workbench.observables import _hist_rows

    before = _hist_rows._cache_size()
    for shift in (0.0, 0.1, 0.2):
        observables.radial_distribution(fluid.space, fluid.positions + shift, 2.0, 50)
    assert _hist_rows._cache_size() - before == 1
    # minimize: a cached compiled program per potential, reused for new parameter values
    rattled = fluid.positions + np.random.default_rng(3).normal(0.0, 0.05, fluid.positions.shape)
    for eps in (1.0, 1.05, 1.1):  # (the lattice itself has zero forces: nothing would run)
        minimize(pot, rattled, {**params, "epsilon": params["epsilon"] * eps}, max_steps=100)
    from workbench.dynamics.minimize import _compiled

    init, run = _compiled(pot, "fire", 100, ())
    assert run._cache_size() == 1


def test_traced_positions_get_shape_checks_only(fluid):
    pot, params = fluid.potential, fluid.params
    aux = pot.allocate(fluid.positions)
    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.002, kT=1.0, gamma=1.0)

    @jax.jit
    def start(r):
        return lang.init(jax.random.PRNGKey(0), r, params, settings, aux=aux).potential_energy

    assert np.isfinite(float(start(jnp.asarray(fluid.positions))))
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        jax.jit(lambda r: lang.init(jax.random.PRNGKey(0), r, params, settings, aux=aux))(
            jnp.zeros((108, 2)))


def test_declared_contracts():
    """One home for the protocols: plain losses are not objectives, objects with
    value_and_grad are; of_state lifts a positions observable to the state form; capabilities
    are declared, and an unknown one is refused."""
    from workbench.contracts import is_objective, of_state
    from workbench.gradients.fit import as_objective
    from workbench.potentials.base import supports
    from workbench.potentials.pair import PairPotential

    def loss(p):
        return jnp.sum(p["x"] ** 2)

    assert not is_objective(loss)
    assert is_objective(as_objective(loss))

    class State:
        positions, aux, box = jnp.ones((2, 3)), None, jnp.eye(3)

    f = of_state(lambda r, p, aux, box: jnp.sum(r) * p + jnp.trace(box))
    assert float(f(State(), 2.0)) == 15.0
    assert supports(PairPotential, "atom_energy") and not supports(PairPotential, "pair_virial")
    with pytest.raises(ValueError, match="unknown capability"):
        supports(PairPotential, "telepathy")
