"""Distance constraints: SHAKE/SETTLE position projection, RATTLE velocity projection and their
implicit derivatives (float64). References: OpenMM's Reference platform
(``Context.applyConstraints`` / ``applyVelocityConstraints``, CCMA + SETTLE, tolerance 1e-12)
on a TIP3P water box and on alanine dipeptide with HBonds constraints; central finite
differences for the gradients."""

from __future__ import annotations

import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.dynamics.constraints import (
    Constraints,
    constrain_positions,
    constrain_velocities,
    constrained_dof,
    constraint_errors,
    constraint_pairs,
    constraints_from_openmm,
    make_constraints,
    n_constraints,
)

mm = pytest.importorskip("openmm")
app = pytest.importorskip("openmm.app")
unit = pytest.importorskip("openmm.unit")

TIP3P_OH = 0.09572
TIP3P_HH = 2 * TIP3P_OH * np.sin(np.deg2rad(104.52) / 2)  # 0.15139 nm
project = jax.jit(constrain_positions, static_argnames=("max_iter",))
project_v = jax.jit(constrain_velocities)

# Alanine dipeptide (ACE-ALA-NME), heavy atoms only (Angstrom); Modeller adds the hydrogens.
DIPEPTIDE_HEAVY_PDB = """\
ATOM      1  CH3 ACE A   1       2.000   2.090   0.000  1.00  0.00           C
ATOM      2  C   ACE A   1       3.427   2.641  -0.000  1.00  0.00           C
ATOM      3  O   ACE A   1       4.391   1.877  -0.000  1.00  0.00           O
ATOM      4  N   ALA A   2       3.555   3.970  -0.000  1.00  0.00           N
ATOM      5  CA  ALA A   2       4.853   4.614  -0.000  1.00  0.00           C
ATOM      6  CB  ALA A   2       5.661   4.221  -1.232  1.00  0.00           C
ATOM      7  C   ALA A   2       4.713   6.129   0.000  1.00  0.00           C
ATOM      8  O   ALA A   2       3.601   6.653   0.000  1.00  0.00           O
ATOM      9  N   NME A   3       5.846   6.835   0.000  1.00  0.00           N
ATOM     10  C   NME A   3       5.846   8.284   0.000  1.00  0.00           C
TER
END
"""


# ----------------------------------------------------------------------------- systems


def molecule(seed=0):
    """A molecule-like cloud: a chain of 6 heavy atoms with 1-3 hydrogens each (X-H
    constraints, 0.101-0.109 nm) and one heavy-heavy constraint, so clusters of 1 to 4
    coupled constraints. Returns (reference (N,3) satisfying the constraints, masses (N,),
    pairs, distances)."""
    rng = np.random.default_rng(seed)
    heavy_m = np.array([12.011, 14.007, 12.011, 15.999, 12.011, 12.011])
    n_h = [3, 1, 2, 1, 3, 2]
    heavy = np.cumsum(0.153 * _unit(rng.normal(size=(6, 3))), axis=0)
    pos, masses, pairs, dist = list(heavy), list(heavy_m), [], []
    for a, k in enumerate(n_h):
        for _ in range(k):
            d = rng.uniform(0.101, 0.109)
            pos.append(heavy[a] + d * _unit(rng.normal(size=3)))
            masses.append(1.008)
            pairs.append((a, len(pos) - 1))
            dist.append(d)
    pairs.append((4, 5))  # couples the CH3 group of atom 4 with the CH2 of atom 5
    dist.append(0.153)
    return np.array(pos), np.array(masses), np.array(pairs), np.array(dist)


def water_cloud(n_water, seed=0, spacing=0.31):
    """Rigid TIP3P waters at random orientations on a cubic lattice: (positions, masses)."""
    rng = np.random.default_rng(seed)
    half = np.arcsin(TIP3P_HH / (2 * TIP3P_OH))
    local = TIP3P_OH * np.array([[0, 0, 0], [np.sin(half), np.cos(half), 0],
                                 [-np.sin(half), np.cos(half), 0]])
    side = int(np.ceil(n_water ** (1 / 3)))
    pos = []
    for w in range(n_water):
        rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        centre = spacing * np.array(np.unravel_index(w, (side,) * 3), float)
        pos.append(local @ rot.T + centre)
    return np.concatenate(pos), np.tile([15.99943, 1.007947, 1.007947], n_water)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _openmm_context(system):
    integrator = mm.VerletIntegrator(0.001)
    integrator.setConstraintTolerance(1e-12)
    return mm.Context(system, integrator, mm.Platform.getPlatformByName("Reference"))


def _masses(system):
    return np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                     for i in range(system.getNumParticles())])


@pytest.fixture(scope="module")
def water_box():
    """30 TIP3P waters from the PDB that ships with OpenMM: (system, positions in nm)."""
    pdb = app.PDBFile(str(_openmm_data("tip3p.pdb")))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.delete(list(modeller.topology.residues())[30:])
    ff = app.ForceField("amber14/tip3p.xml")
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff, rigidWater=True)
    return system, np.array(modeller.positions.value_in_unit(unit.nanometer))


@pytest.fixture(scope="module")
def dipeptide():
    """Alanine dipeptide, amber14, HBonds constraints: (system, positions in nm)."""
    pdb = app.PDBFile(io.StringIO(DIPEPTIDE_HEAVY_PDB))
    ff = app.ForceField("amber14-all.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(ff)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.NoCutoff,
                             constraints=app.HBonds)
    return system, np.array(modeller.positions.value_in_unit(unit.nanometer))


def _openmm_data(name):
    import pathlib

    return pathlib.Path(app.__file__).parent / "data" / name


def _bond_rates(x, v, c):
    """(x_i - x_j) . (v_i - v_j) / d^2 per constraint (1/ps): the relative rate of change."""
    pairs, d = constraint_pairs(c)
    r = x[pairs[:, 0]] - x[pairs[:, 1]]
    return np.asarray(jnp.sum(r * (v[pairs[:, 0]] - v[pairs[:, 1]]), -1) / d**2)


# ----------------------------------------------------------------------------- construction


def test_from_openmm_routes_waters_to_settle(water_box, dipeptide):
    system, _ = water_box
    c = constraints_from_openmm(system)
    assert c.waters.shape == (30, 3) and c.pairs.shape == (0, 2)
    masses = _masses(system)
    assert np.all(masses[np.asarray(c.waters[:, 0])] > 15)  # oxygen first
    np.testing.assert_allclose(c.water_oh, TIP3P_OH)
    np.testing.assert_allclose(c.water_hh, TIP3P_HH)
    assert n_constraints(c) == system.getNumConstraints() == 90
    assert constrained_dof(90, c, remove_com=True) == 270 - 90 - 3

    system, _ = dipeptide
    c = constraints_from_openmm(system)
    assert c.waters.shape == (0, 3) and c.pairs.shape == (12, 2)
    assert n_constraints(c) == system.getNumConstraints() == 12
    assert constrained_dof(22, c, remove_com=False) == 66 - 12
    assert c.clusters.shape[1] == 3  # methyl groups are the largest clusters


def test_from_openmm_sends_odd_triangles_to_the_iterative_solver():
    system = mm.System()
    for m in (1.0, 16.0, 1.0, 16.0, 1.0, 2.0, 16.0, 1.0, 1.0, 12.0, 1.0, 1.0, 1.0):
        system.addParticle(m)
    for i, j, d in [(1, 0, 0.1), (1, 2, 0.1), (0, 2, 0.16),  # a water, oxygen second
                    (3, 4, 0.1), (3, 5, 0.1), (4, 5, 0.16),  # HDO: still SETTLE
                    (6, 7, 0.1), (6, 8, 0.11), (7, 8, 0.16),  # not isosceles
                    (9, 10, 0.11), (9, 11, 0.11), (9, 12, 0.11)]:  # a methyl group
        system.addConstraint(i, j, d)
    c = constraints_from_openmm(system)
    np.testing.assert_array_equal(c.waters, [[1, 0, 2], [3, 4, 5]])
    assert c.pairs.shape == (6, 2) and n_constraints(c) == 12


# ----------------------------------------------------------------------------- positions


def test_positions_satisfy_constraints_molecule():
    ref, masses, pairs, dist = molecule()
    c = make_constraints(pairs, dist, n_atoms=len(ref))
    assert c.clusters.shape[1] == 6  # CH3 + C-C + CH2 form one cluster
    x = ref + 0.01 * np.random.default_rng(1).normal(size=ref.shape)
    y = project(ref, x, masses, c)
    assert np.max(np.abs(constraint_errors(y, c))) < 1e-10
    assert np.max(np.abs(constraint_errors(x, c))) > 1e-2


def test_positions_satisfy_constraints_water_box(water_box):
    system, ref = water_box
    masses = _masses(system)
    c = make_constraints(waters=np.arange(90).reshape(30, 3), d_oh=TIP3P_OH, d_hh=TIP3P_HH)
    x = ref + 0.01 * np.random.default_rng(2).normal(size=ref.shape)
    y = project(ref, x, masses, c)
    assert np.max(np.abs(constraint_errors(y, c))) < 1e-10
    # SETTLE and the iterative solver on the same triangles give the same projection.
    pairs, d = constraint_pairs(c)
    y_iter = project(ref, x, masses, make_constraints(pairs, d), tol=1e-14)
    np.testing.assert_allclose(y, y_iter, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["water_box", "dipeptide"])
def test_positions_match_openmm(name, request):
    system, pos = request.getfixturevalue(name)
    c = constraints_from_openmm(system)
    x = pos + 0.005 * np.random.default_rng(3).normal(size=pos.shape)
    ctx = _openmm_context(system)
    ctx.setPositions(x)
    ctx.applyConstraints(1e-12)
    expected = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(
        unit.nanometer)
    # applyConstraints projects along the bond vectors of the positions it is given.
    ours = project(x, x, _masses(system), c)
    assert np.max(np.abs(constraint_errors(ours, c))) < 1e-10
    np.testing.assert_allclose(ours, expected, atol=1e-8, rtol=0)
    if name == "water_box":
        # OpenMM's Reference SETTLE stores the water geometry in single precision (its
        # distances are 3e-8 relative off); with the same rounding both agree to round-off.
        rounded = dataclasses.replace(c, water_oh=c.water_oh.astype(jnp.float32).astype(float),
                                      water_hh=c.water_hh.astype(jnp.float32).astype(float))
        np.testing.assert_allclose(project(x, x, _masses(system), rounded), expected,
                                   atol=1e-13, rtol=0)
    else:
        np.testing.assert_allclose(ours, expected, atol=1e-11, rtol=0)


# ----------------------------------------------------------------------------- velocities


@pytest.mark.parametrize("name", ["water_box", "dipeptide"])
def test_velocities_match_openmm(name, request):
    system, pos = request.getfixturevalue(name)
    c = constraints_from_openmm(system)
    masses = _masses(system)
    x = np.asarray(project(pos, pos, masses, c))
    v = np.random.default_rng(4).normal(size=pos.shape) / np.sqrt(masses)[:, None]
    ctx = _openmm_context(system)
    ctx.setPositions(x)
    ctx.setVelocities(v)
    ctx.applyVelocityConstraints(1e-12)
    expected = ctx.getState(getVelocities=True).getVelocities(asNumpy=True).value_in_unit(
        unit.nanometer / unit.picosecond)
    ours = project_v(x, v, masses, c)
    assert np.max(np.abs(_bond_rates(x, ours, c))) < 1e-10
    assert np.max(np.abs(_bond_rates(x, v, c))) > 1.0
    np.testing.assert_allclose(ours, expected, atol=1e-11, rtol=0)


def test_velocities_molecule_rates_vanish():
    ref, masses, pairs, dist = molecule()
    c = make_constraints(pairs, dist)
    v = np.random.default_rng(5).normal(size=ref.shape)
    w = project_v(ref, v, masses, c)
    assert np.max(np.abs(_bond_rates(ref, w, c))) < 1e-10


# ----------------------------------------------------------------------------- invariants


def _mixed_system(seed=0, n_water=2):
    """The molecule plus TIP3P waters: (reference, masses, Constraints) using both solvers."""
    ref, masses, pairs, dist = molecule(seed)
    wpos, wm = water_cloud(n_water, seed)
    wpos = wpos + np.array([0.8, 0.0, 0.0])
    n = len(ref)
    c = make_constraints(pairs, dist, waters=n + np.arange(3 * n_water).reshape(-1, 3),
                         d_oh=TIP3P_OH, d_hh=TIP3P_HH)
    return np.concatenate([ref, wpos]), np.concatenate([masses, wm]), c


def test_projections_are_idempotent_and_conserve_momentum():
    ref, masses, c = _mixed_system()
    rng = np.random.default_rng(6)
    x = ref + 0.01 * rng.normal(size=ref.shape)
    y = project(ref, x, masses, c)
    np.testing.assert_allclose(project(y, y, masses, c), y, atol=1e-13, rtol=0)
    np.testing.assert_allclose(project(ref, y, masses, c), y, atol=1e-13, rtol=0)
    np.testing.assert_allclose(masses @ np.asarray(y), masses @ x, atol=1e-12, rtol=0)

    v = rng.normal(size=ref.shape)
    w = np.asarray(project_v(y, v, masses, c))
    np.testing.assert_allclose(project_v(y, w, masses, c), w, atol=1e-12, rtol=0)
    np.testing.assert_allclose(masses @ w, masses @ v, atol=1e-12, rtol=0)
    # Mass-weighted orthogonal projection: the removed part is M-orthogonal to the result.
    assert abs(np.sum(masses[:, None] * (v - w) * w)) < 1e-10 * np.sum(masses[:, None] * v * v)


def test_float32_converges_to_round_off():
    ref, masses, c = _mixed_system()
    c32 = jax.tree.map(lambda a: a.astype(jnp.float32) if a.dtype == jnp.float64 else a, c)
    x = ref + 0.01 * np.random.default_rng(7).normal(size=ref.shape)
    y = project(jnp.float32(ref), jnp.float32(x), masses, c32)  # float64 masses are cast
    assert y.dtype == jnp.float32
    assert np.max(np.abs(constraint_errors(y, c32))) < 2e-6


# ----------------------------------------------------------------------------- gradients


def _with_distances(c: Constraints, d, oh, hh) -> Constraints:
    return dataclasses.replace(c, distances=d, water_oh=oh, water_hh=hh)


def _check_grad(value_and_grad, args, rng, h=3e-5, rtol=1e-6, n_dir=3, extra=()):
    """Compare the gradients of ``value_and_grad(*args, *extra) -> (value, grads)`` with
    five-point central differences (error O(h^4)) of its value along random directions u
    scaled like the argument; the tolerance is relative to sum |g u| (the size of the
    directional derivative before cancellations). One compiled function serves both."""

    def f(*a):
        return value_and_grad(*a)[0]

    grads = value_and_grad(*args, *extra)[1]
    for a, (arg, g) in enumerate(zip(args, grads)):
        for _ in range(n_dir):
            u = rng.normal(size=np.shape(arg)) * np.maximum(np.abs(arg), 1e-3)

            def at(t, a=a, arg=arg, u=u):
                return float(f(*args[:a], arg + t * u, *args[a + 1:], *extra))

            fd = (8 * (at(h) - at(-h)) - (at(2 * h) - at(-2 * h))) / (12 * h)
            exact = float(np.sum(np.asarray(g) * u))
            assert abs(exact - fd) <= rtol * float(np.sum(np.abs(np.asarray(g) * u))), \
                (a, exact, fd)


def test_position_gradients_match_finite_differences():
    ref, masses, c = _mixed_system()
    rng = np.random.default_rng(8)
    x = ref + 0.01 * rng.normal(size=ref.shape)
    weights = rng.normal(size=ref.shape)

    def f(x, ref, masses, d, oh, hh):
        y = constrain_positions(ref, x, masses, _with_distances(c, d, oh, hh), tol=1e-14)
        return jnp.sum(weights * jnp.sin(7.0 * y)) + jnp.sum(y**2 * masses[:, None])

    args = (x, ref, masses, c.distances, c.water_oh, c.water_hh)
    _check_grad(jax.jit(jax.value_and_grad(f, argnums=tuple(range(6)))), args, rng)


def test_settle_with_unequal_masses_and_its_mass_gradient():
    """SETTLE assumes equal hydrogen masses; with HDO its result is refined by Newton. Positions
    and per-atom mass derivatives equal those of the same triangles solved iteratively."""
    ref, masses, cw = _mixed_system()
    masses[np.asarray(cw.waters[0, 2])] = 2.014  # one deuterium
    cp = make_constraints(*constraint_pairs(cw))
    rng = np.random.default_rng(9)
    x = ref + 0.01 * rng.normal(size=ref.shape)
    weights = rng.normal(size=ref.shape)

    def f(masses, c):
        return jnp.sum(weights * jnp.cos(5.0 * constrain_positions(ref, x, masses, c, tol=1e-14)))

    y = project(ref, x, masses, cw)
    assert np.max(np.abs(constraint_errors(y, cw))) < 1e-10
    np.testing.assert_allclose(y, project(ref, x, masses, cp, tol=1e-14), atol=1e-12, rtol=0)
    value_and_grad = jax.jit(jax.value_and_grad(f, argnums=(0,)))
    g_settle, g_iter = value_and_grad(masses, cw)[1][0], value_and_grad(masses, cp)[1][0]
    np.testing.assert_allclose(g_settle, g_iter, rtol=1e-8, atol=1e-12)
    _check_grad(value_and_grad, (masses,), rng, n_dir=2, extra=(cw,))


def _verlet_loss(c: Constraints, n_steps=5, dt=0.002):
    """Loss of a short constrained velocity-Verlet run (SHAKE + RATTLE), written with scan."""

    def energy(x, anchors):
        heavy = x[:6]
        r = jnp.sqrt(jnp.sum((heavy[:, None] - heavy[None]) ** 2, -1) + jnp.eye(6))
        return 500.0 * jnp.sum((x - anchors) ** 2) + 50.0 * jnp.sum(jnp.triu(r - 0.25, 1) ** 2)

    def loss(x0, v0, masses, d, oh, hh):
        cc = _with_distances(c, d, oh, hh)
        force = jax.grad(lambda x: -energy(x, x0))
        x = constrain_positions(x0, x0, masses, cc, tol=1e-14)
        v = constrain_velocities(x, v0, masses, cc)

        def step(carry, _):
            x, v = carry
            v = v + 0.5 * dt * force(x) / masses[:, None]
            x_new = constrain_positions(x, x + dt * v, masses, cc, tol=1e-14)
            v = (x_new - x) / dt + 0.5 * dt * force(x_new) / masses[:, None]
            return (x_new, constrain_velocities(x_new, v, masses, cc)), None

        (x, v), _ = jax.lax.scan(step, (x, v), None, length=n_steps)
        return jnp.sum(jnp.sin(4.0 * x)) + 0.5 * jnp.sum(masses[:, None] * v**2)

    return loss


def test_gradients_through_constrained_verlet():
    ref, masses, c = _mixed_system()
    rng = np.random.default_rng(10)
    v0 = rng.normal(size=ref.shape) / np.sqrt(masses)[:, None]
    loss = jax.jit(_verlet_loss(c))
    args = (ref, v0, masses, c.distances, c.water_oh, c.water_hh)
    _check_grad(jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)))), args, rng, n_dir=2)


def test_vmap_jit_grad_and_no_retrace():
    """jit(grad(jit(f))) traces once for new numeric values (positions, masses, distances),
    and vmap over a batch of systems gives the same projections and gradients."""
    ref, masses, c = _mixed_system()
    rng = np.random.default_rng(11)
    scales = np.array([1.0, 1.02, 0.97])
    xs = ref + 0.01 * rng.normal(size=(3, *ref.shape))
    cs = jax.tree.map(lambda *a: jnp.stack(a), *[
        _with_distances(c, s * c.distances, s * c.water_oh, s * c.water_hh) for s in scales])
    traces = []

    def loss(x, m, d, cc):
        traces.append(1)
        cc = dataclasses.replace(cc, distances=d)
        y = constrain_positions(ref, x, m, cc)
        return jnp.sum(constrain_velocities(y, x, m, cc) ** 2), y

    def system(b):
        return jax.tree.map(lambda a: a[b], cs)

    grad = jax.jit(jax.grad(jax.jit(loss), argnums=(0, 1, 2), has_aux=True))
    single = [grad(xs[b], s * masses, cs.distances[b], system(b)) for b, s in enumerate(scales)]
    assert len(traces) == 1
    grads, ys = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2), has_aux=True)))(
        xs, scales[:, None] * masses, cs.distances, cs)
    for b, s in enumerate(scales):
        np.testing.assert_allclose(ys[b], project(ref, xs[b], s * masses, system(b)), atol=1e-12)
        assert np.max(np.abs(constraint_errors(ys[b], system(b)))) < 1e-10
        for g_many, g_single in zip(grads, single[b][0]):
            np.testing.assert_allclose(g_many[b], g_single, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_atoms():
    with pytest.raises(ValueError, match=r"constraint 1 joins atoms 2 and 12.*10 atoms"):
        make_constraints([[0, 1], [2, 12]], [0.1, 0.1], n_atoms=10)
    with pytest.raises(ValueError, match=r"constraint 0 \(atoms 3-4\) has distance -0.1"):
        make_constraints([[3, 4]], [-0.1])
    with pytest.raises(ValueError, match=r"constraint 0 \(atoms 3-4\) has distance 0.0"):
        make_constraints([[3, 4]], [0.0])
    with pytest.raises(ValueError, match=r"constraints 0 and 1 both join atoms 4 and 3"):
        make_constraints([[3, 4], [4, 3]], [0.1, 0.1])
    with pytest.raises(ValueError, match=r"water 1 \(atoms O=3, H=4, H=5\).*atom 4 is also"):
        make_constraints([[4, 9]], [0.1], waters=[[0, 1, 2], [3, 4, 5]], d_oh=0.1, d_hh=0.16)
    with pytest.raises(ValueError, match=r"water 0 \(atoms O=0, H=1, H=2\).*not a triangle"):
        make_constraints(waters=[[0, 1, 2]], d_oh=0.1, d_hh=0.25)
    with pytest.raises(ValueError, match=r"water 0 \(atoms O=0, H=1, H=0\).*appears twice"):
        make_constraints(waters=[[0, 1, 0]], d_oh=0.1, d_hh=0.16)
    with pytest.raises(ValueError, match=r"atom 2 is also in water 1 \(atoms O=3, H=2, H=5\)"):
        make_constraints(waters=[[0, 1, 2], [3, 2, 5]], d_oh=0.1, d_hh=0.16)
    with pytest.raises(ValueError, match=r"constraint 1 joins atom 2 to itself"):
        make_constraints([[0, 1], [2, 2]], [0.1, 0.1])
    with pytest.raises(ValueError, match="need their geometry"):
        make_constraints(waters=[[0, 1, 2]])

    # At call time (eager): indices beyond the positions given, bad masses, SETTLE masses.
    ref, masses, c = _mixed_system()
    with pytest.raises(ValueError, match=r"joins atoms .* but the system has 10 atoms"):
        constrain_positions(ref[:10], ref[:10], masses[:10], c)
    with pytest.raises(ValueError, match=r"masses must be > 0 amu; atoms \[3\]"):
        constrain_velocities(ref, ref, masses * (np.arange(len(masses)) != 3), c)
    with pytest.raises(ValueError, match=r"positions must have shape \(N, 3\)"):
        constrain_positions(ref, ref[:, :2], masses, c)
