"""Ewald and smooth PME against OpenMM's Reference platform, finite differences and JAX transforms.

What OpenMM puts where (NonbondedForce with Ewald/PME and ``setReciprocalSpaceForceGroup(1)``):
group 1 = reciprocal energy + self energy + neutralizing term (forces: reciprocal only); group 0 =
erfc direct space within the cutoff + exceptions (plain Coulomb of chargeProd) - erf correction of
every excluded/exception pair (unwrapped distance). The comparisons below add our pieces the
same way.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erfc

from workbench.potentials import ewald
from workbench.potentials.base import strain_virial
from workbench.units import ONE_4PI_EPS0

mm = pytest.importorskip("openmm")

CUBIC = np.diag([3.0, 3.0, 3.0])
RECTANGULAR = np.diag([3.0, 3.3, 3.7])
TRICLINIC = np.array([[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [-0.6, 0.7, 3.1]])  # OpenMM reduced form
CUTOFF = 1.0


def _random_system(box, n=200, seed=0, net_charge=0.0):
    """Positions uniform in the cell (nm), random charges with the given net charge (e)."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 1.0, (n, 3)) @ box
    charges = rng.normal(size=n)
    charges += (net_charge - charges.sum()) / n
    return positions, charges


def _openmm_context(
    positions,
    charges,
    box,
    method,
    *,
    cutoff=CUTOFF,
    pme=None,
    tolerance=5e-4,
    exceptions=(),
    platform="Reference",
):
    """A System with one NonbondedForce (no LJ): group 0 direct space, group 1 reciprocal space."""
    system = mm.System()
    system.setDefaultPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
    force = mm.NonbondedForce()
    force.setNonbondedMethod(method)
    force.setCutoffDistance(cutoff)
    force.setEwaldErrorTolerance(tolerance)
    force.setUseDispersionCorrection(False)
    for q in charges:
        system.addParticle(1.0)
        force.addParticle(float(q), 0.1, 0.0)
    for i, j, qq in exceptions:
        force.addException(i, j, qq, 0.1, 0.0)
    if pme is not None:
        force.setPMEParameters(*pme)
    force.setForceGroup(0)
    force.setReciprocalSpaceForceGroup(1)
    system.addForce(force)
    context = mm.Context(system, mm.VerletIntegrator(1e-3), mm.Platform.getPlatformByName(platform))
    context.setPositions(positions)
    return context, force


def _energy_forces(context, groups):
    state = context.getState(getEnergy=True, getForces=True, groups=groups)
    return state.getPotentialEnergy()._value, np.asarray(state.getForces(asNumpy=True)._value)


def _relative_rms(forces, reference):
    return float(np.sqrt(np.mean((np.asarray(forces) - reference) ** 2) / np.mean(reference**2)))


def _group_energy(recip_fn):
    """OpenMM's reciprocal group as one function: reciprocal + self + neutralizing (kJ/mol)."""

    def energy(positions, charges, box, alpha, size):
        return (
            recip_fn(positions, charges, box, alpha, size)
            + ewald.ewald_self_energy(charges, alpha)
            + ewald.neutralizing_energy(charges, box, alpha)
        )

    return energy


# Compiled once per shape and size; every evaluation in this file goes through these (eager
# op-by-op dispatch would compile each primitive separately, which is slow on a loaded CPU).
GROUP_ENERGY = {
    "pme": _group_energy(ewald.pme_reciprocal_energy),
    "ewald": _group_energy(ewald.ewald_reciprocal_energy),
}
GROUP_VALUE_AND_GRAD = {
    name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)), static_argnums=(4,))
    for name, fn in GROUP_ENERGY.items()
}
GROUP_ENERGY_JIT = {name: jax.jit(fn, static_argnums=(4,)) for name, fn in GROUP_ENERGY.items()}


def _reciprocal_group(positions, charges, box, alpha, method, size):
    """Our equivalent of OpenMM's reciprocal group: energy and forces."""
    energy, (grad, _, _) = GROUP_VALUE_AND_GRAD[method](positions, charges, box, alpha, size)
    return float(energy), -np.asarray(grad)


def _openmm_min_image(delta, box):
    """OpenMM's ReferenceForce::getDeltaRPeriodic for a reduced box, vectorized over pairs."""
    for d in (2, 1, 0):
        delta = delta - np.floor(delta[:, d] / box[d, d] + 0.5)[:, None] * box[d]
    return delta


# ---------------------------------------------------------------------------------------------
# 1. Parameters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box", [CUBIC, np.diag([4.37, 5.1, 6.6]), TRICLINIC], ids=["cubic", "rect", "triclinic"]
)
@pytest.mark.parametrize("cutoff,tolerance", [(1.0, 5e-4), (0.9, 1e-5), (1.2, 1e-3), (1.0, 1e-6)])
@pytest.mark.parametrize("platform", ["Reference", "CPU"])
def test_pme_parameters_match_openmm(box, cutoff, tolerance, platform):
    if platform not in [
        mm.Platform.getPlatform(i).getName() for i in range(mm.Platform.getNumPlatforms())
    ]:
        pytest.skip(f"OpenMM platform {platform} not available")
    positions, charges = _random_system(box, n=4, seed=1)
    context, force = _openmm_context(
        positions,
        charges,
        box,
        mm.NonbondedForce.PME,
        cutoff=cutoff,
        tolerance=tolerance,
        platform=platform,
    )
    context.getState(getEnergy=True)  # the CPU platform sets its grid up at the first evaluation
    alpha, nx, ny, nz = force.getPMEParametersInContext(context)
    assert ewald.pme_parameters(cutoff, tolerance, box, platform=platform) == (alpha, (nx, ny, nz))


def test_legal_fft_size_rules():
    assert ewald.legal_fft_size(107, "Reference") == 107
    assert ewald.legal_fft_size(107, "CPU") == 108
    assert ewald.legal_fft_size(77, "CPU") == 77  # 7 * 11: one factor 11 allowed on CPU
    assert ewald.legal_fft_size(77, "CUDA") == 80
    assert ewald.legal_fft_size(143, "HIP") == 143  # 11 * 13
    assert ewald.legal_fft_size(143, "OpenCL") == 144
    with pytest.raises(ValueError, match="platform"):
        ewald.legal_fft_size(10, "Metal")


@pytest.mark.parametrize("box", [CUBIC, RECTANGULAR], ids=["cubic", "rect"])
@pytest.mark.parametrize("tolerance", [5e-4, 1e-5])
def test_ewald_parameters_match_openmm(box, tolerance):
    """OpenMM has no getter for Ewald's kmax: match its energy at our kmax, miss it at kmax +- 2."""
    positions, charges = _random_system(box, seed=2)
    context, _ = _openmm_context(
        positions, charges, box, mm.NonbondedForce.Ewald, tolerance=tolerance
    )
    reference, _ = _energy_forces(context, {1})
    alpha, kmax = ewald.ewald_parameters(CUTOFF, tolerance, box)
    assert alpha == (1.0 / CUTOFF) * math.sqrt(-math.log(2.0 * tolerance))
    assert all(k % 2 == 1 for k in kmax)
    errors = {}
    for shift in (0, -2, 2):
        size = tuple(k + shift for k in kmax)
        energy, _ = _reciprocal_group(positions, charges, box, alpha, "ewald", size)
        errors[shift] = abs(energy - reference) / abs(reference)
    assert errors[0] < 1e-12
    assert errors[-2] > 1e-8 and errors[2] > 1e-8


def test_parameter_errors():
    with pytest.raises(ValueError, match="half the box"):
        ewald.pme_parameters(2.0, 5e-4, CUBIC)
    with pytest.raises(ValueError, match="tolerance"):
        ewald.ewald_parameters(1.0, 0.7, CUBIC)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        ewald.pme_parameters(1.0, 5e-4, np.ones(3))


# ---------------------------------------------------------------------------------------------
# 2. Reciprocal space against OpenMM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "box,net_charge",
    [(CUBIC, 0.0), (TRICLINIC, 0.0), (RECTANGULAR, 1.5)],
    ids=["cubic", "triclinic", "rect-charged"],
)
def test_pme_reciprocal_group_matches_openmm(box, net_charge):
    positions, charges = _random_system(box, seed=3, net_charge=net_charge)
    alpha, grid = ewald.pme_parameters(CUTOFF, 5e-4, box)
    context, _ = _openmm_context(positions, charges, box, mm.NonbondedForce.PME, pme=(alpha, *grid))
    reference_energy, reference_forces = _energy_forces(context, {1})
    energy, forces = _reciprocal_group(positions, charges, box, alpha, "pme", grid)
    assert abs(energy - reference_energy) / abs(reference_energy) < 1e-6
    assert _relative_rms(forces, reference_forces) < 1e-6


@pytest.mark.parametrize(
    "box,net_charge",
    [(CUBIC, 0.0), (RECTANGULAR, 0.0), (RECTANGULAR, -2.0)],
    ids=["cubic", "rect", "rect-charged"],
)
def test_ewald_reciprocal_group_matches_openmm(box, net_charge):
    positions, charges = _random_system(box, seed=4, net_charge=net_charge)
    context, _ = _openmm_context(positions, charges, box, mm.NonbondedForce.Ewald)
    reference_energy, reference_forces = _energy_forces(context, {1})
    alpha, kmax = ewald.ewald_parameters(CUTOFF, 5e-4, box)
    energy, forces = _reciprocal_group(positions, charges, box, alpha, "ewald", kmax)
    assert abs(energy - reference_energy) / abs(reference_energy) < 1e-6
    assert _relative_rms(forces, reference_forces) < 1e-6


def test_pme_converges_to_ewald_triclinic():
    """Independent of OpenMM: a fine PME grid reproduces the explicit k sum (also for triclinic)."""
    positions, charges = _random_system(TRICLINIC, n=50, seed=5)
    alpha = 2.0
    pme = jax.jit(ewald.pme_reciprocal_energy, static_argnums=(4,))(
        positions, charges, TRICLINIC, alpha, (48, 48, 48)
    )
    explicit = jax.jit(ewald.ewald_reciprocal_energy, static_argnums=(4,))(
        positions, charges, TRICLINIC, alpha, (15, 15, 15)
    )
    assert abs(float(pme) - float(explicit)) / abs(float(explicit)) < 1e-6


# ---------------------------------------------------------------------------------------------
# 3. Full electrostatics
# ---------------------------------------------------------------------------------------------


def _direct_space(positions, charges, box, alpha, excluded):
    """erfc pair sum over all pairs within the cutoff (minimum image), excluded pairs skipped."""
    i, j = np.triu_indices(len(charges), k=1)
    keep = np.array([(a, b) not in excluded for a, b in zip(i, j)])
    i, j = i[keep], j[keep]
    r = np.linalg.norm(_openmm_min_image(positions[j] - positions[i], box), axis=1)
    inside = r < CUTOFF
    qq, r = charges[i][inside] * charges[j][inside], r[inside]
    return ONE_4PI_EPS0 * np.sum(qq * erfc(alpha * r) / r)


@pytest.mark.parametrize("box", [CUBIC, TRICLINIC], ids=["cubic", "triclinic"])
def test_full_pme_electrostatics_matches_openmm(box):
    positions, charges = _random_system(box, seed=6)
    rng = np.random.default_rng(7)
    # Ten bonded-like pairs 0.1 nm apart: five plain exclusions, five scaled 1-4 exceptions.
    pairs = [(2 * k, 2 * k + 1) for k in range(10)]
    for a, b in pairs:
        offset = rng.normal(size=3)
        positions[b] = positions[a] + 0.1 * offset / np.linalg.norm(offset)
    exceptions = [
        (a, b, 0.0 if k < 5 else 0.8333 * charges[a] * charges[b]) for k, (a, b) in enumerate(pairs)
    ]
    alpha, grid = ewald.pme_parameters(CUTOFF, 5e-4, box)
    context, _ = _openmm_context(
        positions, charges, box, mm.NonbondedForce.PME, pme=(alpha, *grid), exceptions=exceptions
    )
    reference, _ = _energy_forces(context, {0, 1})

    direct = _direct_space(positions, charges, box, alpha, set(pairs))
    a, b = np.array(pairs).T
    r = np.linalg.norm(positions[b] - positions[a], axis=1)  # exceptions are not wrapped by default
    exception_coulomb = ONE_4PI_EPS0 * sum(qq / rr for (_, _, qq), rr in zip(exceptions, r))
    ours = (
        direct
        + exception_coulomb
        + float(ewald.excluded_pair_correction(r, charges[a] * charges[b], alpha))
        + float(
            GROUP_ENERGY_JIT["pme"](positions, charges, box, alpha, grid)
        )  # + self + neutralizing
    )
    assert abs(ours - reference) / abs(reference) < 1e-6


def test_excluded_pair_correction_limit_and_gradient():
    alpha, qq = 3.1, jnp.array([0.7, -0.4, 1.1])
    r = jnp.array([0.0, 1e-9, 0.15])
    energy = ewald.excluded_pair_correction(r, qq, alpha)
    limit = -ONE_4PI_EPS0 * 2 * alpha / math.sqrt(math.pi)
    expected = limit * (0.7 - 0.4) - ONE_4PI_EPS0 * 1.1 * math.erf(alpha * 0.15) / 0.15
    assert abs(float(energy) - expected) < 1e-10 * abs(expected)
    grad = jax.grad(ewald.excluded_pair_correction)(r, qq, alpha)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert abs(float(grad[0])) < 1e-12
    x = alpha * 0.15
    derivative = (
        -ONE_4PI_EPS0
        * 1.1
        * (2 * alpha / math.sqrt(math.pi) * math.exp(-x * x) * 0.15 - math.erf(x))
        / 0.15**2
    )
    assert abs(float(grad[2]) - derivative) < 1e-10 * abs(derivative)
    # The series branch (alpha r < 1e-3) and the erf branch both equal erf(x)/x to double precision.
    x = np.array([1e-6, 0.999e-3, 1.001e-3, 0.02])
    values = jax.vmap(lambda d: ewald.excluded_pair_correction(d[None], jnp.ones(1), alpha))(
        jnp.asarray(x / alpha)
    )
    exact = -ONE_4PI_EPS0 * alpha * np.array([math.erf(v) / v for v in x])
    np.testing.assert_allclose(values, exact, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# 4. Gradients and transformations
# ---------------------------------------------------------------------------------------------


def _central_difference(fn, x, index, h):
    e = np.zeros_like(x)
    e[index] = h
    return (float(fn(x + e)) - float(fn(x - e))) / (2 * h)


@pytest.mark.parametrize("method", ["pme", "ewald"])
def test_charge_and_box_gradients_match_finite_differences(method):
    box = TRICLINIC if method == "pme" else RECTANGULAR
    size = (24, 24, 25) if method == "pme" else (7, 9, 9)
    positions, charges = _random_system(box, n=60, seed=8, net_charge=0.8)
    alpha = 2.6

    def total(p, q, b):
        return GROUP_ENERGY_JIT[method](p, q, b, alpha, size)

    _, (_, grad_q, grad_box) = GROUP_VALUE_AND_GRAD[method](positions, charges, box, alpha, size)
    for index in [(0,), (7,), (33,)]:
        fd = _central_difference(lambda q: total(positions, q, box), charges, index, 1e-5)
        assert abs(float(grad_q[index]) - fd) < 1e-6 * np.abs(grad_q).max()
    for index in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (0, 1)]:
        fd = _central_difference(lambda b: total(positions, charges, b), box, index, 1e-6)
        assert abs(float(grad_box[index]) - fd) < 1e-6 * np.abs(grad_box).max(), index


def test_box_gradient_matches_openmm_finite_differences():
    """d(reciprocal group)/d(box) at fixed Cartesian positions, against OpenMM's own energies."""
    positions, charges = _random_system(TRICLINIC, seed=9)
    alpha, grid = ewald.pme_parameters(CUTOFF, 5e-4, TRICLINIC)
    context, _ = _openmm_context(
        positions, charges, TRICLINIC, mm.NonbondedForce.PME, pme=(alpha, *grid)
    )
    _, (_, _, grad_box) = GROUP_VALUE_AND_GRAD["pme"](positions, charges, TRICLINIC, alpha, grid)
    h = 1e-5
    for index in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]:
        values = []
        for sign in (1, -1):
            box = TRICLINIC.copy()
            box[index] += sign * h
            context.setPeriodicBoxVectors(*[mm.Vec3(*row) for row in box])
            context.setPositions(positions)
            values.append(_energy_forces(context, {1})[0])
        fd = (values[0] - values[1]) / (2 * h)
        assert abs(float(grad_box[index]) - fd) < 1e-6 * np.abs(grad_box).max(), index


def test_jit_vmap_grad_nesting():
    positions, charges = _random_system(CUBIC, n=40, seed=10)
    grid, alpha = (16, 16, 16), 2.2
    batch = jnp.stack([positions + shift for shift in (0.0, 0.13, -0.4)])

    # jit(vmap(grad)) agrees with the unbatched gradient.
    batched = jax.jit(
        jax.vmap(lambda p: GROUP_VALUE_AND_GRAD["pme"](p, charges, CUBIC, alpha, grid)[1][0])
    )(batch)
    for k in range(3):
        single = GROUP_VALUE_AND_GRAD["pme"](batch[k], charges, CUBIC, alpha, grid)[1][0]
        np.testing.assert_allclose(batched[k], single, rtol=1e-10, atol=1e-10)

    # Second order through jit: the charge Hessian is the (symmetric) Coulomb matrix, H q = dE/dq.
    energy_fn = jax.jit(ewald.pme_reciprocal_energy, static_argnames=("grid", "order"))
    both = jax.jit(
        lambda q: (
            jax.grad(energy_fn, argnums=1)(positions, q, CUBIC, alpha, grid=grid),
            jax.hessian(energy_fn, argnums=1)(positions, q, CUBIC, alpha, grid=grid),
        )
    )
    g, hessian = both(charges)
    np.testing.assert_allclose(hessian @ charges, g, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-10, atol=1e-10)

    # vmap over alpha (PME) and over boxes (Ewald) agrees with single evaluations.
    alphas = jnp.array([2.0, 2.5, 3.0])
    energies = jax.jit(
        jax.vmap(lambda a: GROUP_ENERGY_JIT["pme"](positions, charges, CUBIC, a, grid))
    )(alphas)
    for a, e in zip(alphas, energies):
        assert abs(
            float(e) - float(GROUP_ENERGY_JIT["pme"](positions, charges, CUBIC, a, grid))
        ) < 1e-9 * abs(float(e))
    boxes = jnp.stack([CUBIC * s for s in (1.0, 1.05)])
    ewald_energies = jax.jit(
        jax.vmap(lambda b: GROUP_ENERGY_JIT["ewald"](positions, charges, b, alpha, (5, 5, 5)))
    )(boxes)
    for b, e in zip(boxes, ewald_energies):
        assert abs(
            float(e) - float(GROUP_ENERGY_JIT["ewald"](positions, charges, b, alpha, (5, 5, 5)))
        ) < 1e-9 * abs(float(e))


def test_new_numeric_values_do_not_retrace():
    positions, charges = _random_system(CUBIC, n=30, seed=11)
    traces = {"pme": 0, "ewald": 0}

    def pme(p, q, b, a):
        traces["pme"] += 1
        return GROUP_ENERGY["pme"](p, q, b, a, (12, 12, 12))

    def explicit(p, q, b, a):
        traces["ewald"] += 1
        return ewald.ewald_reciprocal_energy(
            p, q, b, a, (5, 5, 5)
        ) + ewald.excluded_pair_correction(
            jnp.linalg.norm(p[1] - p[0])[None], (q[0] * q[1])[None], a
        )

    pme_fn = jax.jit(jax.value_and_grad(pme, argnums=(0, 1, 2, 3)))
    ewald_fn = jax.jit(jax.value_and_grad(explicit, argnums=(0, 1, 2, 3)))
    for k, alpha in enumerate([2.0, 2.7, 3.3]):
        q = jnp.asarray(charges * (1 + 0.1 * k))
        box = jnp.asarray(CUBIC * (1 + 0.01 * k))
        jax.block_until_ready(pme_fn(positions, q, box, jnp.float64(alpha)))
        jax.block_until_ready(ewald_fn(positions, q, box, jnp.float64(alpha)))
    assert traces == {"pme": 1, "ewald": 1}


def test_input_errors():
    positions, charges = _random_system(CUBIC, n=5)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        ewald.pme_reciprocal_energy(positions[:, :2], charges, CUBIC, 3.0, (8, 8, 8))
    with pytest.raises(ValueError, match="charges"):
        ewald.ewald_reciprocal_energy(positions, charges[:3], CUBIC, 3.0, (3, 3, 3))
    with pytest.raises(ValueError, match=">= 6"):
        ewald.pme_reciprocal_energy(positions, charges, CUBIC, 3.0, (8, 5, 8))
    with pytest.raises(TypeError, match="grid"):
        ewald.pme_reciprocal_energy(positions, charges, CUBIC, 3.0, 8)
    with pytest.raises(ValueError, match="shape"):
        ewald.excluded_pair_correction(jnp.ones(3), jnp.ones(2), 3.0)


def test_public_functions_have_docstrings():
    for name in ewald.__all__:
        obj = getattr(ewald, name)
        if callable(obj):
            assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name


@pytest.mark.parametrize("box, grid", [(RECTANGULAR, (24, 27, 30)), (TRICLINIC, (25, 24, 27))])
def test_pme_virial_closed_form_equals_strain_autodiff(box, grid):
    """The closed-form PME virial (one forward pass) against autodiff of the energy under a
    strain of positions and box together: the full tensor, for a rectangular and a triclinic
    box, with even grid sizes (Nyquist planes, whose conjugate partners fold differently)."""
    jax.config.update("jax_enable_x64", True)
    positions, charges = _random_system(box, n=120, seed=3)
    alpha = 3.2
    e, w = ewald.pme_reciprocal_energy_virial(positions, charges, box, alpha, grid)
    e_auto, w_auto = strain_virial(
        lambda r, b: ewald.pme_reciprocal_energy(r, charges, b, alpha, grid), positions, box)
    assert float(e) == pytest.approx(float(e_auto), rel=1e-12)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w_auto), rtol=1e-10,
                               atol=1e-10 * float(np.abs(w_auto).max()))
    assert abs(float(w[0, 1])) > 1e-3 * float(np.abs(w_auto).max())  # a full tensor


def test_nonbonded_pme_virial_equals_strain_autodiff():
    """Nonbonded with PME (solvated alanine dipeptide, amber14/TIP3P: exclusions, 1-4 pairs,
    dispersion correction), made net-charged so the neutralizing term counts: its energy_virial
    (hand-written pair virial, closed-form reciprocal part) against autodiff of the whole
    energy's strain."""
    jax.config.update("jax_enable_x64", True)
    from workbench.forcefield.openmm import load
    from workbench.systems import data_file

    s = load(data_file("alanine-dipeptide-water.pdb"), ["amber14-all.xml", "amber14/tip3p.xml"],
             nonbonded_method="PME", cutoff=1.0)
    nb = s.potential.terms["NonbondedForce"]
    assert nb.method == "PME" and nb.dispersion_correction
    p = dict(s.params["NonbondedForce"])
    p["charge"] = p["charge"].at[0].add(0.05)  # a net charge
    aux = s.potential.allocate(s.positions, s.box)
    e, w = jax.jit(nb.energy_virial)(s.positions, p, aux, s.box)
    e_auto, w_auto = jax.jit(lambda r, b: strain_virial(
        lambda x, bb: nb.energy(x, p, aux, bb), r, b, diagonal_only=True))(s.positions, s.box)
    assert float(e) == pytest.approx(float(e_auto), rel=1e-12)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w_auto), rtol=1e-10,
                               atol=1e-10 * float(np.abs(w_auto).max()))
