"""OpenMM custom forces (CustomBond/Angle/Torsion/External/CompoundBond/NonbondedForce) against
OpenMM's Reference platform: synthetic systems with nontrivial expressions, every method and
feature of CustomNonbondedForce (switching, long-range correction, exclusions near and far in
index, interaction groups, computed values, continuous and discrete tables, triclinic boxes),
charmm36 villin in vacuum and solvated; gradients in per-type, global and table parameters vs
central finite differences; jit/grad/vmap nesting; one trace for new parameter values; errors
that name the force and the expression."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from workbench.forcefield.compare import compare, format_table
from workbench.forcefield.custom_nonbonded import CustomNonbonded
from workbench.forcefield.openmm import UnsupportedForceError, from_system
from workbench.potentials.base import EnergyTerm

mm = pytest.importorskip("openmm")
from openmm import app, unit

TOL = 1e-6
SEED = 20240917
BOX = 3.2  # nm


# ---------------------------------------------------------------------------- helpers
def _system(n, box=None):
    system = mm.System()
    for _ in range(n):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.asarray(box)))
    return system


def _lattice(rng, n, box, jitter=0.12):
    """n points on a jittered cubic lattice filling a box of edge ``box`` (min distance about
    box / k - 2 jitter), so r^-12 terms stay moderate."""
    k = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*(np.arange(k),) * 3, indexing="ij"), -1).reshape(-1, 3)[:n]
    return (grid + 0.5) * box / k + rng.uniform(-jitter, jitter, (n, 3))


def _check(ffs, tol=TOL):
    rows = compare(ffs)
    table = format_table(rows)
    print(table)
    for row in rows:
        assert row.energy_error <= tol and row.force_error <= tol, table
    return rows


def _bonded_system(periodic: bool):
    """Every bonded custom force on 12 atoms; with ``periodic`` the atoms straddle the box
    boundary and the forces use periodic boundary conditions."""
    rng = np.random.default_rng(SEED)
    n = 12
    box = np.diag([2.5, 2.6, 2.7]) if periodic else None
    system = _system(n, box)
    pos = rng.normal(size=(n, 3)) * 0.25
    if periodic:
        pos = np.mod(pos, np.diag(box))  # bonded atoms end up on both sides of the boundary
    bond = mm.CustomBondForce("k*(r-r0)^2 + a*sin(3*r)^3; a = 2*g")
    bond.addPerBondParameter("k")
    bond.addPerBondParameter("r0")
    bond.addGlobalParameter("g", 0.7)
    for i, (k, r0) in enumerate([(100.0, 0.1), (200.0, 0.15), (100.0, 0.1), (300.0, 0.2)] * 2):
        bond.addBond(i, i + 1, [k, r0])
    angle = mm.CustomAngleForce("k*(cos(theta)-cos(t0))^2 + 0.1*theta^3")
    angle.addPerAngleParameter("k")
    angle.addPerAngleParameter("t0")
    for i in range(6):
        angle.addAngle(i, i + 1, i + 2, [50.0 + 10 * (i % 2), 1.9])
    torsion = mm.CustomTorsionForce("k*theta + 0.3*theta^2 + c*cos(2*theta-0.4)")
    torsion.addPerTorsionParameter("k")
    torsion.addGlobalParameter("c", 1.3)
    for i in range(6):
        torsion.addTorsion(i, i + 1, i + 2, i + 3, [(-1.0) ** i * 2.0])
    external = mm.CustomExternalForce("c*(x^2 + 2*y^2 + z^4) + x*y - s*z")
    external.addPerParticleParameter("c")
    external.addGlobalParameter("s", 0.4)
    if periodic:
        external = mm.CustomExternalForce("k*periodicdistance(x, y, z, x0, y0, z0)^2 + 0.1*x")
        external.addPerParticleParameter("k")
        for p in ("x0", "y0", "z0"):
            external.addPerParticleParameter(p)
    for i in range(n):
        external.addParticle(i, [1.0 + i % 3] + ([2.4, 0.1, 1.3] if periodic else []))
    compound = mm.CustomCompoundBondForce(
        4, "k*distance(p1,p2)*angle(p2,p3,p4) + dihedral(p1,p2,p3,p4)^2 + 0.01*x1*z4"
           " + f(distance(p1,p4)) + pointdistance(x1,y1,z1,x3,y3,z3)*pointangle(x1,y1,z1,x2,y2,z2,"
           "x4,y4,z4) + 0.2*cos(pointdihedral(x4,y4,z4,x3,y3,z3,x2,y2,z2,x1,y1,z1))"
           " + d(t)*distance(p2,p3)")
    compound.addPerBondParameter("k")
    compound.addPerBondParameter("t")
    compound.addTabulatedFunction(
        "f", mm.Continuous1DFunction(np.sin(np.linspace(0, 3, 20)).tolist(), 0.0, 3.0))
    compound.addTabulatedFunction("d", mm.Discrete1DFunction([0.5, -1.0, 2.0]))
    for b, atoms in enumerate([[0, 2, 4, 6], [1, 3, 5, 7], [8, 9, 10, 11], [11, 10, 9, 8]]):
        compound.addBond(atoms, [1.5 + b, float(b % 3)])
    forces = [bond, angle, torsion, external, compound]
    if periodic:
        for f in (bond, angle, torsion, compound):
            f.setUsesPeriodicBoundaryConditions(True)
    for f in forces:
        system.addForce(f)
    return system, pos


@pytest.mark.parametrize("periodic", [False, True])
def test_custom_bonded_forces_match_openmm(periodic):
    system, pos = _bonded_system(periodic)
    ffs = from_system(system, pos)
    assert set(ffs.potential.terms) == {"CustomBondForce", "CustomAngleForce",
                                        "CustomTorsionForce", "CustomExternalForce",
                                        "CustomCompoundBondForce"}
    assert ffs.space.periodic == periodic
    _check(ffs)
    p = ffs.params
    # instances with equal parameters share a type; globals are scalars; tables are arrays
    assert p["CustomBondForce"]["k"].shape == (3,) and p["CustomBondForce"]["g"].shape == ()
    assert p["CustomCompoundBondForce"]["d"].shape == (3,)


def test_torsion_theta_convention():
    """theta is the IUPAC dihedral in (-pi, pi]: E = theta reproduces OpenMM's sign and range
    on both sides of the branch cut."""
    system = _system(4)
    force = mm.CustomTorsionForce("theta")
    force.addTorsion(0, 1, 2, 3, [])
    system.addForce(force)
    for phi in (-3.1, -2.0, -0.3, 0.4, 1.7, 3.1):
        pos = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                        [np.cos(phi), np.sin(phi), 1.0]]) * 0.15
        ffs = from_system(system, pos)
        rows = _check(ffs)
        assert abs(rows[0].energy_openmm - phi) < 1e-9


# ---------------------------------------------------------------------------- nonbonded
N_NB = 80
TRICLINIC = np.array([[BOX, 0.0, 0.0], [0.8, BOX, 0.0], [-0.5, 0.6, BOX]])


def _nonbonded_system(case: str):
    """A CustomNonbondedForce of one configuration (see the parametrization below), plus a
    harmless HarmonicBondForce (other terms must not change which pairs it sees)."""
    rng = np.random.default_rng(SEED + NB_CASES.index(case))
    n = N_NB
    periodic = case in ("periodic", "groups", "triclinic")
    box = TRICLINIC if case == "triclinic" else np.diag([BOX] * 3)
    system = _system(n, box if periodic else None)
    pos = _lattice(rng, n, BOX)
    n_types = 4
    ptype = rng.integers(0, n_types, n).astype(float)
    sigma = rng.uniform(0.2, 0.35, n_types)[ptype.astype(int)]
    epsilon = rng.uniform(0.2, 1.0, n_types)[ptype.astype(int)]
    charge = rng.choice([-0.5, 0.0, 0.5], n)
    energy = ("4*eps*((sig/r)^12-(sig/r)^6) + 138.935*qq*erfc(2.5*r)/r"
              " + 0.3*c1*c2*exp(-3*r) + g*nb(type1, type2)/r^8;"
              " sig=0.5*(sigma1+sigma2); eps=sqrt(epsilon1*epsilon2); qq=q1*q2")
    if case == "nocutoff":
        energy = energy.replace("+ g*", "+ 0.1*tab(r, sigma1+sigma2) + g*")
    force = mm.CustomNonbondedForce(energy)
    for name in ("sigma", "epsilon", "q", "type"):
        force.addPerParticleParameter(name)
    force.addGlobalParameter("g", 0.05)
    force.addComputedValue("c", "2*sigma + q^2 + g")
    table = rng.uniform(0.0, 2e-4, (n_types, n_types))
    table = table + table.T
    force.addTabulatedFunction("nb", mm.Discrete2DFunction(n_types, n_types,
                                                           table.T.ravel().tolist()))
    if case == "nocutoff":
        grid_r, grid_s = np.linspace(0, 6, 25), np.linspace(0.3, 0.8, 6)
        values = np.exp(-grid_r[:, None]) * grid_s[None, :]
        force.addTabulatedFunction("tab", mm.Continuous2DFunction(
            25, 6, values.T.ravel().tolist(), 0, 6, 0.3, 0.8))
    for i in range(n):
        force.addParticle([sigma[i], epsilon[i], charge[i], ptype[i]])
    # exclusions: near in index (masked in the pair loop) and far (subtracted); a duplicate
    excl = [(i, i + 1) for i in range(0, n - 1, 2)] + [(i, i + 3) for i in range(0, n - 3, 5)]
    excl += [(0, 70), (3, 75), (10, 79)]  # offsets >= 64
    for i, j in excl:
        force.addExclusion(i, j)
    method = {"nocutoff": "NoCutoff", "nonperiodic": "CutoffNonPeriodic"}.get(case, "CutoffPeriodic")
    force.setNonbondedMethod(getattr(mm.CustomNonbondedForce, method))
    force.setCutoffDistance(1.0)
    force.setUseSwitchingFunction(True)  # ignored by NoCutoff, as in OpenMM
    force.setSwitchingDistance(0.75)
    force.setUseLongRangeCorrection(periodic)
    if case == "groups":
        a, b = list(range(40)), list(range(25, 80))
        force.addInteractionGroup(a, b)
        force.addInteractionGroup([1, 2, 3], [40, 41, 45, 75])  # pairs counted twice, as OpenMM
        force.addInteractionGroup([7], [8])  # an excluded pair: still excluded
    if case == "nonperiodic":
        pos = pos * 1.3  # spread beyond the box: no periodicity anywhere
    system.addForce(force)
    bonds = mm.HarmonicBondForce()
    bonds.addBond(0, 1, 0.3, 100.0)
    system.addForce(bonds)
    return system, pos


NB_CASES = ["nocutoff", "nonperiodic", "periodic", "groups", "triclinic"]


@pytest.mark.parametrize("case", NB_CASES)
def test_custom_nonbonded_matches_openmm(case):
    system, pos = _nonbonded_system(case)
    ffs = from_system(system, pos)
    term = ffs.potential.terms["CustomNonbondedForce"]
    assert isinstance(term, CustomNonbonded)
    rows = _check(ffs)
    assert abs(rows[0].energy_openmm) > 1.0  # a nontrivial energy
    assert len(term._far_exclusions) == 3  # both exclusion paths are exercised
    if term.long_range_correction:
        lrc = float(term.long_range_energy(ffs.params["CustomNonbondedForce"], ffs.space.volume))
        assert abs(lrc) > 1e-3
    if term.space.periodic:  # the hand-written pair virial equals the strain derivative
        p, r = ffs.params["CustomNonbondedForce"], jnp.asarray(ffs.positions)
        aux = ffs.potential.allocate(ffs.positions)
        e_fast, w_fast = term.energy_virial(r, p, aux)
        e_auto, w_auto = EnergyTerm.energy_virial(term, r, p, aux)
        np.testing.assert_allclose(float(e_fast), float(e_auto), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(w_fast), np.asarray(w_auto), rtol=1e-9,
                                   atol=1e-10 * float(np.abs(w_auto).max()))


def test_long_range_correction_matches_openmm_alone():
    """The correction by itself: OpenMM's energy with it on minus off."""
    system, pos = _nonbonded_system("periodic")
    force = system.getForce(0)

    def openmm_energy(use):
        f = mm.CustomNonbondedForce(force)
        f.setUseLongRangeCorrection(use)
        s = _system(N_NB, np.diag([BOX] * 3))
        s.addForce(f)
        ctx = mm.Context(s, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
        ctx.setPositions(pos * unit.nanometer)
        return ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
            unit.kilojoule_per_mole)

    expected = openmm_energy(True) - openmm_energy(False)
    ffs = from_system(system, pos)
    term = ffs.potential.terms["CustomNonbondedForce"]
    got = float(jax.jit(term.long_range_energy)(ffs.params["CustomNonbondedForce"],
                                                ffs.space.volume))
    # OpenMM integrates by a midpoint rule to 1e-5 relative, in single precision
    assert abs(got - expected) <= 1e-5 * abs(expected)


# ---------------------------------------------------------------------------- charmm36 villin
def _villin_vacuum():
    """test.pdb without water and ions, charmm36, NoCutoff."""
    data = os.path.join(os.path.dirname(mm.__file__), "app", "data")
    pdb = app.PDBFile(os.path.join(data, "test.pdb"))
    model = app.Modeller(pdb.topology, pdb.positions)
    model.deleteWater()
    ions = [r for r in model.topology.residues()
            if r.name.lower().rstrip("+-") in ("na", "cl")]  # test.pdb names them 'Cl'
    model.delete(ions)
    ff = app.ForceField("charmm36.xml")
    system = ff.createSystem(model.topology, nonbondedMethod=app.NoCutoff)
    return system, model.positions, model.topology, ff


def test_charmm36_villin_vacuum():
    system, positions, topology, ff = _villin_vacuum()
    ffs = from_system(system, positions, topology, forcefield=ff)
    assert {"CustomTorsionForce", "CustomNonbondedForce", "CustomBondForce",
            "CMAPTorsionForce"} <= set(ffs.potential.terms)
    _check(ffs)
    p = ffs.params["CustomNonbondedForce"]
    n = p["type"].shape[0]
    assert p["acoef"].shape == p["bcoef"].shape == (n, n)  # NBFIX tables, tunable
    # single precision: exclusions are masked, not subtracted (the excluded 1-2/1-3 pairs hold
    # ~6e7 kJ/mol of r^-12 energy that a subtraction would have to cancel)
    term = ffs.potential.terms["CustomNonbondedForce"]
    r = jnp.asarray(ffs.positions)
    e64 = jax.jit(term.energy_forces)(r, p, None)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p)
    e32 = jax.jit(term.energy_forces)(r.astype(jnp.float32), p32, None)
    assert e32.energy.dtype == jnp.float32
    assert abs(float(e32.energy) - float(e64.energy)) <= 1e-5 * abs(float(e64.energy))
    f_err = np.sqrt(np.mean((np.asarray(e32.forces) - np.asarray(e64.forces)) ** 2))
    assert f_err <= 1e-4 * np.sqrt(np.mean(np.asarray(e64.forces) ** 2))


@pytest.mark.slow
def test_charmm36_villin_solvated_pme():
    """test.pdb as is (water, ions), PME with a 1.0 nm cutoff; the LJ custom force with a
    0.8 nm switch and the long-range correction switched on (charmm36 turns it off)."""
    data = os.path.join(os.path.dirname(mm.__file__), "app", "data")
    pdb = app.PDBFile(os.path.join(data, "test.pdb"))
    ff = app.ForceField("charmm36.xml", "charmm36/water.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.PME,
                             nonbondedCutoff=1.0 * unit.nanometer, rigidWater=False,
                             switchDistance=0.8 * unit.nanometer)
    for f in system.getForces():
        if isinstance(f, mm.CustomNonbondedForce):
            f.setUseLongRangeCorrection(True)
    ffs = from_system(system, pdb.positions, pdb.topology, forcefield=ff)
    term = ffs.potential.terms["CustomNonbondedForce"]
    assert term.method == "CutoffPeriodic" and term.long_range_correction
    _check(ffs)


# ---------------------------------------------------------------------------- gradients
def _fd(f, x, h):
    return (f(x + h) - f(x - h)) / (2 * h)


def _term_energy(term, r, p):
    return term.energy(r, p)


def _set_and_call(fn, p0, key, index, x):
    return fn({**p0, key: p0[key].at[index].set(x)})


def test_parameter_gradients_match_finite_differences():
    system, pos = _nonbonded_system("periodic")
    ffs = from_system(system, pos)
    name = "CustomNonbondedForce"
    term, p0 = ffs.potential.terms[name], ffs.params[name]
    r = jnp.asarray(pos)
    aux = term.allocate(pos)
    energy = jax.jit(lambda p: term.energy(r, p, aux))
    grad = jax.jit(jax.grad(lambda p: term.energy(r, p, aux)))(p0)
    for key, index, h in [("epsilon", (1,), 1e-5), ("sigma", (2,), 1e-6), ("g", (), 1e-4),
                          ("q", (0,), 1e-5), ("nb", (1, 2), 1e-7)]:
        def along(x, key=key, index=index):
            return energy({**p0, key: p0[key].at[index].set(x)})

        expected = _fd(along, p0[key][index], h)
        assert abs(float(grad[key][index]) - float(expected)) <= 1e-6 * max(1.0, abs(float(expected))), key
    # bonded: a per-type force constant and a global
    system, pos = _bonded_system(False)
    ffs = from_system(system, pos)
    r = jnp.asarray(pos)
    for name, key, index in [("CustomBondForce", "k", (1,)), ("CustomBondForce", "g", ()),
                             ("CustomTorsionForce", "c", ()), ("CustomCompoundBondForce", "d", (1,))]:
        term, p0 = ffs.potential.terms[name], ffs.params[name]
        energy = jax.jit(functools.partial(_term_energy, term, r))
        grad = jax.jit(jax.grad(functools.partial(_term_energy, term, r)))(p0)
        expected = _fd(functools.partial(_set_and_call, energy, p0, key, index), p0[key][index], 1e-5)
        assert abs(float(grad[key][index]) - float(expected)) <= 1e-6 * max(1.0, abs(float(expected)))


def test_jit_grad_vmap_nesting_and_one_trace():
    system, pos = _nonbonded_system("groups")
    ffs = from_system(system, pos)
    pot, params = ffs.potential, ffs.params
    aux = pot.allocate(pos)
    r = jnp.asarray(pos)

    inner = jax.jit(lambda r, p, aux: pot.energy(r, p, aux))
    forces = jax.jit(jax.grad(inner))(r, params, aux)
    fast = jax.jit(pot.energy_forces)(r, params, aux)  # the pair loop's own forces
    assert abs(float(fast.energy - inner(r, params, aux))) <= 1e-12 * abs(float(fast.energy))
    np.testing.assert_allclose(-np.asarray(forces), np.asarray(fast.forces), rtol=1e-9, atol=1e-8)

    # gradient of a force-based loss in the global parameter, through jit(grad(jit))
    def loss(g):
        p = {**params, "CustomNonbondedForce": {**params["CustomNonbondedForce"], "g": g}}
        return jnp.sum(jax.grad(inner)(r, p, aux) ** 2)

    g0 = params["CustomNonbondedForce"]["g"]
    dl = jax.jit(jax.grad(loss))(g0)
    assert abs(float(dl) - float(_fd(jax.jit(loss), g0, 1e-4))) <= 1e-6 * max(1.0, abs(float(dl)))

    # vmap over a batch of parameter values equals the loop
    scales = jnp.asarray([0.8, 1.0, 1.3])

    def scaled(s):
        q = params["CustomNonbondedForce"]
        return {**params, "CustomNonbondedForce": {**q, "epsilon": q["epsilon"] * s,
                                                   "nb": q["nb"] * s}}

    batch = jax.jit(jax.vmap(lambda s: inner(r, scaled(s), aux)))(scales)
    loop = [float(inner(r, scaled(s), aux)) for s in scales]
    np.testing.assert_allclose(np.asarray(batch), loop, rtol=1e-12)

    # one trace for three parameter values
    traces = []

    @jax.jit
    def energy(p):
        traces.append(1)
        return pot.energy(r, p, aux)

    values = [float(energy(scaled(s))) for s in (0.9, 1.1, 1.2)]
    assert len(traces) == 1 and len(set(values)) == 3


# ---------------------------------------------------------------------------- errors
def test_unknown_function_raises_unsupported():
    system = _system(2)
    bond = mm.CustomBondForce("k*frobnicate(r)")
    bond.addPerBondParameter("k")
    bond.addBond(0, 1, [1.0])
    system.addForce(bond)
    with pytest.raises(UnsupportedForceError, match=r"CustomBondForce.*frobnicate") as info:
        from_system(system, np.array([[0.0, 0, 0], [0.1, 0, 0]]))
    assert "k*frobnicate(r)" in str(info.value)

    system = _system(2)
    force = mm.CustomNonbondedForce("a1*a2*wobble(r, 2)")
    force.addPerParticleParameter("a")
    force.addParticle([1.0])
    force.addParticle([2.0])
    system.addForce(force)
    with pytest.raises(UnsupportedForceError, match=r"CustomNonbondedForce.*wobble"):
        from_system(system, np.array([[0.0, 0, 0], [0.3, 0, 0]]))


def test_bad_particle_in_compound_bond_raises():
    system = _system(3)
    force = mm.CustomCompoundBondForce(2, "distance(p1, p3)")
    force.addBond([0, 1], [])
    system.addForce(force)
    with pytest.raises(UnsupportedForceError, match=r"CustomCompoundBondForce.*p1\.\.p2"):
        from_system(system, np.zeros((3, 3)) + np.arange(3)[:, None] * 0.1)


def test_public_names_have_docstrings():
    from workbench.forcefield import custom, custom_common, custom_nonbonded, tabulated

    for module in (custom, custom_common, custom_nonbonded, tabulated):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, dict):
                assert obj.__doc__ and len(obj.__doc__.strip()) > 20, f"{module.__name__}.{name}"
