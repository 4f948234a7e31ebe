"""The blocked loop over neighbor pairs that every pair term runs on.

:func:`pair_blocks` walks the atoms in blocks of :data:`~workbench.neighbors.BLOCK` in the list's
spatially sorted order (cache-friendly), gathers each block's neighbors and per-atom data, and
hands a user function ``per_block(dx, dy, dz, r2, atom_i, atom_j)`` arrays of shape (B, K): the
minimum-image displacement components, squared distances, and the per-atom data of the block's
atoms (leaves (B, 1)) and of their neighbors (leaves (B, K)). Padding slots get r2 = 4 cutoff^2,
beyond every cutoff, so a truncated pair function is exactly zero there.

Written by hand rather than as ``vmap`` over pairs because XLA on CPU is slow at scatter-adds:
a *full* list (each pair in both rows) turns per-atom sums into row sums, no scatter needed.
The loop over blocks is split over the CPU devices under :func:`workbench.parallel.use`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from .. import parallel
from ..space import Space
from .base import EnergyTerm, Evaluation, NeighborSpec, strain_virial

Array = jax.Array

__all__ = ["NO_CUTOFF", "CutoffPairTerm", "all_pairs_table", "as_list", "energy_and_forces",
           "pair_blocks", "row_forces", "block_virial", "finish_virial"]


def all_pairs_table(n: int) -> Array:
    """(rows, N - 1) table listing every other atom in each row, padded with N: the neighbor
    table used when a term has no neighbor list (small or free systems)."""
    rows = nl.padded_rows(n)
    idx = np.full((rows, max(n - 1, 1)), n, dtype=np.int32)
    j = np.arange(n - 1)[None, :]
    idx[:n, : n - 1] = j + (j >= np.arange(n)[:, None])  # every j except i itself
    return jnp.asarray(idx)


def as_list(aux):
    """The neighbor list inside ``aux`` (a list or None); anything else is a usage error."""
    if aux is None or isinstance(aux, nl.NeighborList):
        return aux
    raise TypeError(f"aux must be a NeighborList or None, got {type(aux).__name__}")


def pair_blocks(positions: Array, per_atom: Any, aux, space: Space, cutoff: float,
                per_block: Callable[..., Any], shared: Any = None, *, raw: bool = False):
    """Run ``per_block(dx, dy, dz, r2, atom_i, atom_j, shared) -> pytree`` over blocks of atoms.
    With ``raw``, ``per_block`` also gets ``(rx, ry, rz)``, the differences before the minimum
    image (x_i - x_j as stored), as a last argument.

    positions: (N, 3) nm; per_atom: pytree of (N, ...) arrays (types, charges, ...) or None;
    aux: neighbor list or None (all pairs); shared: pytree passed to every block unchanged
    (parameters). Returns (stacked per-block outputs, ``inverse`` permutation or None): outputs
    with a per-atom axis are in sorted order and need ``[inverse]`` to return to atom order."""
    n = positions.shape[0]
    aux = as_list(aux)
    if aux is None:
        idx, order, inverse = all_pairs_table(n), None, None
    else:
        idx, order, inverse = aux.idx, aux.order, aux.inverse
    rows, k = idx.shape

    def sort_pad(x):
        x = x if order is None else x[order]
        return jnp.concatenate([x, jnp.zeros((rows + 1 - n,) + x.shape[1:], x.dtype)])

    rs = sort_pad(positions)
    xs, ys, zs = rs[:, 0], rs[:, 1], rs[:, 2]
    atoms = jax.tree_util.tree_map(sort_pad, per_atom)
    # one gather of a packed row per neighbor (coordinates and the scalar per-atom data of the
    # positions' dtype) instead of one gather per array: neighbors are random accesses, and a
    # row is one cache line where separate arrays cost one each
    leaves, treedef = jax.tree_util.tree_flatten(atoms)
    packed = [k for k, a in enumerate(leaves) if a.ndim == 1 and a.dtype == rs.dtype]
    table = jnp.concatenate([rs] + [leaves[k][:, None] for k in packed], axis=1)
    column = {k: 3 + c for c, k in enumerate(packed)}  # leaf -> its column of the table
    b = min(nl.BLOCK, rows)  # one short block for small systems (see nl.padded_rows)
    far2 = 4.0 * cutoff**2

    def block(sh, args):
        xs, ys, zs, table, leaves, space, shared = sh
        start, nbr = args  # nbr: (B, K) sorted positions of neighbors
        xi = jax.lax.dynamic_slice_in_dim(xs, start, b)[:, None]
        yi = jax.lax.dynamic_slice_in_dim(ys, start, b)[:, None]
        zi = jax.lax.dynamic_slice_in_dim(zs, start, b)[:, None]
        rows_j = table[nbr]  # (B, K, 3 + packed)
        rx, ry, rz = xi - rows_j[..., 0], yi - rows_j[..., 1], zi - rows_j[..., 2]
        dx, dy, dz = space.displacement_components(rx, ry, rz)
        r2 = jnp.where(nbr < n, dx * dx + dy * dy + dz * dz, jnp.asarray(far2, xs.dtype))
        atom_i = jax.tree_util.tree_unflatten(treedef, [
            jax.lax.dynamic_slice_in_dim(a, start, b)[:, None] for a in leaves])
        atom_j = jax.tree_util.tree_unflatten(treedef, [
            rows_j[..., column[k]] if k in column else a[nbr] for k, a in enumerate(leaves)])
        if raw:
            return per_block(dx, dy, dz, r2, atom_i, atom_j, shared, (rx, ry, rz))
        return per_block(dx, dy, dz, r2, atom_i, atom_j, shared)

    starts = jnp.arange(0, rows, b, dtype=jnp.int32)
    out = parallel.block_map(block, (xs, ys, zs, table, leaves, space, shared),
                             (starts, idx.reshape(rows // b, b, k)))
    return out, inverse


def energy_and_forces(out, inverse, n: int, forces: bool):
    """Finish a pair sum: ``out`` from :func:`pair_blocks` with per-block (energy, forces
    (B, 3)) when ``forces``, else per-block energies. Returns the total energy, or (energy,
    forces (N, 3) in atom order)."""
    if not forces:
        return jnp.sum(out)
    e, f = out
    f = f.reshape(-1, 3)[:n]
    return jnp.sum(e), (f if inverse is None else f[inverse])


def row_forces(f: Array, dx: Array, dy: Array, dz: Array) -> Array:
    """Per-atom forces (B, 3) from pair force magnitudes over distance ``f`` (B, K): the row
    sums of f r_ij (a full list holds each pair in both rows)."""
    return jnp.stack([jnp.sum(f * dx, 1), jnp.sum(f * dy, 1), jnp.sum(f * dz, 1)], -1)


def block_virial(f: Array, dx: Array, dy: Array, dz: Array) -> Array:
    """A block's share (6,) of the pair virial W = sum_pairs f_ij r_ij (x) r_ij (xx, yy, zz,
    xy, xz, yz; kJ/mol) from pair force magnitudes over distance ``f`` (B, K): half the sums
    over a full list (which holds each pair in both rows)."""
    return 0.5 * jnp.stack([jnp.sum(f * dx * dx), jnp.sum(f * dy * dy), jnp.sum(f * dz * dz),
                            jnp.sum(f * dx * dy), jnp.sum(f * dx * dz), jnp.sum(f * dy * dz)])


def finish_virial(out, diagonal_only: bool) -> tuple[Array, Array]:
    """Total energy and virial tensor (3, 3) from per-block (energy, :func:`block_virial`)
    outputs of :func:`pair_blocks`. ``diagonal_only``: zero the off-diagonal part, as
    :func:`~workbench.potentials.base.strain_virial` does for orthorhombic boxes."""
    e, w = out
    w = jnp.sum(w, 0)
    if diagonal_only:
        return jnp.sum(e), jnp.diag(w[:3])
    return jnp.sum(e), jnp.array([[w[0], w[3], w[4]], [w[3], w[1], w[5]], [w[4], w[5], w[2]]])


CAPACITY_FACTOR = 1.1
"""Neighbor-table headroom of force-field pair terms over the largest count at allocation.
Molecular liquids are nearly incompressible, so their counts barely move (solvated alanine
dipeptide, 6 ps at 300 K: largest count 748 at the start, at most 755 after); every slot costs
a pair evaluation per step, and an overflow is recovered by the driver anyway."""

NO_CUTOFF = 1.0e3
"""nm: the "cutoff" of OpenMM's NoCutoff method in the pair loop (it masks only padding)."""


class CutoffPairTerm(EnergyTerm):
    """Base of pair terms with OpenMM's nonbonded methods (NoCutoff or a cutoff method), whose
    energy is a sum over the pair loop plus an explicit rest.

    Subclasses hold ``method``, ``cutoff`` (nm) and ``skin`` (nm) and define
    ``_pair_sum(positions, params, aux, space, forces) -> energy or (energy, forces)`` (the
    blocked loop, with hand-written forces) and ``_explicit_energy(positions, params, space)``
    (everything else: exclusions, exceptions, reciprocal sums, long-range corrections;
    differentiated by autodiff). NoCutoff runs over all pairs; cutoff methods read the shared
    neighbor list. A subclass may define ``_pair_virial(positions, params, aux, space) ->
    (energy, virial (3, 3))`` from the same hand-written pair forces (:func:`block_virial`),
    declaring ``capabilities = frozenset({"pair_virial"})``;
    without it the pair virial is the strain derivative by autodiff, which reverse-differentiates
    the whole pair loop (measured 145 ms instead of 10 ms for 2347 atoms with PME)."""

    @property
    def pair_cutoff(self) -> float:
        """The cutoff the pair loop masks at (nm); :data:`NO_CUTOFF` for NoCutoff."""
        return NO_CUTOFF if self.method == "NoCutoff" else float(self.cutoff)

    def neighbor_spec(self) -> NeighborSpec | None:
        if self.method == "NoCutoff":
            return None
        return NeighborSpec(float(self.cutoff), self.skin, capacity_factor=CAPACITY_FACTOR)

    def energy(self, positions, params, aux=None, box=None):
        space = self.box_space(box)
        return (self._pair_sum(positions, params, aux, space, False)
                + self._explicit_energy(positions, params, space))

    def energy_forces(self, positions, params, aux=None, box=None):
        space = self.box_space(box)
        e_pair, f_pair = self._pair_sum(positions, params, aux, space, True)
        e_rest, g = jax.value_and_grad(self._explicit_energy)(positions, params, space)
        return Evaluation(energy=e_pair + e_rest, forces=f_pair - g)

    def energy_virial(self, positions, params, aux=None, box=None):
        if "pair_virial" not in self.capabilities:
            return super().energy_virial(positions, params, aux, box)
        space = self.box_space(box)
        diagonal = self.space.kind == "periodic"
        e_pair, w_pair = self._pair_virial(positions, params, aux, space, diagonal)
        e_rest, w_rest = strain_virial(
            lambda r, b: self._explicit_energy(r, params, self.box_space(b)), positions,
            space.box, diagonal_only=diagonal)
        return e_pair + e_rest, w_pair + w_rest
