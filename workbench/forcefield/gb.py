"""Implicit solvent from OpenMM: ``CustomGBForce`` and the classic ``GBSAOBCForce``, both
converted into a :class:`~workbench.forcefield.gbterm.CustomGB` term.

* ``CustomGBForce`` (what amber14's ``implicit/obc2.xml``, ``implicit/gbn2.xml`` and the other
  ``implicit/*.xml`` files produce): its computed values, energy terms, per-particle and global
  parameters, tabulated functions, exclusions and method (NoCutoff, CutoffNonPeriodic,
  CutoffPeriodic) are taken over as they are; every expression goes through the one expression
  translator. OpenMM's platforms require the first computed value to be a pair sum and the rest
  single-particle; workbench evaluates any order.
* ``GBSAOBCForce`` (amber's older ``amber99_obc.xml`` and friends): the closed form of OpenMM's
  Reference implementation (OBC type II: alpha 1, beta 0.8, gamma 4.85; dielectric offset
  0.009 nm; HCT pair integrals with the Tinker case of an atom buried inside another; ACE
  surface term 4 pi * surfaceAreaEnergy * (R + 0.14)^2 (R/B)^6 where B > 0; pair screening
  -k (1/eps_solute - 1/eps_solvent) q_i q_j / f_GB (minus the value at the cutoff with one)),
  written as the same staged computation.

Parameters are keyed by type: with force-field labels (:class:`~.fftypes.AtomTypes`) a type is a
residue-template atom plus its values (``'ALA:CB'``), as for NonbondedForce charges; without,
particles with identical values share a type. Globals are scalars (``GBSAOBCForce``'s dielectrics
and surface-area energy are globals, so they are tunable too). Anything that cannot be translated
raises :class:`~workbench.forcefield.openmm.UnsupportedForceError` naming the force and the
expression. The GB charges are parameters of this term, separate from NonbondedForce's.
"""

from __future__ import annotations

import numpy as np

from .. import space as spaces
from .. import units
from ..units import strip
from . import fftypes
from .gbterm import KINDS, METHODS, Computation, CustomGB

__all__ = ["CONVERTERS", "from_custom_gb_force", "from_gbsaobc_force", "obc_computations"]


def _unsupported(message: str):
    from .openmm import UnsupportedForceError

    return UnsupportedForceError(message)


def _nm(q) -> float:
    from openmm import unit

    return float(strip(q, unit.nanometer))


def _types(values: list[tuple], labels) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Per-particle types: by residue template atom + values with labels, else by values."""
    table = fftypes.TypeTable()
    for i, v in enumerate(values):
        if labels is not None:
            table.add(
                (labels.residue[i], labels.name[i], v), f"{labels.residue[i]}:{labels.name[i]}"
            )
        else:
            table.add(v, "(" + ", ".join(f"{x:.6g}" for x in v) + ")")
    return table.arrays()


def _method_and_space(force, space, name: str):
    method = METHODS[int(force.getNonbondedMethod())]
    cutoff = _nm(force.getCutoffDistance()) if method != "NoCutoff" else None
    if method == "CutoffPeriodic":
        if not space.periodic:
            raise _unsupported(f"{name} uses CutoffPeriodic but the System has no periodic box")
        return method, cutoff, space
    return method, cutoff, spaces.free()  # distances without minimum image, as OpenMM


def _build(
    name,
    space,
    particle_names,
    particle_values,
    global_names,
    global_values,
    computed,
    energies,
    method,
    cutoff,
    exclusions=(),
    functions=None,
    labels=None,
):
    from .expression import ExpressionError

    types, type_names, first = _types(particle_values, labels)
    try:
        term = CustomGB(
            space,
            types,
            tuple(particle_names),
            tuple(global_names),
            tuple(computed),
            tuple(energies),
            method,
            cutoff,
            np.asarray(exclusions, np.int32).reshape(-1, 2),
            functions or {},
            type_names,
        )
    except ExpressionError as e:
        what = getattr(e, "computation", "an expression")
        raise _unsupported(f"{name}: cannot translate {what}: {e}") from e
    table = np.asarray(particle_values, float).reshape(len(particle_values), len(particle_names))
    per_type = table[first] if len(first) else np.zeros((0, len(particle_names)))
    return term, term.init_params(per_type, dict(zip(global_names, global_values)))


def from_custom_gb_force(force, space, labels=None):
    """Convert an ``openmm.CustomGBForce`` into ``(CustomGB, params)``."""
    name = "CustomGBForce"
    method, cutoff, term_space = _method_and_space(force, space, name)
    from .expression import tabulated_function

    functions = {}
    for k in range(force.getNumTabulatedFunctions()):
        fname = force.getTabulatedFunctionName(k)
        try:
            functions[fname] = tabulated_function(force.getTabulatedFunction(k))
        except (TypeError, ValueError) as e:
            raise _unsupported(f"{name}: tabulated function {fname!r}: {e}") from e
    computed = []
    for k in range(force.getNumComputedValues()):
        vname, expr, kind = force.getComputedValueParameters(k)
        computed.append(Computation(expr, KINDS[int(kind)], vname))
    energies = []
    for k in range(force.getNumEnergyTerms()):
        expr, kind = force.getEnergyTermParameters(k)
        energies.append(Computation(expr, KINDS[int(kind)]))
    pnames = [
        force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())
    ]
    gnames = [force.getGlobalParameterName(k) for k in range(force.getNumGlobalParameters())]
    gvals = [float(force.getGlobalParameterDefaultValue(k)) for k in range(len(gnames))]
    pvals = [
        tuple(float(x) for x in force.getParticleParameters(i))
        for i in range(force.getNumParticles())
    ]
    excl = [tuple(force.getExclusionParticles(k)) for k in range(force.getNumExclusions())]
    return _build(
        name,
        term_space,
        pnames,
        pvals,
        gnames,
        gvals,
        computed,
        energies,
        method,
        cutoff,
        excl,
        functions,
        labels,
    )


OBC_OFFSET = 0.009
"""nm: the dielectric offset of OpenMM's GBSAOBCForce."""
OBC_PROBE = 0.14
"""nm: the probe radius of the ACE surface term."""


def obc_computations(cutoff: float | None = None) -> tuple[list[Computation], list[Computation]]:
    """The computed values and energy terms of OpenMM's ``GBSAOBCForce`` (Reference closed
    form), over per-particle ``charge`` (e), ``radius`` (nm), ``scale`` and globals
    ``soluteDielectric``, ``solventDielectric``, ``surfaceAreaEnergy`` (kJ/mol/nm^2)."""
    off = repr(OBC_OFFSET)
    k = repr(units.ONE_4PI_EPS0)
    values = [
        Computation(
            # HCT integral of particle 2's scaled sphere seen from particle 1 (0 when disjoint);
            # the last term is the case of 1 buried inside 2 (Tinker)
            "select(step(or1-r-sr2), 0, l-u+0.25*r*(u^2-l^2)+0.5*log(u/l)/r+0.25*sr2^2*(l^2-u^2)/r"
            "+select(step(or1-sr2+r), 0, 2*(1/or1-l)));"
            f"l=1/max(or1, abs(r-sr2)); u=1/(r+sr2); or1=radius1-{off}; sr2=scale2*(radius2-{off})",
            "ParticlePairNoExclusions",
            "I",
        ),
        Computation(
            f"1/(1/or-tanh(psi-0.8*psi^2+4.85*psi^3)/radius);psi=0.5*or*I; or=radius-{off}",
            "SingleParticle",
            "B",
        ),
    ]
    pre = (
        f"pre=select(soluteDielectric*solventDielectric, "
        f"-{k}*(1/soluteDielectric-1/solventDielectric), 0)"
    )
    shift = "" if cutoff is None else f"-{1.0 / cutoff!r}"
    energies = [
        Computation(f"0.5*pre*charge^2/B; {pre}", "SingleParticle"),
        Computation(
            "select(step(-B), 0, 4*3.141592653589793*surfaceAreaEnergy*"
            f"(radius+{OBC_PROBE!r})^2*(radius/B)^6)",
            "SingleParticle",
        ),
        Computation(
            f"pre*charge1*charge2*(1/f{shift}); f=sqrt(r^2+B1*B2*exp(-r^2/(4*B1*B2))); {pre}",
            "ParticlePairNoExclusions",
        ),
    ]
    return values, energies


def from_gbsaobc_force(force, space, labels=None):
    """Convert an ``openmm.GBSAOBCForce`` into ``(CustomGB, params)`` (see the module
    docstring for the closed form)."""
    from openmm import unit

    name = "GBSAOBCForce"
    method, cutoff, term_space = _method_and_space(force, space, name)
    pvals = []
    for i in range(force.getNumParticles()):
        q, radius, scale = force.getParticleParameters(i)
        q = strip(q, unit.elementary_charge)
        pvals.append((float(q), _nm(radius), float(scale)))
    sa = strip(force.getSurfaceAreaEnergy(), unit.kilojoule_per_mole / unit.nanometer**2)
    gnames = ["soluteDielectric", "solventDielectric", "surfaceAreaEnergy"]
    gvals = [float(force.getSoluteDielectric()), float(force.getSolventDielectric()), float(sa)]
    values, energies = obc_computations(cutoff)
    return _build(
        name,
        term_space,
        ["charge", "radius", "scale"],
        pvals,
        gnames,
        gvals,
        values,
        energies,
        method,
        cutoff,
        (),
        None,
        labels,
    )


CONVERTERS = {"CustomGBForce": from_custom_gb_force, "GBSAOBCForce": from_gbsaobc_force}
"""OpenMM force class -> converter, read by :func:`workbench.forcefield.openmm.converters`."""
