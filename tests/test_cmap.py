"""CMAP torsion-torsion term: OpenMM Reference agreement (amber19, charmm36, synthetic maps with
wraparound), the grid convention, gradients in the map values, and jit/vmap/grad composition."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench import space as spaces
from workbench.potentials.bonded import dihedral_angles
from workbench.forcefield.cmap import from_openmm_force
from workbench.potentials.cmap import (
    CMAPTorsion,
    map_from_openmm,
    map_to_openmm,
    periodic_spline_derivative_matrix,
)

mm = pytest.importorskip("openmm")
from openmm import app, unit

TOL = 1e-6
GROUP = 7


# ---------------------------------------------------------------------------- helpers
def _reference(force, n_atoms, geometries, box=None):
    """OpenMM Reference energies (G,) kJ/mol and forces (G, N, 3) of ``force`` alone (a copy,
    in a force group of its own) at each geometry (G, N, 3) nm."""
    system = mm.System()
    for _ in range(n_atoms):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.diag(box)))
    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(force))
    copy.setForceGroup(GROUP)
    system.addForce(copy)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for r in geometries:
        ctx.setPositions(np.asarray(r) * unit.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True, groups={GROUP})
        energies.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(st.getForces(asNumpy=True).value_in_unit(
            unit.kilojoule_per_mole / unit.nanometer))
    return np.asarray(energies), np.asarray(forces)


def _errors(term, params, geometries, e_ref, f_ref):
    """Max over geometries of the relative energy error and relative RMS force error."""
    ev = jax.jit(jax.vmap(term.energy_forces, in_axes=(0, None)))(jnp.asarray(geometries), params)
    e, f = np.asarray(ev.energy), np.asarray(ev.forces)
    e_err = np.abs(e - e_ref) / np.maximum(np.abs(e_ref), 1.0)
    f_err = np.sqrt(np.mean((f - f_ref) ** 2, axis=(1, 2))) / np.sqrt(np.mean(f_ref**2, axis=(1, 2)))
    return float(e_err.max()), float(f_err.max())


def _cells(term, params, geometries):
    """The distinct (map, phi cell, psi cell) visited over the geometries."""
    size = params["energy"].shape[-1]
    h = 2 * np.pi / size
    out = set()
    for r in geometries:
        phi, psi = (np.asarray(a) for a in term.torsion_angles(jnp.asarray(r)))
        i, j = (np.minimum(np.floor(np.mod(a, 2 * np.pi) / h), size - 1).astype(int)
                for a in (phi, psi))
        out |= set(zip(term.types.tolist(), i.tolist(), j.tolist()))
    return out


def _chain(bond, angle, dihedrals):
    """Positions (n, 3) nm of a chain with one bond length (nm), one bond angle (rad) and the
    given dihedrals (rad) of consecutive quadruples (n = len(dihedrals) + 3)."""
    r = [np.zeros(3), np.array([bond, 0.0, 0.0]),
         np.array([bond - bond * np.cos(angle), bond * np.sin(angle), 0.0])]
    for chi in dihedrals:
        a, b, c = r[-3], r[-2], r[-1]
        bc = (c - b) / np.linalg.norm(c - b)
        n = np.cross(b - a, bc)
        n /= np.linalg.norm(n)
        m = np.cross(n, bc)
        d = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(chi),
                      bond * np.sin(angle) * np.sin(chi)])
        r.append(c + d[0] * bc + d[1] * m + d[2] * n)
    return np.asarray(r)


def _random_rotation(rng):
    q, rr = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(rr))


SIZE = 10


def _synthetic_force(rng, periodic=False):
    """3 maps of size 10 (map 1 unused) over a 6-atom chain; torsion rows as OpenMM's."""
    force = mm.CMAPTorsionForce()
    for _ in range(3):
        force.addMap(SIZE, list(rng.uniform(-10.0, 10.0, SIZE * SIZE)))
    force.addTorsion(0, 0, 1, 2, 3, 1, 2, 3, 4)
    force.addTorsion(2, 1, 2, 3, 4, 2, 3, 4, 5)
    force.addTorsion(2, 0, 1, 2, 3, 2, 3, 4, 5)  # quadruples not sharing three atoms
    force.addTorsion(0, 5, 4, 3, 2, 0, 1, 2, 3)  # reversed chain
    force.setUsesPeriodicBoundaryConditions(periodic)
    return force


def _synthetic_geometries(rng, n_random=40):
    h = 2 * np.pi / SIZE
    special = [np.pi, -np.pi, np.pi - 1e-9, -np.pi + 1e-9, 0.0, 1e-12, -1e-12, h, -h, 3 * h,
               -4 * h + 1e-10, np.pi - 0.3 * h, -np.pi + 0.4 * h]
    sets = [(a, b, c) for a, b, c in zip(special, special[::-1], np.roll(special, 3))]
    sets += [tuple(rng.choice(special, 3)) for _ in range(20)]
    sets += [tuple(rng.uniform(-np.pi, np.pi, 3)) for _ in range(n_random)]
    out = []
    for chis in sets:
        r = _chain(0.15, np.deg2rad(rng.uniform(100.0, 120.0)), chis)
        out.append(r @ _random_rotation(rng).T + rng.uniform(-1.0, 1.0, 3))
    return np.asarray(out)


@pytest.fixture(scope="module")
def villin():
    """Villin headpiece from OpenMM's test.pdb, water and ions removed (vacuum)."""
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    model = app.Modeller(pdb.topology, pdb.positions)
    model.deleteWater()
    model.delete([r for r in model.topology.residues()
                  if r.name.lower() in ("na+", "cl-", "na", "cl")])
    return model.topology, np.asarray(model.positions.value_in_unit(unit.nanometer))


# ---------------------------------------------------------------------------- OpenMM agreement
@pytest.mark.parametrize("ff_file", ["amber19-all.xml", "charmm36.xml"])
def test_forcefield_cmap_matches_openmm(villin, ff_file):
    from workbench.forcefield import fftypes

    top, r0 = villin
    ff = app.ForceField(ff_file)
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff)
    (force,) = [f for f in system.getForces() if isinstance(f, mm.CMAPTorsionForce)]
    labels = fftypes.atom_types(ff, top)  # None where template matching needs patches (charmm)
    term, params = from_openmm_force(force, spaces.free(), labels)
    assert term.n_instances == force.getNumTorsions() > 30
    assert all(name.startswith("map") for name in term.type_names)
    if labels is not None:
        assert all("(" in name for name in term.type_names), term.type_names
    rng = np.random.default_rng(1)
    geometries = np.stack([r0] + [r0 + 0.02 * rng.standard_normal(r0.shape) for _ in range(6)])
    e_ref, f_ref = _reference(force, len(r0), geometries)
    e_err, f_err = _errors(term, params, geometries, e_ref, f_ref)
    assert e_err <= TOL and f_err <= TOL, (e_err, f_err)
    assert len(_cells(term, params, geometries)) > 60


@pytest.mark.parametrize("periodic", [False, True])
def test_synthetic_maps_match_openmm_with_wraparound(periodic):
    rng = np.random.default_rng(7 + periodic)
    force = _synthetic_force(rng, periodic)
    geometries = _synthetic_geometries(rng)
    box = None
    space = spaces.free()
    if periodic:  # a small box: the chain straddles its faces once wrapped
        box = np.array([0.5, 0.6, 0.55])
        geometries = np.mod(geometries, box)
        bonds = np.linalg.norm(np.diff(geometries, axis=1), axis=-1)
        assert np.mean(bonds.max(1) > 0.2) > 0.5  # most molecules are broken by the wrapping
        space = spaces.periodic(box)
    term, params = from_openmm_force(force, space)
    assert term.type_names == ("map0", "map2") and term.periodic == periodic
    assert term.constants["openmm_map"].tolist() == [0, 2]
    e_ref, f_ref = _reference(force, 6, geometries, box)
    e_err, f_err = _errors(term, params, geometries, e_ref, f_ref)
    assert e_err <= TOL and f_err <= TOL, (e_err, f_err)
    if not periodic:
        phi = np.asarray(jax.vmap(lambda r: term.torsion_angles(r)[0])(jnp.asarray(geometries)))
        assert np.sum(np.abs(phi) > np.pi - 1e-8) >= 10  # the wraparound was exercised
        assert len(_cells(term, params, geometries)) > 50


def test_mixed_grid_sizes_are_refused():
    from workbench.forcefield.openmm import UnsupportedForceError

    force = mm.CMAPTorsionForce()
    force.addMap(10, [0.0] * 100)
    force.addMap(12, [0.0] * 144)
    force.addTorsion(0, 0, 1, 2, 3, 1, 2, 3, 4)
    force.addTorsion(1, 0, 1, 2, 3, 1, 2, 3, 4)
    with pytest.raises(UnsupportedForceError, match="grid sizes"):
        from_openmm_force(force, spaces.free())


# ---------------------------------------------------------------------------- conventions
def test_grid_convention_nodes_and_layout():
    """Energy at node (i, j) is grid[i, j]: phi is the first index, angles from 0 mod 2 pi."""
    rng = np.random.default_rng(3)
    grid = rng.normal(size=(SIZE, SIZE))
    term = CMAPTorsion(np.array([[0, 1, 2, 3, 1, 2, 3, 4]]))
    params = term.init_params(energy=grid[None])
    h = 2 * np.pi / SIZE
    energy = jax.jit(term.energy)
    for i, j in [(0, 0), (1, 7), (7, 1), (5, 5), (9, 2), (3, 9)]:
        phi, psi = i * h, j * h
        r = _chain(0.15, 1.9, [phi, psi])
        angles = np.asarray(jnp.stack(term.torsion_angles(jnp.asarray(r)))).ravel()
        np.testing.assert_allclose(np.mod(angles, 2 * np.pi), [phi, psi], atol=1e-9)
        assert abs(float(energy(jnp.asarray(r), params)) - grid[i, j]) < 1e-7
    flat = map_to_openmm(grid)
    assert flat[1 + SIZE * 2] == grid[1, 2]
    np.testing.assert_array_equal(map_from_openmm(flat), grid)


def test_spline_derivatives_exact_for_trigonometric_grids():
    size = 24
    x = np.arange(size) * 2 * np.pi / size
    d = periodic_spline_derivative_matrix(size)
    np.testing.assert_allclose(d @ np.ones(size), 0.0, atol=1e-12)
    np.testing.assert_allclose(d @ np.sin(x), np.cos(x), atol=1e-4)  # spline accuracy O(h^4)
    term = CMAPTorsion(np.zeros((1, 8)))
    grid = jnp.asarray(np.sin(x)[:, None] * np.cos(2 * x)[None, :])
    d_phi, d_psi, d_cross = term.node_derivatives(grid)
    np.testing.assert_allclose(d_cross, np.cos(x)[:, None] * -2 * np.sin(2 * x)[None], atol=1e-3)
    np.testing.assert_allclose(d_phi, np.cos(x)[:, None] * np.cos(2 * x)[None], atol=1e-3)
    np.testing.assert_allclose(d_psi, np.sin(x)[:, None] * -2 * np.sin(2 * x)[None], atol=1e-3)


def test_bad_params_are_refused():
    term = CMAPTorsion(np.array([[0, 1, 2, 3, 1, 2, 3, 4]] * 2), types=np.array([0, 1]))
    with pytest.raises(ValueError, match="n_maps=2"):
        term.init_params(energy=np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="NaN"):
        term.init_params(energy=np.full((5, 5), np.nan))
    with pytest.raises(ValueError, match="shape"):
        term.energy(jnp.zeros((5, 3)), {"energy": jnp.zeros((2, 5, 4))})
    assert term.init_params(energy=np.zeros((5, 5)))["energy"].shape == (2, 5, 5)


# ---------------------------------------------------------------------------- differentiation
@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(11)
    term, params = from_openmm_force(_synthetic_force(rng), spaces.free())
    return term, params, jnp.asarray(_synthetic_geometries(rng, n_random=10))


def test_grad_wrt_map_values_matches_finite_differences(synthetic):
    term, params, geometries = synthetic
    r = geometries[-1]
    grad = np.asarray(jax.grad(lambda p: term.energy(r, p))(params)["energy"])
    rng = np.random.default_rng(5)
    entries = [np.unravel_index(k, grad.shape) for k in np.argsort(-np.abs(grad).ravel())[:6]]
    entries += [tuple(rng.integers(0, s) for s in grad.shape) for _ in range(4)]
    eps = 1e-3
    energy = jax.jit(term.energy)
    for idx in entries:
        bump = jnp.zeros_like(params["energy"]).at[idx].set(eps)
        up = energy(r, {"energy": params["energy"] + bump})
        down = energy(r, {"energy": params["energy"] - bump})
        assert abs(float(up - down) / (2 * eps) - grad[idx]) < 1e-8
    # the energy is linear in the grid: E = <dE/dgrid, grid>
    assert abs(float(np.sum(grad * np.asarray(params["energy"]))) - float(term.energy(r, params))) \
        < 1e-9


def test_forces_match_finite_differences(synthetic):
    term, params, geometries = synthetic
    r = geometries[-2]
    forces = np.asarray(term.energy_forces(r, params).forces)
    eps = 1e-6
    energy = jax.jit(term.energy)
    for atom in range(6):
        for axis in range(3):
            d = jnp.zeros_like(r).at[atom, axis].set(eps)
            fd = -(energy(r + d, params) - energy(r - d, params)) / (2 * eps)
            assert abs(float(fd) - forces[atom, axis]) < 1e-5 * max(1.0, abs(forces[atom, axis]))


def test_jit_vmap_grad_nesting(synthetic):
    term, params, geometries = synthetic
    grid = params["energy"]
    per_geometry = jax.jit(jax.vmap(jax.grad(lambda g, r: term.energy(r, {"energy": g})),
                                    in_axes=(None, 0)))(grid, geometries)
    grad_one = jax.jit(jax.grad(lambda g, r: term.energy(r, {"energy": g})))
    looped = np.stack([np.asarray(grad_one(grid, r)) for r in geometries])
    np.testing.assert_allclose(per_geometry, looped, atol=1e-12)
    # d(forces)/d(grid) contracted with the grid gives the forces back (forces are linear too)
    r = geometries[3]

    def forces(g):
        return term.energy_forces(r, {"energy": g}).forces

    jac = jax.jit(jax.jacfwd(forces))(grid)
    np.testing.assert_allclose(jnp.tensordot(jac, grid, 3), forces(grid), atol=1e-9)
    # grad of a jitted, vmapped mean energy = mean of per-geometry gradients
    mean_e = jax.jit(lambda g: jnp.mean(jax.vmap(lambda x: term.energy(x, {"energy": g}))(
        geometries)))
    np.testing.assert_allclose(jax.grad(mean_e)(grid), looped.mean(0), atol=1e-12)


def test_new_map_values_do_not_retrace(synthetic):
    term, params, geometries = synthetic
    traces = []

    @jax.jit
    def energy_forces(r, p):
        traces.append(1)
        return term.energy_forces(r, p)

    for scale in (1.0, 0.5, -2.0):
        energy_forces(geometries[0], {"energy": params["energy"] * scale}).energy.block_until_ready()
    assert len(traces) == 1
    energy_forces(geometries[0], {"energy": jnp.zeros((2, 12, 12))})  # new grid size: structural
    assert len(traces) == 2


def test_dihedral_sign_matches_openmm_torsion_order():
    """The (phi, psi) of a backbone-like instance are the plain dihedrals of its quadruples."""
    r = jnp.asarray(_chain(0.15, 1.95, [0.7, -2.1]))
    term = CMAPTorsion(np.array([[0, 1, 2, 3, 1, 2, 3, 4]]))
    phi, psi = term.torsion_angles(r)
    np.testing.assert_allclose([float(phi[0]), float(psi[0])], [
        float(dihedral_angles(*r[:4])), float(dihedral_angles(*r[1:5]))])
    np.testing.assert_allclose([float(phi[0]), float(psi[0])], [0.7, -2.1], atol=1e-12)
