"""OpenMM ``System`` -> workbench energy terms with per-type parameters.

:func:`from_system` converts each force of an OpenMM ``System`` into one energy term of a
:class:`~workbench.potentials.base.Sum` (keyed by the force's class name) and collects every
parameter into one pytree, grouped by force-field type (see :mod:`.fftypes`) so that tuning a
type moves all of its instances. :func:`load` goes from a PDB file and force-field XML files
through ``openmm.app.ForceField``, exactly as an OpenMM user would, and keeps the types.

Supported: HarmonicBondForce, HarmonicAngleForce, PeriodicTorsionForce, NonbondedForce (all
methods but LJPME; exceptions, switching, dispersion correction, reaction field), and through
plugins (:func:`converters`): CMAPTorsionForce (:mod:`.cmap`), the custom
forces CustomBond/Angle/Torsion/External/CompoundBond/Nonbonded (:mod:`.custom`), CustomGBForce
and GBSAOBCForce (:mod:`.gb`). CMMotionRemover is skipped (workbench integrators conserve or
thermostat momentum themselves; noted in :attr:`ForceFieldSystem.notes`). Anything else raises
:class:`UnsupportedForceError` naming the force. Units are OpenMM's (nm, kJ/mol, e, rad, amu);
OpenMM is imported lazily.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import space as spaces
from ..units import strip
from ..potentials.base import Sum
from ..system import System
from ..potentials.bonded import HarmonicAngle, HarmonicBond, PeriodicTorsion
from ..potentials.nonbonded import METHODS, Nonbonded
from . import fftypes

__all__ = [
    "ForceFieldSystem", "UnsupportedForceError", "ForceFieldError", "from_system", "from_topology",
    "load",
    "NONBONDED_METHODS",
]

NONBONDED_METHODS = {name: i for i, name in enumerate(METHODS)}
"""OpenMM's NonbondedForce method enumeration (NoCutoff = 0 ... PME = 4)."""


class UnsupportedForceError(NotImplementedError):
    """A force (or a feature of one) that workbench cannot translate; names it."""


class ForceFieldError(ValueError):
    """Bad force-field input: a missing template, an unreadable file, a box too small."""


@dataclass(frozen=True, eq=False, kw_only=True)
class ForceFieldSystem(System):
    """A molecular :class:`~workbench.system.System` imported from OpenMM.

    potential: :class:`~workbench.potentials.base.Sum` of terms keyed by OpenMM force class
    (with ``_2``... for repeats); params: its per-type parameter pytree; positions (N, 3) nm;
    masses (N,) amu; space; force_index: term name -> index of the OpenMM force;
    topology: the ``openmm.app.Topology`` (or None); system: the OpenMM ``System`` it came from;
    constraint_pairs: (C, 2) atom pairs and constraint_distances (C,) nm from the System;
    notes: what was skipped and why; forcefield_files: the force-field XML files it was made
    from (when known: saving and loading regroup parameters by their types). Units are
    molecular."""

    force_index: dict = field(default_factory=dict)
    system: Any = None
    constraint_pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    constraint_distances: np.ndarray = field(default_factory=lambda: np.zeros(0))
    notes: tuple = ()
    forcefield_files: tuple = ()

    def to_openmm(self, params=None):
        """An OpenMM ``System`` with ``params`` (default: the current, possibly fitted, ones)
        written into its forces (see :func:`workbench.forcefield.export.to_openmm`)."""
        from .export import to_openmm

        return to_openmm(self, params)

    def to_xml(self, path: str | None = None, params=None) -> str:
        """The OpenMM System with the current parameters as XML (``XmlSerializer``), written
        to ``path`` if given."""
        from .export import to_xml

        return to_xml(self, path, params)

    def type_names(self, term: str, param: str) -> tuple[str, ...]:
        """Force-field type of each entry of ``params[term][param]`` (e.g. the torsion types of
        ``PeriodicTorsionForce.k``, the residue-atom charge types of ``NonbondedForce.charge``)."""
        t = self.potential.terms[term]
        if isinstance(t, Nonbonded):
            if param == "charge":
                return tuple(t.charge_type_names)
            if param in ("sigma", "epsilon"):
                return tuple(t.lj_type_names)
            raise KeyError(f"{term}.{param} is not a per-type parameter")
        return tuple(t.type_names)

    def find_types(self, term: str, param: str, contains: str) -> dict[str, str]:
        """Parameters whose type name contains ``contains``: {flat name: type name}, with flat
        names as :class:`~workbench.session.Session` and the parameter panel use them
        (``"PeriodicTorsionForce.k[12]"``)."""
        names = self.type_names(term, param)
        return {f"{term}.{param}[{i}]": n for i, n in enumerate(names) if contains in n}

    def constraints(self):
        """The System's constraints as a :class:`~workbench.dynamics.constraints.Constraints`
        (rigid waters to SETTLE, the rest to the iterative solver), or None when it has none."""
        if self.constraint_set is not None:
            return self.constraint_set
        if self.system is None or self.system.getNumConstraints() == 0:
            return None
        from ..dynamics.constraints import constraints_from_openmm

        cons = constraints_from_openmm(self.system)
        object.__setattr__(self, "constraint_set", cons)  # a cache: built once per system
        return cons

    def term_energies(self, positions=None, params=None) -> dict[str, float]:
        """Energy of each term (kJ/mol) at ``positions`` (default: the start structure)."""
        r = jnp.asarray(self.positions if positions is None else positions)
        p = self.params if params is None else params
        aux = self.potential.allocate(np.asarray(r))
        return {k: float(v) for k, v in self.potential.term_energies(r, p, aux).items()}


# ---------------------------------------------------------------------------- helpers
def _value(q, unit=None) -> float:
    """A plain float from an OpenMM Quantity (in ``unit``) or a number."""
    return float(strip(q, unit))


def _space_for(system) -> spaces.Space:
    from openmm import unit

    periodic = system.usesPeriodicBoundaryConditions()
    if not periodic:
        return spaces.free()
    box = np.array([[_value(x, unit.nanometer) for x in v]
                    for v in system.getDefaultPeriodicBoxVectors()])
    if np.allclose(box, np.diag(np.diag(box))):
        return spaces.periodic(np.diag(box))
    return spaces.triclinic(box)


def _harmonic(term_class, rows, length_unit, force, space, labels):
    """HarmonicBond / HarmonicAngle from OpenMM rows (atoms..., rest value, force constant)."""
    from openmm import unit

    arity = term_class.arity
    atoms = [tuple(r[:arity]) for r in rows]
    vals = [(_value(r[arity], length_unit),
             _value(r[arity + 1], unit.kilojoule_per_mole / length_unit**2)) for r in rows]
    types, names, first = fftypes.group(atoms, vals, labels).arrays()
    term = term_class(np.asarray(atoms).reshape(-1, arity), types, names, space,
                      periodic=force.usesPeriodicBoundaryConditions())
    v = np.asarray(vals, float).reshape(-1, 2)[first] if len(first) else np.zeros((0, 2))
    rest, k = term_class.param_names[1], term_class.param_names[0]
    return term, term.init_params(**{rest: v[:, 0], k: v[:, 1]})


def _bonds(force, space, labels):
    from openmm import unit

    rows = [force.getBondParameters(i) for i in range(force.getNumBonds())]
    return _harmonic(HarmonicBond, rows, unit.nanometer, force, space, labels)


def _angles(force, space, labels):
    from openmm import unit

    rows = [force.getAngleParameters(i) for i in range(force.getNumAngles())]
    return _harmonic(HarmonicAngle, rows, unit.radian, force, space, labels)


def _torsions(force, space, labels):
    from openmm import unit

    rows = [force.getTorsionParameters(i) for i in range(force.getNumTorsions())]
    atoms = [tuple(r[:4]) for r in rows]
    vals = [(int(r[4]), _value(r[5], unit.radian), _value(r[6], unit.kilojoule_per_mole))
            for r in rows]
    table = fftypes.group(atoms, vals, labels, extra=[f"n={v[0]}" for v in vals])
    types, names, first = table.arrays()
    v = np.asarray(vals, float).reshape(-1, 3)[first] if len(first) else np.zeros((0, 3))
    term = PeriodicTorsion(np.asarray(atoms).reshape(-1, 4), types, names, space,
                           periodic=force.usesPeriodicBoundaryConditions(),
                           constants={"periodicity": v[:, 0].astype(np.int32)})
    return term, term.init_params(phase=v[:, 1], k=v[:, 2])


def _nonbonded(force, space, labels, positions):
    from openmm import unit

    from ..potentials import ewald

    method = force.getNonbondedMethod()
    if method >= len(METHODS):
        raise UnsupportedForceError("NonbondedForce with LJPME is not supported; use PME")
    if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
        raise UnsupportedForceError("NonbondedForce parameter offsets are not supported")
    n = force.getNumParticles()
    q, sig, eps = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        c, s, e = force.getParticleParameters(i)
        q[i] = _value(c, unit.elementary_charge)
        sig[i] = _value(s, unit.nanometer)
        eps[i] = _value(e, unit.kilojoule_per_mole)
    # charge types: residue template atom (amber takes charges from templates); LJ: atom type
    qt = fftypes.TypeTable()
    lt = fftypes.TypeTable()
    for i in range(n):
        if labels is not None:
            qt.add((labels.residue[i], labels.name[i], q[i]), f"{labels.residue[i]}:{labels.name[i]}")
            lt.add((labels.type[i], sig[i], eps[i]), labels.type[i])
        else:
            qt.add(q[i], f"q={q[i]:.6g}")
            lt.add((sig[i], eps[i]), f"sigma={sig[i]:.6g},epsilon={eps[i]:.6g}")
    q_types, q_names, q_first = qt.arrays()
    l_types, l_names, l_first = lt.arrays()

    exclusions, scaled, fixed, fixed_vals, ratios = [], [], [], [], []
    raw = []
    for k in range(force.getNumExceptions()):
        i, j, qq, s, e = force.getExceptionParameters(k)
        qq, s, e = (_value(qq, unit.elementary_charge**2), _value(s, unit.nanometer),
                    _value(e, unit.kilojoule_per_mole))
        exclusions.append((i, j))
        if qq == 0.0 and e == 0.0:
            continue
        raw.append((i, j, qq, s, e))
        if q[i] * q[j] != 0 and eps[i] * eps[j] != 0 and e != 0:
            ratios.append((round(qq / (q[i] * q[j]), 12), round(e / np.sqrt(eps[i] * eps[j]), 12)))
    c14, l14 = max(set(ratios), key=ratios.count) if ratios else (1.0 / 1.2, 0.5)
    for i, j, qq, s, e in raw:
        ok_q = np.isclose(qq, c14 * q[i] * q[j], rtol=1e-9, atol=1e-14)
        ok_e = np.isclose(e, l14 * np.sqrt(eps[i] * eps[j]), rtol=1e-9, atol=1e-14)
        ok_s = e == 0.0 or np.isclose(s, 0.5 * (sig[i] + sig[j]), rtol=1e-9, atol=1e-14)
        if ok_q and ok_e and ok_s:
            scaled.append((i, j))
        else:
            fixed.append((i, j))
            fixed_vals.append((qq, s, e))
    fv = np.asarray(fixed_vals, float).reshape(-1, 3)

    name = METHODS[method]
    cutoff = _value(force.getCutoffDistance(), unit.nanometer) if name != "NoCutoff" else None
    kw: dict[str, Any] = {}
    if name in ("Ewald", "PME"):
        tol = force.getEwaldErrorTolerance()
        box = np.asarray(space.box)
        if name == "PME":
            alpha, nx, ny, nz = force.getPMEParameters()
            alpha = _value(alpha, unit.nanometer**-1)
            if alpha == 0.0:
                alpha, grid = ewald.pme_parameters(cutoff, tol, box)
            else:
                grid = (nx, ny, nz)
            kw.update(ewald_alpha=alpha, pme_grid=tuple(int(g) for g in grid))
        else:
            alpha, kmax = ewald.ewald_parameters(cutoff, tol, box)
            kw.update(ewald_alpha=alpha, ewald_kmax=tuple(int(k) for k in kmax))
    if name != "NoCutoff" and force.getUseSwitchingFunction():
        kw["switch_distance"] = _value(force.getSwitchingDistance(), unit.nanometer)
    term = Nonbonded(
        space, name, q_types, l_types, np.asarray(exclusions, np.int32).reshape(-1, 2),
        np.asarray(scaled, np.int32).reshape(-1, 2), np.asarray(fixed, np.int32).reshape(-1, 2),
        cutoff=cutoff, dispersion_correction=bool(force.getUseDispersionCorrection())
        and name in ("CutoffPeriodic", "Ewald", "PME"),
        reaction_field_dielectric=force.getReactionFieldDielectric(),
        charge_type_names=q_names, lj_type_names=l_names, **kw)
    params = term.init_params(q[q_first], sig[l_first], eps[l_first], c14, l14,
                              fv[:, 0], fv[:, 1], fv[:, 2])
    return term, params


_CONVERTERS = {
    "HarmonicBondForce": _bonds,
    "HarmonicAngleForce": _angles,
    "PeriodicTorsionForce": _torsions,
}
_PLUGINS = ("workbench.forcefield.cmap", "workbench.forcefield.custom", "workbench.forcefield.gb")
"""Modules whose ``CONVERTERS`` dict (OpenMM force class -> ``converter(force, space, labels)
-> (term, params)``) extends the table above; each is imported when present."""


def converters() -> dict:
    """Every OpenMM force class that can be translated, with its converter."""
    import importlib

    table = dict(_CONVERTERS)
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        table.update(getattr(module, "CONVERTERS", {}))
    return table
_SKIPPED = {
    "CMMotionRemover": "CMMotionRemover skipped: workbench integrators handle the centre-of-mass "
                       "motion themselves (velocity Verlet conserves it; Langevin thermostats it)",
}


# ---------------------------------------------------------------------------- entry points
def from_system(system, positions, topology=None, *, forcefield=None) -> ForceFieldSystem:
    """Convert an OpenMM ``System`` (with ``positions`` (N, 3) nm or an OpenMM Quantity) into a
    :class:`ForceFieldSystem`. With ``forcefield`` (the ``openmm.app.ForceField`` that made the
    system) and ``topology``, parameters are grouped by force-field type; otherwise by value."""
    from openmm import unit

    n = system.getNumParticles()
    if hasattr(positions, "value_in_unit"):
        positions = positions.value_in_unit(unit.nanometer)
    r = np.asarray([[float(c) for c in p] for p in positions], dtype=float).reshape(-1, 3)
    if r.shape != (n, 3):
        raise ForceFieldError(f"positions have shape {r.shape}, the System has {n} particles")
    if not np.all(np.isfinite(r)):
        raise ForceFieldError("positions contain NaN or infinite values")
    virtual = [i for i in range(n) if system.isVirtualSite(i)]
    if virtual:
        raise UnsupportedForceError(
            f"virtual sites (particles {virtual[:5]}...) are not supported yet (4- and 5-site "
            "water models); use a 3-site water model such as tip3p")
    space = _space_for(system)
    labels = fftypes.atom_types(forcefield, topology) if forcefield is not None and \
        topology is not None else None
    terms, params, index, notes = {}, {}, {}, []
    table = converters()
    for k, force in enumerate(system.getForces()):
        cls = type(force).__name__
        if cls in _SKIPPED:
            notes.append(_SKIPPED[cls])
            continue
        if cls == "NonbondedForce":
            term, p = _nonbonded(force, space, labels, r)
        elif cls in table:
            term, p = table[cls](force, space, labels)
        else:
            raise UnsupportedForceError(
                f"force {k} ({cls}) is not supported by workbench.forcefield yet; supported: "
                f"{sorted([*table, 'NonbondedForce', *_SKIPPED])}")
        name = cls if cls not in terms else f"{cls}_{sum(t.startswith(cls) for t in terms) + 1}"
        terms[name], params[name], index[name] = term, p, k
    if not terms:
        raise ForceFieldError("the System has no forces that workbench can use")
    masses = np.array([_value(system.getParticleMass(i), unit.dalton) for i in range(n)])
    pairs, dists = [], []
    for c in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(c)
        pairs.append((i, j))
        dists.append(_value(d, unit.nanometer))
    return ForceFieldSystem(
        potential=Sum(terms), params=params, positions=r, masses=masses, space=space,
        topology=topology, units="molecular", name="forcefield", force_index=index,
        system=system, constraint_pairs=np.asarray(pairs, np.int32).reshape(-1, 2),
        constraint_distances=np.asarray(dists, float), notes=tuple(notes))


def load(pdb: str, forcefield_files=("amber14-all.xml",), **kwargs) -> ForceFieldSystem:
    """Build a system the OpenMM way from a PDB file: ``PDBFile(pdb)`` then
    :func:`from_topology` (same keyword arguments)."""
    from openmm import app

    if not os.path.exists(pdb):
        raise ForceFieldError(f"PDB file {pdb!r} not found")
    try:
        structure = app.PDBFile(pdb)
    except Exception as e:  # OpenMM raises bare Exceptions for malformed files
        raise ForceFieldError(f"could not read PDB file {pdb!r}: {e}") from e
    return from_topology(structure.topology, structure.positions, forcefield_files,
                         name=pdb, **kwargs)


def from_topology(topology, positions, forcefield_files=("amber14-all.xml",), *,
                  nonbonded_method: str = "NoCutoff", cutoff: float = 1.0,
                  constraints: str | None = None, rigid_water: bool = True,
                  switch_distance: float | None = None, dispersion_correction: bool = True,
                  ewald_error_tolerance: float = 5e-4, name: str = "topology",
                  **create_kwargs) -> ForceFieldSystem:
    """``ForceField(*forcefield_files).createSystem(topology, ...)``, then :func:`from_system`
    with force-field types. topology: ``openmm.app.Topology`` (e.g. from
    :func:`workbench.forcefield.builder.build_peptide`); positions (N, 3) nm.

    nonbonded_method: one of NoCutoff, CutoffNonPeriodic, CutoffPeriodic, Ewald, PME;
    cutoff (nm); constraints: None, 'HBonds', 'AllBonds' or 'HAngles'; other keyword arguments
    go to ``createSystem`` (e.g. ``implicitSolvent``)."""
    from openmm import app, unit

    if nonbonded_method not in METHODS:
        raise ForceFieldError(f"unknown nonbonded method {nonbonded_method!r}; choose one of {METHODS}")
    try:
        ff = app.ForceField(*forcefield_files)
    except Exception as e:
        raise ForceFieldError(f"could not load force field {list(forcefield_files)}: {e}") from e
    top = topology
    if nonbonded_method in ("CutoffPeriodic", "Ewald", "PME"):
        if top.getPeriodicBoxVectors() is None:
            raise ForceFieldError(f"{name} has no box (CRYST1 record), needed for "
                                  f"{nonbonded_method}")
        widths = np.diag(np.asarray(top.getPeriodicBoxVectors().value_in_unit(unit.nanometer)))
        if cutoff > 0.5 * widths.min():
            raise ForceFieldError(f"cutoff {cutoff} nm is longer than half the box "
                                  f"({0.5 * widths.min():.3f} nm): use a bigger box or a shorter cutoff")
    kwargs = dict(nonbondedMethod=getattr(app, nonbonded_method), rigidWater=rigid_water,
                  constraints=None if constraints is None else getattr(app, constraints))
    if nonbonded_method != "NoCutoff":
        kwargs["nonbondedCutoff"] = cutoff * unit.nanometer
        kwargs["switchDistance"] = None if switch_distance is None else switch_distance * unit.nanometer
        kwargs["useDispersionCorrection"] = dispersion_correction
        kwargs["ewaldErrorTolerance"] = ewald_error_tolerance
    kwargs.update(create_kwargs)
    try:
        system = ff.createSystem(top, **kwargs)
    except ValueError as e:  # missing templates, unknown residues
        raise ForceFieldError(f"{name}: {e}") from e
    out = from_system(system, positions, top, forcefield=ff)
    return out.replace(forcefield_files=tuple(forcefield_files), name=os.path.basename(name))
