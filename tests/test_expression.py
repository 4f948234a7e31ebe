"""Tests of the OpenMM/Lepton expression translator and tabulated functions.

References: NumPy/math for single expressions, OpenMM's Reference platform for custom forces
and tabulated functions (energies and forces), central finite differences for gradients.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import openmm
import pytest
from openmm import unit

from workbench.forcefield.expression import (
    BUILTIN_FUNCTIONS,
    Call,
    ExpressionError,
    Name,
    compile_expression,
    free_names,
    function_names,
    parse,
    simplify,
    substitute,
    tabulated_function,
)

RNG_SEED = 20240611
X = np.array([-2.3, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.7, 3.2])
POS = np.array([0.1, 0.4, 0.9, 1.3, 2.7])
UNIT = np.array([-0.9, -0.3, 0.0, 0.4, 0.8])

# (expression, variables, NumPy reference)
CASES = [
    ("2+3*4", {}, lambda: 14.0),
    ("(2+3)*4", {}, lambda: 20.0),
    ("2^3^2", {}, lambda: 512.0),  # right associative
    ("-2^2", {}, lambda: -4.0),  # ^ binds tighter than unary minus
    ("-x^2", {"x": X}, lambda x: -(x**2)),
    ("-x*y", {"x": X, "y": 3.0}, lambda x, y: (-x) * y),
    ("2*-x^2", {"x": X}, lambda x: 2 * -(x**2)),
    ("x^-2", {"x": POS}, lambda x: x**-2),
    ("2^-x", {"x": X}, lambda x: 2.0 ** (-x)),
    ("a-b-c", {"a": 10.0, "b": 3.0, "c": 2.0}, lambda a, b, c: 5.0),
    ("a/b/c", {"a": 12.0, "b": 3.0, "c": 2.0}, lambda a, b, c: 2.0),
    ("a/b*c", {"a": 12.0, "b": 3.0, "c": 2.0}, lambda a, b, c: 8.0),
    ("a - -b", {"a": 1.0, "b": 2.0}, lambda a, b: 3.0),
    ("1e-3*x + .5 + 2.5E+2 + 1.", {"x": X}, lambda x: 1e-3 * x + 0.5 + 250.0 + 1.0),
    ("  x *  ( y+1 )  ", {"x": X, "y": 2.0}, lambda x, y: x * (y + 1)),
    ("(-2)^3", {}, lambda: -8.0),
    ("x^0.5 + x^1.5 + x^3 + x^-1", {"x": POS}, lambda x: x**0.5 + x**1.5 + x**3 + 1 / x),
    ("x^y", {"x": POS, "y": np.linspace(-1.5, 2.5, 5)}, lambda x, y: x**y),
    ("sqrt(x)", {"x": POS}, np.sqrt),
    ("exp(x)", {"x": X}, np.exp),
    ("log(x)", {"x": POS}, np.log),
    ("sin(x)", {"x": X}, np.sin),
    ("cos(x)", {"x": X}, np.cos),
    ("sec(x)", {"x": X}, lambda x: 1 / np.cos(x)),
    ("csc(x)", {"x": POS}, lambda x: 1 / np.sin(x)),
    ("tan(x)", {"x": X}, np.tan),
    ("cot(x)", {"x": POS}, lambda x: 1 / np.tan(x)),
    ("asin(x)", {"x": UNIT}, np.arcsin),
    ("acos(x)", {"x": UNIT}, np.arccos),
    ("atan(x)", {"x": X}, np.arctan),
    ("atan2(y, x)", {"y": X, "x": X[::-1]}, np.arctan2),
    ("sinh(x)", {"x": X}, np.sinh),
    ("cosh(x)", {"x": X}, np.cosh),
    ("tanh(x)", {"x": X}, np.tanh),
    ("erf(x)", {"x": X}, np.vectorize(math.erf)),
    ("erfc(x)", {"x": X}, np.vectorize(math.erfc)),
    ("step(x)", {"x": X}, lambda x: (x >= 0).astype(float)),
    ("delta(x)", {"x": X}, lambda x: (x == 0).astype(float)),
    ("square(x)", {"x": X}, lambda x: x * x),
    ("cube(x)", {"x": X}, lambda x: x**3),
    ("recip(x)", {"x": POS}, lambda x: 1 / x),
    ("min(x, y)", {"x": X, "y": 0.3}, np.minimum),
    ("max(x, y)", {"x": X, "y": 0.3}, np.maximum),
    ("abs(x)", {"x": X}, np.abs),
    ("floor(x)", {"x": X}, np.floor),
    ("ceil(x)", {"x": X}, np.ceil),
    ("select(x, 1, 2)", {"x": X}, lambda x: np.where(x != 0, 1.0, 2.0)),
    (
        "select(step(x)*delta(y), sin(x), cos(x))",
        {"x": X, "y": 0.0},
        lambda x, y: np.where(x >= 0, np.sin(x), np.cos(x)),
    ),
    ("a*b; b = a*2; a = x+1", {"x": X}, lambda x: (x + 1) * (x + 1) * 2),
    ("u; u = v*2; v = w+1; w = x^2", {"x": X}, lambda x: (x**2 + 1) * 2),
    ("a; a = a*2; a = x", {"x": X}, lambda x: 2 * x),  # Lepton: redefinition to the left
    ("k;", {"k": 2.0}, lambda k: 2.0),  # an empty trailing piece is ignored
    ("sqrt(x*x) + 0*log(y) + y/y", {"x": X, "y": 0.0}, lambda x, y: np.abs(x) + 1.0),  # Lepton
]


@pytest.mark.parametrize("expression, values, reference", CASES, ids=[c[0] for c in CASES])
def test_expression_matches_numpy(expression, values, reference):
    fn = compile_expression(expression, list(values))
    got = np.asarray(fn(**values))
    want = np.broadcast_to(reference(*values.values()), got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14)


def test_every_builtin_function_is_tested():
    tested = set().union(*(function_names(c[0]) for c in CASES))
    builtins = {n for n in BUILTIN_FUNCTIONS if n.isalnum()}
    assert builtins <= tested


def test_parse_structure_and_names():
    tree = parse("-x^2")
    assert isinstance(tree, Call) and tree.function == "-" and len(tree.args) == 1
    assert tree.args[0].function == "^"
    assert str(parse("a-b-c")) == "((a - b) - c)"
    assert str(parse("a^b^c")) == "(a ^ (b ^ c))"
    assert free_names("k*(d)^2; d = r - r0") == {"k", "r", "r0"}
    assert free_names("4*eps*(s/r)^6; eps = sqrt(e1*e2); s = 0.5*(s1+s2)") == {
        "e1",
        "e2",
        "s1",
        "s2",
        "r",
    }
    assert function_names("f(r)*sqrt(2)+x^2") == {"f", "sqrt"}
    # a definition is shared, not copied: it is evaluated once
    tree = parse("a*a; a = exp(x)")
    assert tree.args[0] is tree.args[1]
    assert str(simplify("x*x + y^0.5 + sqrt(z^2) + 0*w")) == "((square(x) + sqrt(y)) + abs(z))"


def test_substitute_rewrites_pseudo_functions():
    tree = parse("k*(distance(p1, p2) - d0)^2")
    rewritten = substitute(
        tree, lambda n: Name("d12") if isinstance(n, Call) and n.function == "distance" else None
    )
    assert free_names(rewritten) == {"k", "d12", "d0"}
    fn = compile_expression(rewritten, ["k", "d12", "d0"])
    assert float(fn(k=2.0, d12=1.5, d0=1.0)) == pytest.approx(0.5)


def test_custom_functions_and_broadcasting():
    fn = compile_expression("k*f(r, 2) + min(r, 1)", ["k", "r"], {"f": lambda a, b: a * b})
    got = fn(k=jnp.ones((3, 1)), r=jnp.arange(4.0))
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got[0], 2 * np.arange(4.0) + np.minimum(np.arange(4.0), 1))
    # custom functions shadow built-ins, as in Lepton, and are never simplified away
    shadow = compile_expression(
        "sqrt(x^2) + neg(x)", ["x"], {"sqrt": lambda v: v + 1, "neg": lambda v: 10 * v}
    )
    assert float(shadow(x=-3.0)) == 9.0 + 1.0 - 30.0
    const = compile_expression("2.5", ["k"])
    assert const(k=jnp.zeros(5)).shape == (5,)
    unused = compile_expression("r", ["r", "q"])
    assert unused.variables == ("r",)
    assert float(unused(r=2.0, q=1.0)) == 2.0


# ----------------------------------------------------------------------------- OpenMM reference


class _OpenMMProbe:
    """One Reference-platform Context over ``forces``; call it with positions (nm)."""

    def __init__(self, n_particles, *forces):
        system = openmm.System()
        for _ in range(n_particles):
            system.addParticle(1.0)
        for force in forces:
            system.addForce(force)
        platform = openmm.Platform.getPlatformByName("Reference")
        self.context = openmm.Context(system, openmm.VerletIntegrator(0.001), platform)

    def __call__(self, positions):
        """Energy (kJ/mol) and forces (kJ/mol/nm, shape (n, 3))."""
        self.context.setPositions(positions)
        state = self.context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        return energy, np.asarray(state.getForces(asNumpy=True)._value)


def _dihedral(p):
    b1, b2, b3 = p[1] - p[0], p[2] - p[1], p[3] - p[2]
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    return np.arctan2(np.linalg.norm(b2) * np.dot(b1, n2), np.dot(n1, n2))


def _angle(p):
    u, v = p[0] - p[1], p[2] - p[1]
    return np.arctan2(np.linalg.norm(np.cross(u, v)), np.dot(u, v))


def _rel(got, want):
    return abs(got - want) / max(abs(want), 1e-300)


BOND_EXPRESSION = (
    "select(step(r - rsw), k*(r - r0)^2, min(ehigh, max(elow, a*exp(-r/l))))"
    " + delta(n)*c/r; a = eps*2; l = 0.1*(1 + n)"
)


def test_custom_bond_force_matches_openmm():
    rng = np.random.default_rng(RNG_SEED)
    force = openmm.CustomBondForce(BOND_EXPRESSION)
    for name in ("k", "r0", "eps", "n"):
        force.addPerBondParameter(name)
    for name, value in (("rsw", 0.25), ("ehigh", 3.0), ("elow", 0.2), ("c", 0.7)):
        force.addGlobalParameter(name, value)
    n_bonds = 12
    params = np.column_stack(
        [
            rng.uniform(100, 500, n_bonds),
            rng.uniform(0.1, 0.2, n_bonds),
            rng.uniform(0.5, 5, n_bonds),
            np.arange(n_bonds) % 2,
        ]
    )
    for b in range(n_bonds):
        force.addBond(2 * b, 2 * b + 1, list(params[b]))
    pos = rng.uniform(0, 0.25, (2 * n_bonds, 3))
    energy, forces = _OpenMMProbe(2 * n_bonds, force)(pos)

    variables = ["r", "k", "r0", "eps", "n", "rsw", "ehigh", "elow", "c"]
    fn = compile_expression(BOND_EXPRESSION, variables)
    r = np.linalg.norm(pos[1::2] - pos[0::2], axis=1)
    assert r.min() < 0.25 < r.max()  # both select branches are exercised
    values = {"k": params[:, 0], "r0": params[:, 1], "eps": params[:, 2], "n": params[:, 3]}
    values |= {"rsw": 0.25, "ehigh": 3.0, "elow": 0.2, "c": 0.7}
    assert _rel(float(jnp.sum(fn(r=r, **values))), energy) <= 1e-10
    # forces: -dE/dr along the bond, from jax.grad of the compiled expression
    dedr = jax.grad(lambda r: jnp.sum(fn(r=r, **values)))(jnp.asarray(r))
    unit_vec = (pos[1::2] - pos[0::2]) / r[:, None]
    np.testing.assert_allclose(
        forces[1::2], -np.asarray(dedr)[:, None] * unit_vec, rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize(
    "expression",
    [
        "a*b; b = a*2; a = r+1",  # a definition sees the definitions to its right
        "a; a = a*2; a = r",  # ... and may redefine a name for the pieces to its left
        "-r^2 + 2^-r*3 - -r/4/5",
        # Lepton's optimizer changes these results (r = 0.7: log and sqrt of negatives)
        "0*log(r-1) + (r-1)/(r-1)",
        "square(sqrt(r-1)) + sqrt((r-1)^2)",
        "(r-1)^0 + 0^(r-1) + (r-1)^3",
        "select(r-r, log(r-1), 3)",
        "select(step(r-1), sqrt(r-1)*log(r-1), r^2)",  # no NaN from the untaken branch
    ],
)
def test_definition_scoping_precedence_and_optimizer_match_openmm(expression):
    force = openmm.CustomBondForce(expression)
    force.addBond(0, 1, [])
    energy, forces = _OpenMMProbe(2, force)(np.array([[0, 0, 0], [0.7, 0, 0]]))
    fn = compile_expression(expression, ["r"])
    assert _rel(float(fn(r=0.7)), energy) <= 1e-12
    assert float(jax.grad(lambda r: fn(r=r))(0.7)) == pytest.approx(-forces[1, 0], abs=1e-12)


def test_custom_angle_force_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 1)
    expression = "k*(theta - theta0)^2 + kub*step(theta - 1.5)*cos(theta)^3"
    force = openmm.CustomAngleForce(expression)
    force.addPerAngleParameter("k")
    force.addPerAngleParameter("theta0")
    force.addGlobalParameter("kub", 12.5)
    pos = rng.normal(size=(15, 3))
    params = np.column_stack([rng.uniform(50, 300, 5), rng.uniform(1.5, 2.2, 5)])
    for a in range(5):
        force.addAngle(3 * a, 3 * a + 1, 3 * a + 2, list(params[a]))
    energy, _ = _OpenMMProbe(15, force)(pos)
    theta = np.array([_angle(pos[3 * a : 3 * a + 3]) for a in range(5)])
    fn = compile_expression(expression, ["theta", "k", "theta0", "kub"])
    got = float(jnp.sum(fn(theta=theta, k=params[:, 0], theta0=params[:, 1], kub=12.5)))
    assert _rel(got, energy) <= 1e-10


IMPROPER = "k*(dtheta)^2; dtheta = min(dt, 2*pi-dt); dt = abs(theta-theta0); pi = 3.1415926535"


@pytest.mark.parametrize("expression", [IMPROPER, "k*(1 + cos(3*theta - theta0)) + 0.1*theta"])
def test_custom_torsion_force_matches_openmm(expression):
    rng = np.random.default_rng(RNG_SEED + 2)
    force = openmm.CustomTorsionForce(expression)
    force.addPerTorsionParameter("k")
    force.addPerTorsionParameter("theta0")
    n = 10
    params = np.column_stack([rng.uniform(10, 100, n), rng.uniform(-3, 3, n)])
    for t in range(n):
        force.addTorsion(4 * t, 4 * t + 1, 4 * t + 2, 4 * t + 3, list(params[t]))
    pos = rng.normal(size=(4 * n, 3))
    energy, _ = _OpenMMProbe(4 * n, force)(pos)
    theta = np.array([_dihedral(pos[4 * t : 4 * t + 4]) for t in range(n)])
    fn = compile_expression(expression, ["theta", "k", "theta0"])
    got = float(jnp.sum(fn(theta=theta, k=params[:, 0], theta0=params[:, 1])))
    assert _rel(got, energy) <= 1e-10


def test_custom_nonbonded_force_lennard_jones_mixing_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 3)
    expression = (
        "4*eps*((sig/r)^12-(sig/r)^6); sig=0.5*(sigma1+sigma2); eps=sqrt(epsilon1*epsilon2)"
    )
    force = openmm.CustomNonbondedForce(expression)
    force.addPerParticleParameter("sigma")
    force.addPerParticleParameter("epsilon")
    n = 8
    sigma, epsilon = rng.uniform(0.25, 0.4, n), rng.uniform(0.2, 1.5, n)
    for i in range(n):
        force.addParticle([sigma[i], epsilon[i]])
    pos = np.stack(np.meshgrid([0, 0.4], [0, 0.37], [0, 0.41], indexing="ij"), -1).reshape(-1, 3)
    pos = pos + rng.uniform(-0.03, 0.03, pos.shape)
    energy, _ = _OpenMMProbe(n, force)(pos)
    i, j = np.triu_indices(n, 1)
    r = np.linalg.norm(pos[i] - pos[j], axis=1)
    fn = compile_expression(expression, ["r", "sigma1", "sigma2", "epsilon1", "epsilon2"])
    got = float(
        jnp.sum(fn(r=r, sigma1=sigma[i], sigma2=sigma[j], epsilon1=epsilon[i], epsilon2=epsilon[j]))
    )
    assert _rel(got, energy) <= 1e-10


def test_custom_external_force_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 4)
    expression = "k*((x-x0)^2 + (y-y0)^2) + step(z)*z^3 + select(delta(flag), 0, atan2(y, x))"
    force = openmm.CustomExternalForce(expression)
    for name in ("x0", "y0", "flag"):
        force.addPerParticleParameter(name)
    force.addGlobalParameter("k", 7.5)
    n = 6
    params = np.column_stack([rng.normal(size=n), rng.normal(size=n), np.arange(n) % 2])
    for p in range(n):
        force.addParticle(p, list(params[p]))
    pos = rng.normal(size=(n, 3))
    energy, _ = _OpenMMProbe(n, force)(pos)
    fn = compile_expression(expression, ["x", "y", "z", "x0", "y0", "flag", "k"])
    got = float(
        jnp.sum(
            fn(
                x=pos[:, 0],
                y=pos[:, 1],
                z=pos[:, 2],
                x0=params[:, 0],
                y0=params[:, 1],
                flag=params[:, 2],
                k=7.5,
            )
        )
    )
    assert _rel(got, energy) <= 1e-10


# ----------------------------------------------------------------------------- tabulated functions


def _compound_probe(table, expression):
    """A one-particle CustomCompoundBondForce evaluating ``expression`` of x1, y1, z1.

    The force takes ownership of ``table`` (OpenMM frees it with the System): convert the
    table with tabulated_function before calling this, and do not touch it afterwards.
    """
    force = openmm.CustomCompoundBondForce(1, expression)
    force.addTabulatedFunction("f", table)
    force.addBond([0], [])
    return _OpenMMProbe(1, force)


def _check_probe(table, points, rtol=1e-8):
    """Compare value and gradient of tabulated_function(table) with OpenMM at ``points``.

    Returns the values and the JAX function (``table`` belongs to OpenMM afterwards).
    """
    n_args = points.shape[1]
    args = ", ".join(["x1", "y1", "z1"][:n_args])
    fn = tabulated_function(table)
    probe = _compound_probe(table, f"f({args})")
    assert fn.num_args == n_args
    grad_fn = jax.jit(jax.vmap(jax.grad(lambda *a: fn(*a), argnums=tuple(range(n_args)))))
    values = np.asarray(fn(*points.T))
    grads = np.stack(grad_fn(*points.T), axis=-1)
    scale = np.max(np.abs(values))
    for point, value, grad in zip(points, values, grads):
        pos = np.zeros((1, 3))
        pos[0, :n_args] = point
        energy, forces = probe(pos)
        assert abs(value - energy) <= rtol * max(abs(energy), 1e-3 * scale), (point, value, energy)
        np.testing.assert_allclose(grad, -forces[0, :n_args], rtol=1e-7, atol=1e-7 * scale)
    return values, fn


def test_continuous_1d_natural_spline_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 5)
    values = list(rng.normal(size=15))
    table = openmm.Continuous1DFunction(values, 0.3, 1.7)
    points = np.concatenate([np.linspace(0.0, 2.0, 211), [0.3, 1.7]])[:, None]
    got, fn = _check_probe(table, points)
    outside = (points[:, 0] < 0.3) | (points[:, 0] > 1.7)
    assert np.all(got[outside] == 0.0)  # OpenMM: zero outside [min, max]
    knots = 0.3 + np.arange(15) * (1.7 - 0.3) / 14
    np.testing.assert_allclose(fn(knots), values, rtol=1e-12, atol=1e-12)


def test_continuous_1d_periodic_spline_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 6)
    values = list(rng.normal(size=12))
    values.append(values[0])
    table = openmm.Continuous1DFunction(values, -np.pi, np.pi, True)
    points = np.linspace(-9.0, 9.0, 241)[:, None]  # wraps several periods
    _check_probe(table, points)


def test_continuous_1d_in_custom_compound_bond_force_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 7)
    table = openmm.Continuous1DFunction(list(rng.normal(size=20)), 0.1, 1.0)
    expression = "k*f(distance(p1, p2))"
    force = openmm.CustomCompoundBondForce(2, expression)
    force.addGlobalParameter("k", 2.5)
    # distance(p1, p2) is a geometric pseudo-function: the caller rewrites it into a variable
    is_distance = lambda n: isinstance(n, Call) and n.function == "distance"
    tree = substitute(expression, lambda n: Name("r") if is_distance(n) else None)
    fn = compile_expression(tree, ["k", "r"], {"f": tabulated_function(table)})
    force.addTabulatedFunction("f", table)
    force.addBond([0, 1], [])
    probe = _OpenMMProbe(2, force)
    for r in np.linspace(0.05, 1.1, 97):
        energy, _ = probe(np.array([[0.2, 0.1, 0], [0.2 + r * 0.6, 0.1 + r * 0.8, 0]]))
        assert abs(float(fn(k=2.5, r=r)) - energy) <= 1e-8 * max(abs(energy), 1e-3)


@pytest.mark.parametrize("periodic", [False, True])
def test_continuous_2d_matches_openmm(periodic):
    rng = np.random.default_rng(RNG_SEED + 8)
    nx, ny = 7, 9
    grid = rng.normal(size=(nx, ny))
    if periodic:
        grid[-1, :] = grid[0, :]
        grid[:, -1] = grid[:, 0]
    flat = list(grid.T.ravel())  # x fastest
    table = openmm.Continuous2DFunction(nx, ny, flat, -1.0, 2.0, 0.5, 2.5, periodic)
    points = np.column_stack([rng.uniform(-2.0, 3.0, 150), rng.uniform(-0.5, 3.5, 150)])
    points = np.concatenate([points, [[-1.0, 0.5], [2.0, 2.5], [0.5, 1.5]]])
    got, fn = _check_probe(table, points)
    x = -1.0 + np.arange(nx) * 3.0 / (nx - 1)
    y = 0.5 + np.arange(ny) * 2.0 / (ny - 1)
    np.testing.assert_allclose(fn(x[:, None], y[None, :]), grid, rtol=1e-12, atol=1e-12)
    if not periodic:
        outside = (
            (points[:, 0] < -1) | (points[:, 0] > 2) | (points[:, 1] < 0.5) | (points[:, 1] > 2.5)
        )
        assert np.all(got[outside] == 0.0)


def test_continuous_3d_matches_openmm():
    rng = np.random.default_rng(RNG_SEED + 9)
    sizes = (5, 4, 6)
    grid = rng.normal(size=sizes)
    table = openmm.Continuous3DFunction(*sizes, list(grid.T.ravel()), 0, 1, -1, 1, 0.5, 2)
    points = np.column_stack(
        [rng.uniform(-0.1, 1.1, 80), rng.uniform(-1.1, 1.1, 80), rng.uniform(0.4, 2.1, 80)]
    )
    _check_probe(table, points)


def test_discrete_1d_matches_openmm_rounding_and_clamping():
    values = [1.5, -2.0, 3.25, 7.0, -0.5]
    table = openmm.Discrete1DFunction(values)
    points = np.array([-3.0, -0.6, -0.5, -0.4, 0.0, 0.49, 0.5, 1.5, 2.5, 3.4999, 3.5, 4.0, 9.0])
    fn = tabulated_function(table)
    probe = _compound_probe(table, "f(x1)")
    for x in points:
        energy, _ = probe(np.array([[x, 0.0, 0.0]]))
        assert float(fn(x)) == energy, x
    assert float(jax.grad(lambda x: fn(x))(1.3)) == 0.0


def test_discrete_2d_in_custom_nonbonded_force_matches_openmm():
    """NBFIX-style pair tables indexed by particle type, as charmm36 produces."""
    rng = np.random.default_rng(RNG_SEED + 10)
    ntypes = 3
    acoef = rng.uniform(1e-6, 5e-6, (ntypes, ntypes))
    bcoef = rng.uniform(1e-3, 5e-3, (ntypes, ntypes))
    acoef, bcoef = acoef + acoef.T, bcoef + bcoef.T
    expression = "a/r^12 - b/r^6; a = acoef(type1, type2); b = bcoef(type1, type2)"
    force = openmm.CustomNonbondedForce(expression)
    force.addPerParticleParameter("type")
    functions = {}
    for name, table in (("acoef", acoef), ("bcoef", bcoef)):
        openmm_table = openmm.Discrete2DFunction(ntypes, ntypes, list(table.T.ravel()))
        functions[name] = tabulated_function(openmm_table)  # before the force owns it
        force.addTabulatedFunction(name, openmm_table)
    n = 7
    types = rng.integers(0, ntypes, n).astype(float)
    for t in types:
        force.addParticle([t])
    pos = rng.uniform(0, 1.2, (n, 3))
    energy, _ = _OpenMMProbe(n, force)(pos)
    fn = compile_expression(expression, ["r", "type1", "type2"], functions)
    i, j = np.triu_indices(n, 1)
    r = np.linalg.norm(pos[i] - pos[j], axis=1)
    got = float(jnp.sum(fn(r=r, type1=types[i], type2=types[j])))
    assert _rel(got, energy) <= 1e-10


def test_discrete_3d_indexing():
    sizes = (2, 3, 4)
    grid = np.arange(24.0).reshape(sizes)
    fn = tabulated_function(openmm.Discrete3DFunction(*sizes, list(grid.T.ravel())))
    assert fn.num_args == 3
    i, j, k = np.meshgrid(np.arange(2), np.arange(3), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(fn(i + 0.2, j - 0.3, k + 0.1), grid)


# ----------------------------------------------------------------------------- gradients & JAX


def _central_difference(f, x, h=1e-6):
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize(
    "expression, points",
    [
        ("4*eps*((sig/r)^12-(sig/r)^6); sig=0.3; eps=0.5", [0.28, 0.33, 0.5, 0.9]),
        (
            IMPROPER.replace("theta0", "0.4").replace("k*", "7*").replace("theta", "x"),
            [-2.9, -1.0, 0.1, 1.2, 3.0],
        ),
        (
            "select(step(x-1), log(x-1)*x^1.5, -x/(x-1)) + atan2(x, 2) + erfc(x)",
            [-0.5, 0.3, 1.5, 2.5],
        ),
        (
            "min(sinh(x), cosh(x)) + max(x^2, 2) + sqrt(x^2 + 1) + abs(x) + tan(x/3)",
            [-1.7, -0.3, 0.6, 1.9],
        ),
    ],
)
def test_gradient_matches_finite_differences(expression, points):
    fn = compile_expression(expression, [n for n in ("r", "x") if n in free_names(expression)])
    name = fn.variables[0]
    scalar = lambda v: fn(**{name: v})
    for p in points:
        got = float(jax.grad(scalar)(p))
        want = float(_central_difference(scalar, p))
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7), (expression, p)


def test_unselected_branch_never_puts_nan_in_gradients():
    # the untaken branch is singular (log of a negative, 1/0, sqrt of a negative, acos > 1)
    fn = compile_expression(
        "select(step(x), sqrt(x) + log(x) + acos(x - 1), x^-2 + 1/(x-1) + exp(1000*x))", ["x"]
    )
    x = jnp.array([-2.0, -0.5, 0.5, 1.0])
    grad = jax.vmap(jax.grad(lambda x: fn(x=x)))(x)
    assert np.all(np.isfinite(grad))
    with np.errstate(all="ignore"):
        taken = np.where(
            x >= 0,
            0.5 / np.sqrt(x) + 1 / x - 1 / np.sqrt(1 - (x - 1) ** 2),
            -2 / x**3 - 1 / (x - 1) ** 2 + 1000 * np.exp(1000 * x),
        )
    np.testing.assert_allclose(grad, taken, rtol=1e-12)
    # Lepton's derivative conventions: abs'(0) = 1, min/max pick one side at a tie
    g = jax.grad(lambda x: compile_expression("abs(x) + min(x, 0) + max(x, 0)", ["x"])(x=x))
    assert float(g(0.0)) == 1.0 + 0.0 + 1.0


def test_jit_vmap_grad_compose_and_do_not_retrace():
    fn = compile_expression(
        "k*(r - r0)^2 + f(r); ",
        ["k", "r", "r0"],
        {"f": tabulated_function(openmm.Continuous1DFunction([0, 1, 0.5, 2], 0, 1))},
    )
    traces = 0

    @jax.jit
    def forces(r, k, r0):
        nonlocal traces
        traces += 1
        return jax.vmap(jax.grad(lambda ri, ki: fn(k=ki, r=ri, r0=r0)))(r, k)

    r = jnp.linspace(0.1, 0.9, 5)
    for scale in (1.0, 2.0, 3.0):
        got = forces(r, jnp.full(5, 10.0 * scale), jnp.asarray(0.5 * scale))
        want = jax.grad(lambda r, s=scale: jnp.sum(fn(k=10.0 * s, r=r, r0=0.5 * s)))(r)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert traces == 1
    hessian = jax.jit(jax.hessian(lambda r: fn(k=3.0, r=r, r0=0.2)))(0.7)
    assert np.isfinite(float(hessian))


def test_compiled_function_traces_once_for_new_values():
    traces = 0

    def counting(x):
        nonlocal traces
        traces += 1
        return x

    fn = compile_expression("k*counting(r - r0)^2", ["k", "r", "r0"], {"counting": counting})
    r = jnp.linspace(0.1, 0.3, 4)
    for k, r0 in ((1.0, 0.1), (2.0, 0.2), (3.0, 0.3)):  # eager calls: one compiled evaluation
        np.testing.assert_allclose(fn(k=jnp.asarray(k), r=r, r0=jnp.asarray(r0)), k * (r - r0) ** 2)
    assert traces == 1


def test_float32_inputs_stay_float32():
    fn = compile_expression("k*(r-1)^2 + step(r)", ["k", "r"])
    assert fn(k=jnp.float32(2.0), r=jnp.ones(3, jnp.float32)).dtype == jnp.float32


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "expression, variables, functions, match",
    [
        ("k*foo(r)", ["k", "r"], {}, r"unknown function 'foo'; known functions: abs, acos"),
        ("k*(r - q)^2", ["k", "r"], {}, r"unknown variable 'q'; known variables: k, r"),
        ("k*(r - 1", ["k", "r"], {}, r"unbalanced parentheses"),
        ("k*r - 1)", ["k", "r"], {}, r"unbalanced parentheses"),
        ("sqrt(r, k", ["k", "r"], {}, r"unbalanced parentheses"),
        ("E; a = b + 1; b = 2*a", ["r"], {}, r"cycle in definitions: b -> a -> b"),
        ("E; E = a; a = E", ["r"], {}, r"cycle in definitions"),
        ("a; a = a*r", ["r"], {}, r"cycle in definitions: a -> a"),
        ("E; E = a; a = 1; b = a", ["r"], {}, r"move 'a = \.\.\.' after 'b = \.\.\.'"),
        ("min(r)", ["r"], {}, r"'min' takes 2 argument\(s\) but is called with 1"),
        ("f(r, r)", ["r"], {"f": lambda x: x}, r"'f' takes 1 argument\(s\) but is called with 2"),
        ("r +", ["r"], {}, r"operand is missing"),
        ("r r", ["r"], {}, r"unexpected 'r' after a complete expression"),
        ("+r", ["r"], {}, r"unexpected '\+' where an operand"),
        ("r; = 2", ["r"], {}, r"needs the form 'name = expression'"),
        ("r$ + 1", ["r"], {}, r"invalid name 'r\$'"),
        ("; a = 1", ["r"], {}, r"result .* is empty"),
    ],
)
def test_errors_name_the_expression(expression, variables, functions, match):
    with pytest.raises(ExpressionError, match=match) as info:
        compile_expression(expression, variables, functions)
    assert repr(expression) in str(info.value)
    assert info.value.expression == expression


def test_call_time_errors():
    fn = compile_expression("k*r", ["k", "r"])
    with pytest.raises(ExpressionError, match=r"missing \['r'\]"):
        fn(k=1.0)
    with pytest.raises(ExpressionError, match=r"unexpected \['kk'\]"):
        fn(k=1.0, r=2.0, kk=3.0)
    with pytest.raises(TypeError, match="unsupported"):
        tabulated_function(openmm.HarmonicBondForce())
    with pytest.raises(ValueError, match="first and last values"):
        tabulated_function(openmm.Continuous1DFunction([0.0, 1.0, 2.0], 0, 1, True))


def test_zero_minus_x_is_unary_minus():
    """Lepton rewrites 0 - x to a negation; it must evaluate (and differentiate) as -x."""
    fn = compile_expression("0 - k*r", ["k", "r"])
    assert float(fn(k=2.0, r=3.0)) == -6.0
    assert float(jax.grad(lambda r: fn(k=2.0, r=r))(3.0)) == -2.0
