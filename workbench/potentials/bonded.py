"""Bonded terms: harmonic bonds and angles, periodic torsions, CMAP-free valence terms.

A bonded term holds M instances of one functional form over fixed atom tuples (``indices``
(M, k), structural) and a table of *types*: every instance points to one row (``types`` (M,)),
and the parameters are per-type arrays (T,). Tuning one type's parameter therefore moves every
instance of it (one torsion type's barrier, one bond type's length); :meth:`instance_params`
gives the per-instance view. Forms and units follow OpenMM:

* :class:`HarmonicBond`: 0.5 k (r - r0)^2, k kJ/mol/nm^2, r0 nm;
* :class:`HarmonicAngle`: 0.5 k (theta - theta0)^2, k kJ/mol/rad^2, theta0 rad;
* :class:`PeriodicTorsion`: k (1 + cos(n phi - phase)), k kJ/mol, phase rad, n integer
  (structural, per type).

Geometry is computed in forms whose derivatives are finite everywhere except at true
singularities (angles by ``atan2(|a x b|, a . b)``, not ``arccos``). Forces come from autodiff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import space as spaces
from ..space import Space
from .base import EnergyTerm

Array = jax.Array

__all__ = [
    "BondedTerm", "HarmonicBond", "HarmonicAngle", "PeriodicTorsion", "bond_lengths",
    "bond_angles", "dihedral_angles",
]


def bond_lengths(r0: Array, r1: Array) -> Array:
    """|r1 - r0| (nm) for displacement-ready positions (..., 3)."""
    d = r1 - r0
    return jnp.sqrt(jnp.sum(d * d, -1))


def bond_angles(r0: Array, r1: Array, r2: Array) -> Array:
    """Angle at r1 between r0 and r2 (rad), in [0, pi]."""
    a, b = r0 - r1, r2 - r1
    cross = jnp.cross(a, b)
    return jnp.arctan2(jnp.sqrt(jnp.sum(cross * cross, -1)), jnp.sum(a * b, -1))


def dihedral_angles(r0: Array, r1: Array, r2: Array, r3: Array) -> Array:
    """Dihedral angle of r0-r1-r2-r3 (rad) in (-pi, pi], IUPAC sign convention (as OpenMM)."""
    b1, b2, b3 = r1 - r0, r2 - r1, r3 - r2
    n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
    b2n = jnp.sqrt(jnp.sum(b2 * b2, -1))
    y = b2n * jnp.sum(b1 * n2, -1)
    x = jnp.sum(n1 * n2, -1)
    return jnp.arctan2(y, x)


@dataclass(frozen=True, eq=False)
class BondedTerm(EnergyTerm):
    """M instances of a valence form over atom tuples, with per-type parameters.

    indices: (M, k) atom indices (structural). types: (M,) row of each instance in the type
    table (default: one type per instance). type_names: a name per type (e.g. ``"CT-CT"``).
    space: boundary conditions; ``periodic``: measure the geometry with the minimum image
    (OpenMM's ``usesPeriodicBoundaryConditions``; molecules are otherwise kept whole).
    ``constants``: per-type structural values of the form (torsion periodicities).
    """

    indices: np.ndarray
    types: np.ndarray | None = None
    type_names: Sequence[str] | None = None
    space: Space = field(default_factory=spaces.free)
    periodic: bool = False
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)

    arity: ClassVar[int] = 2
    param_names: ClassVar[tuple[str, ...]] = ()
    units: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self):
        idx = np.asarray(self.indices, dtype=np.int32).reshape(-1, self.arity)
        if idx.size and idx.min() < 0:
            raise ValueError(f"{type(self).__name__}: negative atom index in {idx[idx.min(1) < 0][:3]}")
        types = np.arange(len(idx), dtype=np.int32) if self.types is None else \
            np.asarray(self.types, dtype=np.int32)
        if types.shape != (len(idx),):
            raise ValueError(f"{type(self).__name__}: types must have shape ({len(idx)},), "
                             f"got {types.shape}")
        n_types = int(types.max()) + 1 if len(types) else 0
        names = tuple(self.type_names) if self.type_names is not None else \
            tuple(f"{type(self).__name__}[{i}]" for i in range(n_types))
        if len(names) != n_types:
            raise ValueError(f"{type(self).__name__}: {len(names)} type names for {n_types} types")
        object.__setattr__(self, "indices", idx)
        object.__setattr__(self, "types", types)
        object.__setattr__(self, "type_names", names)
        object.__setattr__(self, "constants",
                           {k: np.asarray(v) for k, v in self.constants.items()})

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    @property
    def n_instances(self) -> int:
        return len(self.indices)

    def param_units(self) -> dict[str, str]:
        return dict(self.units)

    def init_params(self, **values) -> dict[str, Array]:
        """Per-type parameter arrays (T,) from sequences; every name is required."""
        unknown, missing = set(values) - set(self.param_names), set(self.param_names) - set(values)
        if unknown or missing:
            raise TypeError(f"{type(self).__name__} parameters are {list(self.param_names)}; "
                            f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        out = {}
        for k in self.param_names:
            v = np.asarray(values[k], dtype=float)
            v = np.broadcast_to(v, (self.n_types,)) if v.ndim == 0 else v
            if v.shape != (self.n_types,):
                raise ValueError(f"{type(self).__name__} parameter {k!r} needs {self.n_types} "
                                 f"values (one per type), got shape {v.shape}")
            out[k] = jnp.asarray(v, dtype=jnp.result_type(float))
        return out

    def instance_params(self, params: Mapping[str, Array]) -> dict[str, Array]:
        """Per-instance view (M,) of the per-type parameters."""
        t = jnp.asarray(self.types)
        return {k: jnp.asarray(v)[t] for k, v in params.items()}

    def _points(self, positions: Array, box) -> list[Array]:
        """The k atoms of every instance, (M, 3) each, made whole: with ``periodic``, each
        atom is placed at the minimum image of its predecessor."""
        pts = [positions[self.indices[:, a]] for a in range(self.arity)]
        if self.periodic and self.space.periodic:
            sp = self.box_space(box)
            for a in range(1, self.arity):
                pts[a] = pts[a - 1] + sp.displacement(pts[a], pts[a - 1])
        return pts

    def instance_energies(self, positions: Array, params, box=None) -> Array:
        """Energy of each instance (M,) kJ/mol."""
        raise NotImplementedError

    def energy(self, positions, params, aux=None, box=None):
        if self.n_instances == 0:
            return jnp.zeros((), positions.dtype)
        return jnp.sum(self.instance_energies(positions, params, box))


@dataclass(frozen=True, eq=False)
class HarmonicBond(BondedTerm):
    """0.5 k (r - r0)^2 over bonded pairs. Parameters: k (kJ/mol/nm^2), r0 (nm)."""

    arity: ClassVar[int] = 2
    param_names: ClassVar[tuple[str, ...]] = ("k", "r0")
    units: ClassVar[Mapping[str, str]] = {"k": "kJ/mol/nm^2", "r0": "nm"}

    def instance_energies(self, positions, params, box=None):
        p = self.instance_params(params)
        r = bond_lengths(*self._points(positions, box))
        return 0.5 * p["k"] * (r - p["r0"]) ** 2


@dataclass(frozen=True, eq=False)
class HarmonicAngle(BondedTerm):
    """0.5 k (theta - theta0)^2 over angle triples. Parameters: k (kJ/mol/rad^2), theta0
    (rad)."""

    arity: ClassVar[int] = 3
    param_names: ClassVar[tuple[str, ...]] = ("k", "theta0")
    units: ClassVar[Mapping[str, str]] = {"k": "kJ/mol/rad^2", "theta0": "rad"}

    def instance_energies(self, positions, params, box=None):
        p = self.instance_params(params)
        theta = bond_angles(*self._points(positions, box))
        return 0.5 * p["k"] * (theta - p["theta0"]) ** 2


@dataclass(frozen=True, eq=False)
class PeriodicTorsion(BondedTerm):
    """k (1 + cos(n phi - phase)) over dihedral quadruples. Parameters: k (kJ/mol), phase
    (rad); the periodicity n is structural (``constants["periodicity"]``, one per type)."""

    arity: ClassVar[int] = 4
    param_names: ClassVar[tuple[str, ...]] = ("k", "phase")
    units: ClassVar[Mapping[str, str]] = {"k": "kJ/mol", "phase": "rad"}

    def __post_init__(self):
        super().__post_init__()
        n = np.asarray(self.constants.get("periodicity", ()), dtype=np.int32)
        if n.shape != (self.n_types,):
            raise ValueError(f"PeriodicTorsion needs constants['periodicity'] with one integer per "
                             f"type ({self.n_types}), got shape {n.shape}")
        self.constants["periodicity"] = n

    def instance_energies(self, positions, params, box=None):
        p = self.instance_params(params)
        n = jnp.asarray(self.constants["periodicity"][self.types], positions.dtype)
        phi = dihedral_angles(*self._points(positions, box))
        return p["k"] * (1.0 + jnp.cos(n * phi - p["phase"]))
