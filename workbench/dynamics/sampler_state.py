"""Where nested samplers keep their state: ``MDState.extra``, a dict keyed by sampler.

Each sampler (metadynamics, the barostat, Monte Carlo) stores its own fields under its key, so
samplers nest without clobbering each other (see :mod:`workbench.dynamics.integrators`). The
helpers here read, write and remove those entries, refuse a second sampler under one key, give
a periodic move's trigger (one decision for a lockstep batch) and walk the nested layers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from .integrators import Integrator, MDState

Array = jax.Array

__all__ = ["sampler_state", "with_sampler_state", "without_sampler_state", "check_free_key",
           "every", "layers"]


def sampler_state(state: MDState, key: str) -> Any:
    """The fields sampler ``key`` keeps in ``state.extra`` (e.g. ``"metadynamics"``); a
    KeyError names the samplers the state has."""
    extra = state.extra
    if not isinstance(extra, dict) or key not in extra:
        have = sorted(extra) if isinstance(extra, dict) else []
        raise KeyError(f"this state has no {key!r} sampler state (samplers in state.extra: "
                       f"{have}); was it made by a sampler stored under another key?")
    return extra[key]


def with_sampler_state(state: MDState, key: str, value: Any) -> MDState:
    """``state`` with ``state.extra[key] = value`` (a new dict; the other samplers' entries
    kept)."""
    extra = state.extra
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise TypeError(f"state.extra must be a dict keyed by sampler, got {type(extra).__name__}")
    return replace(state, extra={**extra, key: value})


def without_sampler_state(state: MDState, key: str) -> MDState:
    """``state`` without sampler ``key``'s entry in ``state.extra`` (walkers strip their
    shared bias this way before a ``vmap``)."""
    extra = dict(state.extra or {})
    extra.pop(key, None)
    return replace(state, extra=extra)


def check_free_key(state: MDState, key: str, name: str) -> None:
    """Refuse a second sampler under the same key (nested samplers of one kind need distinct
    ``key=`` arguments)."""
    if isinstance(state.extra, dict) and key in state.extra:
        raise ValueError(f"{name}: an inner sampler already keeps its state under {key!r}; give "
                         f"one of them another key= (e.g. key='{key}2')")


def every(step: Array, n: int) -> Array:
    """() bool: ``step % n == 0``, the trigger of a sampler's periodic move (a volume move, a
    hill). Under :func:`~workbench.neighbors.shared_rebuilds` (replicas, windows, walkers, which
    step in lockstep) it is one decision for the whole batch, so the ``lax.cond`` it drives stays
    a cond under ``vmap`` instead of a select that runs the move on every step."""
    from ..neighbors import _batch_axis

    due = step % n == 0
    axis = _batch_axis.get()
    if axis is not None:
        due = jax.lax.psum(due.astype(jnp.int32), axis) > 0
    return due


def layers(integrator: "Integrator"):
    """The integrator and every integrator nested inside it (through ``.inner``), outermost
    first."""
    while integrator is not None:
        yield integrator
        integrator = getattr(integrator, "inner", None)
