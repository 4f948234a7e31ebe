"""Host-side driving of batched runs (replicas, umbrella windows, walkers): overflow recovery.

A batched run is one compiled function over states whose leaves carry a leading batch axis.
Neighbor lists inside it have a static capacity shared by the batch; when any copy overflows,
:func:`advance` grows the lists of the whole batch to one new capacity
(:func:`workbench.neighbors.grow_batched`, rebuilt at the positions the chunk started from) and
recomputes the chunk, so no step is lost and nothing wrong is kept, as
:class:`~workbench.simulate.Simulation` does for one system.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .. import neighbors as nl
from ..potentials.base import overflowed

__all__ = ["advance"]


def advance(chunk: Callable[..., tuple], states, *args, max_regrowths: int = 20
            ) -> tuple[tuple, int]:
    """Host side: ``chunk(states, *args)`` (jitted; returns a tuple whose first element is the
    new batched states, with ``aux`` and ``positions``), recomputed from ``states`` with grown
    lists while any list of the batch overflowed. Returns (chunk's outputs, regrowths).
    A grown capacity is a new shape: the next call compiles once more."""
    for regrowths in range(max_regrowths + 1):
        out = chunk(states, *args)
        if not bool(overflowed(out[0].aux)):
            return out, regrowths
        states = replace(states, aux=nl.grow_batched(out[0].aux, states.positions))
    raise RuntimeError(f"neighbor lists still overflow after {max_regrowths} regrowths: the "
                       "configuration is probably exploding (check the time step and forces)")

