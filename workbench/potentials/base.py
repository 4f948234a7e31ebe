"""The energy-term contract: every energy term, and sums of terms, look the same to integrators,
samplers, minimizers and the driver.

An energy term is an :class:`EnergyTerm`. A subclass implements one method, :meth:`energy`;
every other method has a documented default that a subclass may override with a faster path
(which must give the same numbers, tested):

========================  ===================================================================
``energy``                scalar energy (kJ/mol); differentiable in positions, params and box
``energy_forces``         energy and forces in one pass (default: ``value_and_grad``)
``forces_only``           forces alone, for steps whose energy nobody reads (default: above)
``energy_virial``         energy and virial tensor (default: strain derivative by autodiff)
``neighbor_spec``         the neighbor list the term needs (default: none)
========================  ===================================================================

and the term gets, without overriding anything, ``allocate`` (host side: the neighbor list),
``update`` (jit-able: rebuild a stale list), ``evaluate`` (update, then energy and forces),
``evaluate_fresh`` (the same for a list just allocated), ``forces`` and ``virial``.

Call-time arguments, the same for every method:

* ``positions``: (N, 3) nm;
* ``params``: a pytree of arrays (numeric: a new value never recompiles);
* ``aux``: the system's neighbor list (one list shared by all terms of a :class:`Sum`; the
  list is built for the largest cutoff that any term asks for), or None;
* ``box``: (3, 3) nm, rows are the box vectors; the state carries it so that a barostat can
  change it. ``None`` means the box of the term's :attr:`space` (given at construction, which
  also fixes the kind of boundary: free, periodic or triclinic, a structural choice).

Units: kJ/mol and nm (or reduced units).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp

from .. import neighbors as nl
from .. import space as spaces
from ..space import Space

Array = jax.Array

__all__ = [
    "Evaluation", "EnergyTerm", "NeighborSpec", "Potential", "Sum", "FunctionPotential",
    "overflowed", "strain_virial", "supports", "CAPABILITIES",
]

CAPABILITIES = ("atom_energy", "pair_virial")
"""The optional capabilities a term may declare in :attr:`EnergyTerm.capabilities`."""


def supports(term, capability: str) -> bool:
    """Whether ``term`` declares ``capability`` (one of :data:`CAPABILITIES`)."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; known: {CAPABILITIES}")
    return capability in getattr(term, "capabilities", frozenset())


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Evaluation:
    """energy: () kJ/mol; forces: (N, 3) kJ/mol/nm."""

    energy: Array
    forces: Array


@dataclass(frozen=True)
class NeighborSpec:
    """What neighbor list a term needs: pairs closer than ``cutoff`` (nm), listed with a
    ``skin`` (nm) so the list survives a few steps; ``capacity_factor`` is the headroom of the
    table and ``method`` the build (see :func:`workbench.neighbors.allocate`). All structural."""

    cutoff: float
    skin: float = 0.3
    capacity_factor: float = 1.2
    method: str = "auto"

    def merge(self, other: "NeighborSpec | None") -> "NeighborSpec":
        """One list that serves both terms: the longer cutoff and skin, the larger headroom."""
        if other is None:
            return self
        methods = {self.method, other.method} - {"auto"}
        if len(methods) > 1:
            raise ValueError(f"terms ask for incompatible neighbor-list methods {sorted(methods)}")
        return NeighborSpec(
            max(self.cutoff, other.cutoff), max(self.skin, other.skin),
            max(self.capacity_factor, other.capacity_factor), methods.pop() if methods else "auto")


def strain_virial(energy_fn: Callable[[Array, Array], Array], positions: Array, box: Array,
                  diagonal_only: bool = False):
    """Energy and virial tensor W = -dU/d(strain), (3, 3) kJ/mol, of ``energy_fn(positions,
    box)``: positions and box deformed together, r -> r (1 + e), box -> box (1 + e). For pair
    terms W = sum over pairs r_ij (x) f_ij; the pressure tensor is (sum m v v + W) / V. Exact for
    any term whose box dependence is explicit (Ewald sums, long-range corrections).

    The strain is lower-triangular, so the box keeps OpenMM's reduced form (a along x, b in
    the xy plane), and W is completed by symmetry (W is symmetric for any energy invariant under
    rotations). ``diagonal_only``: strain only along the axes and return a diagonal W. Needed for
    orthorhombic spaces, whose minimum image reads only the box diagonal and so cannot follow a
    shear; the diagonal is what the pressure and orthorhombic barostats use (a triclinic space
    gives the full tensor)."""
    dtype = positions.dtype

    def strained(eps):
        deform = jnp.eye(3, dtype=dtype) + (jnp.diag(eps) if diagonal_only else jnp.tril(eps))
        return energy_fn(positions @ deform, box @ deform)

    e, g = jax.value_and_grad(strained)(jnp.zeros(3 if diagonal_only else (3, 3), dtype))
    if diagonal_only:
        return e, -jnp.diag(g)
    low = jnp.tril(g)
    return e, -(low + low.T - jnp.diag(jnp.diagonal(g)))


class EnergyTerm:
    """Base class of energy terms (see the module docstring for the contract).

    Subclasses define :meth:`energy` and the attribute ``space``
    (:class:`~workbench.space.Space`: the kind of boundary and the default box)."""

    space: Space

    capabilities: ClassVar[frozenset] = frozenset()
    """What the term offers beyond the contract, declared (never probed with ``hasattr``):
    ``"atom_energy"``: ``atom_energy(i, r_i, positions, params, aux, box)``, the energy of one
    atom with its neighbors (single-particle Monte Carlo); ``"pair_virial"``:
    ``_pair_virial(positions, params, aux, space, diagonal_only)``, a hand-written pair virial
    that :meth:`energy_virial` uses. Read it with :func:`supports`."""

    # ------------------------------------------------------------------ what subclasses define
    def energy(self, positions: Array, params: Any, aux: Any = None, box: Array | None = None
               ) -> Array:
        """Scalar energy (kJ/mol), with ``aux`` used as is (not refreshed)."""
        raise NotImplementedError(f"{type(self).__name__} must define energy()")

    def neighbor_spec(self) -> NeighborSpec | None:
        """The neighbor list this term reads from ``aux``; None (the default) for none."""
        return None

    def param_units(self) -> dict[str, str]:
        """Unit label (molecular units) of each parameter leaf, by its key in ``params``
        (nested keys joined by '.'); the one place panels and sessions read units from."""
        return {}

    def energy_forces(self, positions: Array, params: Any, aux: Any = None,
                      box: Array | None = None) -> Evaluation:
        """Energy (kJ/mol) and forces (N, 3) kJ/mol/nm with ``aux`` as is. Default: autodiff."""
        e, g = jax.value_and_grad(self.energy)(positions, params, aux, box)
        return Evaluation(energy=e, forces=-g)

    def forces_only(self, positions: Array, params: Any, aux: Any = None,
                    box: Array | None = None) -> Array:
        """Forces (N, 3) kJ/mol/nm with ``aux`` as is. Default: from :meth:`energy_forces`."""
        return self.energy_forces(positions, params, aux, box).forces

    def energy_virial(self, positions: Array, params: Any, aux: Any = None,
                      box: Array | None = None) -> tuple[Array, Array]:
        """Energy (kJ/mol) and virial tensor (3, 3) kJ/mol. Default: :func:`strain_virial`
        (diagonal for orthorhombic spaces)."""
        box = self.space.box if box is None else box
        return strain_virial(lambda r, b: self.energy(r, params, aux, b), positions, box,
                             diagonal_only=self.space.kind == "periodic")

    # ------------------------------------------------------------------ derived, not overridden
    def box_space(self, box: Array | None) -> Space:
        """:attr:`space` with the call-time ``box`` (None keeps the construction-time box)."""
        return self.space.with_box(box)

    def default_box(self) -> Array:
        """The construction-time box (3, 3) nm: the starting box of a simulation."""
        return jnp.asarray(self.space.box)

    def allocate(self, positions, box=None) -> Any:
        """Host side: the neighbor list for ``positions`` (N, 3) nm, or None when the term needs
        none. Its capacities are structural."""
        spec = self.neighbor_spec()
        r = nl._check_positions(positions)
        if spec is None:
            return None
        space = self.box_space(box)
        space.check_cutoff(spec.cutoff + spec.skin, "cutoff + skin")
        return nl.allocate(space, r, spec.cutoff, spec.skin,
                           capacity_factor=spec.capacity_factor, method=spec.method)

    def update(self, positions: Array, aux: Any, box: Array | None = None) -> Any:
        """Rebuild the neighbor list if it is stale (jit-able); other ``aux`` passes through."""
        if isinstance(aux, nl.NeighborList):
            return nl.update(self.box_space(box), positions, aux)
        return aux

    def evaluate(self, positions: Array, params: Any, aux: Any = None, box: Array | None = None
                 ) -> tuple[Evaluation, Any]:
        """Refresh ``aux``, then energy and forces: what an integration step calls."""
        aux = self.update(positions, aux, box)
        return self.energy_forces(positions, params, aux, box), aux

    def evaluate_fresh(self, positions: Array, params: Any, aux: Any = None,
                       box: Array | None = None) -> tuple[Evaluation, Any]:
        """As :meth:`evaluate` for a list just allocated at ``positions`` (no staleness check:
        a smaller program to compile at start-up)."""
        return self.energy_forces(positions, params, aux, box), aux

    def forces(self, positions: Array, params: Any, aux: Any = None, box: Array | None = None
               ) -> tuple[Array, Any]:
        """Refresh ``aux``, then forces only: steps whose energy is not reported."""
        aux = self.update(positions, aux, box)
        return self.forces_only(positions, params, aux, box), aux

    def virial(self, positions: Array, params: Any, aux: Any = None, box: Array | None = None
               ) -> Array:
        """Virial tensor W (3, 3) kJ/mol (``aux`` as is)."""
        return self.energy_virial(positions, params, aux, box)[1]


Potential = EnergyTerm
"""The name integrators and docs use for 'anything with the energy-term contract'."""


def overflowed(aux: Any) -> Array:
    """True if any neighbor list inside ``aux`` (any pytree) overflowed."""
    flags = [
        leaf.overflow
        for leaf in jax.tree_util.tree_leaves(
            aux, is_leaf=lambda x: isinstance(x, nl.NeighborList)
        )
        if isinstance(leaf, nl.NeighborList)
    ]
    if not flags:
        return jnp.asarray(False)
    return jnp.any(jnp.stack(flags))


@dataclass(frozen=True, eq=False)
class FunctionPotential(EnergyTerm):
    """A term from any differentiable ``energy_fn(positions, params) -> scalar`` (kJ/mol), or
    ``energy_fn(positions, params, box)`` with ``takes_box=True``. Forces come from autodiff.
    Useful for analytic landscapes, restraints, biases and tests."""

    energy_fn: Callable[..., Array]
    space: Space = field(default_factory=spaces.free)
    takes_box: bool = False
    units: Mapping[str, str] = field(default_factory=dict)

    def param_units(self) -> dict[str, str]:
        return dict(self.units)

    def energy(self, positions, params, aux=None, box=None):
        if self.takes_box:
            return self.energy_fn(positions, params, self.box_space(box).box)
        return self.energy_fn(positions, params)


@dataclass(frozen=True, eq=False)
class Sum(EnergyTerm):
    """Sum of named terms. ``params`` is a dict keyed by term name; all terms share one ``aux``
    (one neighbor list for the longest cutoff any term asks for) and one box.

    Terms with periodic boundaries must agree on the kind of box; the sum's :attr:`space` is
    theirs (free space if no term is periodic)."""

    terms: Mapping[str, EnergyTerm]
    space: Space = field(init=False)

    def __post_init__(self):
        if not self.terms:
            raise ValueError("Sum needs at least one term")
        bad = [n for n, t in self.terms.items() if not isinstance(t, EnergyTerm)]
        if bad:
            raise TypeError(f"Sum terms must be EnergyTerm instances; not: {bad}")
        periodic = {n: t.space for n, t in self.terms.items() if t.space.periodic}
        kinds = {s.kind for s in periodic.values()}
        if len(kinds) > 1:
            raise ValueError(f"terms use different kinds of box: "
                             f"{ {n: s.kind for n, s in periodic.items()} }")
        object.__setattr__(self, "terms", dict(self.terms))
        object.__setattr__(self, "space", next(iter(periodic.values()), spaces.free()))

    def _check(self, params: Mapping[str, Any]):
        if not isinstance(params, Mapping) or set(params) != set(self.terms):
            got = sorted(params) if isinstance(params, Mapping) else type(params).__name__
            raise KeyError(f"params must be a dict with one entry per term {sorted(self.terms)}; "
                           f"got {got}")

    def neighbor_spec(self) -> NeighborSpec | None:
        spec = None
        for t in self.terms.values():
            s = t.neighbor_spec()
            if s is not None:
                spec = s.merge(spec)
        return spec

    def param_units(self) -> dict[str, str]:
        return {f"{n}.{k}": u for n, t in self.terms.items() for k, u in t.param_units().items()}

    def energy(self, positions, params, aux=None, box=None):
        self._check(params)
        return sum(t.energy(positions, params[n], aux, box) for n, t in self.terms.items())

    def energy_forces(self, positions, params, aux=None, box=None):
        self._check(params)
        evs = [t.energy_forces(positions, params[n], aux, box) for n, t in self.terms.items()]
        return Evaluation(energy=sum(e.energy for e in evs), forces=sum(e.forces for e in evs))

    def forces_only(self, positions, params, aux=None, box=None):
        self._check(params)
        return sum(t.forces_only(positions, params[n], aux, box) for n, t in self.terms.items())

    def energy_virial(self, positions, params, aux=None, box=None):
        self._check(params)
        out = [t.energy_virial(positions, params[n], aux, box) for n, t in self.terms.items()]
        return sum(e for e, _ in out), sum(w for _, w in out)

    def term_energies(self, positions, params, aux=None, box=None) -> dict[str, Array]:
        """Energy of each term (kJ/mol), keyed by name."""
        self._check(params)
        return {n: t.energy(positions, params[n], aux, box) for n, t in self.terms.items()}
