"""Implicit solvent: CustomGBForce and GBSAOBCForce against OpenMM's Reference platform (float64),
the chain-rule fast path against autodiff, per-type parameter gradients against finite
differences, jit/grad/vmap composition, one trace for new parameter values, named errors.

Systems: villin headpiece (OpenMM's test.pdb without water and ions) with amber14 + implicit
obc2 / gbn2 (CustomGBForce) and amber99sb + amber99_obc (GBSAOBCForce); small synthetic
CustomGBForces that use every computation type, globals, a tabulated function, exclusions and
x, y, z, under every nonbonded method."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

mm = pytest.importorskip("openmm")
from openmm import app, unit

from workbench import space as spaces
from workbench.forcefield import openmm as wfo
from workbench.forcefield.compare import compare, format_table
from workbench.forcefield.gbterm import Computation, CustomGB

TOL = 1e-6
DATA = os.path.join(os.path.dirname(app.__file__), "data")
GB = mm.CustomGBForce


# ---------------------------------------------------------------------------- helpers
def _villin():
    pdb = app.PDBFile(os.path.join(DATA, "test.pdb"))
    model = app.Modeller(pdb.topology, pdb.positions)
    model.deleteWater()
    model.delete(
        [r for r in model.topology.residues() if r.name.upper().rstrip("+-") in ("NA", "CL")]
    )
    return model.topology, model.positions


def _system(files, method=app.NoCutoff, cutoff=1.0):
    top, pos = _villin()
    ff = app.ForceField(*files)
    system = ff.createSystem(top, nonbondedMethod=method, nonbondedCutoff=cutoff * unit.nanometer)
    return wfo.from_system(system, pos, top, forcefield=ff)


def _check(rows):
    assert all(c.ok for c in rows), "\n" + format_table(rows)


def _gb_name(s):
    return next(n for n in s.potential.terms if "GB" in n)


@pytest.fixture(scope="module")
def villin_obc2():
    return _system(("amber14-all.xml", "implicit/obc2.xml"))


def _synthetic(rng, n=40, method=GB.NoCutoff, variant=0):
    """A CustomGBForce with every computation type, two globals, a tabulated function, chain
    exclusions and a coordinate-dependent value; asymmetric pair expressions (the pair order
    matters) in variant 0. Returns (force, positions (n, 3) nm, box or None)."""
    f = GB()
    for p in ("q", "a", "s"):
        f.addPerParticleParameter(p)
    f.addGlobalParameter("k", 1.3)
    f.addGlobalParameter("w", 0.7)
    x = np.linspace(0.0, 3.0, 13)
    f.addTabulatedFunction(
        "tab", mm.Continuous1DFunction(list(np.exp(-x) * (1 + 0.3 * np.sin(3 * x))), 0.0, 3.0)
    )
    if variant == 0:
        f.addComputedValue("I", "s2*exp(-(r/a1)^2)*tab(r) + w*q2^2/(r+a1)", GB.ParticlePair)
    else:
        f.addComputedValue("I", "a1*s2/(r^2+a2^2)+0.1*tab(r)", GB.ParticlePairNoExclusions)
    f.addComputedValue(
        "B", "a + 0.3*tanh(I) + 0.01*x^2 - 0.02*y*z + 0.005*sin(4*x)", GB.SingleParticle
    )
    f.addComputedValue("C", "B^2 + k*I", GB.SingleParticle)
    f.addEnergyTerm("k*q^2/B + 0.1*C + 0.01*z", GB.SingleParticle)
    f.addEnergyTerm("-k*q1*q2/f; f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2)))", GB.ParticlePair)
    if variant == 0:
        f.addEnergyTerm("w*(C1-C2)^2*exp(-r) + a1*s2*exp(-2*r)", GB.ParticlePairNoExclusions)
    else:
        f.addEnergyTerm("w*(C1+C2)*exp(-r^2)", GB.ParticlePairNoExclusions)
    for _ in range(n):
        f.addParticle(
            [float(rng.uniform(-1, 1)), float(rng.uniform(0.12, 0.2)), float(rng.uniform(0.5, 1.0))]
        )
    for i in range(0, n - 1, 2):
        f.addExclusion(i, i + 1)
    f.addExclusion(0, n - 1)
    f.setNonbondedMethod(method)
    f.setCutoffDistance(1.0)
    side = 2.6
    box = np.array([side, side + 0.1, side + 0.2]) if method == GB.CutoffPeriodic else None
    pos = rng.uniform(0.0, side, (n, 3))
    return f, pos, box


def _reference(force, geometries, box=None):
    """OpenMM Reference energies (G,) kJ/mol and forces (G, N, 3) of ``force`` alone."""
    system = mm.System()
    for _ in range(geometries.shape[1]):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.diag(box)))
    system.addForce(mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(force)))
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    energies, forces = [], []
    for r in geometries:
        ctx.setPositions(r * unit.nanometer)
        st = ctx.getState(getEnergy=True, getForces=True)
        energies.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(
            st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        )
    return np.asarray(energies), np.asarray(forces)


def _errors(term, params, geometries, e_ref, f_ref):
    """Max over geometries of the relative energy error and the relative RMS force error (one
    compiled evaluation; the neighbor list is refreshed inside it)."""
    aux = term.allocate(geometries[0])

    @jax.jit
    def run(r):
        return term.evaluate(r, params, aux)[0]

    e_err, f_err = 0.0, 0.0
    for r, e0, f0 in zip(geometries, e_ref, f_ref):
        ev = run(jnp.asarray(r))
        e_err = max(e_err, abs(float(ev.energy) - e0) / max(abs(e0), 1.0))
        f_err = max(
            f_err,
            float(np.sqrt(np.mean((np.asarray(ev.forces) - f0) ** 2)) / np.sqrt(np.mean(f0**2))),
        )
    return e_err, f_err


def _wrap(force, positions, box=None):
    """A ForceFieldSystem holding only ``force`` (a copy) for ``positions`` (N, 3) nm."""
    system = mm.System()
    for _ in range(len(positions)):
        system.addParticle(12.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*(mm.Vec3(*row) for row in np.diag(box)))
    system.addForce(mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(force)))
    return wfo.from_system(system, positions)


# ---------------------------------------------------------------------------- OpenMM agreement
def _gb_only(s, name):
    """Relative energy and RMS force errors of the GB term alone against OpenMM Reference."""
    force = s.system.getForce(s.force_index[name])
    geometries = np.asarray(s.positions)[None]
    box = np.diag(s.box) if s.space.periodic else None
    e_ref, f_ref = _reference(force, geometries, box)
    return _errors(s.potential.terms[name], s.params[name], geometries, e_ref, f_ref)


def test_villin_obc2_nocutoff_matches_openmm(villin_obc2):
    s = villin_obc2
    assert "CustomGBForce" in s.potential.terms
    _check(compare(s))


def test_villin_gbn2_nocutoff_matches_openmm():
    s = _system(("amber14-all.xml", "implicit/gbn2.xml"))
    term = s.potential.terms["CustomGBForce"]
    assert set(term.functions) == {"getd0", "getm0"}
    _check(compare(s))


def test_villin_obc2_cutoff_nonperiodic_matches_openmm():
    s = _system(("amber14-all.xml", "implicit/obc2.xml"), app.CutoffNonPeriodic, 0.9)
    term = s.potential.terms["CustomGBForce"]
    assert term.method == "CutoffNonPeriodic" and term.neighbor_spec().cutoff == 0.9
    e_err, f_err = _gb_only(s, "CustomGBForce")
    assert e_err < TOL and f_err < TOL, (e_err, f_err)


@pytest.mark.parametrize("method", [app.NoCutoff, app.CutoffNonPeriodic])
def test_villin_gbsaobc_matches_openmm(method):
    s = _system(("amber99sb.xml", "amber99_obc.xml"), method, 1.0)
    params = s.params["GBSAOBCForce"]
    assert {"soluteDielectric", "solventDielectric", "surfaceAreaEnergy"} <= set(params)
    e_err, f_err = _gb_only(s, "GBSAOBCForce")
    assert e_err < TOL and f_err < TOL, (e_err, f_err)


@pytest.mark.parametrize("variant", [0, 1])
@pytest.mark.parametrize("method", [GB.NoCutoff, GB.CutoffNonPeriodic, GB.CutoffPeriodic])
def test_synthetic_custom_gb_matches_openmm(method, variant):
    rng = np.random.default_rng(10 * method + variant)
    force, pos, box = _synthetic(rng, method=method, variant=variant)
    s = _wrap(force, pos, box)
    term = s.potential.terms["CustomGBForce"]
    assert term.method == ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic")[method]
    assert term.space.periodic == (method == GB.CutoffPeriodic)
    geometries = np.stack([pos] + [pos + rng.normal(0.0, 0.05, pos.shape) for _ in range(3)])
    e_ref, f_ref = _reference(force, geometries, box)
    e_err, f_err = _errors(term, s.params["CustomGBForce"], geometries, e_ref, f_ref)
    assert e_err < TOL and f_err < TOL, (e_err, f_err)


def test_gbsaobc_cutoff_periodic_matches_openmm():
    rng = np.random.default_rng(3)
    n, side = 60, 3.0
    f = mm.GBSAOBCForce()
    f.setNonbondedMethod(mm.GBSAOBCForce.CutoffPeriodic)
    f.setCutoffDistance(1.1)
    f.setSolventDielectric(80.0)
    f.setSurfaceAreaEnergy(2.0)
    for _ in range(n):
        f.addParticle(
            float(rng.uniform(-0.8, 0.8)),
            float(rng.uniform(0.12, 0.2)),
            float(rng.uniform(0.7, 0.9)),
        )
    pos = rng.uniform(0.0, side, (n, 3))
    s = _wrap(f, pos, np.full(3, side))
    params = s.params["GBSAOBCForce"]
    assert float(params["solventDielectric"]) == 80.0
    geometries = np.stack([pos, pos + rng.normal(0.0, 0.05, pos.shape)])
    e_ref, f_ref = _reference(f, geometries, np.full(3, side))
    e_err, f_err = _errors(s.potential.terms["GBSAOBCForce"], params, geometries, e_ref, f_ref)
    assert e_err < TOL and f_err < TOL, (e_err, f_err)


# ---------------------------------------------------------------------------- fast path, gradients
def _general_program(n, rng, method="NoCutoff"):
    """Stages OpenMM's platforms do not run: two pair values, a pair value after a single one."""
    values = [
        Computation("a1*s2/(r^2+a2^2)", "ParticlePairNoExclusions", "I"),
        Computation("a + 0.2*tanh(I) + 0.01*x*y", "SingleParticle", "B"),
        Computation("q2*exp(-r/B1)*B2", "ParticlePair", "J"),
    ]
    energies = [
        Computation("k*q^2/B + 0.1*J^2", "SingleParticle"),
        Computation("-q1*q2/sqrt(r^2+B1*B2) + 0.01*J1*J2*exp(-r) + 0.02*J1*s2", "ParticlePair"),
        Computation("0.05*I1*I2*exp(-r^2)", "ParticlePairNoExclusions"),
    ]
    types = rng.integers(0, 4, n)
    term = CustomGB(
        spaces.free(),
        types,
        ("q", "a", "s"),
        ("k",),
        values,
        energies,
        method,
        1.0 if method != "NoCutoff" else None,
        np.array([(i, i + 1) for i in range(0, n - 1, 3)]),
    )
    params = term.init_params(
        {"q": rng.uniform(-1, 1, 4), "a": rng.uniform(0.12, 0.2, 4), "s": rng.uniform(0.5, 1.0, 4)},
        {"k": 1.1},
    )
    return term, params


@pytest.mark.parametrize("method", ["NoCutoff", "CutoffNonPeriodic"])
def test_fast_path_equals_autodiff_for_general_programs(method):
    rng = np.random.default_rng(5)
    n = 50
    term, params = _general_program(n, rng, method)
    r = jnp.asarray(rng.uniform(0.0, 2.5, (n, 3)))
    aux = term.allocate(np.asarray(r))
    ev = jax.jit(term.energy_forces)(r, params, aux)
    value_and_grad = jax.jit(jax.value_and_grad(term.energy))
    e, g = value_and_grad(r, params, aux)
    assert float(ev.energy) == pytest.approx(float(e), rel=1e-12)
    np.testing.assert_allclose(
        np.asarray(ev.forces), -np.asarray(g), rtol=1e-9, atol=1e-9 * float(jnp.max(jnp.abs(g)))
    )
    # and autodiff is right: a central difference along a random direction
    d = jnp.asarray(rng.normal(size=r.shape))
    h = 1e-5
    fd = (
        float(value_and_grad(r + h * d, params, aux)[0])
        - float(value_and_grad(r - h * d, params, aux)[0])
    ) / (2 * h)
    assert float(jnp.vdot(g, d)) == pytest.approx(fd, rel=1e-6)


@pytest.fixture(scope="module")
def villin_fns(villin_obc2):
    """Compiled functions of the villin OBC2 GB term, shared by the tests below."""
    term = villin_obc2.potential.terms["CustomGBForce"]
    traces = {"n": 0}

    def counted(r, p):
        traces["n"] += 1
        return term.energy_forces(r, p)

    return {
        "energy": jax.jit(term.energy),
        "energy_forces": jax.jit(counted),
        "grad": jax.jit(jax.grad(term.energy, argnums=(0, 1))),
        "traces": traces,
    }


def test_villin_fast_path_and_no_retrace(villin_obc2, villin_fns):
    s = villin_obc2
    params = s.params["CustomGBForce"]
    r = jnp.asarray(s.positions)
    energies = []
    for scale in (1.0, 1.1, 0.9):  # new values of every parameter: one trace
        p = jax.tree_util.tree_map(lambda x, scale=scale: x * scale, params)
        ev = villin_fns["energy_forces"](r, p)
        energies.append(float(ev.energy))
        if scale == 1.0:
            g, _ = villin_fns["grad"](r, p)
            rms = float(jnp.sqrt(jnp.mean(g**2)))
            assert float(jnp.sqrt(jnp.mean((ev.forces + g) ** 2))) < 1e-12 * rms
    assert villin_fns["traces"]["n"] == 1
    assert len(set(energies)) == 3


def test_type_parameter_gradients_match_finite_differences(villin_obc2, villin_fns):
    s = villin_obc2
    term, params = s.potential.terms["CustomGBForce"], s.params["CustomGBForce"]
    assert all(":" in name for name in term.type_names)  # residue template atom types
    r = jnp.asarray(s.positions)
    energy = villin_fns["energy"]
    _, grad = villin_fns["grad"](r, params)
    rng = np.random.default_rng(1)
    for name in ("charge", "or", "sr"):
        leaf = params[name]
        t = int(rng.integers(leaf.shape[0]))
        h = 1e-5 * max(1.0, abs(float(leaf[t])))

        def shifted(delta, name=name, t=t, leaf=leaf):
            p = {**params, name: leaf.at[t].add(delta)}
            return float(energy(r, p))

        fd = (shifted(h) - shifted(-h)) / (2 * h)
        assert float(grad[name][t]) == pytest.approx(fd, rel=1e-6, abs=1e-6), name


def test_tuning_one_type_moves_every_instance_as_in_openmm(villin_obc2, villin_fns):
    s = villin_obc2
    term, params = s.potential.terms["CustomGBForce"], s.params["CustomGBForce"]
    counts = np.bincount(term.particle_types)
    t = int(np.argmax(counts))  # a type with several instances
    assert counts[t] > 1
    new = {**params, "sr": params["sr"].at[t].multiply(1.2)}
    e = float(villin_fns["energy"](jnp.asarray(s.positions), new))
    gb = s.system.getForce(s.force_index["CustomGBForce"])
    copy = mm.XmlSerializer.deserialize(mm.XmlSerializer.serialize(gb))
    for i in np.flatnonzero(term.particle_types == t):
        p = list(copy.getParticleParameters(int(i)))
        p[2] *= 1.2
        copy.setParticleParameters(int(i), p)
    e_ref, _ = _reference(copy, np.asarray(s.positions)[None])
    assert e == pytest.approx(float(e_ref[0]), rel=1e-9)


def test_global_parameter_gradient_and_tuning_matches_openmm():
    rng = np.random.default_rng(7)
    force, pos, _ = _synthetic(rng, n=24)
    s = _wrap(force, pos)
    term, params = s.potential.terms["CustomGBForce"], s.params["CustomGBForce"]
    r = jnp.asarray(pos)
    value_and_grad = jax.jit(jax.value_and_grad(term.energy, argnums=1))

    def at(k):
        return value_and_grad(r, {**params, "k": jnp.asarray(k)})

    h = 1e-5
    g = float(at(1.3)[1]["k"])
    assert g == pytest.approx((float(at(1.3 + h)[0]) - float(at(1.3 - h)[0])) / (2 * h), rel=1e-6)
    force.setGlobalParameterDefaultValue(0, 1.7)  # OpenMM with the new value agrees
    e_ref, _ = _reference(force, pos[None])
    assert float(at(1.7)[0]) == pytest.approx(float(e_ref[0]), rel=1e-9)


# ---------------------------------------------------------------------------- composition
def test_jit_grad_vmap_nesting():
    rng = np.random.default_rng(11)
    n = 30
    term, params = _general_program(n, rng, "CutoffNonPeriodic")
    r = jnp.asarray(rng.uniform(0.0, 2.0, (n, 3)))
    aux = term.allocate(np.asarray(r))
    g = jax.jit(jax.grad(jax.jit(term.energy)))(r, params, aux)
    batch = jnp.concatenate([r[None], r[None] + 0.01 * jnp.asarray(rng.normal(size=(2, n, 3)))])
    ev = jax.jit(jax.vmap(term.energy_forces, in_axes=(0, None, None)))(batch, params, aux)
    np.testing.assert_allclose(np.asarray(ev.forces[0]), -np.asarray(g), rtol=1e-9, atol=1e-9)
    energies = jax.jit(jax.vmap(term.energy, in_axes=(0, None, None)))(batch, params, aux)
    np.testing.assert_allclose(np.asarray(ev.energy), np.asarray(energies), rtol=1e-12)
    # vmap over a parameter value
    ks = jnp.asarray([0.9, 1.1, 1.4])
    es = jax.jit(jax.vmap(lambda k: term.energy(r, {**params, "k": k}, aux)))(ks)
    assert float(es[1]) == pytest.approx(float(energies[0]), rel=1e-12)
    # reverse mode through the fast path's forces (force matching) against a central difference
    loss = jax.jit(jax.value_and_grad(lambda p: jnp.sum(term.energy_forces(r, p, aux).forces ** 2)))
    _, gl = loss(params)
    h = 1e-6
    shifted = [loss({**params, "k": params["k"] + d})[0] for d in (h, -h)]
    fd = (float(shifted[0]) - float(shifted[1])) / (2 * h)
    assert float(gl["k"]) == pytest.approx(fd, rel=1e-6)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "expression, kind",
    [
        ("a1*x1", GB.ParticlePairNoExclusions),  # pair stages have no coordinates
        ("nosuchfunction(r)", GB.ParticlePair),
        ("a*(", GB.SingleParticle),
    ],
)
def test_untranslatable_expression_names_force_and_expression(expression, kind):
    f = GB()
    f.addPerParticleParameter("a")
    f.addComputedValue("I", expression, kind)
    f.addEnergyTerm("I", GB.SingleParticle)
    for _ in range(3):
        f.addParticle([0.1])
    with pytest.raises(wfo.UnsupportedForceError) as err:
        _wrap(f, np.eye(3))
    assert "CustomGBForce" in str(err.value) and expression in str(err.value)
    assert "computed value 'I'" in str(err.value)


def test_bad_construction_is_named():
    with pytest.raises(ValueError, match="needs a positive cutoff"):
        CustomGB(spaces.free(), np.zeros(2, int), ("a",), method="CutoffNonPeriodic")
    with pytest.raises(ValueError, match="periodic"):
        CustomGB(spaces.free(), np.zeros(2, int), ("a",), method="CutoffPeriodic", cutoff=1.0)
    with pytest.raises(ValueError, match="already used"):
        CustomGB(
            spaces.free(),
            np.zeros(2, int),
            ("a",),
            values=(Computation("a", "SingleParticle", "a"),),
        )
