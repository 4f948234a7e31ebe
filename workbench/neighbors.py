"""Verlet neighbor lists built from a cell grid, with fixed capacity and overflow detection.

A :class:`NeighborList` is a pytree: the (N, K) table ``idx`` of neighbor indices (a *full* list:
each pair appears in both rows, so per-atom sums need no scatter), padded with the value N, plus
the positions it was built at and two overflow counters. Its capacities (K, atoms per run of
cells) and the cell grid are static fields: changing them is a structural change and recompiles.

* :func:`allocate` (host side, NumPy: nothing to compile) finds the real neighbors and picks
  capacities with headroom.
* :func:`update` (jit-able) rebuilds the list when any particle moved more than half the skin
  since the last build; the rebuild uses a grid of half-cutoff cells (linear cost) when each box
  width holds 2.5 list cutoffs, and all pairs otherwise. Its loop over blocks of atoms is split
  over the CPU devices under :func:`workbench.parallel.use`.
* If a rebuild finds more neighbors than fit, ``overflow`` becomes True and stays True. The
  list is then incomplete: the host-side driver must call :func:`grow` and recompute from its
  last good state (:mod:`workbench.simulate` does this, so users never see an overflow).

Lengths in nm (or sigma in reduced units).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np

from . import listbuild, parallel
from .space import Space, box_volume

Array = jax.Array

__all__ = [
    "NeighborList", "allocate", "update", "rebuild", "grow", "grow_all", "neighbor_table",
    "padded_rows", "BLOCK", "shared_rebuilds", "grow_batched", "rebuild_all",
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
    cell_capacity: atoms per z-run of 2 reach + 1 cells (static), 0 when the list is built
      from all pairs.
    grid: cells per box vector (static), or None for an all-pairs build.
    reach: cells are at least (cutoff + skin) / reach wide (static, :data:`REACH`).
    method: "auto" (cells unless they cost more than all pairs, see CELL_COST), "cells" or
      "all_pairs" (static).
    sort_grid: coarse cells (per box vector, or per side of the positions' bounding box in free
      space) that an all-pairs build sorts atoms by, for memory locality (static); None: no sort.
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
    reach: int = field(metadata=dict(static=True), default=1)
    method: str = field(metadata=dict(static=True), default="auto")
    sort_grid: tuple[int, int, int] | None = field(metadata=dict(static=True), default=None)

    @property
    def n_atoms(self) -> int:
        return self.order.shape[-1]  # [-1]: also for a batch of lists (leading axes)

    @property
    def capacity(self) -> int:
        """Neighbor slots per particle, K (also for a batch of lists)."""
        return self.idx.shape[-1]

    @property
    def list_cutoff(self) -> float:
        return self.cutoff + self.skin


REACH = 2
"""Cells are at least list_cutoff / REACH wide. Half-cutoff cells test a smaller volume around
each atom ((5/2)^3 = 15.6 list-cutoff cubes instead of 27 with full-cutoff cells): measured 2x
faster builds at 32000 atoms. The code works for any reach >= 1."""


def _sort_grid_for(space: Space, r: np.ndarray, list_cutoff: float) -> tuple[int, int, int]:
    """Coarse cells (about half a list cutoff wide, at most 16 per side) for the sort of an
    all-pairs build: a block of 64 sorted atoms then spans about one list cutoff."""
    if space.periodic:
        widths = space.perpendicular_widths()
    else:
        widths = np.ptp(r, axis=0) if len(r) else np.zeros(3)
    g = np.clip(np.floor(np.asarray(widths) * REACH / list_cutoff), 1, 16)
    return tuple(int(x) for x in g)


def _grid_for(space: Space, list_cutoff: float) -> tuple[tuple[int, int, int] | None, int]:
    """(cells per box vector, reach) for a cell build, or (None, 0) when the box is too small
    for one (fewer than 2 reach + 1 cells per side) or not periodic."""
    if not space.periodic:
        return None, 0
    widths = space.perpendicular_widths()
    grid = tuple(int(g) for g in np.floor(widths * REACH / list_cutoff + 1e-9))
    if min(grid) >= 2 * REACH + 1:
        return grid, REACH
    return None, 0


BLOCK = 256
"""Atoms per block in the list build and the pair kernels. Working through the atoms in blocks
keeps the (B, K) temporaries in cache; XLA does not fuse the unblocked form and streams a dozen
(N, K) arrays through memory (measured 4x slower on CPU)."""


def padded_rows(n: int) -> int:
    """Rows of the neighbor table: N rounded up to a whole number of blocks per device (see
    :mod:`workbench.parallel`), so that the blocks split evenly over the CPU devices. A system
    of at most one block is one short block (a multiple of the build's 64 rows): it is never
    split over devices, and padding 100 atoms to 2 x 256 rows doubled its cost."""
    from .listbuild import BUILD_BLOCK

    if n <= BLOCK:
        return max(-(-n // BUILD_BLOCK), 1) * BUILD_BLOCK
    step = BLOCK * parallel.device_count()
    return -(-n // step) * step


def _build(space: Space, positions: Array, nbrs: NeighborList) -> NeighborList:
    k = nbrs.idx.shape[1]
    if nbrs.grid is None:
        idx, order, inverse, max_count = listbuild.all_pairs_build(space, positions, nbrs)
        max_cell = jnp.int32(0)
    else:
        idx, order, inverse, max_count, max_cell = listbuild.cell_build(space, positions, nbrs)
    idx = parallel.shard_rows(idx)  # each device keeps its own blocks' rows
    overflow = nbrs.overflow | (max_count > k) | (max_cell > nbrs.cell_capacity)
    if nbrs.grid is not None:
        # The grid was sized for the box at allocation; if the box shrank so that a cell is now
        # narrower than list cutoff / reach, the run search can miss pairs: flag it so the
        # driver re-grids (grow() recomputes the grid for the current box).
        overflow = overflow | _cells_too_narrow(space.box, nbrs.grid, nbrs.list_cutoff / nbrs.reach)
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
    vol = box_volume(box)
    widths = vol / jnp.stack(
        [jnp.linalg.norm(jnp.cross(b, c)), jnp.linalg.norm(jnp.cross(c, a)),
         jnp.linalg.norm(jnp.cross(a, b))]
    )
    return jnp.any(widths / jnp.asarray(grid, widths.dtype) < list_cutoff * (1.0 - 1e-9))


def rebuild(space: Space, positions: Array, nbrs: NeighborList) -> NeighborList:
    """Rebuild the list at ``positions`` (N, 3) unconditionally. Jit-able."""
    return _build(space, positions, nbrs)


_batch_axis: contextvars.ContextVar = contextvars.ContextVar("workbench_batch_axis",
                                                             default=None)


@contextlib.contextmanager
def shared_rebuilds(axis_name: str):
    """Within this block, lists updated inside ``jax.vmap(..., axis_name=axis_name)`` (replicas,
    windows, walkers) make one rebuild decision for the whole batch: all rebuild when any needs
    to, none otherwise. Without it, ``lax.cond`` under ``vmap`` becomes a select that runs the
    rebuild for every copy on every step. Read at trace time (use it inside the traced code)."""
    token = _batch_axis.set(axis_name)
    try:
        yield
    finally:
        _batch_axis.reset(token)


def update(space: Space, positions: Array, nbrs: NeighborList, margin=0.0) -> NeighborList:
    """Rebuild the list if any particle moved more than skin/2 - ``margin`` since the last build
    (``margin``: how far particles may still move before the next update, e.g. one Monte Carlo
    sweep). Jit-able; under :func:`shared_rebuilds` the decision is shared by the batch."""
    d = space.displacement(positions, nbrs.reference)
    moved = jnp.max(jnp.sum(d * d, axis=-1)) > (0.5 * nbrs.skin - margin) ** 2
    axis = _batch_axis.get()
    if axis is not None:  # one predicate for the batch: cond stays a cond under vmap
        moved = jax.lax.psum(moved.astype(jnp.int32), axis) > 0
    return jax.lax.cond(moved, lambda: _build(space, positions, nbrs), lambda: nbrs)


def _check_positions(positions):
    """Shape and finiteness check at the API boundary. Traced values (inside a user's jit,
    grad or vmap) get the shape check only; concrete ones are returned as NumPy arrays."""
    if isinstance(positions, jax.core.Tracer):
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
        return positions
    r = np.asarray(positions)
    if r.ndim != 2 or r.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3), got {r.shape}")
    if not np.all(np.isfinite(r)):
        bad = np.unique(np.nonzero(~np.isfinite(r))[0])[:10].tolist()
        raise ValueError(f"positions contain NaN or infinite values (atoms {bad})")
    return r


def _host_cells(space: Space, r: np.ndarray, grid) -> np.ndarray:
    """Cell id of each position, (N,) (NumPy, float64)."""
    frac = r @ np.linalg.inv(np.asarray(space.box, dtype=np.float64))
    c = np.clip(np.floor((frac - np.floor(frac)) * grid).astype(np.int64), 0, np.array(grid) - 1)
    return (c[:, 0] * grid[1] + c[:, 1]) * grid[2] + c[:, 2]


def _host_sort_ids(space: Space, r: np.ndarray, sort_grid) -> np.ndarray:
    """Host twin of :func:`workbench.listbuild.sort_ids` (NumPy, float64)."""
    if space.periodic:
        return _host_cells(space, r, sort_grid)
    lo = r.min(axis=0)
    frac = (r - lo) / np.maximum(r.max(axis=0) - lo, 1e-6)
    c = np.clip(np.floor(frac * sort_grid).astype(np.int64), 0, np.array(sort_grid) - 1)
    return (c[:, 0] * sort_grid[1] + c[:, 1]) * sort_grid[2] + c[:, 2]


def _host_pairs(space: Space, r: np.ndarray, list_cutoff: float, grid, reach: int,
                sort_grid=None):
    """Host-side (NumPy, float64) search for every pair closer than ``list_cutoff``, in the
    same sorted order and with the same z-runs as the compiled build, but with no capacities
    (so allocation needs no compilation and finds the true counts); an all-pairs search sorts
    by ``sort_grid`` as the compiled build does. Returns (order (N,), i (P,), j (P,) sorted
    positions with i ascending, largest run occupancy)."""
    n = r.shape[0]
    lc2 = list_cutoff**2
    if grid is None:
        order = (np.arange(n) if sort_grid is None
                 else np.argsort(_host_sort_ids(space, r, sort_grid), kind="stable"))
        rs, max_run = r[order], 0
        found_i, found_j = [], []
        for s0 in range(0, n, 512):  # all pairs, in slabs of rows to bound memory
            rows = np.arange(s0, min(s0 + 512, n))
            d = [rs[rows, a][:, None] - rs[None, :, a] for a in range(3)]
            dx, dy, dz = space.displacement_components(*d)
            hit = (dx * dx + dy * dy + dz * dz < lc2) & (rows[:, None] != np.arange(n)[None])
            ii, jj = np.nonzero(hit)
            found_i.append(rows[ii])
            found_j.append(jj)
        return order, np.concatenate(found_i), np.concatenate(found_j), max_run
    g0, g1, g2 = grid
    cid = _host_cells(space, r, grid)
    order = np.argsort(cid, kind="stable")
    counts = np.bincount(cid, minlength=g0 * g1 * g2)
    end = np.cumsum(counts)
    start = end - counts
    max_run = int(sum(np.roll(counts.reshape(grid), dz, axis=2)
                      for dz in range(-reach, reach + 1)).max())
    rs, cs = r[order], cid[order]
    cz, cy, cx = cs % g2, (cs // g2) % g1, cs // (g1 * g2)
    lo, hi = cz - reach, cz + reach
    za0 = np.where(lo < 0, lo + g2, lo)
    za1 = np.where((lo < 0) | (hi >= g2), g2 - 1, hi)
    zb1 = np.where(lo < 0, hi, np.where(hi >= g2, hi - g2, -1))
    atoms = np.arange(n)
    found_i, found_j = [], []
    for ox in range(-reach, reach + 1):
        for oy in range(-reach, reach + 1):
            base = (((cx + ox) % g0) * g1 + (cy + oy) % g1) * g2
            s_a = start[base + za0]
            l_a = end[base + za1] - s_a
            s_b = start[base]
            l_b = np.where(zb1 >= 0, end[base + np.maximum(zb1, 0)] - s_b, 0)
            lens = l_a + l_b
            i = np.repeat(atoms, lens)
            k = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
            j = np.where(k < l_a[i], s_a[i] + k, s_b[i] + k - l_a[i])
            d = [rs[i, a] - rs[j, a] for a in range(3)]
            dx, dy, dz = space.displacement_components(*d)
            hit = (dx * dx + dy * dy + dz * dz < lc2) & (i != j)
            found_i.append(i[hit])
            found_j.append(j[hit])
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    by_row = np.argsort(i, kind="stable")
    return order, i[by_row], j[by_row], max_run


def _host_list(space: Space, positions, pairs, template: NeighborList, capacity: int,
               cell_capacity: int) -> NeighborList:
    """A :class:`NeighborList` with ``capacity`` slots from :func:`_host_pairs` output."""
    order, i, j, max_run = pairs
    n = order.shape[0]
    counts = np.bincount(i, minlength=n)
    rank = np.arange(i.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    table = np.full((padded_rows(n), capacity), n, dtype=np.int32)
    keep = rank < capacity
    table[i[keep], rank[keep]] = j[keep]
    inverse = np.empty(n, dtype=np.int32)
    inverse[order] = np.arange(n, dtype=np.int32)
    max_count = int(counts.max()) if n else 0
    overflow = max_count > capacity or (template.grid is not None and max_run > cell_capacity)
    return replace(
        template,
        idx=jnp.asarray(table),
        order=jnp.asarray(order.astype(np.int32)),
        inverse=jnp.asarray(inverse),
        reference=jnp.asarray(positions),
        overflow=jnp.asarray(overflow),
        max_count=jnp.int32(max_count),
        max_cell_count=jnp.int32(max_run),
        n_builds=template.n_builds + 1,
        cell_capacity=cell_capacity,
    )


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
    """Allocate and build a neighbor list on the host (NumPy: nothing is compiled).

    positions: (N, 3) nm. cutoff: interaction cutoff (nm). skin: extra margin (nm); the list
    holds pairs closer than cutoff + skin and stays valid until a particle moves skin/2.
    capacity_factor: headroom over the current largest neighbor count (structural).
    method: "auto", "cells" (cell grid whenever each box width holds 2.5 list cutoffs) or
    "all_pairs".
    """
    if method not in ("auto", "cells", "all_pairs"):
        raise ValueError(f"method must be 'auto', 'cells' or 'all_pairs', got {method!r}")
    r = _check_positions(positions).astype(np.float64)
    if cutoff <= 0 or skin < 0:
        raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
    space.check_cutoff(cutoff + skin, "cutoff + skin")
    grid, reach = (None, 0) if method == "all_pairs" else _grid_for(space, cutoff + skin)
    n = r.shape[0]
    cell_capacity = 0
    if grid is not None:
        cell_capacity = _run_capacity(space, r, grid, reach, capacity_factor)
        if method == "auto" and _cells_cost_more(reach, cell_capacity, n):
            grid, reach, cell_capacity = None, 0, 0
    sort_grid = _sort_grid_for(space, r, cutoff + skin) if grid is None and n else None
    pairs = _host_pairs(space, r, cutoff + skin, grid, reach, sort_grid)
    max_count = int(np.bincount(pairs[1], minlength=n).max()) if pairs[1].size else 0
    k = max(1, min(int(np.ceil(max_count * capacity_factor)) + min_extra, max(n - 1, 1)))
    template = NeighborList(
        idx=jnp.zeros((0, k), jnp.int32),
        order=jnp.arange(n, dtype=jnp.int32),
        inverse=jnp.arange(n, dtype=jnp.int32),
        reference=jnp.asarray(positions),
        overflow=jnp.asarray(False),
        max_count=jnp.int32(0),
        max_cell_count=jnp.int32(0),
        n_builds=jnp.int32(0),
        space=space,
        cutoff=float(cutoff),
        skin=float(skin),
        cell_capacity=cell_capacity,
        grid=grid,
        reach=max(reach, 1),
        method=method,
        sort_grid=sort_grid,
    )
    return _host_list(space, positions, pairs, template, k, cell_capacity)


def grow(positions, nbrs: NeighborList, factor: float = 1.25, *, min_capacity: int = 0,
         min_cell_capacity: int = 0) -> NeighborList:
    """Host side: a list with room for ``factor`` times the counts found at ``positions`` (the
    driver's last good state), rebuilt there; the cell grid is recomputed for the current box.
    min_capacity, min_cell_capacity: lower bounds (a batch sharing one capacity)."""
    space = nbrs.space
    n = nbrs.n_atoms
    r = np.asarray(positions, dtype=np.float64)
    space.check_cutoff(nbrs.list_cutoff, "cutoff + skin")
    grid, reach = (None, 0) if nbrs.method == "all_pairs" else _grid_for(space, nbrs.list_cutoff)
    cell_capacity = 0
    if grid is not None:
        need = _run_capacity(space, r, grid, reach, factor)
        same = (grid, max(reach, 1)) == (nbrs.grid, nbrs.reach)
        cell_capacity = max(need, nbrs.cell_capacity) if same else need
        if nbrs.method == "auto" and _cells_cost_more(reach, cell_capacity, n):
            grid, reach, cell_capacity = None, 0, 0
    sort_grid = _sort_grid_for(space, r, nbrs.list_cutoff) if grid is None and n else None
    pairs = _host_pairs(space, r, nbrs.list_cutoff, grid, reach, sort_grid)
    max_count = int(np.bincount(pairs[1], minlength=n).max()) if pairs[1].size else 0
    seen = max(max_count, int(nbrs.max_count))
    k = max(nbrs.capacity + 1, int(np.ceil(seen * factor)))
    k = max(min(k, max(n - 1, 1)), min_capacity)
    if grid is not None:
        cell_capacity = max(cell_capacity, min_cell_capacity)
    template = replace(nbrs, grid=grid, reach=max(reach, 1), overflow=jnp.asarray(False),
                       sort_grid=sort_grid)
    return _host_list(space, positions, pairs, template, k, cell_capacity)


def _candidates(reach: int, cell_capacity: int) -> int:
    """Pairs a cell build tests per atom: (2 reach + 1)^2 runs of ``cell_capacity`` slots."""
    return (2 * reach + 1) ** 2 * cell_capacity


CELL_COST = 6
"""Relative cost per candidate of the cell build against the all-pairs build. Both compact
hits the same way (:func:`workbench.listbuild.compact`), but a cell build gathers its candidates
run by run while all pairs stream every atom. Measured on the 2-core machine for LJ fluids at
density 0.8442, list cutoff 2.8 sigma: per candidate 5.4/0.95, 4.5/0.74 and 3.3/0.58 ps at
2048, 4000 and 6912 atoms (rebuilds 8.0/4.0, 13.4/11.9, 15.4/27.9 ms): about 6x."""


def _cells_cost_more(reach: int, cell_capacity: int, n: int) -> bool:
    """True when the cell build would cost more than the all-pairs build ("auto" method)."""
    return CELL_COST * _candidates(reach, cell_capacity) >= n


def _run_capacity(space: Space, r: np.ndarray, grid, reach: int, factor: float) -> int:
    """Slots per z-run: the fullest run now with ``factor`` headroom, and at least the fluid
    estimate mean + 3 sqrt(mean), plus 3. A lattice start has perfectly even runs, and melting
    raises the fullest one (in the LAMMPS in.lj fluid the fullest of 12167 runs of mean 13.2
    holds about 21 atoms; this gives 28); a regrowth costs a recompile."""
    cid = _host_cells(space, r, grid)
    counts = np.bincount(cid, minlength=int(np.prod(grid))).reshape(grid)
    occ = int(sum(np.roll(counts, dz, axis=2) for dz in range(-reach, reach + 1)).max())
    mean = r.shape[0] / float(np.prod(grid)) * (2 * reach + 1)
    return max(int(np.ceil(occ * factor)), int(np.ceil(mean + 3.0 * np.sqrt(mean)))) + 3


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


def rebuild_all(space: Space, positions: Array, aux):
    """``aux`` (any pytree) with every neighbor list rebuilt at ``positions`` unconditionally
    (jit-able): unrelated configurations such as trajectory frames, or forces that must be a
    function of the positions alone. Other leaves pass through."""
    return jax.tree_util.tree_map(
        lambda a: rebuild(space, positions, a) if _is_list(a) else a, aux, is_leaf=_is_list)


def grow_batched(aux, positions, factor: float = 1.25):
    """Host side: :func:`grow_all` for a batch (replicas, windows, walkers): every leaf of
    ``aux`` and ``positions`` (B, N, 3) has a leading batch axis. A list any copy of which
    overflowed is regrown for every copy, all with one shared capacity (the batch shares one
    program), rebuilt at its own positions."""
    positions = np.asarray(positions)

    def one(a):
        if not (_is_list(a) and bool(np.any(np.asarray(a.overflow)))):
            return a
        copies = [jax.tree_util.tree_map(lambda x: x[b], a) for b in range(positions.shape[0])]
        grown = [grow(positions[b], c, factor) for b, c in enumerate(copies)]
        k = max(g.capacity for g in grown)
        cells = max(g.cell_capacity for g in grown)
        grown = [grow(positions[b], c, factor, min_capacity=k, min_cell_capacity=cells)
                 for b, c in enumerate(copies)]
        static = {(g.grid, g.reach, g.sort_grid, g.cell_capacity, g.capacity) for g in grown}
        if len(static) != 1:
            raise ValueError("the batch's regrown neighbor lists differ in structure (cell grids "
                             f"{sorted(str(x[0]) for x in static)}): copies in different boxes "
                             "need method='all_pairs' lists to share one program")
        return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *grown)

    return jax.tree_util.tree_map(one, aux, is_leaf=_is_list)


def grow_all(aux, positions, factor: float = 1.25):
    """Host side: grow every overflowed neighbor list inside the pytree ``aux`` (rebuilt at
    ``positions``); other leaves are returned unchanged."""
    return jax.tree_util.tree_map(
        lambda a: grow(positions, a, factor) if _is_list(a) and bool(a.overflow) else a,
        aux,
        is_leaf=_is_list,
    )
