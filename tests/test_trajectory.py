"""Gradients through trajectories (float64): checkpointed, plain, truncated and exactly
reversible runs against central finite differences, on the Lennard-Jones fluid (NVE and
Langevin), alanine dipeptide with bonds to hydrogen constrained, and rigid water; memory that
grows sublinearly (checkpointing) or not at all (reversible) with the number of steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench.dynamics import integrators as integ
from workbench.gradients import trajectory as tj

H = 1e-6
REL = 1e-4


@pytest.fixture(scope="module")
def fluid():
    """256 LJ atoms, switched (smooth) cutoff: finite differences of trajectories need forces
    without jumps."""
    jax.config.update("jax_enable_x64", True)
    return wb.lj_fluid(n_atoms=256, density=0.8442, cutoff=2.5, skin=0.3, truncation="switch",
                       r_switch=2.0)


def _start(system, integrator, settings, seed=0):
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(seed + 5), system.positions.shape))
    return integrator.init(jax.random.PRNGKey(seed), system.positions, system.params, settings,
                           masses=system.masses, velocities=v)


def _loss(run, state, params, settings, scale_name="epsilon"):
    def f(scale, dx):
        p = dict(params, **{scale_name: params[scale_name] * scale})
        s = jax.tree_util.tree_map(lambda a: a, state)
        s = s.__class__(**{**s.__dict__, "positions": s.positions + dx})
        _, out = run(s, p, settings)
        return jnp.mean(out)  # the observable averaged over the recorded frames
    return f


def _fd(f, *args, argnum=0, direction=None):
    def shifted(h):
        a = list(args)
        a[argnum] = a[argnum] + (h if direction is None else h * direction)
        return float(f(*a))
    return (shifted(H) - shifted(-H)) / (2 * H)


def _value_and_grad(f, argnums=0):
    """One compiled program for the value and the gradient (finite differences read its
    values): jax.grad of a jitted f compiles the forward and backward passes apart, and the
    plain f a third time."""
    vg = jax.jit(jax.value_and_grad(f, argnums=argnums))
    return vg, lambda *a: vg(*a)[0]


def test_lj_trajectory_gradients_match_finite_differences(fluid):
    """60 Langevin steps, the potential energy every 20: d/d epsilon, d/d sigma and the
    derivative along a random direction of the initial positions (checkpointed), and the plain
    scan's gradient equal to the checkpointed one. (NVE: the reversible test below.)"""
    pot = fluid.potential
    it = integ.langevin(pot)
    settings = it.settings(dt=0.005, kT=1.44, gamma=1.0)
    state = _start(fluid, it, settings)
    obs = tj.final_potential_energy(pot)
    direction = jax.random.normal(jax.random.PRNGKey(9), state.positions.shape)
    zero = jnp.zeros_like(state.positions)
    run = tj.trajectory(it, 60, observable=obs, every=20, checkpoint="sqrt")

    def loss(s_eps, s_sig, dx):  # both parameters scaled: one program gives both derivatives
        p = dict(fluid.params, sigma=fluid.params["sigma"] * s_sig)
        return _loss(run, state, p, settings, "epsilon")(s_eps, dx)

    vg, f = _value_and_grad(loss, argnums=(0, 1, 2))
    _, (g_eps, g_s, g_x) = vg(1.0, 1.0, zero)
    assert float(g_eps) == pytest.approx(_fd(f, 1.0, 1.0, zero, argnum=0), rel=REL)
    assert float(g_s) == pytest.approx(_fd(f, 1.0, 1.0, zero, argnum=1), rel=REL)
    fd_x = _fd(f, 1.0, 1.0, zero, argnum=2, direction=direction)
    assert float(jnp.sum(g_x * direction)) == pytest.approx(fd_x, rel=REL)

    def sigma_gradient(run):
        return float(jax.jit(jax.grad(_loss(run, state, fluid.params, settings, "sigma")))(
            1.0, zero))

    plain = tj.trajectory(it, 60, observable=obs, every=20, checkpoint=None)
    assert sigma_gradient(plain) == pytest.approx(float(g_s), rel=1e-10)
    for every in (20, 1):  # long frames (segments inside) and short ones (segments of frames)
        stored = tj.trajectory(it, 60, observable=obs, every=every, store_forces=True)
        g_ref = (sigma_gradient(tj.trajectory(it, 60, observable=obs, every=1))
                 if every == 1 else float(g_s))
        assert sigma_gradient(stored) == pytest.approx(g_ref, rel=1e-10)


def test_checkpointing_memory_is_sublinear_and_reversible_memory_constant(fluid):
    """Compiled temporary memory of value_and_grad at 64 and 256 steps: the plain scan grows
    linearly, the checkpointed one by less than a fifth of that, the reversible one not at
    all."""
    pot = fluid.potential
    vv = integ.velocity_verlet(pot)
    settings = vv.settings(dt=0.005)
    state = _start(fluid, vv, settings)
    obs = tj.final_potential_energy(pot)

    def temp_bytes(run):
        f = _loss(run, state, fluid.params, settings)
        g = jax.jit(jax.value_and_grad(f)).lower(1.0, jnp.zeros_like(state.positions))
        return g.compile().memory_analysis().temp_size_in_bytes

    mem = {}
    for n in (64, 256):
        mem["plain", n] = temp_bytes(tj.trajectory(vv, n, observable=obs, every=n,
                                                   checkpoint=None))
        mem["sqrt", n] = temp_bytes(tj.trajectory(vv, n, observable=obs, every=n,
                                                  checkpoint="sqrt"))
        mem["stored", n] = temp_bytes(tj.trajectory(vv, n, observable=obs, every=n,
                                                    store_forces=True))
        mem["reversible", n] = temp_bytes(tj.reversible_verlet(pot, n, observable=obs, every=n))
    print({k: f"{v / 1e6:.1f} MB" for k, v in mem.items()})
    plain_growth = mem["plain", 256] - mem["plain", 64]
    assert plain_growth > 0.5 * mem["plain", 64]  # linear in the steps
    assert mem["sqrt", 256] - mem["sqrt", 64] < 0.2 * plain_growth
    assert mem["sqrt", 256] < 0.4 * mem["plain", 256]
    # stored forces: N x 3 numbers a step, far less than a plain step's intermediates
    n_atoms = state.positions.shape[0]
    stored_growth = mem["stored", 256] - mem["stored", 64]
    assert stored_growth < 0.5 * plain_growth
    assert stored_growth < 3 * (256 - 64) * n_atoms * 3 * 8
    assert mem["reversible", 256] <= 1.05 * mem["reversible", 64]


def test_reversible_verlet_equals_checkpointed_gradient(fluid):
    """The constant-memory run recovers every state exactly backward: its gradient equals the
    checkpointed float trajectory's (fixed-point rounding of 2^-32 nm aside)."""
    pot = fluid.potential
    vv = integ.velocity_verlet(pot)
    settings = vv.settings(dt=0.005)
    state = _start(fluid, vv, settings, seed=2)
    obs = tj.final_potential_energy(pot)
    zero = jnp.zeros_like(state.positions)
    vg_rev, _ = _value_and_grad(_loss(tj.reversible_verlet(pot, 100, observable=obs, every=25),
                                      state, fluid.params, settings), argnums=(0, 1))
    vg_ck, f_ck = _value_and_grad(_loss(tj.trajectory(vv, 100, observable=obs, every=25), state,
                                        fluid.params, settings), argnums=(0, 1))
    v_rev, g_rev = vg_rev(1.0, zero)
    v_ck, g_ck = vg_ck(1.0, zero)
    assert float(v_rev) == pytest.approx(float(v_ck), rel=1e-9)
    assert float(g_rev[0]) == pytest.approx(float(g_ck[0]), rel=1e-6)
    np.testing.assert_allclose(np.asarray(g_rev[1]), np.asarray(g_ck[1]), rtol=1e-5,
                               atol=1e-6 * float(jnp.abs(g_ck[1]).max()))
    assert float(g_ck[0]) == pytest.approx(_fd(f_ck, 1.0, zero), rel=REL)


def test_truncated_horizon_bounds_the_backpropagation(fluid):
    """A horizon as long as the run is the full gradient; a short one keeps only the last
    steps before each frame (finite, different), and never recompiles for new params."""
    pot = fluid.potential
    lang = integ.langevin(pot)
    settings = lang.settings(dt=0.005, kT=1.44, gamma=1.0)
    state = _start(fluid, lang, settings, seed=3)
    obs = tj.final_potential_energy(pot)
    zero = jnp.zeros_like(state.positions)
    full = jax.jit(jax.grad(_loss(tj.trajectory(lang, 60, observable=obs, every=10), state,
                                  fluid.params, settings)))(1.0, zero)
    same = jax.jit(jax.grad(_loss(tj.trajectory(lang, 60, observable=obs, every=10, horizon=60),
                                  state, fluid.params, settings)))(1.0, zero)
    assert float(same) == pytest.approx(float(full), rel=1e-10)
    traces = []

    def loss(scale, dx):
        traces.append(1)
        return _loss(tj.trajectory(lang, 60, observable=obs, every=10, horizon=20), state,
                     fluid.params, settings)(scale, dx)

    g = jax.jit(jax.grad(loss))
    short = float(g(1.0, zero))
    for scale in (1.01, 0.99):
        assert np.isfinite(float(g(scale, zero)))
    assert len(traces) == 1
    assert np.isfinite(short) and short != pytest.approx(float(full), rel=1e-6)
    with pytest.raises(ValueError, match="horizon"):
        tj.trajectory(lang, 60, every=10, horizon=15)


def test_alanine_dipeptide_constrained_gradient_matches_finite_differences():
    """ACE-ALA-NME in vacuum (amber14), bonds to hydrogen constrained (SHAKE/RATTLE in
    Langevin), 50 steps of 1 fs: d(mean U)/d(one torsion type's barrier)."""
    jax.config.update("jax_enable_x64", True)
    from workbench.forcefield.openmm import load
    from workbench.systems import data_file

    s = load(data_file("alanine-dipeptide-vacuum.pdb"), ["amber14-all.xml"],
             nonbonded_method="NoCutoff", constraints="HBonds")
    lang = integ.langevin(s.potential, s.constraints())
    settings = lang.settings(dt=0.001, kT=2.494, gamma=1.0)
    state = lang.init(jax.random.PRNGKey(1), s.positions, s.params, settings, masses=s.masses)
    run = tj.trajectory(lang, 50, observable=tj.final_potential_energy(s.potential), every=10)
    k = s.params["PeriodicTorsionForce"]["k"]

    def mean_energy(d):
        p = {t: dict(v) for t, v in s.params.items()}
        p["PeriodicTorsionForce"]["k"] = k.at[3].add(d)
        return jnp.mean(run(state, p, settings)[1])

    vg, f = _value_and_grad(mean_energy)
    g = float(vg(0.0)[1])
    fd = (float(f(1e-5)) - float(f(-1e-5))) / 2e-5
    assert abs(g) > 1e-3
    assert g == pytest.approx(fd, rel=REL)


def test_rigid_water_gradient_matches_finite_differences():
    """A box of 200-odd rigid TIP3P waters (SETTLE), reaction-field cutoff at 0.7 nm with LJ switched from 0.6 (smooth forces for the differences):
    d(U)/d(the oxygen type's LJ epsilon) after 10 constrained Langevin steps of 2 fs."""
    jax.config.update("jax_enable_x64", True)
    from openmm import Vec3, app, unit

    from workbench.forcefield.openmm import from_topology

    ff = ["amber14-all.xml", "amber14/tip3p.xml"]
    m = app.Modeller(app.Topology(), [])
    m.addSolvent(app.ForceField(*ff), model="tip3p", boxSize=Vec3(1.9, 1.9, 1.9) * unit.nanometer)
    r = np.array(m.positions.value_in_unit(unit.nanometer))
    s = from_topology(m.topology, r, ff, nonbonded_method="CutoffPeriodic", cutoff=0.7, switch_distance=0.6,
                      constraints="HBonds")
    lang = integ.langevin(s.potential, s.constraints())
    settings = lang.settings(dt=0.002, kT=2.494, gamma=1.0)
    state = lang.init(jax.random.PRNGKey(1), s.positions, s.params, settings, masses=s.masses)
    run = tj.trajectory(lang, 10, observable=tj.final_potential_energy(s.potential), every=10)
    eps = s.params["NonbondedForce"]["epsilon"]
    t = int(np.argmax(np.asarray(eps)))  # the oxygen (the hydrogens have none)

    def mean_energy(d):
        p = {k: dict(v) for k, v in s.params.items()}
        p["NonbondedForce"]["epsilon"] = eps.at[t].add(d)
        return jnp.mean(run(state, p, settings)[1])

    vg, f = _value_and_grad(mean_energy)
    g = vg(0.0)[1]
    h = 1e-5 * float(eps[t])
    fd = (float(f(h)) - float(f(-h))) / (2 * h)
    assert abs(float(g)) > 1e-3
    assert float(g) == pytest.approx(fd, rel=REL)


def test_bad_trajectory_input_is_named(fluid):
    vv = integ.velocity_verlet(fluid.potential)
    with pytest.raises(ValueError, match="divisible"):
        tj.trajectory(vv, 100, every=30)
    with pytest.raises(ValueError, match="checkpoint"):
        tj.trajectory(vv, 100, checkpoint="log")
    with pytest.raises(ValueError, match="fraction_bits"):
        tj.reversible_verlet(fluid.potential, 10, fraction_bits=60)


def test_chaos_diagnostics_lyapunov_and_gradient_growth(fluid):
    """The LJ liquid is chaotic (lambda of a few per tau) and the trajectory gradient's norm
    grows at about that rate; a harmonic solid of independent particles is not (lambda ~ 0)."""
    from workbench.gradients import chaos
    from workbench.potentials.base import FunctionPotential

    vv = integ.velocity_verlet(fluid.potential)
    settings = vv.settings(dt=0.005)
    state = _start(fluid, vv, settings, seed=4)
    state = jax.jit(lambda s: jax.lax.fori_loop(0, 500, lambda i, c: vv.step(
        c, fluid.params, settings, energy=False), s))(state)
    lam = chaos.lyapunov(vv, state, fluid.params, settings, 800, renorm_every=20)["lyapunov"]
    growth = chaos.gradient_growth(vv, state, fluid.params, settings, [40, 80, 160])
    print(f"lambda {lam:.2f} / tau; gradient growth {growth['growth_rate']:.2f} / tau; norms "
          f"{growth['position_gradient_norm']}")
    assert 1.0 < lam < 10.0
    assert 0.5 * lam < growth["growth_rate"] < 1.5 * lam
    assert np.all(np.diff(growth["position_gradient_norm"]) > 0)

    springs = FunctionPotential(lambda r, p: 0.5 * p["k"] * jnp.sum(r * r))
    hv = integ.velocity_verlet(springs)
    s0 = hv.init(jax.random.PRNGKey(0), np.asarray(state.positions[:20]), {"k": 1.0}, settings,
                 velocities=np.asarray(state.velocities[:20]))
    lam0 = chaos.lyapunov(hv, s0, {"k": jnp.asarray(1.0)}, settings, 1000,
                          renorm_every=20)["lyapunov"]
    assert abs(lam0) < 0.1 * lam
