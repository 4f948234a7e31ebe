"""The potential protocol: every energy term, and sums of terms, look the same to integrators.

A potential has three faces:

* ``allocate(positions)`` (host side) returns its auxiliary state ``aux`` (a neighbor list, or
  None). Capacities inside ``aux`` are structural.
* ``evaluate(positions, params, aux) -> (Evaluation, aux)`` (jit-able) refreshes ``aux`` (for
  example rebuilds a stale neighbor list) and returns energy and forces in one pass. Integrators
  call this.
* optional ``evaluate_fresh(positions, params, aux)``: the same for an ``aux`` just allocated at
  ``positions`` (skips the staleness check; integrators use it for the first evaluation).
* optional ``forces(positions, params, aux) -> (forces, aux)``: as ``evaluate`` without the
  energy (a cheaper kernel); integrators use it for steps whose energy nobody reads.
* ``energy(positions, params, aux)`` (jit-able, differentiable in positions and params) returns the
  scalar energy. Forces are ``-grad(energy)``; fast paths must agree with it (tested).

``params`` is a pytree of arrays (numeric: new values never recompile). A :class:`Sum` of named
terms takes a dict of per-term params and a dict of per-term aux states.
Units: kJ/mol and nm (or reduced units).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["Evaluation", "Potential", "Sum", "FunctionPotential", "overflowed"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Evaluation:
    """energy: () kJ/mol; forces: (N, 3) kJ/mol/nm."""

    energy: Array
    forces: Array


class Potential(Protocol):
    def allocate(self, positions) -> Any: ...

    def evaluate(self, positions: Array, params: Any, aux: Any) -> tuple[Evaluation, Any]: ...

    def energy(self, positions: Array, params: Any, aux: Any) -> Array: ...


def overflowed(aux: Any) -> Array:
    """True if any neighbor list inside ``aux`` (any pytree) overflowed."""
    from .. import neighbors

    flags = [
        leaf.overflow
        for leaf in jax.tree_util.tree_leaves(
            aux, is_leaf=lambda x: isinstance(x, neighbors.NeighborList)
        )
        if isinstance(leaf, neighbors.NeighborList)
    ]
    if not flags:
        return jnp.asarray(False)
    return jnp.any(jnp.stack(flags))


@dataclass(frozen=True)
class FunctionPotential:
    """A potential from any differentiable ``energy_fn(positions, params) -> scalar``.
    Forces come from autodiff. Useful for analytic landscapes, biases and tests."""

    energy_fn: Callable[[Array, Any], Array]

    def allocate(self, positions) -> None:
        return None

    def energy(self, positions: Array, params: Any, aux: Any = None) -> Array:
        return self.energy_fn(positions, params)

    def evaluate(self, positions: Array, params: Any, aux: Any = None):
        e, g = jax.value_and_grad(self.energy_fn)(positions, params)
        return Evaluation(energy=e, forces=-g), aux

    def forces(self, positions: Array, params: Any, aux: Any = None):
        return -jax.grad(self.energy_fn)(positions, params), aux


@dataclass(frozen=True)
class Sum:
    """Sum of named terms. ``params`` and ``aux`` are dicts keyed by term name."""

    terms: Mapping[str, Any]

    def __post_init__(self):
        if not self.terms:
            raise ValueError("Sum needs at least one term")

    def _check(self, params: Mapping[str, Any]):
        missing = set(self.terms) - set(params)
        extra = set(params) - set(self.terms)
        if missing or extra:
            raise KeyError(
                f"params must have one entry per term {sorted(self.terms)}; "
                f"missing {sorted(missing)}, unknown {sorted(extra)}"
            )

    def allocate(self, positions) -> dict:
        return {name: term.allocate(positions) for name, term in self.terms.items()}

    def energy(self, positions: Array, params: Mapping[str, Any], aux: Mapping[str, Any]) -> Array:
        self._check(params)
        return sum(t.energy(positions, params[n], aux[n]) for n, t in self.terms.items())

    def evaluate(self, positions: Array, params: Mapping[str, Any], aux: Mapping[str, Any],
                 _fresh: bool = False):
        self._check(params)
        energy, forces, new_aux = 0.0, jnp.zeros_like(positions), {}
        for name, term in self.terms.items():
            fn = getattr(term, "evaluate_fresh", term.evaluate) if _fresh else term.evaluate
            ev, new_aux[name] = fn(positions, params[name], aux[name])
            energy = energy + ev.energy
            forces = forces + ev.forces
        return Evaluation(energy=jnp.asarray(energy), forces=forces), new_aux

    def evaluate_fresh(self, positions: Array, params: Mapping[str, Any], aux: Mapping[str, Any]):
        """As :meth:`evaluate`, for lists just allocated at ``positions``."""
        return self.evaluate(positions, params, aux, _fresh=True)

    def forces(self, positions: Array, params: Mapping[str, Any], aux: Mapping[str, Any]):
        """Forces only (terms without a forces-only path compute their energy too)."""
        self._check(params)
        forces, new_aux = jnp.zeros_like(positions), {}
        for name, term in self.terms.items():
            if hasattr(term, "forces"):
                f, new_aux[name] = term.forces(positions, params[name], aux[name])
            else:
                ev, new_aux[name] = term.evaluate(positions, params[name], aux[name])
                f = ev.forces
            forces = forces + f
        return forces, new_aux
