"""The package's declared contracts, one home each: what an observable, a state observable and
a fitting objective are. Modules annotate with these and check with :func:`is_objective`
instead of probing attributes ad hoc.

* :class:`Observable`: ``observable(positions (N, 3) nm, params, aux, box (3, 3) | None) ->
  array`` (any shape; ``aux`` is the neighbor list, ``box`` the frame's box). Reweighting,
  ``gradient(...)``, ensemble objectives and panels take this form.
* :class:`StateObservable`: ``observable(state, params) -> array``, of the whole dynamical state
  (velocities, kinetic energy, thermostat variables): what trajectory gradients record.
  :func:`of_state` lifts an :class:`Observable` to one.
* :class:`Objective`: what :func:`workbench.gradients.fit.fit` minimizes: an object with
  ``value_and_grad(params) -> (loss, metrics, grads)``, optionally ``prepare(params) -> bool``
  (before every step; True when it re-sampled) and ``line_search() -> (fn, args)`` (for optax's
  line searches). A plain ``loss(params) -> scalar`` or ``(scalar, metrics)`` is made into one
  by :func:`workbench.gradients.fit.as_objective`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

Array = jax.Array

__all__ = ["Observable", "StateObservable", "Objective", "of_state", "is_objective"]


class Observable(Protocol):
    """``observable(positions, params, aux, box) -> array``."""

    def __call__(self, positions: Array, params: Any, aux: Any, box: Array | None
                 ) -> Array: ...


class StateObservable(Protocol):
    """``observable(state, params) -> array`` of the whole dynamical state."""

    def __call__(self, state: Any, params: Any) -> Array: ...


@runtime_checkable
class Objective(Protocol):
    """A fitting objective (see the module docstring)."""

    def value_and_grad(self, params: Any) -> tuple[Array, dict, Any]: ...


def of_state(observable: Observable) -> StateObservable:
    """The :class:`StateObservable` that evaluates ``observable`` at the state's positions,
    neighbor list and box."""

    def at_state(state, params):
        return observable(state.positions, params, state.aux, state.box)

    return at_state


def is_objective(obj) -> bool:
    """True for objects in the :class:`Objective` form (as opposed to plain loss functions)."""
    return isinstance(obj, Objective)
