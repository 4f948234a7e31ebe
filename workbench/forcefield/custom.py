"""OpenMM's custom bonded and external forces as energy terms, and the converters of every custom
force (``CONVERTERS``, read by :func:`workbench.forcefield.openmm.converters`).

Each force's energy expression is translated once (:class:`~.custom_common.CustomExpression`)
and evaluated over all instances at once. Forms, variables and conventions are OpenMM's:

* :class:`CustomBond` (``CustomBondForce``): ``r``, the distance of the two atoms (nm);
* :class:`CustomAngle` (``CustomAngleForce``): ``theta``, the angle at the middle atom (rad, in
  [0, pi]);
* :class:`CustomTorsion` (``CustomTorsionForce``): ``theta``, the dihedral (rad, in (-pi, pi],
  IUPAC sign: the same angle as PeriodicTorsionForce's);
* :class:`CustomExternal` (``CustomExternalForce``): ``x, y, z``, the atom's coordinates as given
  (not wrapped into the box), and ``periodicdistance(x1, y1, z1, x2, y2, z2)``, the
  minimum-image distance in the call-time box;
* :class:`CustomCompoundBond` (``CustomCompoundBondForce``): ``x1, y1, z1, ...`` the coordinates
  of the bond's particles, ``distance(p1, p2)``, ``angle(p1, p2, p3)`` (at p2),
  ``dihedral(p1, p2, p3, p4)``, and their coordinate forms ``pointdistance`` (6 arguments),
  ``pointangle`` (9), ``pointdihedral`` (12); with ``usesPeriodicBoundaryConditions`` every
  displacement inside them is a minimum image (coordinates themselves stay as given);
  tabulated functions.

Parameters (numeric, one flat dict keyed by the force's own names): per-instance parameters
become per-*type* arrays (T,): instances with the same parameter values and, with force-field
labels, the same atom classes share a type (:func:`~workbench.forcefield.fftypes.group`), so
tuning a type moves all its instances; global parameters are scalars (); discrete tabulated
functions are arrays of their table values (indexed [x, y, z]). The expression, the atoms and
the type assignment are structural. Energy-parameter derivatives that a force requests are not
computed separately: ``jax.grad`` with respect to the parameters gives them. Forces come from
autodiff; units are OpenMM's (nm, rad, kJ/mol).

CustomNonbondedForce lives in :mod:`.custom_nonbonded`; CustomGBForce in :mod:`.gb`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from ..potentials.bonded import BondedTerm, bond_angles, bond_lengths, dihedral_angles
from ..space import Space
from . import fftypes
from .custom_common import (
    CustomExpression,
    ParameterLayout,
    check_names,
    force_label,
    global_parameters,
    tabulated_functions,
    unsupported,
)
from .expression import Call, Expr, Name, substitute

Array = jax.Array

__all__ = [
    "CONVERTERS",
    "CustomAngle",
    "CustomBond",
    "CustomBonded",
    "CustomCompoundBond",
    "CustomExternal",
    "CustomTorsion",
    "geometric_functions",
]


# ---------------------------------------------------------------------------- geometry
def _norm(dx: Array, dy: Array, dz: Array) -> Array:
    """sqrt(dx^2 + dy^2 + dz^2) with derivative 0 (not NaN) at 0, as OpenMM's pointdistance."""
    r2 = dx * dx + dy * dy + dz * dz
    pos = r2 > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)


def geometric_functions(space: Space | None) -> dict:
    """``pointdistance``, ``pointangle``, ``pointdihedral`` (and ``periodicdistance``) as
    elementwise functions of coordinate arrays; every displacement inside is a minimum image in
    ``space`` (None or a free space: plain differences), as OpenMM's point functions."""

    def delta(a, b):  # a - b, each a tuple of 3 coordinate arrays
        d = tuple(jnp.broadcast_arrays(*(u - v for u, v in zip(a, b))))
        if space is not None and space.periodic:
            d = space.displacement_components(*d)
        return jnp.stack(jnp.broadcast_arrays(*d), -1)

    def pointdistance(*c):
        d = delta(c[0:3], c[3:6])
        return _norm(d[..., 0], d[..., 1], d[..., 2])

    def pointangle(*c):  # angle at p2 between p1 and p3
        a, b = delta(c[0:3], c[3:6]), delta(c[6:9], c[3:6])
        zero = jnp.zeros_like(a)
        return bond_angles(zero + a, zero, zero + b)

    def pointdihedral(*c):
        b1, b2, b3 = delta(c[3:6], c[0:3]), delta(c[6:9], c[3:6]), delta(c[9:12], c[6:9])
        b1, b2, b3 = jnp.broadcast_arrays(b1, b2, b3)
        r0 = jnp.zeros_like(b1)
        return dihedral_angles(r0, b1, b1 + b2, b1 + b2 + b3)

    return {"pointdistance": pointdistance, "pointangle": pointangle,
            "pointdihedral": pointdihedral, "periodicdistance": pointdistance}


_GEOMETRIC_ARITY = {"pointdistance": 6, "pointangle": 9, "pointdihedral": 12}


# ---------------------------------------------------------------------------- terms
@dataclass(frozen=True, eq=False)
class CustomBonded(BondedTerm):
    """Base of the custom bonded terms: M instances over atom tuples (``indices`` (M, k),
    ``types`` (M,), ``type_names`` as :class:`~workbench.potentials.bonded.BondedTerm`), an
    ``expression`` (:class:`~.custom_common.CustomExpression`) and the parameter ``layout``
    (per-type, global and table names). ``periodic``: minimum-image geometry (OpenMM's
    ``usesPeriodicBoundaryConditions``). All structural; parameters as the module docstring."""

    expression: CustomExpression | None = None
    layout: ParameterLayout = field(default_factory=ParameterLayout)

    coordinates: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        super().__post_init__()
        if self.expression is None:
            raise ValueError(f"{type(self).__name__} needs an expression")
        if self.layout.n_types != self.n_types:
            raise ValueError(f"{type(self).__name__}: layout has {self.layout.n_types} types, "
                             f"the term {self.n_types}")

    @property
    def param_names(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*self.layout.per_type, *self.layout.globals, *self.layout.tables)

    def init_params(self, **values) -> dict[str, Array]:
        """The parameter dict: per-type names (T,) (a scalar is broadcast), globals (),
        tables (their shape); every name is required."""
        return self.layout.init(type(self).__name__, values)

    def instance_params(self, params) -> dict[str, Array]:
        """Per-instance view (M,) of the per-type parameters (globals and tables left out)."""
        t = jnp.asarray(self.types)
        return {k: jnp.asarray(params[k])[t] for k in self.layout.per_type}

    def coordinate_values(self, positions: Array, box=None) -> dict[str, Array]:
        """The expression's geometric variables, (M,) each."""
        raise NotImplementedError

    def geometric(self, box) -> dict | None:
        """Implementations of the point functions the expression may call."""
        return None

    def instance_energies(self, positions, params, box=None):
        _, globals_, tables = self.layout.split(params)
        values = {**self.coordinate_values(positions, box), **self.instance_params(params),
                  **globals_}
        e = self.expression({k: values[k] for k in self.expression.variables}, tables,
                            self.geometric(box))
        return jnp.broadcast_to(e, (self.n_instances,))


@dataclass(frozen=True, eq=False)
class CustomBond(CustomBonded):
    """OpenMM ``CustomBondForce``: E(r, parameters) per atom pair; r in nm."""

    arity: ClassVar[int] = 2
    coordinates: ClassVar[tuple[str, ...]] = ("r",)

    def coordinate_values(self, positions, box=None):
        return {"r": bond_lengths(*self._points(positions, box))}


@dataclass(frozen=True, eq=False)
class CustomAngle(CustomBonded):
    """OpenMM ``CustomAngleForce``: E(theta, parameters) per triple; theta (rad) at the middle
    atom, in [0, pi]."""

    arity: ClassVar[int] = 3
    coordinates: ClassVar[tuple[str, ...]] = ("theta",)

    def coordinate_values(self, positions, box=None):
        return {"theta": bond_angles(*self._points(positions, box))}


@dataclass(frozen=True, eq=False)
class CustomTorsion(CustomBonded):
    """OpenMM ``CustomTorsionForce``: E(theta, parameters) per quadruple; theta the dihedral
    (rad) in (-pi, pi], IUPAC sign (as PeriodicTorsionForce)."""

    arity: ClassVar[int] = 4
    coordinates: ClassVar[tuple[str, ...]] = ("theta",)

    def coordinate_values(self, positions, box=None):
        return {"theta": dihedral_angles(*self._points(positions, box))}


@dataclass(frozen=True, eq=False)
class CustomExternal(CustomBonded):
    """OpenMM ``CustomExternalForce``: E(x, y, z, parameters) per particle; x, y, z (nm) as
    given (not wrapped). ``periodicdistance(x1, y1, z1, x2, y2, z2)`` is the minimum-image
    distance in the call-time box."""

    arity: ClassVar[int] = 1
    coordinates: ClassVar[tuple[str, ...]] = ("x", "y", "z")

    def coordinate_values(self, positions, box=None):
        r = positions[self.indices[:, 0]]
        return {"x": r[:, 0], "y": r[:, 1], "z": r[:, 2]}

    def geometric(self, box):
        return geometric_functions(self.box_space(box) if self.space.periodic else None)


@dataclass(frozen=True, eq=False)
class CustomCompoundBond(CustomBonded):
    """OpenMM ``CustomCompoundBondForce``: E(x1, y1, z1, ..., parameters) per bond of
    ``particles_per_bond`` atoms; ``distance``/``angle``/``dihedral`` of particles p1, p2, ...
    are rewritten into the point functions (see the module docstring)."""

    particles_per_bond: int = 2

    @property
    def arity(self) -> int:  # type: ignore[override]
        return self.particles_per_bond

    @property
    def coordinates(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(f"{c}{i + 1}" for i in range(self.particles_per_bond) for c in "xyz")

    def coordinate_values(self, positions, box=None):
        out = {}
        for i in range(self.particles_per_bond):
            r = positions[self.indices[:, i]]
            out.update({f"x{i + 1}": r[:, 0], f"y{i + 1}": r[:, 1], f"z{i + 1}": r[:, 2]})
        return out

    def geometric(self, box):
        periodic = self.periodic and self.space.periodic
        return geometric_functions(self.box_space(box) if periodic else None)


# ---------------------------------------------------------------------------- converters
def _compound_rewrite(n: int, owner: str, source: str):
    """distance(pa, pb) -> pointdistance(xa, ya, za, xb, yb, zb), likewise angle, dihedral."""
    names = {"distance": "pointdistance", "angle": "pointangle", "dihedral": "pointdihedral"}
    arity = {"distance": 2, "angle": 3, "dihedral": 4}

    def replace(node: Expr):
        if not (isinstance(node, Call) and node.function in names):
            return None
        if len(node.args) != arity[node.function]:
            raise unsupported(owner, f"{node.function}() takes {arity[node.function]} particles, "
                                     f"got {len(node.args)}", source)
        coords = []
        for a in node.args:
            ok = isinstance(a, Name) and a.name[:1] == "p" and a.name[1:].isdigit() and \
                1 <= int(a.name[1:]) <= n
            if not ok:
                raise unsupported(owner, f"{node.function}() takes particles p1..p{n}, got "
                                         f"{a}", source)
            coords += [Name(f"{c}{a.name[1:]}") for c in "xyz"]
        return Call(names[node.function], tuple(coords))

    return lambda tree: substitute(tree, replace)


_KINDS = {
    # class: (term, count, get instance, per-instance parameter name getter, symmetric)
    "CustomBondForce": (CustomBond, "getNumBonds", "getBondParameters",
                        "getPerBondParameterName", "getNumPerBondParameters", True),
    "CustomAngleForce": (CustomAngle, "getNumAngles", "getAngleParameters",
                         "getPerAngleParameterName", "getNumPerAngleParameters", True),
    "CustomTorsionForce": (CustomTorsion, "getNumTorsions", "getTorsionParameters",
                           "getPerTorsionParameterName", "getNumPerTorsionParameters", True),
    "CustomExternalForce": (CustomExternal, "getNumParticles", "getParticleParameters",
                            "getPerParticleParameterName", "getNumPerParticleParameters", True),
    "CustomCompoundBondForce": (CustomCompoundBond, "getNumBonds", "getBondParameters",
                                "getPerBondParameterName", "getNumPerBondParameters", False),
}


def _convert_bonded(force, space: Space, labels=None):
    """Any force of :data:`_KINDS` -> (term, params); see the module docstring."""
    cls_name = type(force).__name__
    term_cls, count, get, pname, npar, symmetric = _KINDS[cls_name]
    owner = force_label(force)
    source = force.getEnergyFunction()
    per = [getattr(force, pname)(i) for i in range(getattr(force, npar)())]
    glob = global_parameters(force)
    tabs = tabulated_functions(force) if hasattr(force, "getNumTabulatedFunctions") else {}
    rows = [getattr(force, get)(i) for i in range(getattr(force, count)())]
    if cls_name == "CustomCompoundBondForce":
        n = force.getNumParticlesPerBond()
        atoms = [tuple(int(a) for a in r[0]) for r in rows]
        vals = [tuple(float(v) for v in r[1]) for r in rows]
        coords = [f"{c}{i + 1}" for i in range(n) for c in "xyz"]
        extra = {"rewrite": _compound_rewrite(n, owner, source), "geometric": _GEOMETRIC_ARITY}
        term_kwargs = {"particles_per_bond": n}
        width = n
    else:
        k = term_cls.arity
        atoms = [tuple(int(a) for a in r[:k]) for r in rows]
        vals = [tuple(float(v) for v in r[k]) for r in rows]
        coords = list(term_cls.coordinates)
        extra = {"geometric": {"periodicdistance": 6}} if term_cls is CustomExternal else {}
        term_kwargs = {}
        width = k
    check_names(owner, source, {"coordinate": coords, "per-instance parameter": per,
                                "global parameter": list(glob), "tabulated function": list(tabs)})
    expression = CustomExpression(source, [*coords, *per, *glob], tables=tabs, owner=owner,
                                  **extra)
    table = fftypes.group(atoms, vals, labels, symmetric=symmetric)
    types, names, first = table.arrays()
    v = np.asarray(vals, float).reshape(len(rows), len(per))[first]
    layout = ParameterLayout(tuple(per), tuple(glob), tuple(expression.tables), len(names),
                             {k: t.shape for k, t in expression.tables.items()})
    periodic = bool(force.usesPeriodicBoundaryConditions())
    term = term_cls(np.asarray(atoms, np.int32).reshape(len(rows), width), types, names, space,
                    periodic=periodic, expression=expression, layout=layout, **term_kwargs)
    values = {p: v[:, i] for i, p in enumerate(per)}
    values.update(glob)
    values.update(expression.tables)
    return term, term.init_params(**values)


def _convert_nonbonded(force, space, labels=None):
    from .custom_nonbonded import from_openmm_force

    return from_openmm_force(force, space, labels)


CONVERTERS = {name: _convert_bonded for name in _KINDS}
CONVERTERS["CustomNonbondedForce"] = _convert_nonbonded
"""OpenMM force class -> ``converter(force, space, labels) -> (term, params)``."""
