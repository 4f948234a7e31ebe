"""Pair potentials: every kind x truncation against numpy formulas and finite differences,
autodiff against the hand-written forces, cutoff continuity, known minima, invariances,
Lorentz-Berthelot mixing, parameter gradients, no recompilation, tail corrections, bad input.

References are written here in numpy from the documented formulas, independent of the library.
Reduced units (sigma, epsilon).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy.spatial.transform import Rotation

from workbench import space
from workbench.potentials import KINDS, TRUNCATIONS, PairPotential

# kind -> (parameters for one type, parameters for three types, cutoff)
SETUP = {
    "lennard_jones": (
        {"sigma": 1.0, "epsilon": 1.0},
        {"sigma": [0.9, 1.0, 1.1], "epsilon": [0.8, 1.0, 1.3]},
        2.0,
    ),
    "wca": (
        {"sigma": 1.0, "epsilon": 1.0},
        {"sigma": [0.95, 1.0, 1.1], "epsilon": [0.8, 1.0, 1.3]},
        1.5,
    ),
    "morse": (
        {"D": 1.0, "alpha": 3.0, "r0": 1.2},
        {"D": [0.7, 1.0, 1.4], "alpha": [2.5, 3.0, 3.5], "r0": [1.1, 1.2, 1.3]},
        2.0,
    ),
    "soft_sphere": (
        {"sigma": 1.3, "epsilon": 10.0, "alpha": 2.5},
        {"sigma": [1.2, 1.3, 1.4], "epsilon": [8.0, 10.0, 13.0], "alpha": [2.0, 2.5, 3.0]},
        2.0,
    ),
}
MIXING = {  # documented rules: Lorentz-Berthelot for sigma/epsilon
    "sigma": lambda a, b: 0.5 * (a + b),
    "epsilon": lambda a, b: np.sqrt(a * b),
    "D": lambda a, b: np.sqrt(a * b),
    "alpha": lambda a, b: 0.5 * (a + b),
    "r0": lambda a, b: 0.5 * (a + b),
}
LATTICE_SPACING, N_SIDE = 1.15, 4
BOX = LATTICE_SPACING * N_SIDE  # 4.6: cutoff + skin = 2.2 fits in half the box
SKIN = 0.2
ALL = list(itertools.product(sorted(KINDS), TRUNCATIONS))


# ---------------------------------------------------------------------------- numpy references
def np_u(kind: str, r, p):
    """Untruncated pair energy u(r) from the documented formulas."""
    r = np.asarray(r, float)
    if kind in ("lennard_jones", "wca"):
        s6 = (p["sigma"] / r) ** 6
        lj = 4.0 * p["epsilon"] * (s6 * s6 - s6)
        if kind == "lennard_jones":
            return lj
        return np.where(r < 2.0 ** (1 / 6) * p["sigma"], lj + p["epsilon"], 0.0)
    if kind == "morse":
        x = 1.0 - np.exp(-p["alpha"] * (r - p["r0"]))
        return p["D"] * x * x - p["D"]
    overlap = np.clip(1.0 - r / p["sigma"], 0.0, None)
    return p["epsilon"] / p["alpha"] * overlap ** p["alpha"]


def np_du(kind: str, r, p):
    """Analytic du/dr."""
    r = np.asarray(r, float)
    if kind in ("lennard_jones", "wca"):
        s6 = (p["sigma"] / r) ** 6
        d = 24.0 * p["epsilon"] / r * (s6 - 2.0 * s6 * s6)
        if kind == "lennard_jones":
            return d
        return np.where(r < 2.0 ** (1 / 6) * p["sigma"], d, 0.0)
    if kind == "morse":
        e = np.exp(-p["alpha"] * (r - p["r0"]))
        return 2.0 * p["D"] * p["alpha"] * (1.0 - e) * e
    overlap = np.clip(1.0 - r / p["sigma"], 0.0, None)
    return -p["epsilon"] / p["sigma"] * overlap ** (p["alpha"] - 1.0)


def np_truncated(kind, truncation, r, p, rc, rs=None):
    """(energy, du/dr) of the truncated pair term at distances r."""
    r = np.asarray(r, float)
    u, du = np_u(kind, r, p), np_du(kind, r, p)
    if truncation == "shift":
        u = u - np_u(kind, rc, p)
    elif truncation == "force_shift":
        u = u - np_u(kind, rc, p) - (r - rc) * np_du(kind, rc, p)
        du = du - np_du(kind, rc, p)
    elif truncation == "switch":
        x = np.clip((r - rs) / (rc - rs), 0.0, 1.0)
        s = 1.0 - 10.0 * x**3 + 15.0 * x**4 - 6.0 * x**5
        ds = (-30.0 * x**2 + 60.0 * x**3 - 30.0 * x**4) / (rc - rs)
        u, du = u * s, du * s + u * ds
    inside = r < rc
    return np.where(inside, u, 0.0), np.where(inside, du, 0.0)


def np_system(kind, truncation, r, types, params, rc, rs, box_length):
    """Energy and forces by an explicit loop over pairs i < j, minimum image in a cubic box
    (None: free space), mixing each pair's parameters from per-type values."""
    n = len(r)
    energy, forces = 0.0, np.zeros_like(r)
    for i in range(n):
        for j in range(i + 1, n):
            d = r[i] - r[j]
            if box_length is not None:
                d = d - box_length * np.round(d / box_length)
            dist = np.linalg.norm(d)
            ti, tj = types[i], types[j]
            p = {k: MIXING[k](float(v[ti]), float(v[tj])) for k, v in params.items()}
            u, du = np_truncated(kind, truncation, dist, p, rc, rs)
            energy += float(u)
            f = -float(du) * d / dist
            forces[i] += f
            forces[j] -= f
    return energy, forces


# ---------------------------------------------------------------------------- helpers
def _lattice(seed: int, jitter: float = 0.1, n_side: int = N_SIDE) -> np.ndarray:
    """Jittered simple cubic lattice (spacing 1.15, no overlaps), (n_side^3, 3)."""
    g = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    r = (g + 0.5) * LATTICE_SPACING
    return r + np.random.default_rng(seed).uniform(-jitter, jitter, r.shape)


def _distances(r: np.ndarray, box_length: float | None) -> np.ndarray:
    d = r[:, None] - r[None]
    if box_length is not None:
        d = d - box_length * np.round(d / box_length)
    iu = np.triu_indices(len(r), 1)
    return np.linalg.norm(d, axis=-1)[iu]


def _make(kind, truncation, *, types=None, sp=None, neighbor_list=True):
    one, many, rc = SETUP[kind]
    pot = PairPotential(
        kind,
        space.periodic(BOX) if sp is None else sp,
        rc,
        truncation=truncation,
        r_switch=0.75 * rc if truncation == "switch" else None,
        types=types,
        skin=SKIN,
        neighbor_list=neighbor_list,
    )
    return pot, pot.init_params(**(one if types is None else many))


def _types(n: int) -> np.ndarray:
    return np.arange(n) % 3


# ---------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("kind, truncation", ALL)
def test_two_atom_energy_and_force_equal_formula(kind, truncation):
    """One pair in free space, at distances spanning the core, the switching region and beyond
    the cutoff: energy and force equal the numpy formulas."""
    pot, params = _make(kind, truncation, sp=space.free(), neighbor_list=False)
    p = {k: float(v[0]) for k, v in params.items()}
    rc, rs = pot.cutoff, pot.r_switch
    distances = np.concatenate([np.linspace(0.85, rc - 1e-3, 37), [rc + 1e-3, rc + 0.5]])
    ev = jax.jit(pot.evaluate)
    u_ref, du_ref = np_truncated(kind, truncation, distances, p, rc, rs)
    axis = np.array([0.48, -0.6, 0.64])  # unit vector
    for dist, u, du in zip(distances, u_ref, du_ref):
        r = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3] + dist * axis])
        out, _ = ev(jnp.asarray(r), params, None)
        assert float(out.energy) == pytest.approx(u, rel=1e-10, abs=1e-12), dist
        np.testing.assert_allclose(np.asarray(out.forces[1]), -du * axis, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.asarray(out.forces[0]), du * axis, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------- forces
def _check_no_pair_near_cutoff(r, rc, box_length):
    gap = np.min(np.abs(_distances(r, box_length) - rc))
    assert gap > 1e-4, "test configuration has a pair at the cutoff; pick another seed"


@pytest.mark.parametrize("kind, truncation", ALL)
def test_forces_equal_minus_finite_difference_and_autodiff_gradient(kind, truncation):
    """evaluate() forces equal minus the central finite-difference gradient of energy() (step
    1e-6) and jax.grad(energy) (the custom JVP), and sum to zero. (All pairs here; the neighbor
    list path is checked against all pairs in test_neighbors.py and below.)"""
    types = _types(N_SIDE**3)
    pot, params = _make(kind, truncation, types=types, neighbor_list=False)
    r = _lattice(seed=11)
    _check_no_pair_near_cutoff(r, pot.cutoff, BOX)
    aux = pot.allocate(r)
    out, aux = jax.jit(pot.evaluate)(jnp.asarray(r), params, aux)
    forces = np.asarray(out.forces)
    assert np.abs(forces).max() > 0.1  # non-trivial configuration
    value_and_grad = jax.jit(jax.value_and_grad(lambda x: pot.energy(x, params, aux)))

    e, g = value_and_grad(jnp.asarray(r))
    assert float(e) == pytest.approx(float(out.energy), rel=1e-12)
    np.testing.assert_allclose(-np.asarray(g), forces, atol=1e-10)

    h = 1e-6
    rng = np.random.default_rng(12)
    for atom, comp in zip(rng.choice(len(r), 6, replace=False), rng.integers(0, 3, 6)):
        plus, minus = r.copy(), r.copy()
        plus[atom, comp] += h
        minus[atom, comp] -= h
        e_plus = float(value_and_grad(jnp.asarray(plus))[0])
        e_minus = float(value_and_grad(jnp.asarray(minus))[0])
        fd = -(e_plus - e_minus) / (2 * h)
        assert fd == pytest.approx(forces[atom, comp], rel=1e-6, abs=1e-6), (atom, comp)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-10)


def test_eager_autodiff_gradient_equals_forces():
    """Without jit, jax.grad of energy() equals evaluate() forces."""
    types = _types(27)
    r = jnp.asarray(_lattice(seed=13, n_side=3))
    pot, params = _make("lennard_jones", "shift", types=types, sp=space.free(), neighbor_list=False)
    out, _ = pot.evaluate(r, params, None)
    grad = jax.grad(pot.energy)(r, params, None)
    np.testing.assert_allclose(-np.asarray(grad), np.asarray(out.forces), atol=1e-10)


# ---------------------------------------------------------------------------- cutoff behaviour
def _two_atom(pot, params, dist):
    """(energy, x-force on atom 1) for atoms at the origin and at (dist, 0, 0)."""
    r = jnp.asarray([[0.0, 0.0, 0.0], [dist, 0.0, 0.0]])
    out, _ = _jitted_evaluate(pot)(r, params, None)
    return float(out.energy), float(out.forces[1, 0])


@functools.cache
def _jitted_evaluate(pot: PairPotential):
    """One compiled evaluate per potential object (PairPotential hashes by identity)."""
    return jax.jit(pot.evaluate)


@pytest.mark.parametrize("kind", ["lennard_jones", "morse"])
@pytest.mark.parametrize("truncation", TRUNCATIONS)
def test_continuity_at_cutoff(kind, truncation):
    """Energy continuous at rc for shift, force_shift, switch; force continuous for force_shift
    and switch; 'cut' (and 'shift' for the force) really jump, so the check has teeth."""
    pot, params = _make(kind, truncation, sp=space.free(), neighbor_list=False)
    p = {k: float(v[0]) for k, v in params.items()}
    rc, delta = pot.cutoff, 1e-7
    e_in, f_in = _two_atom(pot, params, rc - delta)
    e_out, f_out = _two_atom(pot, params, rc + delta)
    assert e_out == 0.0 and f_out == 0.0
    u_rc, du_rc = float(np_u(kind, rc, p)), float(np_du(kind, rc, p))
    assert abs(u_rc) > 1e-3 and abs(du_rc) > 1e-3  # plain potential is not already zero
    if truncation == "cut":
        assert e_in == pytest.approx(u_rc, rel=1e-5)
    else:
        assert abs(e_in) < 10 * abs(du_rc) * delta
    if truncation in ("force_shift", "switch"):
        assert abs(f_in) < 1e-5
    else:
        assert f_in == pytest.approx(-du_rc, rel=1e-5)


def test_wca_minimum():
    pot, _ = _make("wca", "cut", sp=space.free(), neighbor_list=False)
    sigma, eps = 1.1, 0.7
    params = pot.init_params(sigma=sigma, epsilon=eps)
    r_min = 2.0 ** (1 / 6) * sigma
    # purely repulsive: energy >= 0 everywhere, zero from the LJ minimum on
    grid = np.linspace(0.9 * sigma, pot.cutoff - 0.01, 200)
    energies = np.array([_two_atom(pot, params, d)[0] for d in grid])
    assert np.all(energies >= -1e-12)
    assert np.all(energies[grid >= r_min] == 0.0)
    assert np.all(np.diff(energies[grid < r_min]) < 0)  # monotonic decrease up to r_min
    assert _two_atom(pot, params, sigma)[0] == pytest.approx(eps, rel=1e-12)  # LJ(sigma)=0
    # smooth at r_min: energy and force vanish from below
    e, f = _two_atom(pot, params, r_min - 1e-6)
    assert abs(e) < 1e-9 and abs(f) < 1e-4
    assert f > 0  # repulsive: pushes atom 1 outward (+x)


def test_morse_minimum():
    pot, _ = _make("morse", "cut", sp=space.free(), neighbor_list=False)
    D, alpha, r0 = 2.5, 4.0, 1.3
    params = pot.init_params(D=D, alpha=alpha, r0=r0)
    e, f = _two_atom(pot, params, r0)
    assert e == pytest.approx(-D, rel=1e-14)
    assert abs(f) < 1e-12
    grid = np.linspace(0.8, 1.95, 116)
    energies = np.array([_two_atom(pot, params, d)[0] for d in grid])
    assert grid[np.argmin(energies)] == pytest.approx(r0, abs=0.006)
    assert np.all(energies >= -D - 1e-12)
    assert _two_atom(pot, params, r0 - 0.05)[1] > 0 and _two_atom(pot, params, r0 + 0.05)[1] < 0


# ---------------------------------------------------------------------------- invariances
def test_translation_rotation_permutation_invariance_free_space():
    types = _types(27)
    pot, params = _make("lennard_jones", "shift", types=types, sp=space.free(), neighbor_list=False)
    r = _lattice(seed=14, n_side=3)
    ev = jax.jit(pot.evaluate)
    base, _ = ev(jnp.asarray(r), params, None)
    e0, f0 = float(base.energy), np.asarray(base.forces)
    assert abs(e0) > 1.0
    np.testing.assert_allclose(f0.sum(axis=0), 0.0, atol=1e-11)
    # torque-free as well: sum r x F = 0 for central forces
    np.testing.assert_allclose(np.cross(r, f0).sum(axis=0), 0.0, atol=1e-10)

    moved, _ = ev(jnp.asarray(r + np.array([3.7, -12.1, 0.4])), params, None)
    assert float(moved.energy) == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(np.asarray(moved.forces), f0, atol=1e-10)

    rot = Rotation.random(random_state=15).as_matrix()
    center = np.array([1.0, -2.0, 0.5])
    rotated, _ = ev(jnp.asarray((r - center) @ rot.T + center), params, None)
    assert float(rotated.energy) == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(np.asarray(rotated.forces), f0 @ rot.T, atol=1e-10)

    perm = np.random.default_rng(16).permutation(len(r))
    pot_p, _ = _make(
        "lennard_jones", "shift", types=types[perm], sp=space.free(), neighbor_list=False
    )
    permuted, _ = jax.jit(pot_p.evaluate)(jnp.asarray(r[perm]), params, None)
    assert float(permuted.energy) == pytest.approx(e0, rel=1e-12)
    np.testing.assert_allclose(np.asarray(permuted.forces), f0[perm], atol=1e-10)


def test_periodic_translation_invariance_and_zero_net_force():
    types = _types(N_SIDE**3)
    pot, params = _make("lennard_jones", "force_shift", types=types, neighbor_list=False)
    r = _lattice(seed=17)
    ev = jax.jit(pot.evaluate)
    out, _ = ev(jnp.asarray(r), params, None)
    shifted, _ = ev(jnp.asarray(r + np.array([0.77, 2.9, -5.3])), params, None)  # any shift
    assert float(shifted.energy) == pytest.approx(float(out.energy), rel=1e-12)
    np.testing.assert_allclose(np.asarray(shifted.forces), np.asarray(out.forces), atol=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces).sum(axis=0), 0.0, atol=1e-10)


# ---------------------------------------------------------------------------- mixing
@pytest.mark.parametrize(
    "kind, truncation, neighbor_list",
    [
        ("lennard_jones", "shift", True),
        ("lennard_jones", "force_shift", False),
        ("morse", "switch", False),
        ("soft_sphere", "cut", False),
        ("wca", "shift", False),
    ],
)
def test_multi_type_mixing_equals_numpy_pair_loop(kind, truncation, neighbor_list):
    types = _types(N_SIDE**3)
    pot, params = _make(kind, truncation, types=types, neighbor_list=neighbor_list)
    r = _lattice(seed=18)
    out, _ = jax.jit(pot.evaluate)(jnp.asarray(r), params, pot.allocate(r))
    per_type = {k: np.asarray(v) for k, v in params.items()}
    e_ref, f_ref = np_system(kind, truncation, r, types, per_type, pot.cutoff, pot.r_switch, BOX)
    assert float(out.energy) == pytest.approx(e_ref, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(np.asarray(out.forces), f_ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize(
    "kind, truncation, typed, neighbor_list, periodic",
    [
        ("lennard_jones", "switch", False, True, True),
        ("lennard_jones", "force_shift", True, True, True),
        ("morse", "shift", True, False, True),
        ("soft_sphere", "switch", False, False, False),
    ],
)
def test_force_reverse_mode_equals_autodiff_hessian(kind, truncation, typed, neighbor_list,
                                                    periodic):
    """The hand-written reverse-mode rule of forces_only (w . dF/dx, w . dF/dparams,
    w . dF/dbox in one pass) equals autodiff of -grad(energy)."""
    types = _types(N_SIDE**3) if typed else None
    pot, params = _make(kind, truncation, types=types, neighbor_list=neighbor_list)
    if not periodic:
        pot = dataclasses.replace(pot, space=space.free(), neighbor_list=False)
    r = jnp.asarray(_lattice(seed=23))
    aux = pot.allocate(np.asarray(r))
    w = jax.random.normal(jax.random.PRNGKey(4), r.shape)
    box = jnp.asarray(pot.space.box)

    def fast(x, p, b):
        return jnp.sum(pot.forces_only(x, p, aux, b) * w)

    def reference(x, p, b):
        return jnp.sum(-jax.grad(lambda y: pot.energy(y, p, aux, b))(x) * w)

    got = jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(r, params, box)
    want = jax.jit(jax.grad(reference, argnums=(0, 1, 2)))(r, params, box)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-9)
    assert float(jnp.abs(got[0]).max()) > 1.0


# ---------------------------------------------------------------------------- parameters
@pytest.mark.parametrize(
    "kind, truncation",
    [
        ("lennard_jones", "cut"),
        ("lennard_jones", "shift"),
        ("lennard_jones", "force_shift"),
        ("lennard_jones", "switch"),
        ("wca", "force_shift"),
        ("morse", "force_shift"),
        ("soft_sphere", "switch"),
    ],
)
def test_parameter_gradients_equal_finite_differences(kind, truncation):
    types = _types(N_SIDE**3)
    pot, params = _make(kind, truncation, types=types, neighbor_list=kind == "lennard_jones")
    r = jnp.asarray(_lattice(seed=19))
    aux = pot.allocate(np.asarray(r))
    energy = jax.jit(lambda p: pot.energy(r, p, aux))
    grads = jax.jit(jax.grad(lambda p: pot.energy(r, p, aux)))(params)
    assert set(grads) == set(params)
    h = 1e-6
    for name, values in params.items():
        for t in range(3):
            plus = dict(params, **{name: values.at[t].add(h)})
            minus = dict(params, **{name: values.at[t].add(-h)})
            fd = (float(energy(plus)) - float(energy(minus))) / (2 * h)
            assert float(grads[name][t]) == pytest.approx(fd, rel=1e-6, abs=1e-6), (name, t)
    if kind in ("lennard_jones", "wca"):
        assert np.abs(np.asarray(grads["epsilon"])).max() > 1e-3
        assert np.abs(np.asarray(grads["sigma"])).max() > 1e-3


def test_no_recompilation_for_new_parameter_values():
    pot, _ = _make("lennard_jones", "switch", types=_types(N_SIDE**3))
    r = jnp.asarray(_lattice(seed=20))
    aux = pot.allocate(np.asarray(r))
    traces = {"evaluate": 0, "grad": 0}

    @jax.jit
    def run(positions, params):
        traces["evaluate"] += 1
        out, _ = pot.evaluate(positions, params, aux)
        return out.energy, out.forces

    @jax.jit
    def param_grad(positions, params):
        traces["grad"] += 1
        return jax.grad(lambda p: pot.energy(positions, p, aux))(params)

    energies = []
    for scale in (1.0, 1.05, 0.9):
        params = pot.init_params(sigma=[0.9 * scale, 1.0, 1.1], epsilon=[0.8, scale, 1.3])
        energies.append(float(run(r, params)[0]))
        param_grad(r, params)
    assert traces == {"evaluate": 1, "grad": 1}
    assert len(set(energies)) == 3  # the new values were really used


# ---------------------------------------------------------------------------- tail corrections
def _lj(r, s, e):
    return 4 * e * ((s / r) ** 12 - (s / r) ** 6)


def _dlj(r, s, e):
    return 4 * e * (-12 * s**12 / r**13 + 6 * s**6 / r**7)


def test_lj_tail_correction_single_type_equals_quadrature():
    rc, n, volume = 2.5, 500, 600.0
    pot = PairPotential("lennard_jones", space.periodic(volume ** (1 / 3)), rc, truncation="cut")
    params = pot.init_params(sigma=1.1, epsilon=0.9)
    e_tail, p_tail = pot.tail_correction(params, n, volume)
    e_int = integrate.quad(lambda r: r**2 * _lj(r, 1.1, 0.9), rc, np.inf, epsabs=1e-13)[0]
    p_int = integrate.quad(lambda r: r**3 * _dlj(r, 1.1, 0.9), rc, np.inf, epsabs=1e-13)[0]
    assert float(e_tail) == pytest.approx(2 * np.pi * n**2 / volume * e_int, rel=1e-8)
    assert float(p_tail) == pytest.approx(-2 * np.pi * n**2 / (3 * volume**2) * p_int, rel=1e-8)
    # textbook closed forms (Allen & Tildesley), reduced by sigma^3 and epsilon
    rho, x = n / volume, 1.1 / rc
    e_book = 8 / 3 * np.pi * n * rho * 0.9 * 1.1**3 * (x**9 / 3 - x**3)
    p_book = 16 / 3 * np.pi * rho**2 * 0.9 * 1.1**3 * (2 / 3 * x**9 - x**3)
    assert float(e_tail) == pytest.approx(e_book, rel=1e-12)
    assert float(p_tail) == pytest.approx(p_book, rel=1e-12)


def test_lj_tail_correction_multi_type_equals_quadrature():
    rc, volume = 2.0, 300.0
    types = np.array([0] * 30 + [1] * 50 + [2] * 20)
    pot = PairPotential(
        "lennard_jones", space.periodic(volume ** (1 / 3)), rc, truncation="cut", types=types
    )
    sig, eps = np.array([0.9, 1.0, 1.2]), np.array([0.5, 1.0, 1.6])
    params = pot.init_params(sigma=sig, epsilon=eps)
    e_tail, p_tail = pot.tail_correction(params, len(types), volume)
    counts = np.bincount(types)
    e_ref = p_ref = 0.0
    for a, b in itertools.product(range(3), repeat=2):
        s, e = 0.5 * (sig[a] + sig[b]), np.sqrt(eps[a] * eps[b])
        nn = counts[a] * counts[b]
        e_ref += (
            nn
            * integrate.quad(lambda r, s=s, e=e: r**2 * _lj(r, s, e), rc, np.inf, epsabs=1e-13)[0]
        )
        p_ref += (
            nn
            * integrate.quad(lambda r, s=s, e=e: r**3 * _dlj(r, s, e), rc, np.inf, epsabs=1e-13)[0]
        )
    assert float(e_tail) == pytest.approx(2 * np.pi / volume * e_ref, rel=1e-8)
    assert float(p_tail) == pytest.approx(-2 * np.pi / (3 * volume**2) * p_ref, rel=1e-8)
    with pytest.raises(ValueError, match="lennard_jones"):
        _make("morse", "cut")[0].tail_correction(_make("morse", "cut")[1], 64, 100.0)


# ---------------------------------------------------------------------------- virial
def test_virial_equals_minus_strain_derivative():
    """W_aa = -dE/d(eps_a) under the affine strain x_a -> (1 + eps_a) x_a of box and positions."""
    r = _lattice(seed=21)
    kind = "lennard_jones"
    one, _, rc = SETUP[kind]

    def energy_at(strain: np.ndarray) -> float:
        pot = PairPotential(
            kind,
            space.periodic(BOX * (1 + strain)),
            rc,
            truncation="force_shift",
            neighbor_list=False,
        )
        return float(pot.energy(jnp.asarray(r * (1 + strain)), pot.init_params(**one)))

    pot = PairPotential(
        kind, space.periodic(BOX), rc, truncation="force_shift", neighbor_list=False
    )
    w = np.asarray(pot.virial(jnp.asarray(r), pot.init_params(**one)))
    np.testing.assert_allclose(w, w.T, atol=1e-10)
    e_both, w_both = pot.energy_virial(jnp.asarray(r), pot.init_params(**one))  # one pass
    np.testing.assert_allclose(np.asarray(w_both), w, rtol=1e-12)
    assert float(e_both) == pytest.approx(energy_at(np.zeros(3)), rel=1e-12)
    h = 1e-6
    for a in range(3):
        e = np.zeros(3)
        e[a] = h
        fd = (energy_at(e) - energy_at(-e)) / (2 * h)
        assert w[a, a] == pytest.approx(-fd, rel=1e-6, abs=1e-6)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    sp = space.periodic(5.0)
    with pytest.raises(ValueError, match="unknown pair kind"):
        PairPotential("lenard_jones", sp, 2.0)
    with pytest.raises(ValueError, match="unknown truncation"):
        PairPotential("lennard_jones", sp, 2.0, truncation="smooth")
    with pytest.raises(ValueError, match="r_switch"):
        PairPotential("lennard_jones", sp, 2.0, truncation="switch")
    with pytest.raises(ValueError, match="r_switch"):
        PairPotential("lennard_jones", sp, 2.0, truncation="switch", r_switch=2.5)
    with pytest.raises(ValueError, match="cutoff"):
        PairPotential("lennard_jones", sp, -1.0)
    with pytest.raises(ValueError, match="types"):
        PairPotential("lennard_jones", sp, 2.0, types=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="types"):
        PairPotential("lennard_jones", sp, 2.0, types=np.array([0, -1]))

    pot = PairPotential("lennard_jones", sp, 2.0, types=_types(N_SIDE**3))
    with pytest.raises(TypeError, match="sigmma"):
        pot.init_params(sigmma=1.0)
    with pytest.raises(ValueError, match="sigma"):
        pot.init_params(sigma=[1.0, 1.1])  # 3 types
    with pytest.raises(ValueError, match="epsilon"):
        pot.init_params(epsilon=np.ones((3, 3)))
    params = pot.init_params()
    np.testing.assert_array_equal(np.asarray(params["sigma"]), np.ones(3))
    r = _lattice(seed=22)
    with pytest.raises(KeyError, match="sigma"):
        pot.energy(jnp.asarray(r), {"epsilon": params["epsilon"]}, pot.allocate(r))
    with pytest.raises(ValueError, match="types"):
        pot.allocate(r[:10])
