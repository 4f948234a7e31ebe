"""Hybrid ML/MM systems: a selection of atoms (a solute) described by a neural potential, the
rest by an imported force field, with mechanical embedding, as openmm-ml's
``MLPotential.createMixedSystem`` builds them.

From the OpenMM ``System`` of the whole force-field system, every bonded term whose atoms all
lie in the selection is removed (bonds, angles, torsions, CMAP, Urey-Bradley and impropers as
custom forces), and every nonbonded pair within the selection becomes an exclusion (an
exception with zero charge product and epsilon in ``NonbondedForce``, which PME also removes
from reciprocal space; an exclusion in ``CustomNonbondedForce``). Interactions between the
selection and the rest stay classical (fixed MM charges and Lennard-Jones on the ML atoms). The
modified System is imported as usual (:func:`workbench.forcefield.openmm.from_system`) and the
network is added as one more term, on the selection only. Constraints stay as they were.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..system import System
from .model import Model

__all__ = ["mixed_openmm_system", "mixed_system"]


_CUSTOM = {  # class: (count, get, add, number of per-entry parameters, its name, add it, atoms)
    "CustomBondForce": ("getNumBonds", "getBondParameters", "addBond", "getNumPerBondParameters",
                        "getPerBondParameterName", "addPerBondParameter", 2),
    "CustomAngleForce": ("getNumAngles", "getAngleParameters", "addAngle",
                         "getNumPerAngleParameters", "getPerAngleParameterName",
                         "addPerAngleParameter", 3),
    "CustomTorsionForce": ("getNumTorsions", "getTorsionParameters", "addTorsion",
                           "getNumPerTorsionParameters", "getPerTorsionParameterName",
                           "addPerTorsionParameter", 4),
}


def _without(force, inside):
    """A copy of a custom bonded ``force`` without the entries whose atoms are all ``inside``
    (OpenMM cannot delete entries, so the force is built again)."""
    count, get, add, n_par, par_name, add_par, arity = _CUSTOM[type(force).__name__]
    fresh = type(force)(force.getEnergyFunction())
    for k in range(force.getNumGlobalParameters()):
        fresh.addGlobalParameter(force.getGlobalParameterName(k),
                                 force.getGlobalParameterDefaultValue(k))
    for k in range(getattr(force, n_par)()):
        getattr(fresh, add_par)(getattr(force, par_name)(k))
    fresh.setUsesPeriodicBoundaryConditions(force.usesPeriodicBoundaryConditions())
    fresh.setForceGroup(force.getForceGroup())
    for i in range(getattr(force, count)()):
        row = getattr(force, get)(i)
        if not inside(*row[:arity]):
            getattr(fresh, add)(*row[:arity], row[arity])
    return fresh


def mixed_openmm_system(system, atoms):
    """A copy of the OpenMM ``System`` with the interactions within ``atoms`` removed (see the
    module docstring). Raises for forces whose intramolecular part cannot be separated (GB)."""
    import openmm

    sel = set(int(a) for a in atoms)
    inside = lambda *idx: all(int(i) in sel for i in idx)  # noqa: E731
    out = openmm.XmlSerializer.clone(system)
    replace = {}
    for k, f in enumerate(out.getForces()):
        name = type(f).__name__
        if name == "HarmonicBondForce":
            for i in range(f.getNumBonds()):
                a, b, r0, kk = f.getBondParameters(i)
                if inside(a, b):
                    f.setBondParameters(i, a, b, r0, 0.0)
        elif name == "HarmonicAngleForce":
            for i in range(f.getNumAngles()):
                a, b, c, t0, kk = f.getAngleParameters(i)
                if inside(a, b, c):
                    f.setAngleParameters(i, a, b, c, t0, 0.0)
        elif name == "PeriodicTorsionForce":
            for i in range(f.getNumTorsions()):
                a, b, c, d, n, ph, kk = f.getTorsionParameters(i)
                if inside(a, b, c, d):
                    f.setTorsionParameters(i, a, b, c, d, n, ph, 0.0)
        elif name == "CMAPTorsionForce":
            fresh = openmm.CMAPTorsionForce()
            for m in range(f.getNumMaps()):
                size, energy = f.getMapParameters(m)
                fresh.addMap(size, energy)
            for i in range(f.getNumTorsions()):
                m, *idx = f.getTorsionParameters(i)
                if not inside(*idx):
                    fresh.addTorsion(m, *idx)
            fresh.setUsesPeriodicBoundaryConditions(f.usesPeriodicBoundaryConditions())
            replace[k] = fresh
        elif name in _CUSTOM:
            replace[k] = _without(f, inside)
        elif name == "NonbondedForce":
            existing = {}
            for i in range(f.getNumExceptions()):
                a, b, *_ = f.getExceptionParameters(i)
                existing[(min(a, b), max(a, b))] = i
            for a, b in itertools.combinations(sorted(sel), 2):
                if (a, b) in existing:
                    f.setExceptionParameters(existing[(a, b)], a, b, 0.0, 1.0, 0.0)
                else:
                    f.addException(a, b, 0.0, 1.0, 0.0)
        elif name == "CustomNonbondedForce":
            excluded = {tuple(sorted(f.getExclusionParticles(i)))
                        for i in range(f.getNumExclusions())}
            for a, b in itertools.combinations(sorted(sel), 2):
                if (a, b) not in excluded:
                    f.addExclusion(a, b)
        elif name in ("CMMotionRemover",):
            continue
        else:
            raise NotImplementedError(
                f"{name}: its interactions within the ML atoms cannot be removed (many-body "
                "terms such as implicit solvent are not separable); use explicit solvent or "
                "vacuum for ML/MM")
    for k in sorted(replace, reverse=True):
        out.removeForce(k)
    for k in sorted(replace):
        out.addForce(replace[k])
    return out


def mixed_system(forcefield_system, model: Model, atoms, *, name: str = "ML/MM") -> System:
    """The hybrid system: ``atoms`` (indices, e.g. the solute's) from ``model``, the rest and
    the coupling from the force field of ``forcefield_system`` (a
    :class:`~workbench.forcefield.openmm.ForceFieldSystem`). Its potential is a ``Sum`` of the
    modified force-field terms and ``"NeuralPotential"``; masses, box, topology and
    constraints are the force-field system's."""
    from ..forcefield.openmm import from_system
    from ..potentials.base import Sum

    sel = np.asarray(atoms, np.int32)
    ff = forcefield_system
    if getattr(ff, "system", None) is None or ff.topology is None:
        raise TypeError("mixed_system needs a force-field system imported from OpenMM (with its "
                        "System and topology), e.g. from workbench.forcefield.load(...)")
    numbers = np.array([a.element.atomic_number for a in ff.topology.atoms()])
    mm = from_system(mixed_openmm_system(ff.system, sel), ff.positions, ff.topology)
    term = model.potential(numbers, mm.space, atoms=sel)
    potential = Sum({**mm.potential.terms, "NeuralPotential": term})
    params = {**mm.params, "NeuralPotential": model.params}
    return System(potential, params, ff.positions, masses=ff.masses, space=mm.space,
                  topology=ff.topology, constraint_set=ff.constraints(), units="molecular",
                  name=name)
