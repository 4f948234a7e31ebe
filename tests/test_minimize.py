"""Energy minimization: FIRE and gradient descent on Lennard-Jones crystals and clusters
(reduced units, float64). References: the LJ13 icosahedral global minimum -44.326801
(Cambridge Cluster Database; Wales and Doye 1997), the perfect-lattice energy, and forces from
autodiff of the energy (not the fast force path)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import workbench as wb
from workbench import neighbors as nl
from workbench import space as spaces
from workbench.dynamics.minimize import fire, gradient_descent, minimize
from workbench.potentials import PairPotential

LJ13_GLOBAL_MINIMUM = -44.326801


def icosahedron(radius: float) -> np.ndarray:
    """13 positions (13, 3): a centre atom and the 12 vertices of an icosahedron of
    circumradius ``radius``."""
    phi = (1 + 5**0.5) / 2
    v = []
    for s1 in (1, -1):
        for s2 in (1, -1):
            v += [(0, s1, s2 * phi), (s1, s2 * phi, 0), (s2 * phi, 0, s1)]
    v = np.array(v, dtype=float)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.vstack([np.zeros(3), radius * v])


def autodiff_max_force(potential, positions, params) -> float:
    """Largest force component from -grad(energy) with a freshly allocated list."""
    aux = potential.allocate(positions)
    g = jax.grad(potential.energy)(jnp.asarray(positions), params, aux)
    return float(jnp.max(jnp.abs(g)))


def perturbed_crystal(seed: int = 0, amplitude: float = 0.08):
    """256-atom fcc LJ crystal at density 1.0 (rc 2.5, force-shifted), randomly perturbed."""
    system = wb.lj_fluid(n_atoms=256, density=1.0, truncation="force_shift")
    rng = np.random.default_rng(seed)
    start = system.positions + amplitude * rng.uniform(-1, 1, size=system.positions.shape)
    return system, start


def test_fire_relaxes_perturbed_crystal_to_lattice():
    """FIRE brings a perturbed fcc crystal back to the perfect lattice: max force < ftol (checked
    with autodiff forces), energy equal to the lattice energy, positions on the lattice up to a
    uniform translation."""
    system, start = perturbed_crystal()
    pot, params = system.potential, system.params
    e_lattice = float(
        pot.energy(jnp.asarray(system.positions), params, pot.allocate(system.positions))
    )
    e_start = float(pot.energy(jnp.asarray(start), params, pot.allocate(start)))
    res = minimize(pot, start, params, ftol=1e-6, max_steps=20000)
    print(
        f"FIRE crystal: {res.steps} steps, E {res.energy:.8f} (lattice {e_lattice:.8f}, start "
        f"{e_start:.4f}), max force {res.max_force:.2e}"
    )
    assert res.converged and res.max_force < 1e-6
    assert autodiff_max_force(pot, res.positions, params) < 1e-6
    assert e_start > e_lattice + 10.0
    assert abs(res.energy - e_lattice) < 1e-8 * abs(e_lattice)
    shift = np.asarray(res.positions) - system.positions
    shift -= shift.mean(axis=0)
    assert np.abs(shift).max() < 1e-5


def test_fire_finds_lj13_icosahedron():
    """Free-space LJ13 started near the icosahedron: E = -44.326801 (global minimum)."""
    rng = np.random.default_rng(1)
    start = icosahedron(1.09) + 0.05 * rng.standard_normal((13, 3))
    pot = PairPotential("lennard_jones", spaces.free(), 10.0, truncation="cut", neighbor_list=False)
    params = pot.init_params()
    res = minimize(pot, start, params, ftol=1e-6, max_steps=20000)
    print(f"LJ13: E {res.energy:.7f} after {res.steps} steps, max force {res.max_force:.1e}")
    assert res.converged
    assert autodiff_max_force(pot, res.positions, params) < 1e-6
    assert abs(res.energy - LJ13_GLOBAL_MINIMUM) < 2e-6
    # Icosahedral shape: 12 atoms at one distance from the centre atom (the one nearest the
    # centroid), shorter than the 30 equal surface bonds.
    r = np.asarray(res.positions)
    centre = np.argmin(np.linalg.norm(r - r.mean(0), axis=1))
    radial = np.sort(np.linalg.norm(np.delete(r, centre, 0) - r[centre], axis=1))
    assert np.ptp(radial) < 1e-4


def test_fire_init_step_pair_is_jittable_and_lowers_energy():
    system, start = perturbed_crystal(seed=2)
    init, step = fire(system.potential)
    state = jax.jit(init)(jnp.asarray(start), system.params, system.potential.allocate(start))
    run = jax.jit(
        lambda s: jax.lax.scan(lambda c, _: (step(c, system.params), c.energy), s, None, length=300)
    )
    final, energies = run(state)
    assert float(final.energy) < float(energies[0]) - 10.0
    assert float(final.dt) > 0.001  # the adaptive step grew from dt_start


def test_gradient_descent_lowers_energy_monotonically():
    """Small fixed steps along the force never raise the energy."""
    system, start = perturbed_crystal(seed=3)
    pot, params = system.potential, system.params
    init, step = gradient_descent(pot, step_size=1e-3)
    state = jax.jit(init)(jnp.asarray(start), params, pot.allocate(start))
    run = jax.jit(
        lambda s: jax.lax.scan(lambda c, _: (step(c, params), c.energy), s, None, length=400)
    )
    final, energies = run(state)
    e = np.append(np.asarray(energies), float(final.energy))
    print(f"gradient descent: E {e[0]:.4f} -> {e[-1]:.4f}; largest rise {np.diff(e).max():.2e}")
    assert np.all(np.diff(e) <= 1e-10 * abs(e[0]))
    assert e[-1] < e[0] - 10.0
    res = minimize(
        pot, start, params, method="gradient_descent", ftol=1e-1, max_steps=5000, step_size=1e-3
    )
    assert res.converged and res.energy < e[0]


def cluster_in_big_box():
    """108 LJ atoms: a sparse fcc lattice filling a 12^3 box (no neighbors within rc + skin) and
    a dense perturbed fcc cluster (lattice constant 1.6) in its middle."""
    L = 12.0
    space = spaces.periodic(L)
    pot = PairPotential("lennard_jones", space, 2.5, truncation="force_shift", skin=0.3)
    sparse = wb.fcc_lattice(3, 4.0)
    rng = np.random.default_rng(4)
    dense = wb.fcc_lattice(3, 1.6) + (L - 3 * 1.6) / 2 + 0.05 * rng.standard_normal((108, 3))
    return pot, pot.init_params(), sparse, dense


def test_minimize_regrows_neighbor_list_and_converges():
    """A list allocated on the sparse configuration (capacity 8) overflows on the dense cluster:
    minimize regrows it, converges, and reaches the same minimum as a run with a list allocated
    on the cluster."""
    pot, params, sparse, dense = cluster_in_big_box()
    small = pot.allocate(sparse)
    assert small.capacity <= 8
    res = minimize(pot, dense, params, aux=small, ftol=1e-4, max_steps=50000)
    ref = minimize(pot, dense, params, ftol=1e-4, max_steps=50000)
    print(
        f"regrown: E {res.energy:.8f}, K {res.aux.capacity}, {res.steps} steps; "
        f"reference: E {ref.energy:.8f}, K {ref.aux.capacity}"
    )
    assert res.converged and res.max_force < 1e-4
    assert res.aux.capacity > 8 and not bool(res.aux.overflow)
    assert autodiff_max_force(pot, res.positions, params) < 1e-4
    assert abs(res.energy - ref.energy) < 1e-6 * abs(ref.energy)


def test_minimize_regrowth_loses_no_step():
    """After an overflow the minimizer must continue from forces computed with a complete list
    (module docstring: "no step is computed with an incomplete list"), so the first steps with a
    regrown list equal those of a run whose list was big enough from the start."""
    pot, params, sparse, dense = cluster_in_big_box()
    small = pot.allocate(sparse)
    big = nl.rebuild(pot.space, jnp.asarray(dense), pot.allocate(dense))
    a = minimize(pot, dense, params, aux=small, ftol=1e-12, max_steps=4, chunk=2)
    b = minimize(pot, dense, params, aux=big, ftol=1e-12, max_steps=4, chunk=2)
    assert a.steps == b.steps == 4
    diff = float(jnp.abs(a.positions - b.positions).max())
    print(f"4 steps: max position difference {diff:.2e}, E {a.energy} vs {b.energy}")
    assert diff < 1e-10, "the regrown run differs from the reference"
    assert abs(a.energy - b.energy) < 1e-9 * abs(b.energy)


def test_minimize_rejects_bad_input():
    system, start = perturbed_crystal()
    with pytest.raises(ValueError, match="unknown method"):
        minimize(system.potential, start, system.params, method="newton")
    overlap = np.array(start)
    overlap[1] = overlap[0]
    with pytest.raises(FloatingPointError, match="overlapping"):
        minimize(system.potential, overlap, system.params, max_steps=100)
