"""OpenMM's ``CustomNonbondedForce`` as an energy term: any pair energy E(r, per-particle
parameters, global parameters), on the shared neighbor list.

The expression sees ``r`` (nm), each per-particle parameter ``p`` as ``p1`` and ``p2`` (the two
particles of the pair), computed values (``addComputedValue``: per-particle expressions of the
per-particle and global parameters) likewise, the global parameters, and the force's tabulated
functions. Everything as OpenMM's Reference platform does it:

* methods ``NoCutoff`` (every pair), ``CutoffNonPeriodic`` and ``CutoffPeriodic`` (pairs with
  r < cutoff; the latter with minimum images): no reaction field or shift, the expression as is;
* the switching function S(t) = 1 - 10 t^3 + 15 t^4 - 6 t^5, t = (r - r_switch) / (r_cut -
  r_switch), multiplying E for r > r_switch (cutoff methods only);
* exclusions: excluded pairs do not interact. The pair loop masks them with per-particle bit
  masks over index offsets (:mod:`workbench.potentials.exclusions`); exclusions too far apart in
  index for the masks (rare: disulfide bridges, unusual atom orders) are subtracted pair by pair
  after the loop. Masking rather than subtracting keeps single precision accurate: charmm36's
  excluded 1-2 and 1-3 pairs carry ~1e7 kJ/mol of r^-12 energy that a subtraction would have to
  cancel;
* interaction groups: only pairs with one particle in a group's first set and the other in its
  second set interact, once per group that contains the pair (OpenMM's loops); memberships are
  per-particle bit masks, so the pair loop applies them without a per-pair table;
* the long-range correction (``setUseLongRangeCorrection``, CutoffPeriodic only): OpenMM's
  CustomNonbondedForceImpl::calcLongRangeCorrection, E_lrc = 2 pi N^2 / V * <J>, where J(a, b) =
  int_rc^inf E_ab(r) r^2 dr + int_rs^rc (1 - S) E_ab(r) r^2 dr for particle classes a, b,
  averaged over the N (N + 1) / 2 pairs (self pairs included; with interaction groups, over the
  pairs the groups define). Classes here are the parameter types (OpenMM's classes are distinct
  parameter vectors; splitting a class into types leaves the average unchanged). The integrals
  are Gauss-Legendre quadratures (the tail in x = rc / r on (0, 1)), evaluated in JAX, so the
  correction follows tuned parameters and the box (OpenMM integrates by an adaptive midpoint
  rule to a relative tolerance of 1e-5, in single precision).

Parameters (numeric, one flat dict keyed by the force's names): per-particle parameters as
per-*type* arrays (T,) (particles with equal values and, with force-field labels, the same atom
class share a type), global parameters as scalars (), discrete tabulated functions as arrays of
their values (charmm36's NBFIX tables ``acoef``, ``bcoef``: indexed [type1, type2]), so every one
is tunable. The expression, particle types, exclusions, groups, method, cutoff and switching
distance are structural. Units: nm, kJ/mol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .. import space as spaces
from ..units import strip
from ..potentials import exclusions as exclusion_masks
from ..potentials.pairloop import (CutoffPairTerm, block_virial, energy_and_forces,
                                   finish_virial, pair_blocks, row_forces)
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

Array = jax.Array

__all__ = ["METHODS", "CustomNonbonded", "from_openmm_force"]

METHODS = ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic")
"""OpenMM's CustomNonbondedForce methods, in the order of its enumeration."""
_TAIL = np.polynomial.legendre.leggauss(64)
_SWITCH = np.polynomial.legendre.leggauss(48)


def _switch(t):
    """OpenMM's switching function S(t), t in [0, 1]."""
    return 1.0 + t**3 * (-10.0 + t * (15.0 - 6.0 * t))


def _group_bits(groups, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle membership masks (N, W) uint32 of the groups' first and second sets (bit g
    of word g // 32 for group g)."""
    words = max(1, -(-len(groups) // 32))
    bits = np.zeros((2, n, words), np.uint32)
    for g, sets in enumerate(groups):
        for side, members in enumerate(sets):
            bits[side, np.asarray(members, np.int64), g // 32] |= np.uint32(1 << (g % 32))
    return bits[0], bits[1]


def _popcount(x) -> Array:
    return jax.lax.population_count(x).astype(jnp.int32)


@dataclass(frozen=True, eq=False)
class CustomNonbonded(CutoffPairTerm):
    """A CustomNonbondedForce over N particles (see the module docstring).

    space: boundary conditions (periodic for CutoffPeriodic, else free). method: one of
    :data:`METHODS`. particle_types: (N,) the parameter type of each particle; type_names: one
    per type. expression: the pair energy (:class:`~.custom_common.CustomExpression`) in ``r``,
    ``<p>1``, ``<p>2`` for each per-particle parameter and computed value, and the globals.
    per_particle: the per-particle parameter names; computed: (name, expression of the
    per-particle and global parameters) pairs; layout: the parameter names (per-type = the
    per-particle parameters). exclusions: (E, 2) pairs that do not interact. groups: interaction
    groups, ((set1, set2), ...) of particle indices (empty: all pairs). cutoff, switch_distance
    (nm or None), long_range_correction, skin (neighbor-list skin, nm). All structural.
    """

    space: Space
    method: str
    particle_types: np.ndarray
    expression: CustomExpression
    layout: ParameterLayout
    per_particle: tuple[str, ...] = ()
    computed: tuple[tuple[str, CustomExpression], ...] = ()
    type_names: Sequence[str] | None = None
    exclusions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    groups: tuple = ()
    cutoff: float | None = None
    switch_distance: float | None = None
    long_range_correction: bool = False
    skin: float = 0.2

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown CustomNonbonded method {self.method!r}; choose one of "
                             f"{METHODS}")
        periodic = self.method == "CutoffPeriodic"
        if periodic != self.space.periodic:
            raise ValueError(f"method {self.method} needs a {'periodic' if periodic else 'free'} "
                             f"space, got {self.space.kind}")
        if self.method != "NoCutoff":
            if not (self.cutoff and self.cutoff > 0):
                raise ValueError(f"method {self.method} needs a positive cutoff")
            self.space.check_cutoff(self.cutoff + self.skin, "custom nonbonded cutoff + skin")
        if self.switch_distance is not None and not 0 <= self.switch_distance < (self.cutoff or 0):
            raise ValueError(f"switch_distance must lie in [0, cutoff), got {self.switch_distance}")
        if self.long_range_correction and not periodic:
            raise ValueError("the long-range correction needs CutoffPeriodic")
        if self.long_range_correction and "r" not in self.expression.variables:
            raise ValueError("the long-range correction needs an energy that depends on r")
        types = np.asarray(self.particle_types, np.int32).reshape(-1)
        n, n_types = len(types), self.layout.n_types
        if len(types) and (types.min() < 0 or types.max() >= n_types):
            raise ValueError(f"particle_types must lie in [0, {n_types})")
        names = tuple(self.type_names) if self.type_names is not None else \
            tuple(f"type{i}" for i in range(n_types))
        if len(names) != n_types:
            raise ValueError(f"{len(names)} type names for {n_types} types")
        excl = exclusion_masks.unique_pairs(self.exclusions)
        if excl.size and (excl.min() < 0 or excl.max() >= n):
            raise ValueError(f"exclusions index out of range for {n} particles")
        groups = tuple((np.unique(np.asarray(a, np.int32)), np.unique(np.asarray(b, np.int32)))
                       for a, b in self.groups)
        for a, b in groups:
            if (a.size and (a.min() < 0 or a.max() >= n)) or (b.size and (b.min() < 0 or b.max() >= n)):
                raise ValueError(f"interaction group index out of range for {n} particles")
        object.__setattr__(self, "particle_types", types)
        object.__setattr__(self, "type_names", names)
        object.__setattr__(self, "exclusions", excl)
        object.__setattr__(self, "groups", groups)
        bits = _group_bits(groups, n) if groups else None
        object.__setattr__(self, "_bits", bits)
        masks = exclusion_masks.build(excl, n)
        object.__setattr__(self, "_exclusion_masks", masks)
        far = masks.far if masks is not None else excl[:0]
        weights = np.ones(len(far))
        if bits is not None and len(far):
            i, j = far[:, 0], far[:, 1]
            both = (bits[0][i] & bits[1][j]) | (bits[1][i] & bits[0][j])
            weights = np.unpackbits(both.view(np.uint8), axis=-1).sum(-1).astype(float)
        object.__setattr__(self, "_far_exclusions", far)
        object.__setattr__(self, "_far_weights", weights)
        object.__setattr__(self, "_class_pairs", self._count_class_pairs())

    # ------------------------------------------------------------------ structure
    @property
    def n_particles(self) -> int:
        return len(self.particle_types)

    @property
    def n_types(self) -> int:
        return self.layout.n_types

    def init_params(self, **values) -> dict[str, Array]:
        """Per-particle parameters per type (T,), globals (), tables; every name required."""
        return self.layout.init("CustomNonbonded", values)

    def _count_class_pairs(self):
        """(a, b, count) of the type pairs a <= b the long-range correction averages over."""
        t, n_types = self.particle_types, self.n_types
        if not self.long_range_correction:
            return None
        if not self.groups:
            c = np.bincount(t, minlength=n_types).astype(float)
            counts = np.triu(np.outer(c, c), 1) + np.diag(c * (c + 1) / 2)
        else:
            counts = np.zeros((n_types, n_types))
            for a, b in self.groups:
                n1 = np.bincount(t[a], minlength=n_types).astype(float)
                n2 = np.bincount(t[b], minlength=n_types).astype(float)
                nb = np.bincount(t[np.intersect1d(a, b)], minlength=n_types).astype(float)
                m = np.outer(n1, n2)
                counts += np.triu(m + m.T, 1) + np.diag(np.diag(m))
                counts -= np.triu(np.outer(nb, nb), 1) + np.diag(nb * (nb + 1) / 2)
        a, b = np.nonzero(np.triu(counts) > 0)
        return a.astype(np.int32), b.astype(np.int32), counts[a, b]

    # ------------------------------------------------------------------ parameters
    def type_values(self, params) -> dict[str, Array]:
        """Per-type values (T,) of the per-particle parameters and computed values."""
        per, glob, tables = self.layout.split(params)
        out = dict(per)
        for name, expr in self.computed:
            env = {**per, **glob}
            v = expr({k: env[k] for k in expr.variables}, tables)
            out[name] = jnp.broadcast_to(v, (self.n_types,))
        return out

    def particle_values(self, params) -> dict[str, Array]:
        """Per-particle values (N,) of the per-particle parameters and computed values."""
        t = jnp.asarray(self.particle_types)
        return {k: v[t] for k, v in self.type_values(params).items()}

    # ------------------------------------------------------------------ pair physics
    def _energy_of(self, r, v1, v2, glob, tables):
        """The raw expression at distances ``r`` for particles with values v1, v2 (dicts)."""
        env = {"r": r, **glob}
        for k in v1:
            env[f"{k}1"], env[f"{k}2"] = v1[k], v2[k]
        e = self.expression({k: env[k] for k in self.expression.variables}, tables)
        return jnp.broadcast_to(e, jnp.broadcast_shapes(jnp.shape(e), jnp.shape(r)))

    def _pair_energy(self, r2, v1, v2, glob, tables, active=None, safe=None):
        """Energy of pairs (any shape), switched, zero at and beyond the cutoff and where
        ``active`` (a mask) is False. There the expression is evaluated at a safe distance and,
        with ``safe`` (per-particle values of a real particle), safe parameter values, so that
        padding slots (zeros) put no NaN into gradients (e.g. through sqrt(eps1*eps2))."""
        rc = self.pair_cutoff
        inside = r2 < rc * rc
        if active is not None:
            inside = inside & active
        r_safe = min(rc, 1.0)
        r = jnp.sqrt(jnp.where(inside, r2, r_safe * r_safe))
        if safe is not None:
            v1 = {k: jnp.where(inside, v, safe[k]) for k, v in v1.items()}
            v2 = {k: jnp.where(inside, v, safe[k]) for k, v in v2.items()}
        e = self._energy_of(r, v1, v2, glob, tables)
        if self.switch_distance is not None:
            rs = float(self.switch_distance)
            t = jnp.clip((r - rs) / (rc - rs), 0.0, 1.0)
            e = e * _switch(t)
        return jnp.where(inside, e, jnp.zeros((), e.dtype))

    def _pair_block(self, forces: bool, virial: bool = False):
        def per_block(dx, dy, dz, r2, ai, aj, shared):
            glob, tables, safe = shared
            vi, vj = ai["values"], aj["values"]
            weight = active = None
            if self._bits is not None:
                both = (ai["set1"] & aj["set2"]) | (ai["set2"] & aj["set1"])
                weight = jnp.sum(_popcount(both), -1).astype(r2.dtype)
            if self._exclusion_masks is not None:
                active = ~exclusion_masks.excluded(ai["id"], aj["id"], ai["excluded"])

            def u(r2):
                e = self._pair_energy(r2, vi, vj, glob, tables, active, safe)
                return e if weight is None else e * weight

            if not (forces or virial):
                return 0.5 * jnp.sum(u(r2))
            e, du = jax.jvp(u, (r2,), (jnp.ones_like(r2),))
            if virial:
                return 0.5 * jnp.sum(e), block_virial(-2.0 * du, dx, dy, dz)
            return 0.5 * jnp.sum(e), row_forces(-2.0 * du, dx, dy, dz)

        return per_block

    capabilities: ClassVar[frozenset] = frozenset({"pair_virial"})

    def _pair_virial(self, positions, params, aux, space, diagonal_only: bool):
        return self._pair_sum(positions, params, aux, space, False, virial=True,
                              diagonal_only=diagonal_only)

    def _pair_sum(self, positions, params, aux, space, forces: bool, virial: bool = False,
                  diagonal_only: bool = False):
        _, glob, tables = self.layout.split(params)
        values = self.particle_values(params)
        safe = {k: v[0] for k, v in values.items()}  # a real particle's values for masked slots
        atoms = {"values": values}
        if self._bits is not None:
            atoms["set1"], atoms["set2"] = jnp.asarray(self._bits[0]), jnp.asarray(self._bits[1])
        if self._exclusion_masks is not None:
            atoms["id"] = exclusion_masks.particle_ids(self.n_particles, positions.dtype)
            atoms["excluded"] = jnp.asarray(self._exclusion_masks.masks)
        if self.method == "NoCutoff":
            aux = None  # every pair, whatever list other terms share
        out, inverse = pair_blocks(positions, atoms, aux, space, self.pair_cutoff,
                                   self._pair_block(forces, virial), (glob, tables, safe))
        if virial:
            return finish_virial(out, diagonal_only)
        return energy_and_forces(out, inverse, positions.shape[0], forces)

    # ------------------------------------------------------------------ the rest
    def _explicit_energy(self, positions, params, space):
        """Excluded pairs far apart in index taken back out, plus the long-range correction."""
        _, glob, tables = self.layout.split(params)
        total = jnp.zeros((), positions.dtype)
        if len(self._far_exclusions):
            i, j = self._far_exclusions[:, 0], self._far_exclusions[:, 1]
            d = space.displacement(positions[i], positions[j]) if space.periodic else \
                positions[i] - positions[j]
            r2 = jnp.sum(d * d, -1)
            pv = self.particle_values(params)
            e = self._pair_energy(r2, {k: v[i] for k, v in pv.items()},
                                  {k: v[j] for k, v in pv.items()}, glob, tables)
            total = total - jnp.sum(jnp.asarray(self._far_weights, e.dtype) * e)
        if self.long_range_correction:
            total = total + self.long_range_energy(params, space.volume)
        return total

    def long_range_energy(self, params, volume) -> Array:
        """OpenMM's long-range correction (kJ/mol) for box volume ``volume`` (nm^3); see the
        module docstring."""
        a, b, counts = self._class_pairs
        _, glob, tables = self.layout.split(params)
        tv = self.type_values(params)
        v1 = {k: v[a][:, None] for k, v in tv.items()}
        v2 = {k: v[b][:, None] for k, v in tv.items()}
        dtype = jnp.result_type(float)
        rc = float(self.cutoff)
        x, w = 0.5 * (_TAIL[0] + 1.0), 0.5 * _TAIL[1]  # nodes and weights on (0, 1)
        e = self._energy_of(jnp.asarray(rc / x, dtype)[None, :], v1, v2, glob, tables)
        integral = rc**3 * jnp.sum(jnp.asarray(w / x**4, dtype)[None, :] * e, -1)
        if self.switch_distance is not None:
            rs = float(self.switch_distance)
            x, w = _SWITCH
            r = 0.5 * (rc - rs) * x + 0.5 * (rc + rs)
            weight = 0.5 * (rc - rs) * w * (1.0 - _switch((r - rs) / (rc - rs))) * r * r
            e = self._energy_of(jnp.asarray(r, dtype)[None, :], v1, v2, glob, tables)
            integral = integral + jnp.sum(jnp.asarray(weight, dtype)[None, :] * e, -1)
        n = float(self.n_particles)
        mean = jnp.sum(jnp.asarray(counts, dtype) * integral) / (n * (n + 1) / 2)
        return 2.0 * np.pi * n * n * mean / volume

    # ------------------------------------------------------------------ contract


# ---------------------------------------------------------------------------- converter
def from_openmm_force(force, space: Space, labels=None) -> tuple[CustomNonbonded, dict]:
    """Convert an ``openmm.CustomNonbondedForce`` into ``(CustomNonbonded, params)``.

    space: the System's space (the term uses it for CutoffPeriodic, a free space otherwise);
    labels: per-atom :class:`~workbench.forcefield.fftypes.AtomTypes` or None (types then by
    parameter values alone). Raises UnsupportedForceError (naming the force and the expression)
    for what cannot be translated."""
    from openmm import unit

    owner = force_label(force)
    source = force.getEnergyFunction()
    method_id = force.getNonbondedMethod()
    if not 0 <= method_id < len(METHODS):
        raise unsupported(owner, f"unknown nonbonded method {method_id}", source)
    method = METHODS[method_id]
    per = [force.getPerParticleParameterName(i) for i in range(force.getNumPerParticleParameters())]
    glob = global_parameters(force)
    tabs = tabulated_functions(force)
    computed = [tuple(force.getComputedValueParameters(i))
                for i in range(force.getNumComputedValues())]
    cnames = [c[0] for c in computed]
    check_names(owner, source, {"per-particle parameter": per, "computed value": cnames,
                                "global parameter": list(glob), "tabulated function": list(tabs)})
    pair_vars = ["r", *[f"{p}{k}" for p in (*per, *cnames) for k in (1, 2)], *glob]
    expression = CustomExpression(source, pair_vars, tables=tabs, owner=owner)
    computed_exprs = tuple((name, CustomExpression(text, [*per, *glob], tables=tabs,
                                                   owner=f"{owner}, computed value {name!r}"))
                           for name, text in computed)
    n = force.getNumParticles()
    vals = [tuple(float(v) for v in force.getParticleParameters(i)) for i in range(n)]
    table = fftypes.group([(i,) for i in range(n)], vals, labels)
    types, names, first = table.arrays()
    v = np.asarray(vals, float).reshape(n, len(per))[first]
    layout = ParameterLayout(tuple(per), tuple(glob), tuple(expression.tables), len(names),
                             {k: t.shape for k, t in expression.tables.items()})
    cutoff = float(strip(force.getCutoffDistance(), unit.nanometer))
    switch = None
    if method != "NoCutoff" and force.getUseSwitchingFunction():
        s = force.getSwitchingDistance()
        switch = float(strip(s, unit.nanometer))
    lrc = bool(force.getUseLongRangeCorrection()) and method == "CutoffPeriodic"
    if lrc and "r" not in expression.variables:
        raise unsupported(owner, "the long-range correction needs an energy that depends on r",
                          source)
    exclusions = np.asarray([force.getExclusionParticles(k) for k in range(force.getNumExclusions())],
                            np.int32).reshape(-1, 2)
    groups = tuple((tuple(a), tuple(b)) for a, b in
                   (force.getInteractionGroupParameters(g)
                    for g in range(force.getNumInteractionGroups())))
    term_space = space if method == "CutoffPeriodic" else spaces.free()
    if method == "CutoffPeriodic" and not space.periodic:
        raise unsupported(owner, "CutoffPeriodic in a System without a periodic box", source)
    term = CustomNonbonded(
        term_space, method, types, expression, layout, tuple(per), computed_exprs, names,
        exclusions, groups, cutoff if method != "NoCutoff" else None, switch, lrc)
    values = {p: v[:, i] for i, p in enumerate(per)}
    values.update(glob)
    values.update(expression.tables)
    return term, term.init_params(**values)
