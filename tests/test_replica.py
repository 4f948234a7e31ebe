"""Replica exchange: the lowest rung of a temperature ladder samples the exact double-well free
energy (plain MD at that temperature never crosses the barrier), every rung keeps its own
Boltzmann distribution, Hamiltonian exchange over barrier heights, and the same results on one
and on four CPU devices."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.potentials.base import FunctionPotential
from workbench.sampling import replica as rx

from test_metadynamics import BARRIER, double_well, exact_double_well

PARAMS = {"h": jnp.asarray(BARRIER)}


def _histogram_error(x, kT):
    edges = np.linspace(-1.6, 1.6, 65)
    c = 0.5 * (edges[1:] + edges[:-1])
    h, _ = np.histogram(x, edges)
    with np.errstate(divide="ignore"):
        f = -kT * np.log(h)
    exact = exact_double_well(c)
    region = exact < 3.0 * kT
    d = (f - exact)[region]
    assert np.all(np.isfinite(d))
    return np.abs(d - d.mean()).max() / kT


@pytest.fixture(scope="module")
def tempering():
    re = rx.replica_exchange(FunctionPotential(double_well), exchange_every=50)
    settings = rx.ladder(re.integrator.settings, 1.0, 12.0, 6, dt=0.01, gamma=5.0)
    states, stats = re.init(jax.random.PRNGKey(0), np.array([[-1.0, 0.0, 0.0]]), PARAMS, settings)

    def record(s):  # x of every slot and the energy of the two harmonic coordinates
        return s.positions[:, 0, 0], 50.0 * jnp.sum(s.positions[:, 0, 1:] ** 2, -1)

    run = jax.jit(lambda st, sa: re.run(st, sa, PARAMS, settings, 4000, record=record))
    states, stats, _ = run(states, stats)  # equilibration
    xs, e_yz = [], []
    for _ in range(4):
        states, stats, (x, e) = run(states, stats)
        xs.append(np.asarray(x))
        e_yz.append(np.asarray(e))
    return settings, stats, np.concatenate(xs), np.concatenate(e_yz)


def test_tempering_lowest_rung_recovers_the_double_well(tempering):
    settings, stats, x, _ = tempering
    kT0 = float(settings.kT[0])
    assert BARRIER / kT0 > 12  # plain MD at this temperature stays in its well
    assert _histogram_error(x[:, 0], kT0) < 0.2
    assert abs(np.mean(x[:, 0] < 0) - 0.5) < 0.05
    acc = stats.acceptance()
    assert np.all((acc > 0.3) & (acc < 0.95))
    assert np.all(np.asarray(stats.round_trips) > 50)
    m = np.asarray(stats.matrix)
    np.testing.assert_array_equal(m, m.T)
    np.testing.assert_array_equal(np.diag(m, 1), np.asarray(stats.accepted))
    assert sorted(np.asarray(stats.replica).tolist()) == list(range(6))


def test_every_rung_keeps_its_own_temperature(tempering):
    """The two harmonic coordinates hold <U_yz> = kT at every rung (equipartition)."""
    settings, _, _, e_yz = tempering
    kT = np.asarray(settings.kT)
    mean = e_yz.mean(0)
    blocks = e_yz.reshape(16, -1, e_yz.shape[1]).mean(1)
    err = blocks.std(0, ddof=1) / np.sqrt(16)
    assert np.all(np.abs(mean - kT) < 4 * err + 0.01 * kT), (mean, kT, err)


def test_tempering_lowest_rung_recovers_mueller_brown():
    """Six rungs (kT 2.5 to 12) on the 2-D Mueller-Brown surface of the umbrella and
    metadynamics tests: the lowest rung's histogram on 0.1 nm bins against the exact
    bin-averaged free energy, over the region below 3 kT."""
    from test_umbrella import binned_mueller_brown, mueller_brown

    from workbench.sampling import bias, cv

    def energy(r, p):
        return mueller_brown(r[0, 0], r[0, 1]) + 50.0 * r[0, 2] ** 2

    kT0 = 2.5
    re = rx.replica_exchange(FunctionPotential(energy), exchange_every=10)
    settings = rx.ladder(re.integrator.settings, kT0, 12.0, 6, dt=0.005, gamma=5.0)
    states, stats = re.init(jax.random.PRNGKey(1), np.array([[-0.55, 1.45, 0.0]]), {},
                            settings)
    run = jax.jit(lambda st, sa: re.run(st, sa, {}, settings, 20000,
                                        record=lambda s: s.positions[0, 0, :2]))
    states, stats, _ = run(states, stats)  # equilibration
    xy = []
    for _ in range(12):
        states, stats, out = run(states, stats)
        xy.append(np.asarray(out))
    xy = np.concatenate(xy)
    grid = bias.Grid.for_cvs([cv.Position(0, 0), cv.Position(0, 1)], lower=[-1.5, -0.5],
                             upper=[1.1, 2.1], bins=[26, 26])
    exact = binned_mueller_brown(grid)
    idx = [np.rint((xy[:, a] - grid.lower[a]) / grid.spacing[a]).astype(int) for a in range(2)]
    inside = np.all([(i >= 0) & (i < n) for i, n in zip(idx, grid.shape)], axis=0)
    h = np.zeros(grid.shape)
    np.add.at(h, (idx[0][inside], idx[1][inside]), 1.0)
    with np.errstate(divide="ignore"):
        f = -kT0 * np.log(h)
    d = (f - exact)[exact < 3.0 * kT0]
    assert np.all(np.isfinite(d))
    err = np.abs(d - d.mean()).max() / kT0
    print(f"Mueller-Brown, lowest rung of 6: max error {err:.3f} kT over {d.size} bins; "
          f"acceptance {np.round(np.asarray(stats.acceptance()), 2)}")
    assert err < 0.2
    assert np.all(np.asarray(stats.round_trips) > 1000)


def test_overflowing_lists_regrow_for_the_whole_batch():
    """Replicas whose shared neighbor lists are too small: advance() grows them to one new
    capacity and recomputes the chunk; the trajectory equals a run with room from the start."""
    import workbench as wb
    from workbench import neighbors as nl

    system = wb.lj_fluid(n_atoms=256, density=0.8442, cutoff=2.5, skin=0.3)
    re = rx.replica_exchange(system.potential, exchange_every=5)
    settings = rx.ladder(re.integrator.settings, 1.0, 1.5, 3, dt=0.005, gamma=1.0)
    states, stats = re.init(jax.random.PRNGKey(2), system.positions, system.params, settings,
                            masses=system.masses)
    tight = [nl.allocate(system.space, np.asarray(states.positions[i]), 2.5, 0.3,
                         capacity_factor=0.5) for i in range(3)]
    squeezed = dataclasses.replace(states, aux=jax.tree_util.tree_map(
        lambda *x: jnp.stack(x), *tight))
    assert squeezed.aux.capacity < states.aux.capacity
    a_states, a_stats, _, grown = re.advance(squeezed, stats, system.params, settings, 4)
    b_states, b_stats, _, none = re.advance(states, stats, system.params, settings, 4)
    assert grown >= 1 and none == 0
    assert not bool(jnp.any(a_states.aux.overflow))
    np.testing.assert_allclose(np.asarray(a_states.positions), np.asarray(b_states.positions),
                               atol=1e-9)
    np.testing.assert_array_equal(np.asarray(a_stats.accepted), np.asarray(b_stats.accepted))


def test_hamiltonian_exchange_over_barrier_heights():
    re = rx.replica_exchange(FunctionPotential(double_well), exchange_every=50)
    heights = jnp.asarray(np.geomspace(BARRIER, 1.0, 6))
    params = {"h": heights}
    one = re.integrator.settings(dt=0.01, kT=1.0, gamma=5.0)
    settings = jax.tree_util.tree_map(lambda x: jnp.full(6, x), one)
    states, stats = re.init(jax.random.PRNGKey(2), np.array([[-1.0, 0.0, 0.0]]), params,
                            settings, hamiltonian=True)
    run = jax.jit(lambda st, sa: re.run(st, sa, params, settings, 4000, hamiltonian=True,
                                        record=lambda s: s.positions[:, 0, 0]))
    states, stats, _ = run(states, stats)
    xs = []
    for _ in range(4):
        states, stats, x = run(states, stats)
        xs.append(np.asarray(x))
    x = np.concatenate(xs)
    assert _histogram_error(x[:, 0], 1.0) < 0.2
    assert np.all(stats.acceptance() > 0.1)


SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from test_metadynamics import double_well
    from workbench.potentials.base import FunctionPotential
    from workbench.sampling import replica as rx
    assert len(jax.devices()) == 4, jax.devices()
    params = {{"h": jnp.asarray(12.5)}}
    re = rx.replica_exchange(FunctionPotential(double_well), exchange_every=20)
    settings = rx.ladder(re.integrator.settings, 1.0, 12.0, 4, dt=0.01, gamma=5.0)
    states, stats = re.init(jax.random.PRNGKey(0), np.array([[-1.0, 0.0, 0.0]]), params, settings)
    run = jax.jit(lambda st, sa, se: re.run(st, sa, params, se, 200))
    a, sa, _ = run(states, stats, settings)
    placed = rx.shard_replicas((states, stats, settings))
    b, sb, _ = run(*placed)
    assert len(b.positions.sharding.device_set) == 4
    print(json.dumps({{"max_diff": float(jnp.max(jnp.abs(a.positions - b.positions))),
                      "same_replicas": bool(jnp.all(sa.replica == sb.replica)),
                      "accepted": np.asarray(sa.accepted).tolist()}}))
""")


def test_results_equal_on_one_and_four_devices(tmp_path):
    import json

    env = dict(os.environ, WORKBENCH_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    tests = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["same_replicas"]
    assert sum(res["accepted"]) > 0
    assert res["max_diff"] < 1e-5


def test_replicas_share_one_list_rebuild_decision(monkeypatch):
    """Under vmap a per-replica lax.cond becomes a select that rebuilds every replica on every
    step; replicas share one decision instead (all rebuild when any needs to), with the same
    dynamics."""
    import contextlib

    from workbench import neighbors as nl
    import workbench as wb

    s = wb.lj_fluid(n_atoms=256, density=0.8442, cutoff=2.5, skin=0.3)
    re = rx.replica_exchange(s.potential, exchange_every=10)
    settings = rx.ladder(re.integrator.settings, 0.8, 1.6, 3, dt=0.005, gamma=1.0)
    states, stats = re.init(jax.random.PRNGKey(0), s.positions, s.params, settings,
                            masses=s.masses)
    shared, _, _ = jax.jit(lambda st, sa: re.run(st, sa, s.params, settings, 3))(states, stats)
    builds = np.asarray(shared.aux.n_builds)
    assert np.all(builds == builds[0]) and 1 < builds[0] < 30
    monkeypatch.setattr(nl, "shared_rebuilds", lambda name: contextlib.nullcontext())
    own, _, _ = jax.jit(lambda st, sa: re.run(st, sa, s.params, settings, 3))(states, stats)
    assert not np.all(np.asarray(own.aux.n_builds) == builds[0])
    np.testing.assert_allclose(np.asarray(shared.positions), np.asarray(own.positions),
                               atol=1e-8)
