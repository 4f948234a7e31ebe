"""The constraint set of a system: the :class:`Constraints` pytree, its construction from pairs
and rigid waters (or an OpenMM ``System``), counts and degrees of freedom, and the checks of
what a projection is given. The solvers that enforce it are in
:mod:`workbench.dynamics.constraints`, which re-exports everything public here.

Host-side, :func:`make_constraints` groups general pairs into *clusters* (connected components
of the constraint graph, padded to a common size K) so that the solver handles every cluster on
its own in one batched computation; rigid 3-site waters (O, H, H) are kept apart for SETTLE.
Structural: the number of constraints, waters and the cluster layout (shapes). Numeric: the
distances. Units: nm, amu.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "Constraints",
    "constrained_dof",
    "constraint_errors",
    "constraint_pairs",
    "constraints_from_openmm",
    "make_constraints",
    "n_constraints",
]

# Water constraints in SETTLE order, as (atom slot, atom slot) within (O, H1, H2).
# int32: a NumPy int64 index array inside a jit traced under jax.enable_x64(False) made JAX's
# index normalisation add int64 to int32 (TypeError; seen once, order-dependent, in the suite)
_WATER_I = np.array([0, 0, 1], dtype=np.int32)
_WATER_J = np.array([1, 2, 2], dtype=np.int32)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Constraints:
    """Distance constraints of one system. Build with :func:`make_constraints`.

    pairs: (C, 2) int32 atom indices of the general (iteratively solved) constraints.
    distances: (C,) nm, their lengths (numeric: may be changed or differentiated).
    clusters: (B, K) int32 indices into ``pairs``: connected groups of constraints, -1 = padding.
    waters: (W, 3) int32 (O, H1, H2) atom indices of rigid waters solved by SETTLE.
    water_oh: (W,) nm O-H distance; water_hh: (W,) nm H-H distance (numeric).
    """

    pairs: Array
    distances: Array
    clusters: Array
    waters: Array
    water_oh: Array
    water_hh: Array


# ----------------------------------------------------------------------------- construction


def _clusters(pairs: np.ndarray) -> np.ndarray:
    """Connected components of the constraint graph as a (B, K) index table padded with -1."""
    parent = {}

    def find(a):
        parent.setdefault(a, a)
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for k, (i, _) in enumerate(pairs):
        groups.setdefault(find(int(i)), []).append(k)
    members = list(groups.values())
    size = max((len(m) for m in members), default=1)
    table = np.full((len(members), size), -1, dtype=np.int32)
    for b, m in enumerate(members):
        table[b, : len(m)] = m
    return table


def _first(mask: np.ndarray) -> int | None:
    """Index of the first True row of ``mask`` (any over trailing axes), or None."""
    rows = mask.reshape(len(mask), -1).any(axis=1) if mask.size else mask
    hits = np.flatnonzero(rows)
    return int(hits[0]) if hits.size else None


def _check_pairs(pairs: np.ndarray, distances: np.ndarray, n_atoms: int | None) -> None:
    """Shapes, index range, self-constraints, non-positive distances and duplicates."""
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"constraint pairs must have shape (C, 2), got {pairs.shape}")
    if distances.shape != (pairs.shape[0],):
        raise ValueError(
            f"constraint distances must have shape ({pairs.shape[0]},) to match the pairs, "
            f"got {distances.shape}")
    upper = np.inf if n_atoms is None else n_atoms
    if (k := _first((pairs < 0) | (pairs >= upper))) is not None:
        limit = "indices must be >= 0" if n_atoms is None else \
            f"the system has {n_atoms} atoms (indices 0..{n_atoms - 1})"
        raise ValueError(f"constraint {k} joins atoms {pairs[k, 0]} and {pairs[k, 1]}, but {limit}")
    if (k := _first(pairs[:, 0] == pairs[:, 1])) is not None:
        raise ValueError(f"constraint {k} joins atom {pairs[k, 0]} to itself")
    if (k := _first(~(np.isfinite(distances) & (distances > 0)))) is not None:
        raise ValueError(f"constraint {k} (atoms {pairs[k, 0]}-{pairs[k, 1]}) has distance "
                         f"{distances[k]} nm; distances must be > 0")
    if len(pairs):
        key = np.sort(pairs, axis=1)
        _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
        if (k := _first(first[inverse.reshape(-1)] != np.arange(len(pairs)))) is not None:
            raise ValueError(
                f"constraints {first[inverse.reshape(-1)[k]]} and {k} both join atoms "
                f"{pairs[k, 0]} and {pairs[k, 1]}; remove the duplicate (it makes the "
                "constraint equations singular)")


def _check_waters(waters, oh, hh, pairs, n_atoms) -> None:
    """Shapes, index range, and whether SETTLE can solve each water: three distinct atoms
    in no other constraint, and a real triangle (d_HH < 2 d_OH)."""
    if waters.ndim != 2 or waters.shape[1] != 3:
        raise ValueError(f"waters must have shape (W, 3) as (O, H1, H2), got {waters.shape}")

    def name(w):
        o, h1, h2 = waters[w].tolist()
        return f"water {w} (atoms O={o}, H={h1}, H={h2})"

    upper = np.inf if n_atoms is None else n_atoms
    if (w := _first((waters < 0) | (waters >= upper))) is not None:
        raise ValueError(f"{name(w)} has an atom index outside the system of {n_atoms} atoms")
    repeated = (waters[:, 0] == waters[:, 1]) | (waters[:, 0] == waters[:, 2]) | \
        (waters[:, 1] == waters[:, 2])
    if (w := _first(repeated)) is not None:
        raise ValueError(f"SETTLE cannot handle {name(w)}: an atom appears twice")
    # Atoms of a water that appear anywhere else (another water or a pair constraint).
    everything = np.concatenate([waters.reshape(-1), pairs.reshape(-1)])
    counts = np.bincount(everything, minlength=1) if everything.size else np.zeros(1, int)
    if (w := _first(counts[waters] > 1)) is not None:
        atom = int(waters[w][counts[waters[w]] > 1][0])
        if (k := _first(pairs == atom)) is not None:
            other = f"constraint {k} (atoms {pairs[k, 0]}-{pairs[k, 1]})"
        else:
            other = name(next(v for v in np.flatnonzero((waters == atom).any(1)) if v != w))
        raise ValueError(
            f"SETTLE cannot handle {name(w)}: atom {atom} is also in {other}; a SETTLE water "
            "must be an isolated rigid triangle. Pass its three distances as pair constraints "
            "instead.")
    if (w := _first(~(np.isfinite(oh) & np.isfinite(hh) & (oh > 0) & (hh > 0)))) is not None:
        raise ValueError(f"{name(w)} has d_OH={oh[w]} nm, d_HH={hh[w]} nm; both must be > 0")
    if (w := _first(hh >= 2 * oh)) is not None:
        raise ValueError(f"SETTLE cannot handle {name(w)}: d_HH={hh[w]} nm >= "
                         f"2 d_OH={2 * oh[w]} nm is not a triangle")


def _index_array(x, width: int) -> np.ndarray:
    """Integer index array; an empty input becomes shape (0, width)."""
    x = np.asarray(x)
    return np.zeros((0, width), np.int64) if x.size == 0 else x.astype(np.int64)


def make_constraints(pairs=(), distances=(), *, waters=(), d_oh=None, d_hh=None,
                     n_atoms: int | None = None, dtype=None) -> Constraints:
    """Validate constraints and build a :class:`Constraints` (host side, not jittable).

    pairs: (C, 2) atom indices; distances: (C,) nm, for the iterative solver.
    waters: (W, 3) (O, H1, H2) atom indices for SETTLE; d_oh, d_hh: O-H and H-H distances in
    nm, scalars (one geometry for all) or (W,) arrays; required when waters are given
    (TIP3P: 0.09572 and 0.15139).
    n_atoms: checks that indices are in range.
    dtype: float dtype of the distances (default: JAX's default float).
    Raises ValueError naming the atoms for out-of-range or repeated indices, non-positive
    distances, duplicates, and waters that SETTLE cannot solve.
    """
    pairs = _index_array(pairs, 2)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    _check_pairs(pairs, distances, n_atoms)
    waters = _index_array(waters, 3)
    n_w = waters.shape[0] if waters.ndim == 2 else 0
    if n_w and (d_oh is None or d_hh is None):
        raise ValueError("waters need their geometry: pass d_oh and d_hh in nm "
                         "(TIP3P: d_oh=0.09572, d_hh=0.15139)")
    oh = np.broadcast_to(np.asarray(1.0 if d_oh is None else d_oh, np.float64), (n_w,))
    hh = np.broadcast_to(np.asarray(1.0 if d_hh is None else d_hh, np.float64), (n_w,))
    _check_waters(waters, oh, hh, pairs, n_atoms)
    ftype = dtype or jnp.result_type(float)
    return Constraints(
        pairs=jnp.asarray(pairs, jnp.int32),
        distances=jnp.asarray(distances, ftype),
        clusters=jnp.asarray(_clusters(pairs), jnp.int32),
        waters=jnp.asarray(waters, jnp.int32),
        water_oh=jnp.asarray(oh, ftype),
        water_hh=jnp.asarray(hh, ftype),
    )


def constraints_from_openmm(system, *, dtype=None) -> Constraints:
    """Read the constraints of an ``openmm.System``.

    Rigid 3-site waters (three atoms constrained to each other and to nothing else, one of them
    heavier than the other two and equally far from both) go to SETTLE;
    every other constraint goes to the iterative solver. Constraints between two massless
    (fixed) particles are dropped, as OpenMM does; one massless end is an error.
    """
    n = system.getNumParticles()
    masses = np.array([system.getParticleMass(i).value_in_unit(_amu()) for i in range(n)])
    pairs, dist = [], []
    for k in range(system.getNumConstraints()):
        i, j, d = system.getConstraintParameters(k)
        i, j, d = int(i), int(j), float(d.value_in_unit(_nm()))
        if masses[i] == 0 and masses[j] == 0:
            continue
        if masses[i] == 0 or masses[j] == 0:
            raise ValueError(f"constraint {k} joins atoms {i} and {j}, one of which is massless "
                             "(fixed); constraints to fixed atoms are not supported")
        pairs.append((i, j))
        dist.append(d)
    pairs_a = np.array(pairs, np.int64).reshape(-1, 2)
    dist_a = np.array(dist, np.float64)
    waters, oh, hh, used = _find_waters(pairs_a, dist_a, masses)
    keep = np.array([k not in used for k in range(len(pairs_a))], bool)
    return make_constraints(pairs_a[keep], dist_a[keep], waters=np.array(waters).reshape(-1, 3),
                            d_oh=np.array(oh), d_hh=np.array(hh), n_atoms=n,
                            dtype=dtype)


def _find_waters(pairs, dist, masses):
    """Rigid triangles SETTLE can solve: (waters, d_oh, d_hh, indices of the used pairs)."""
    partners: dict[int, dict[int, int]] = {}
    for k, (i, j) in enumerate(pairs.tolist()):
        partners.setdefault(i, {})[j] = k
        partners.setdefault(j, {})[i] = k
    waters, oh, hh, used = [], [], [], set()
    for a, nb in partners.items():
        if len(nb) != 2:
            continue
        b, c = sorted(nb)
        if a > b or len(partners[b]) != 2 or len(partners[c]) != 2 or c not in partners[b]:
            continue  # not an isolated triangle, or seen from its lowest atom already
        tri = [a, b, c]
        for centre in tri:
            h1, h2 = [t for t in tri if t != centre]
            k1, k2, k3 = partners[centre][h1], partners[centre][h2], partners[h1][h2]
            if (masses[centre] > max(masses[h1], masses[h2])
                    and np.isclose(dist[k1], dist[k2], rtol=1e-12, atol=0.0)
                    and dist[k3] < 2 * dist[k1]):
                waters.append((centre, h1, h2))
                oh.append(dist[k1])
                hh.append(dist[k3])
                used.update((k1, k2, k3))
                break
    return waters, oh, hh, used


def _nm():
    from openmm import unit
    return unit.nanometer


def _amu():
    from openmm import unit
    return unit.dalton


def n_constraints(c: Constraints) -> int:
    """Number of independent distance constraints, C + 3 W (removed degrees of freedom)."""
    return int(c.pairs.shape[-2]) + 3 * int(c.waters.shape[-2])


def constrained_dof(n_atoms: int, c: Constraints, remove_com: bool = True) -> int:
    """Degrees of freedom 3N - C - (3 if the centre-of-mass motion is removed); the
    temperature is 2 KE / (dof k_B)."""
    return 3 * int(n_atoms) - n_constraints(c) - (3 if remove_com else 0)


def constraint_pairs(c: Constraints) -> tuple[Array, Array]:
    """All constraints as pairs, waters included (three each, O-H1, O-H2, H1-H2):
    ((C + 3W, 2) int32 atom indices, (C + 3W,) nm distances). NumPy arrays when ``c`` is
    concrete (host side: eager jnp ops would each compile), traced arrays under jit."""
    leaves, tree = jax.tree_util.tree_flatten(c)
    host = _concrete(*leaves)
    xp, c = (jnp, c) if host is None else (np, jax.tree_util.tree_unflatten(tree, host))
    w = c.waters
    wp = xp.stack([w[:, _WATER_I], w[:, _WATER_J]], axis=-1).reshape(-1, 2)
    wd = xp.stack([c.water_oh, c.water_oh, c.water_hh], axis=-1).reshape(-1)
    return (xp.concatenate([c.pairs, wp.astype(c.pairs.dtype)]),
            xp.concatenate([c.distances, wd.astype(c.distances.dtype)]))


def constraint_errors(positions: Array, c: Constraints) -> Array:
    """Relative deviations |x_i - x_j| / d - 1 of every constraint, (C + 3W,), in
    :func:`constraint_pairs` order. positions: (N, 3) nm."""
    pairs, d = constraint_pairs(c)
    r = positions[pairs[:, 0]] - positions[pairs[:, 1]]
    return jnp.linalg.norm(r, axis=-1) / d - 1.0


# ----------------------------------------------------------------------------- input checks


def _concrete(*xs):
    """The arrays as NumPy if none is traced, else None (checks then happen outside jit)."""
    try:
        return [np.asarray(x) for x in xs]
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_inputs(arrays: dict, masses, c: Constraints) -> None:
    """Shapes always; masses > 0 and the constraints' validity when the values are concrete
    (eager calls; inside jit they were checked by :func:`make_constraints`)."""
    n = masses.shape[-1] if masses.ndim else None
    for name, x in arrays.items():
        if x.ndim != 2 or x.shape[-1] != 3:
            raise ValueError(f"{name} must have shape (N, 3), got {x.shape}")
        if masses.shape != (x.shape[0],):
            raise ValueError(f"masses must have shape ({x.shape[0]},) to match {name}, "
                             f"got {masses.shape}")
    vals = _concrete(masses, c.pairs, c.distances, c.waters, c.water_oh, c.water_hh)
    if vals is None:
        return
    m, pairs, dist, waters, oh, hh = vals
    if np.any(~(m > 0)):
        bad = np.flatnonzero(~(m > 0))[:5].tolist()
        raise ValueError(f"masses must be > 0 amu; atoms {bad} have {m[bad].tolist()}")
    _check_pairs(pairs, dist, n)
    _check_waters(waters, oh, hh, pairs, n)
