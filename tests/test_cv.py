"""Collective variables against mdtraj (an independent implementation), finite differences,
exact values and invariances."""

import jax
import jax.numpy as jnp
import mdtraj
import numpy as np
import pytest

from workbench import space as spaces
from workbench.sampling import cv


def _traj(xyz):
    top = mdtraj.Topology()
    chain = top.add_chain()
    res = top.add_residue("UNK", chain)
    for _ in range(xyz.shape[1]):
        top.add_atom("C", mdtraj.element.carbon, res)
    return mdtraj.Trajectory(xyz, top)


@pytest.fixture
def frames():
    rng = np.random.default_rng(7)
    return rng.normal(scale=0.3, size=(6, 8, 3))


def test_geometry_matches_mdtraj(frames, x64):
    t = _traj(frames.astype(np.float32))
    pairs = np.array([[0, 3], [2, 7]])
    angles = np.array([[0, 1, 2], [5, 3, 6]])
    dihedrals = np.array([[0, 1, 2, 3], [7, 5, 3, 1]])
    for f in range(len(frames)):
        r = jnp.asarray(frames[f])
        for k, (i, j) in enumerate(pairs):
            assert cv.Distance(i, j)(r) == pytest.approx(mdtraj.compute_distances(t, pairs)[f, k],
                                                          abs=1e-6)
        for k, (i, j, m) in enumerate(angles):
            assert cv.Angle(i, j, m)(r) == pytest.approx(mdtraj.compute_angles(t, angles)[f, k],
                                                          abs=1e-5)
        for k, (i, j, m, n) in enumerate(dihedrals):
            ref = mdtraj.compute_dihedrals(t, dihedrals)[f, k]
            got = float(cv.Dihedral(i, j, m, n)(r))
            assert np.angle(np.exp(1j * (got - ref))) == pytest.approx(0.0, abs=1e-5)
            assert -np.pi < got <= np.pi


def test_rmsd_and_gyration_match_mdtraj(frames, x64):
    t = _traj(frames.astype(np.float32))
    ref = frames[0]
    expected = mdtraj.rmsd(t, t, 0)
    rmsd = cv.RMSD(ref)
    for f in range(1, len(frames)):
        assert rmsd(jnp.asarray(frames[f])) == pytest.approx(expected[f], abs=2e-6)
    rg = mdtraj.compute_rg(t)
    gyr = cv.Gyration(range(8))
    for f in range(len(frames)):
        assert gyr(jnp.asarray(frames[f])) == pytest.approx(rg[f], abs=1e-6)


def test_rmsd_invariant_under_rigid_motion_and_zero_at_reference(frames, x64):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))  # a proper rotation
    ref, x = frames[0], frames[1]
    moved = x @ q.T + np.array([0.3, -1.0, 2.0])
    rmsd = cv.RMSD(ref)
    assert rmsd(jnp.asarray(moved)) == pytest.approx(float(rmsd(jnp.asarray(x))), abs=1e-10)
    assert float(rmsd(jnp.asarray(ref @ q.T))) < 1e-7
    g = jax.grad(rmsd)(jnp.asarray(ref))
    assert np.all(np.isfinite(np.asarray(g)))
    # without alignment a rotation is a deviation
    assert float(cv.RMSD(ref, align=False)(jnp.asarray(ref @ q.T))) > 0.05


def test_coordination_values_and_continuity_at_r0(x64):
    r = jnp.asarray([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.2]])
    c = cv.Coordination([0], [1, 2, 3], r0=0.3)
    x = np.array([0.3, 0.5, 0.2]) / 0.3
    with np.errstate(invalid="ignore"):
        s = np.where(np.isclose(x, 1.0), 0.5, (1 - x**6) / (1 - x**12))
    assert float(c(r)) == pytest.approx(s.sum(), rel=1e-12)
    # smooth through r = r0 (the 0/0 point): values and derivatives from both sides agree
    def at(d):
        return c(r.at[1, 0].set(d))
    for h in (1e-4, 1e-6):
        assert float(at(0.3 + h)) == pytest.approx(float(at(0.3 - h)), abs=1e-3 * h / 1e-4)
    g_lo, g_hi = jax.grad(at)(0.3 - 2e-3), jax.grad(at)(0.3 + 2e-3)
    g_mid = jax.grad(at)(0.3)
    assert float(g_mid) == pytest.approx(0.5 * (float(g_lo) + float(g_hi)), rel=1e-2)
    # identical indices in both groups are not self-pairs
    assert float(cv.Coordination([0, 1], [0, 1], r0=0.3)(r)) == pytest.approx(1.0, rel=1e-12)


def _fd_check(f, r, h=1e-6):
    g = np.asarray(jax.grad(f)(r))
    num = np.zeros_like(g)
    r0 = np.asarray(r)
    for idx in np.ndindex(r0.shape):
        rp, rm = r0.copy(), r0.copy()
        rp[idx] += h
        rm[idx] -= h
        num[idx] = (float(f(jnp.asarray(rp))) - float(f(jnp.asarray(rm)))) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def test_gradients_equal_finite_differences(frames, x64):
    r = jnp.asarray(frames[2])
    box = spaces.periodic(1.1)
    for c in [cv.Position(3, 2), cv.Distance(0, 3), cv.Distance(0, 3, space=box),
              cv.Angle(0, 1, 2), cv.Dihedral(0, 1, 2, 3), cv.RMSD(frames[0]),
              cv.RMSD(frames[0], atoms=[1, 2, 4, 6]), cv.Gyration([0, 2, 5]),
              cv.Coordination([0, 1], [2, 3, 4, 5], r0=0.35),
              cv.Function(lambda x, b: jnp.sum(jnp.sin(x[:, 0])))]:
        _fd_check(c, r)


def test_periodic_distance_uses_minimum_image(x64):
    box = spaces.periodic(2.0)
    r = jnp.asarray([[0.1, 0.0, 0.0], [1.9, 0.0, 0.0]])
    assert float(cv.Distance(0, 1, space=box)(r)) == pytest.approx(0.2)
    assert float(cv.Distance(0, 1, space=box)(r, jnp.eye(3) * 4.0)) == pytest.approx(1.8)
    assert float(cv.Distance(0, 1)(r)) == pytest.approx(1.8)


def test_wrap_and_vector_under_jit_and_vmap(frames, x64):
    cvs = (cv.Dihedral(0, 1, 2, 3), cv.Distance(1, 5))
    f = jax.jit(jax.vmap(lambda x: cv.values(cvs, x)))
    out = np.asarray(f(jnp.asarray(frames)))
    assert out.shape == (len(frames), 2)
    np.testing.assert_allclose(out[3], np.asarray(cv.values(cvs, jnp.asarray(frames[3]))))
    d = cv.wrap(jnp.asarray([[3.5, 0.1], [-3.5, 5.0]]), cv.periods(cvs))
    np.testing.assert_allclose(np.asarray(d), [[3.5 - 2 * np.pi, 0.1], [2 * np.pi - 3.5, 5.0]])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="axis"):
        cv.Position(0, 3)
    with pytest.raises(ValueError, match="shape"):
        cv.RMSD(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="r0"):
        cv.Coordination([0], [1], r0=-1.0)
    with pytest.raises(ValueError, match="non-negative"):
        cv.Gyration([-1, 2])


def test_backbone_torsions_match_mdtraj_phi_psi():
    from workbench.systems import data_file

    traj = mdtraj.load(data_file("alanine-dipeptide-vacuum.pdb"))
    phi, psi = cv.backbone_torsions(traj.topology, 1)
    r = jnp.asarray(traj.xyz[0], jnp.float32)
    assert float(phi(r)) == pytest.approx(float(mdtraj.compute_phi(traj)[1][0, 0]), abs=1e-4)
    assert float(psi(r)) == pytest.approx(float(mdtraj.compute_psi(traj)[1][0, 0]), abs=1e-4)
    assert phi.name == "phi" and phi.period == pytest.approx(2 * np.pi)
    with pytest.raises(ValueError, match="before and after"):
        cv.backbone_torsions(traj.topology, 0)
