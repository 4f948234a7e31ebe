"""Verlet neighbor lists built from a cell grid, with fixed capacity and overflow detection.

A :class:`NeighborList` is a pytree: the (N, K) table ``idx`` of neighbor indices (a *full* list:
each pair appears in both rows, so per-atom sums need no scatter), padded with the value N, plus
the positions it was built at and two overflow counters. Its capacities (K, atoms per cell) and
the cell grid are static fields: changing them is a structural change and recompiles.

* :func:`allocate` (host side) counts the real neighbors and picks capacities with headroom.
* :func:`update` (jit-able) rebuilds the list when any particle moved more than half the skin
  since the last build; the rebuild uses a cell grid (linear cost) when the box holds at least
  3 cells per side, and all pairs otherwise.
* If a rebuild finds more neighbors than fit, ``overflow`` becomes True and stays True. The
  list is then incomplete: the host-side driver must call :func:`grow` and recompute from its
  last good state (:mod:`workbench.simulate` does this, so users never see an overflow).

Lengths in nm (or sigma in reduced units).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np

from .space import Space

Array = jax.Array

__all__ = [
    "NeighborList", "allocate", "update", "rebuild", "grow", "grow_all", "neighbor_table",
    "padded_rows", "BLOCK",
]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class NeighborList:
    """Full Verlet neighbor list.

    idx: (R, K) int32 table in *sorted* order: row r lists the sorted positions of the
      neighbors of atom ``order[r]``; padded with N; R = N rounded up to whole blocks. Use
      :func:`neighbor_table` for a table in atom order.
    order: (N,) int32, sorted position -> atom index (cell order, for memory locality).
    inverse: (N,) int32, atom index -> sorted position.
    reference: (N, 3) positions at the last build (nm).
    overflow: () bool, sticky: a build found more neighbors (or atoms per cell) than fit.
    max_count: () int32, the largest neighbor count found by the last build.
    max_cell_count: () int32, the largest cell occupancy found by the last build.
    n_builds: () int32, number of builds since allocation.
    space: the boundary conditions the list was built for.
    cutoff, skin: interaction cutoff and skin (static); pairs closer than cutoff + skin are listed.
    cell_capacity: atoms per cell slot (static), 0 when the list is built from all pairs.
    grid: cells per box vector (static), or None for an all-pairs build.
    method: "auto" (cells when they test fewer candidates than all pairs), "cells" or
      "all_pairs" (static).
    """

    idx: Array
    order: Array
    inverse: Array
    reference: Array
    overflow: Array
    max_count: Array
    max_cell_count: Array
    n_builds: Array
    space: Space
    cutoff: float = field(metadata=dict(static=True), default=1.0)
    skin: float = field(metadata=dict(static=True), default=0.0)
    cell_capacity: int = field(metadata=dict(static=True), default=0)
    grid: tuple[int, int, int] | None = field(metadata=dict(static=True), default=None)
    method: str = field(metadata=dict(static=True), default="auto")

    @property
    def n_atoms(self) -> int:
        return self.order.shape[0]

    @property
    def capacity(self) -> int:
        """Neighbor slots per particle, K."""
        return self.idx.shape[1]

    @property
    def list_cutoff(self) -> float:
        return self.cutoff + self.skin


def _grid_for(space: Space, list_cutoff: float) -> tuple[int, int, int] | None:
    if not space.periodic:
        return None
    widths = space.perpendicular_widths()
    grid = tuple(int(g) for g in np.floor(widths / list_cutoff + 1e-9))
    if min(grid) < 3:
        return None
    return grid


def _stencil(grid: tuple[int, int, int]) -> np.ndarray:
    """(n_cells, 27) ids of each cell's periodic neighbor cells, itself included."""
    g = np.array(grid)
    c = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), -1).reshape(-1, 3)
    off = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    nb = (c[:, None, :] + off[None]) % g
    return ((nb[..., 0] * g[1] + nb[..., 1]) * g[2] + nb[..., 2]).astype(np.int32)


def _cell_ids(space: Space, positions: Array, grid) -> Array:
    s = space.to_fractional(positions)
    s = s - jnp.floor(s)
    g = jnp.asarray(grid, dtype=jnp.int32)
    c = jnp.clip(jnp.floor(s * g).astype(jnp.int32), 0, g - 1)
    return (c[:, 0] * grid[1] + c[:, 1]) * grid[2] + c[:, 2]


BLOCK = 256
"""Atoms per block in the list build and the pair kernels. Working through the atoms in blocks
keeps the (B, K) temporaries in cache; XLA does not fuse the unblocked form and streams a dozen
(N, K) arrays through memory (measured 4x slower on CPU)."""


def padded_rows(n: int) -> int:
    """Rows of the neighbor table: N rounded up to a whole number of blocks."""
    return -(-n // BLOCK) * BLOCK


def _all_pairs_build(space: Space, positions: Array, nbrs: NeighborList):
    """All-pairs build for small or non-periodic systems: (idx (rows, K), max_count)."""
    n, k = positions.shape[0], nbrs.idx.shape[1]
    cand = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (n, n))
    dr = space.displacement(positions[:, None, :], positions[None, :, :])
    r2 = jnp.sum(dr * dr, axis=-1)
    rows = jnp.arange(n, dtype=jnp.int32)[:, None]
    valid = (cand != rows) & (r2 < nbrs.list_cutoff**2)
    count = jnp.sum(valid, axis=1, dtype=jnp.int32)
    slot = jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1
    slot = jnp.where(valid & (slot < k), slot, k)
    idx = jnp.full((n, k + 1), n, jnp.int32).at[rows, slot].set(cand, mode="drop")[:, :k]
    idx = jnp.concatenate([idx, jnp.full((nbrs.idx.shape[0] - n, k), n, jnp.int32)])
    return idx, jnp.max(count)


def _cell_build(space: Space, positions: Array, nbrs: NeighborList):
    """Cell-grid build in spatially sorted order.

    Atoms are sorted by cell, so each cell is a contiguous range of the sorted array; every
    block of B sorted atoms tests the atoms of its 27 neighbor cells and compacts the hits with
    a per-cell bitmask and population counts (a prefix sum over 27 cells instead of a cumsum
    over all candidates, which is slow on CPU). Returns (idx (rows, K) in sorted order, order,
    inverse, max_count, max_cell_count)."""
    n, (rows, k) = positions.shape[0], nbrs.idx.shape
    grid, m = nbrs.grid, nbrs.cell_capacity
    n_cells = grid[0] * grid[1] * grid[2]
    cid = _cell_ids(space, positions, grid)
    order = jnp.argsort(cid).astype(jnp.int32)
    inverse = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
    cs = cid[order]
    counts = jnp.zeros(n_cells, jnp.int32).at[cid].add(1)
    start = jnp.cumsum(counts) - counts
    slot = jnp.arange(m, dtype=jnp.int32)
    table = jnp.where(slot[None, :] < counts[:, None], start[:, None] + slot[None, :], -1)
    stencil = jnp.asarray(_stencil(grid))
    rs = positions[order]
    xs, ys, zs = (jnp.concatenate([rs[:, a], jnp.zeros(rows - n, rs.dtype)]) for a in range(3))
    cs = jnp.concatenate([cs, jnp.zeros(rows - n, jnp.int32)])
    rc2 = nbrs.list_cutoff**2
    n_words = -(-m // 32)
    shift = (slot % 32).astype(jnp.uint32)
    low = jnp.left_shift(jnp.uint32(1), shift) - jnp.uint32(1)  # bits below each slot
    word_of = slot // 32

    def block(b):
        ii = b * BLOCK + jnp.arange(BLOCK, dtype=jnp.int32)
        cand = table[stencil[cs[ii]]]  # (B, 27, m), -1 = empty slot
        cj = jnp.maximum(cand, 0)
        dx, dy, dz = space.displacement_components(
            xs[ii][:, None, None] - xs[cj], ys[ii][:, None, None] - ys[cj],
            zs[ii][:, None, None] - zs[cj])
        hit = (cand >= 0) & (dx * dx + dy * dy + dz * dz < rc2) & (cj != ii[:, None, None])
        hit = hit & (ii < n)[:, None, None]
        bits = jnp.left_shift(hit.astype(jnp.uint32), shift)
        words = [jnp.sum(jnp.where(word_of == w, bits, 0), -1, dtype=jnp.uint32)
                 for w in range(n_words)]  # (B, 27) each
        pops = [jax.lax.population_count(w).astype(jnp.int32) for w in words]
        before = jnp.zeros_like(pops[0][..., None])  # hits in earlier words of the same cell
        rank = jnp.zeros(cand.shape, jnp.int32)
        for w in range(n_words):
            in_word = jax.lax.population_count(words[w][..., None] & low).astype(jnp.int32)
            rank = jnp.where(word_of == w, before + in_word, rank)
            before = before + pops[w][..., None]
        per_cell = sum(pops)  # (B, 27)
        acc, offsets = jnp.zeros(BLOCK, jnp.int32), []
        for c in range(27):
            offsets.append(acc)
            acc = acc + per_cell[:, c]
        pos = jnp.stack(offsets, 1)[..., None] + rank
        flat = jnp.where(hit & (pos < k), jnp.arange(BLOCK)[:, None, None] * k + pos, BLOCK * k)
        out = jnp.full(BLOCK * k, n, jnp.int32).at[flat.ravel()].set(cj.ravel(), mode="drop")
        return out.reshape(BLOCK, k), jnp.max(acc)

    idx, counts_max = jax.lax.map(block, jnp.arange(rows // BLOCK))
    return idx.reshape(rows, k), order, inverse, jnp.max(counts_max), jnp.max(counts)


def _build(space: Space, positions: Array, nbrs: NeighborList) -> NeighborList:
    n = positions.shape[0]
    k = nbrs.idx.shape[1]
    if nbrs.grid is None:
        idx, max_count = _all_pairs_build(space, positions, nbrs)
        order = inverse = jnp.arange(n, dtype=jnp.int32)
        max_cell = jnp.int32(0)
    else:
        idx, order, inverse, max_count, max_cell = _cell_build(space, positions, nbrs)
    overflow = nbrs.overflow | (max_count > k) | (max_cell > nbrs.cell_capacity)
    if nbrs.grid is not None:
        # The grid was sized for the box at allocation; if the box shrank so that a cell is now
        # narrower than the list cutoff, the 27-cell search can miss pairs: flag it so the
        # driver re-grids (grow() recomputes the grid for the current box).
        overflow = overflow | _cells_too_narrow(space.box, nbrs.grid, nbrs.list_cutoff)
    return replace(
        nbrs,
        idx=idx,
        order=order,
        inverse=inverse,
        space=space,
        reference=positions,
        overflow=overflow,
        max_count=max_count.astype(jnp.int32),
        max_cell_count=max_cell.astype(jnp.int32),
        n_builds=nbrs.n_builds + 1,
    )


def _cells_too_narrow(box: Array, grid, list_cutoff: float) -> Array:
    a, b, c = box[0], box[1], box[2]
    vol = jnp.abs(jnp.linalg.det(box))
    widths = vol / jnp.stack(
        [jnp.linalg.norm(jnp.cross(b, c)), jnp.linalg.norm(jnp.cross(c, a)),
         jnp.linalg.norm(jnp.cross(a, b))]
    )
    return jnp.any(widths / jnp.asarray(grid, widths.dtype) < list_cutoff * (1.0 - 1e-9))


def rebuild(space: Space, positions: Array, nbrs: NeighborList) -> NeighborList:
    """Rebuild the list at ``positions`` (N, 3) unconditionally. Jit-able."""
    return _build(space, positions, nbrs)


def update(space: Space, positions: Array, nbrs: NeighborList) -> NeighborList:
    """Rebuild the list if any particle moved more than skin/2 since the last build. Jit-able."""
    d = space.displacement(positions, nbrs.reference)
    moved = jnp.max(jnp.sum(d * d, axis=-1)) > (0.5 * nbrs.skin) ** 2
    return jax.lax.cond(moved, lambda: _build(space, positions, nbrs), lambda: nbrs)


def _check_positions(positions) -> np.ndarray:
    r = np.asarray(positions)
    if r.ndim != 2 or r.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {r.shape}")
    if not np.all(np.isfinite(r)):
        bad = np.unique(np.nonzero(~np.isfinite(r))[0])[:10].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad})")
    return r


def _max_occupancy(space: Space, r: np.ndarray, grid) -> int:
    """Largest number of atoms in one cell, counted on the host (numpy: no compilation)."""
    box = np.asarray(space.box, dtype=np.float64)
    frac = np.asarray(r, dtype=np.float64) @ np.linalg.inv(box)
    c = np.clip(np.floor((frac - np.floor(frac)) * grid).astype(np.int64), 0, np.array(grid) - 1)
    cid = (c[:, 0] * grid[1] + c[:, 1]) * grid[2] + c[:, 2]
    return int(np.bincount(cid, minlength=int(np.prod(grid))).max())


def allocate(
    space: Space,
    positions,
    cutoff: float,
    skin: float = 0.0,
    *,
    capacity_factor: float = 1.2,
    min_extra: int = 8,
    method: str = "auto",
) -> NeighborList:
    """Allocate and build a neighbor list on the host.

    positions: (N, 3) nm. cutoff: interaction cutoff (nm). skin: extra margin (nm); the list
    holds pairs closer than cutoff + skin and stays valid until a particle moves skin/2.
    capacity_factor: headroom over the current largest neighbor count (structural).
    method: "auto", "cells" (cell grid whenever the box holds 3 cells per side) or "all_pairs".
    """
    if method not in ("auto", "cells", "all_pairs"):
        raise ValueError(f"method must be 'auto', 'cells' or 'all_pairs', got {method!r}")
    r = _check_positions(positions)
    if cutoff <= 0 or skin < 0:
        raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
    space.check_cutoff(cutoff + skin, "cutoff + skin")
    grid = None if method == "all_pairs" else _grid_for(space, cutoff + skin)
    n = r.shape[0]
    positions = jnp.asarray(positions)
    if grid is not None:
        occ = _max_occupancy(space, r, grid)
        # Extra room over the list's headroom: a lattice start has perfectly even cells, and
        # melting alone raises the fullest cell by about 30 %; a regrowth costs a recompile.
        cell_capacity = int(np.ceil(occ * (capacity_factor + 0.1))) + 4
        if method == "auto" and 27 * cell_capacity >= n:  # cells would test more than N
            grid, cell_capacity = None, 0
    else:
        cell_capacity = 0
    # One compiled build: start from a generous capacity (an estimate from the mean density, or
    # all pairs), then trim to the real largest count. The table is compacted in order, so
    # slicing its first K columns is exact whenever K >= max_count.
    if grid is not None:
        density = n / abs(float(np.linalg.det(np.asarray(space.box, dtype=np.float64))))
        k_est = int(np.ceil(1.6 * density * 4.0 / 3.0 * np.pi * (cutoff + skin) ** 3)) + 16
    else:
        k_est = n
    k_est = max(1, min(k_est, max(n - 1, 1)))
    nbrs = NeighborList(
        idx=jnp.zeros((padded_rows(n), k_est), jnp.int32),
        order=jnp.arange(n, dtype=jnp.int32),
        inverse=jnp.arange(n, dtype=jnp.int32),
        reference=positions,
        overflow=jnp.asarray(False),
        max_count=jnp.int32(0),
        max_cell_count=jnp.int32(0),
        n_builds=jnp.int32(0),
        space=space,
        cutoff=float(cutoff),
        skin=float(skin),
        cell_capacity=cell_capacity,
        grid=grid,
        method=method,
    )
    nbrs = jax.jit(_build)(space, positions, nbrs)
    if bool(nbrs.overflow):  # denser than the estimate (clusters, droplets): build again
        return grow(positions, nbrs, factor=capacity_factor)
    k = int(np.ceil(int(nbrs.max_count) * capacity_factor)) + min_extra
    k = max(1, min(k, k_est))
    return replace(nbrs, idx=nbrs.idx[:, :k], n_builds=jnp.int32(1))


def grow(positions, nbrs: NeighborList, factor: float = 1.25) -> NeighborList:
    """Host side: a list with room for ``factor`` times the counts that overflowed, rebuilt at
    ``positions`` (the driver's last good state)."""
    space = nbrs.space
    n = nbrs.n_atoms
    k = max(nbrs.capacity, int(np.ceil(int(nbrs.max_count) * factor)))
    k = min(max(k, nbrs.capacity + 1), max(n - 1, 1))
    space.check_cutoff(nbrs.list_cutoff, "cutoff + skin")
    grid = None if nbrs.method == "all_pairs" else _grid_for(space, nbrs.list_cutoff)
    cell_capacity = nbrs.cell_capacity
    if grid is not None:
        cell_capacity = max(cell_capacity, int(np.ceil(int(nbrs.max_cell_count) * factor)) + 2)
        if grid != nbrs.grid:  # re-gridded: size the cells for the new occupancy
            cell_capacity = max(cell_capacity, _max_occupancy(space, np.asarray(positions), grid) + 2)
        if nbrs.method == "auto" and 27 * cell_capacity >= n:
            grid, cell_capacity = None, 0
    else:
        cell_capacity = 0
    fresh = replace(
        nbrs,
        idx=jnp.zeros((padded_rows(n), k), jnp.int32),
        overflow=jnp.asarray(False),
        cell_capacity=cell_capacity,
        grid=grid,
    )
    out = jax.jit(_build)(space, jnp.asarray(positions), fresh)
    if bool(out.overflow):  # the system compressed even further since: grow again
        return grow(positions, out, factor)
    return out


def neighbor_table(nbrs: NeighborList) -> np.ndarray:
    """Host side: the list as an (N, K) table in atom order (row i lists atom indices of the
    neighbors of atom i, padded with N)."""
    n = nbrs.n_atoms
    idx = np.asarray(nbrs.idx)[:n]
    order = np.asarray(nbrs.order)
    atoms = np.where(idx < n, order[np.minimum(idx, n - 1)], n)
    table = np.empty_like(atoms)
    table[order] = atoms
    return table


def _is_list(x) -> bool:
    return isinstance(x, NeighborList)


def grow_all(aux, positions, factor: float = 1.25):
    """Host side: grow every overflowed neighbor list inside the pytree ``aux`` (rebuilt at
    ``positions``); other leaves are returned unchanged."""
    return jax.tree_util.tree_map(
        lambda a: grow(positions, a, factor) if _is_list(a) and bool(a.overflow) else a,
        aux,
        is_leaf=_is_list,
    )
