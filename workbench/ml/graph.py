"""The atom graph a neural potential reads: each atom's neighbors within the model's cutoff, as
an (N, K) table in atom order taken from the system's shared neighbor list (or all pairs when
there is none), with minimum-image edge vectors, a smooth cutoff envelope and a radial basis.

Edges are per-row (a *full* list: each pair appears in both rows), so a message sum over an
atom's neighbors is a row sum: no scatter-add, which is slow under XLA on CPU (see
:mod:`workbench.potentials.pairloop`). Padding slots and pairs beyond the cutoff are masked;
their edge vectors are replaced by a fixed vector of length 2 cutoff so that norms and their
gradients stay finite (a zero vector would give NaN gradients through ``|r|``).

Lengths in nm.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from .. import neighbors as nl
from ..potentials.pairloop import all_pairs_table
from ..space import Space

Array = jax.Array

__all__ = ["Graph", "build_graph", "polynomial_envelope", "bessel_basis", "radial_features"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Graph:
    """Edges of N atoms, K slots each.

    neighbors: (N, K) int32 atom indices (N for padding); vectors: (N, K, 3) nm, r_j - r_i
    (minimum image); lengths: (N, K) nm; mask: (N, K) bool, True for a real edge within the
    cutoff."""

    neighbors: Array
    vectors: Array
    lengths: Array
    mask: Array


def _table(aux, n: int) -> Array:
    """(N, K) atom-order neighbor table from a neighbor list (sorted order inside)."""
    if aux is None:  # every other atom, in atom order (the table pair terms use without a list)
        return all_pairs_table(n)[:n]
    if not isinstance(aux, nl.NeighborList):
        raise TypeError(f"aux must be a NeighborList or None, got {type(aux).__name__}")
    sorted_rows = aux.idx[aux.inverse]  # row of each atom, entries are sorted positions
    return jnp.where(sorted_rows < n, aux.order[jnp.minimum(sorted_rows, n - 1)], n)


def build_graph(positions: Array, space: Space, aux, cutoff: float) -> Graph:
    """The graph of ``positions`` (N, 3) nm within ``cutoff`` (nm): from the neighbor list
    ``aux`` (its cutoff must be at least ``cutoff``; checked by the term) or all pairs."""
    n = positions.shape[0]
    table = _table(aux, n)
    real = table < n
    rj = positions[jnp.minimum(table, n - 1)]
    vec = space.displacement(rj, positions[:, None, :])
    r2 = jnp.sum(vec * vec, axis=-1)
    mask = real & (r2 < cutoff * cutoff)
    safe = jnp.zeros_like(vec).at[..., 0].set(2.0 * cutoff)
    vec = jnp.where(mask[..., None], vec, safe)
    r = jnp.sqrt(jnp.sum(vec * vec, axis=-1))
    return Graph(jnp.where(mask, table, n), vec, r, mask)


def polynomial_envelope(r: Array, cutoff: float, p: int = 6) -> Array:
    """Smooth cutoff (Klicpera, Gross and Guennemann 2020, DimeNet eq. 8): 1 at r = 0, 0 at
    r = cutoff with its first and second derivatives (forces stay smooth, NVE conserves);
    zero beyond. r: (...) nm."""
    d = jnp.clip(r / cutoff, 0.0, 1.0)
    u = (1.0 - 0.5 * (p + 1) * (p + 2) * d**p + p * (p + 2) * d ** (p + 1)
         - 0.5 * p * (p + 1) * d ** (p + 2))
    return jnp.where(r < cutoff, u, 0.0)


def bessel_basis(r: Array, cutoff: float, n: int) -> Array:
    """Radial Bessel functions sin(k pi d) / d of d = r / cutoff, k = 1..n (DimeNet's and
    NequIP's basis, made dimensionless so that the model does not depend on the length unit):
    (..., n). r > 0 (masked edges carry a safe length)."""
    k = jnp.arange(1, n + 1, dtype=r.dtype).reshape((1,) * r.ndim + (n,))
    d = r[..., None] / cutoff
    return jnp.sin(k * jnp.pi * d) / d


def radial_features(g: Graph, cutoff: float, n: int) -> tuple[Array, Array]:
    """(Bessel basis (N, K, n), envelope times the edge mask (N, K)) of the graph's edges: what
    every message-passing layer's filters read."""
    return bessel_basis(g.lengths, cutoff, n), polynomial_envelope(g.lengths, cutoff) * g.mask
