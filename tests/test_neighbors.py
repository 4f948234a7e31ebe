"""Neighbor lists against brute force: cell grid, triclinic cells, all-pairs fallback, lazy
rebuilds, overflow and growth, and forces with the list equal to forces over all pairs.

References: scipy's cKDTree with periodic ``boxsize`` (orthorhombic) and an explicit numpy loop over
periodic images (triclinic and free). Lengths in sigma (reduced units).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import cKDTree

from workbench import neighbors as nl
from workbench import parallel
from workbench import space
from workbench.potentials import PairPotential, overflowed

# Reduced triclinic box whose perpendicular widths (about 6.4 to 7) hold 6 half-cells of 2.0.
BOX_TRI = np.array([[7.0, 0.0, 0.0], [2.0, 7.0, 0.0], [-1.5, 2.5, 7.2]])


# ---------------------------------------------------------------------------- references
def _list_pairs(nbrs: nl.NeighborList) -> set[tuple[int, int]]:
    """Ordered pairs (i, j) in the list; asserts no self pairs and no duplicates per row."""
    idx = nl.neighbor_table(nbrs)
    n = idx.shape[0]
    out = set()
    for i, row in enumerate(idx):
        real = row[row < n]
        assert len(np.unique(real)) == len(real), f"duplicate neighbors in row {i}"
        assert i not in real, f"atom {i} lists itself"
        out.update((i, int(j)) for j in real)
    return out


def _kdtree_pairs(r: np.ndarray, lengths, rcut: float) -> set[tuple[int, int]]:
    """Ordered pairs closer than rcut in an orthorhombic periodic box (scipy cKDTree)."""
    lengths = np.broadcast_to(np.asarray(lengths, float), (3,))
    tree = cKDTree(np.mod(r, lengths), boxsize=lengths)
    out = set()
    for i, j in tree.query_pairs(rcut):
        out.update({(i, j), (j, i)})
    return out


def _image_pairs(r: np.ndarray, box: np.ndarray | None, rcut: float) -> set[tuple[int, int]]:
    """Ordered pairs whose shortest periodic image (125 lattice shifts) is closer than rcut;
    plain distances when ``box`` is None."""
    d = r[:, None, :] - r[None, :, :]
    if box is None:
        d2 = np.sum(d * d, axis=-1)
    else:
        # bring fractional differences to [-0.5, 0.5), then search the images around them
        s = np.linalg.solve(box.T, d.reshape(-1, 3).T).T
        d = ((s - np.round(s)) @ box).reshape(d.shape)
        shifts = np.array(list(itertools.product(range(-2, 3), repeat=3)), float) @ box
        d2 = np.min(np.sum((d[:, :, None, :] + shifts) ** 2, axis=-1), axis=-1)
    i, j = np.nonzero(d2 < rcut * rcut)
    return {(int(a), int(b)) for a, b in zip(i, j) if a != b}


def _lattice(box: np.ndarray, n_side: int, jitter: float, seed: int) -> np.ndarray:
    """Simple cubic lattice in fractional coordinates of ``box``, jittered (no overlaps)."""
    g = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3) + 0.5
    r = (g / n_side) @ box
    return r + np.random.default_rng(seed).uniform(-jitter, jitter, r.shape)


def _check_compiled_build(sp, r, nbrs, ref):
    """The compiled (in-jit) build equals the host build's reference pairs, with the same
    counts, also when the blocks are split over the CPU devices."""
    for mesh in (None, parallel.default_mesh()):
        with parallel.use(mesh):
            out = jax.jit(nl.rebuild)(sp, jnp.asarray(r), nbrs)
        assert not bool(out.overflow)
        assert _list_pairs(out) == ref
        assert int(out.max_count) == int(nbrs.max_count)
        assert int(out.max_cell_count) == int(nbrs.max_cell_count)
        np.testing.assert_array_equal(np.sort(np.asarray(out.order)), np.arange(len(r)))


# ---------------------------------------------------------------------------- list contents
def test_cell_list_equals_kdtree_periodic():
    lengths = np.array([5.0, 5.5, 6.4])
    cutoff, skin = 1.2, 0.3
    rng = np.random.default_rng(0)
    r = rng.uniform(0.0, 1.0, (260, 3)) * lengths
    r[::7] += rng.integers(-2, 3, (len(r[::7]), 3)) * lengths  # some unwrapped coordinates
    nbrs = nl.allocate(space.periodic(lengths), r, cutoff, skin, method="cells")
    assert nbrs.grid == (6, 7, 8) and nbrs.reach == 2, "half-cutoff cells: 2 * L / 1.5"
    assert not bool(nbrs.overflow)
    ref = _kdtree_pairs(r, lengths, cutoff + skin)
    assert len(ref) > 1000
    assert _list_pairs(nbrs) == ref
    assert int(nbrs.max_count) == max(np.bincount([i for i, _ in ref], minlength=len(r)))
    _check_compiled_build(space.periodic(lengths), r, nbrs, ref)


def test_cell_list_equals_brute_force_triclinic():
    cutoff, skin = 1.7, 0.3
    rng = np.random.default_rng(1)
    r = rng.uniform(0.0, 1.0, (300, 3)) @ BOX_TRI
    r[::5] += rng.integers(-1, 2, (len(r[::5]), 3)) @ BOX_TRI
    nbrs = nl.allocate(space.triclinic(BOX_TRI), r, cutoff, skin, method="cells")
    assert nbrs.grid is not None and min(nbrs.grid) >= 5
    ref = _image_pairs(r, BOX_TRI, cutoff + skin)
    assert len(ref) > 2000
    assert _list_pairs(nbrs) == ref
    _check_compiled_build(space.triclinic(BOX_TRI), r, nbrs, ref)


@pytest.mark.parametrize(
    "make, box",
    [
        (lambda: space.periodic(3.0), 3.0 * np.eye(3)),
        (
            lambda: space.triclinic([[3.2, 0, 0], [1.1, 3.0, 0], [-0.9, 1.2, 3.1]]),
            np.array([[3.2, 0, 0], [1.1, 3.0, 0], [-0.9, 1.2, 3.1]]),
        ),
        (space.free, None),
    ],
    ids=["periodic", "triclinic", "free"],
)
def test_all_pairs_fallback_small_box(make, box):
    cutoff, skin = 1.0, 0.2
    rng = np.random.default_rng(2)
    r = rng.uniform(0.0, 1.0, (40, 3)) @ (box if box is not None else 3.0 * np.eye(3))
    nbrs = nl.allocate(make(), r, cutoff, skin)
    assert nbrs.grid is None and nbrs.cell_capacity == 0
    ref = _image_pairs(r, box, cutoff + skin)
    assert len(ref) > 20
    assert _list_pairs(nbrs) == ref


# ---------------------------------------------------------------------------- lazy rebuilds
def test_update_rebuilds_only_after_half_skin():
    lengths = 5.0
    cutoff, skin = 1.2, 0.4
    sp = space.periodic(lengths)
    rng = np.random.default_rng(3)
    r0 = rng.uniform(0.0, lengths, (150, 3))
    nbrs = nl.allocate(sp, r0, cutoff, skin, method="cells")
    assert int(nbrs.n_builds) == 1
    update = jax.jit(nl.update)

    # every atom moves less than skin/2: no rebuild, and the old list still holds every pair
    # within the cutoff (the Verlet guarantee)
    step = rng.normal(size=r0.shape)
    step *= (0.49 * skin / np.linalg.norm(step, axis=1))[:, None] * rng.uniform(0, 1, (150, 1))
    r1 = r0 + step
    same = update(sp, jnp.asarray(r1), nbrs)
    assert int(same.n_builds) == 1
    np.testing.assert_array_equal(np.asarray(same.idx), np.asarray(nbrs.idx))
    np.testing.assert_array_equal(np.asarray(same.reference), r0)
    assert _kdtree_pairs(r1, lengths, cutoff) <= _list_pairs(same)

    # a whole box vector is no motion at all under periodic boundaries
    r2 = r0.copy()
    r2[10] += [lengths, 0.0, -lengths]
    assert int(update(sp, jnp.asarray(r2), nbrs).n_builds) == 1

    # one atom beyond skin/2: rebuild at the new positions
    r3 = r0.copy()
    r3[17] += 0.51 * skin * np.array([0.6, 0.0, 0.8])
    rebuilt = update(sp, jnp.asarray(r3), nbrs)
    assert int(rebuilt.n_builds) == 2
    np.testing.assert_array_equal(np.asarray(rebuilt.reference), r3)
    assert _list_pairs(rebuilt) == _kdtree_pairs(r3, lengths, cutoff + skin)
    # and the reference is now r3: a further tiny move does not rebuild again
    r4 = r3 + 0.01 * skin
    assert int(update(sp, jnp.asarray(r4), rebuilt).n_builds) == 2


# ---------------------------------------------------------------------------- overflow
def test_neighbor_overflow_on_compression_then_grow():
    """Allocate at low density, compress positions and box (the cell grid stays valid: cells of
    4.7 * 0.9 / 7 = 0.604 > (cutoff + skin) / 2), and the list must report overflow; grow() then gives
    the complete list for the compressed system."""
    l0, cutoff, skin, scale = 4.7, 1.0, 0.2, 0.9
    rng = np.random.default_rng(4)
    r0 = rng.uniform(0.0, l0, (80, 3))
    nbrs = nl.allocate(space.periodic(l0), r0, cutoff, skin, capacity_factor=1.0, min_extra=0, method="cells")
    assert nbrs.grid == (7, 7, 7)
    k0 = nbrs.capacity

    small = space.periodic(l0 * scale)
    r1 = r0 * scale
    ref = _kdtree_pairs(r1, l0 * scale, cutoff + skin)
    true_max = max(np.bincount([i for i, _ in ref], minlength=len(r1)))
    assert true_max > k0  # the compression really exceeds the capacity

    squeezed = jax.jit(nl.update)(small, jnp.asarray(r1), nbrs)
    assert bool(squeezed.overflow)
    assert bool(overflowed(squeezed))
    assert int(squeezed.max_count) == true_max  # counts are exact even when they do not fit

    grown = nl.grow(r1, squeezed)
    assert not bool(grown.overflow)
    assert grown.capacity >= true_max
    got = _list_pairs(grown)
    assert got == ref, (
        f"grow() list misses {len(ref - got)} and adds {len(got - ref)} of {len(ref)} pairs "
        f"of the compressed box (list box diagonal {np.diag(np.asarray(grown.space.box))})"
    )


def test_cell_overflow_then_grow():
    """Crowding many atoms into a corner overflows the run slots; grow() repairs it."""
    lengths, cutoff, skin = 6.0, 1.5, 0.3
    sp = space.periodic(lengths)
    rng = np.random.default_rng(5)
    r0 = rng.uniform(0.0, lengths, (120, 3))
    nbrs = nl.allocate(sp, r0, cutoff, skin, method="cells")
    assert nbrs.grid == (6, 6, 6)
    cap = nbrs.cell_capacity

    r1 = r0.copy()
    crowd = np.arange(cap + 10)
    # all in one column of cells (x and y within one 1.0-wide cell, z across two cells)
    r1[crowd] = 0.2 + rng.uniform(0.0, 1.0, (len(crowd), 3)) * np.array([0.6, 0.6, 1.6])
    aux = {"lj": jax.jit(nl.update)(sp, jnp.asarray(r1), nbrs), "other": None}
    assert bool(aux["lj"].overflow)
    assert int(aux["lj"].max_cell_count) > cap
    assert bool(overflowed(aux))

    fixed = nl.grow_all(aux, r1)
    assert fixed["other"] is None
    grown = fixed["lj"]
    assert not bool(grown.overflow)
    assert grown.cell_capacity >= int(aux["lj"].max_cell_count)
    assert _list_pairs(grown) == _kdtree_pairs(r1, lengths, cutoff + skin)


def test_compression_never_silently_drops_pairs():
    """The cell grid is fixed at allocation. If the box then shrinks so much that a cell becomes
    narrower than (cutoff + skin) / 2, the run search can no longer see every pair: the update
    must either still list every pair or raise the overflow flag (so the driver regrows),
    never return an incomplete list that claims to be valid."""
    l0, cutoff, skin, scale = 6.0, 1.0, 0.2, 0.65  # grid 10 -> cells of 0.39 < 0.6 after
    rng = np.random.default_rng(6)
    r0 = rng.uniform(0.0, l0, (120, 3))
    # generous capacities, so that neither neighbor nor cell slots run out
    nbrs = nl.allocate(space.periodic(l0), r0, cutoff, skin, capacity_factor=5.0, method="cells")
    assert nbrs.grid == (10, 10, 10)
    small = space.periodic(l0 * scale)
    r1 = r0 * scale
    out = jax.jit(nl.update)(small, jnp.asarray(r1), nbrs)
    ref = _kdtree_pairs(r1, l0 * scale, cutoff + skin)
    missing = len(ref - _list_pairs(out))
    assert missing == 0 or bool(out.overflow), (
        f"list misses {missing} of {len(ref)} pairs and does not report overflow"
    )


# ---------------------------------------------------------------------------- forces
@pytest.mark.parametrize("kind_of_box", ["periodic", "triclinic"])
def test_pair_forces_with_list_equal_all_pairs(kind_of_box):
    """Lennard-Jones forces through the neighbor list (cell grid) equal the all-pairs sum, also
    after moves that do and do not trigger a rebuild inside evaluate()."""
    if kind_of_box == "periodic":
        box = 6.9 * np.eye(3)
        sp = space.periodic(6.9)
        cutoff, skin = 2.0, 0.2
    else:
        box = BOX_TRI
        sp = space.triclinic(BOX_TRI)
        cutoff, skin = 1.8, 0.2
    r = _lattice(box, 6, 0.12, seed=7)
    with_list = PairPotential(
        "lennard_jones", sp, cutoff, truncation="shift", skin=skin, list_method="cells"
    )
    all_pairs = PairPotential("lennard_jones", sp, cutoff, truncation="shift", neighbor_list=False)
    params = with_list.init_params(sigma=1.0, epsilon=1.0)
    aux = with_list.allocate(r)
    assert aux.grid is not None and min(aux.grid) >= 3
    assert all_pairs.allocate(r) is None

    ev_list = jax.jit(with_list.evaluate)
    ev_all = jax.jit(all_pairs.evaluate)
    rng = np.random.default_rng(8)
    builds = []
    for move in [0.0, 0.03, 0.2]:  # no move, below skin/2, above skin/2
        r = r + move * rng.uniform(-1, 1, r.shape) / np.sqrt(3)
        got, aux = ev_list(jnp.asarray(r), params, aux)
        ref, _ = ev_all(jnp.asarray(r), params, None)
        builds.append(int(aux.n_builds))
        assert not bool(aux.overflow)
        assert abs(float(ref.energy)) > 10.0
        np.testing.assert_allclose(float(got.energy), float(ref.energy), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(got.forces), np.asarray(ref.forces), atol=1e-10)
    assert builds[0] == builds[1] == 1 and builds[2] == 2


# ---------------------------------------------------------------------------- bad input
def test_cutoff_plus_skin_beyond_half_box_raises():
    sp = space.periodic(4.0)
    r = np.random.default_rng(9).uniform(0, 4.0, (20, 3))
    nl.allocate(sp, r, 1.7, 0.2)  # 1.9 < 2: fine
    with pytest.raises(ValueError, match="box"):
        nl.allocate(sp, r, 1.8, 0.3)
    with pytest.raises(ValueError, match="box"):
        PairPotential("lennard_jones", sp, 1.8, skin=0.3)
    # without a list only the cutoff counts
    PairPotential("lennard_jones", sp, 1.8, skin=0.3, neighbor_list=False)
    tri = space.triclinic(BOX_TRI)
    half = 0.5 * (1.0 / np.linalg.norm(np.linalg.inv(BOX_TRI), axis=0)).min()
    with pytest.raises(ValueError, match="box"):
        nl.allocate(tri, r, half - 0.1, 0.2)
    with pytest.raises(ValueError, match="cutoff"):
        nl.allocate(sp, r, -1.0, 0.2)


def test_nan_positions_raise_with_atom_index():
    sp = space.periodic(5.0)
    r = np.random.default_rng(10).uniform(0, 5.0, (30, 3))
    r[17, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN.*\b17\b"):
        nl.allocate(sp, r, 1.0, 0.2)
    with pytest.raises(ValueError, match=r"\b17\b"):
        PairPotential("lennard_jones", sp, 1.0).allocate(r)
    r[17, 1] = 1.0
    r[4, 0] = np.inf
    with pytest.raises(ValueError, match=r"\b4\b"):
        nl.allocate(sp, r, 1.0, 0.2)
    with pytest.raises(ValueError, match="shape"):
        nl.allocate(sp, r[:, :2], 1.0, 0.2)
