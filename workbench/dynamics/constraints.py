"""Holonomic distance constraints (SHAKE / RATTLE / SETTLE) with implicit differentiation.

A :class:`Constraints` pytree holds two kinds of rigid distances:

* general pairs ``|x_i - x_j| = d`` (bonds to hydrogen, all bonds, ...). Host-side,
  :func:`make_constraints` groups them into *clusters* (connected components of the constraint
  graph, padded to a common size K). Clusters share no atom, so the constraint Jacobian is
  block diagonal and every cluster is solved on its own, all in one batched computation;
* rigid 3-site waters (O, H, H), solved analytically by SETTLE (Miyamoto & Kollman,
  J. Comput. Chem. 13, 952 (1992)). SETTLE assumes equal hydrogen masses; if they differ
  (HDO, mass repartitioning) its result seeds the Newton iteration below, which makes it exact.

**Positions (SHAKE projection).** Given a reference configuration ``ref`` (the last constrained
positions) and unconstrained positions ``x``, find multipliers ``lam`` (C,) so that

    x* = x + M^-1 G(ref)^T lam,        g_k(x*) = |x*_i - x*_j|^2 - d_k^2 = 0,

with G(ref) the constraint gradients at the reference (rows ``s_k = ref_i - ref_j``). In
constraint space the bond vectors are ``r_k(lam) = r0_k + sum_l c_kl lam_l s_l`` with
``r0_k = x_i - x_j`` and the mass-coupling matrix ``c_kl`` (1/m of the atoms that constraints k
and l share, with signs), so the problem is a small nonlinear system per cluster, solved by
Newton's method (exact block Jacobian ``2 c_kl r_k.s_l``) inside ``lax.while_loop`` until
``|r_k^2 - d_k^2| / (2 d_k^2) < tol``. SETTLE solves the same equations for a water in closed
form; its multipliers are recovered from its displacement (a 3x3 least-squares solve) and
checked by the same loop, which then exits at once.
OpenMM's CCMA solves these same equations (with an approximate inverse Jacobian), so given the
same reference both converge to the same positions.

**Velocities (RATTLE).** ``v' = v + M^-1 G(x)^T mu`` with ``G(x) v' = 0``: one linear solve
``(G M^-1 G^T) mu = -G v`` per cluster or water, no iteration.

**Implicit differentiation.** The multipliers satisfy ``F(lam; r0, s, c, d) = 0``. The
solver (Newton loop, seeded by SETTLE for waters) is a ``jax.custom_jvp`` whose rule uses the
implicit-function theorem, ``dlam = -(dF/dlam)^-1 (dF/dtheta . dtheta)`` at the solution.
Reverse mode is the transpose of that linear map (one transposed solve), so gradients with
respect to positions, reference, masses and distances never unroll the iterations, cost one
extra block solve and are exact to solver tolerance; higher derivatives work too. Every value
the rule needs is an argument of the wrapped function (nothing traced is closed over), so
``jit(grad(jit(f)))``, ``vmap`` and ``lax.scan`` compose. The velocity projection is a direct
linear solve and is differentiated by ordinary autodiff.

Structural: the number of constraints, waters and the cluster layout (shapes). Numeric (traced,
no recompilation): positions, velocities, masses, distances, ``tol``.
Units: nm, ps, amu.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "Constraints",
    "constrain_positions",
    "constrain_velocities",
    "constrained_dof",
    "constraint_errors",
    "constraint_pairs",
    "constraints_from_openmm",
    "make_constraints",
    "n_constraints",
]

# Water constraints in SETTLE order, as (atom slot, atom slot) within (O, H1, H2).
_WATER_I = np.array([0, 0, 1])
_WATER_J = np.array([1, 2, 2])


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


# ----------------------------------------------------------------------------- cluster algebra


def _groups(c: Constraints):
    """Cluster and water groups as (i, j, valid, d): (B, K) atom indices, mask, distances."""
    out = []
    if c.pairs.shape[0]:
        valid = c.clusters >= 0
        safe = jnp.where(valid, c.clusters, 0)
        out.append(("pairs", c.pairs[safe, 0], c.pairs[safe, 1], valid,
                    jnp.where(valid, c.distances[safe], 1.0)))
    if c.waters.shape[0]:
        w = c.waters
        d = jnp.stack([c.water_oh, c.water_oh, c.water_hh], axis=-1)
        out.append(("waters", w[:, _WATER_I], w[:, _WATER_J], jnp.ones(d.shape, bool), d))
    return out


def _coupling(i, j, weight, valid):
    """(B, K, K) matrix c_kl = w_ik (δ(i_k,i_l) - δ(i_k,j_l)) - w_jk (δ(j_k,i_l) - δ(j_k,j_l)):
    how a multiplier on constraint l moves bond vector k per unit of s_l. Padding slots get
    an identity row/column. weight: (N,) (1/m for the mass coupling)."""
    eq = lambda a, b: (a[..., :, None] == b[..., None, :]).astype(weight.dtype)
    wi, wj = weight[i][..., :, None], weight[j][..., :, None]
    m = wi * (eq(i, i) - eq(i, j)) - wj * (eq(j, i) - eq(j, j))
    both = valid[..., :, None] & valid[..., None, :]
    eye = jnp.eye(i.shape[-1], dtype=weight.dtype)
    return jnp.where(both, m, jnp.where(valid[..., :, None], 0.0, eye))


def _bond_vectors(x, i, j, valid):
    """x_i - x_j per slot, (B, K, 3); padding slots hold the unit vector e_x."""
    pad = jnp.zeros(3, x.dtype).at[0].set(1.0)
    return jnp.where(valid[..., None], x[i] - x[j], pad)


def _scatter(x, invm, i, j, valid, lam, vecs):
    """x + M^-1 G^T lam: atom i_k moves by lam_k vecs_k / m_i, atom j_k by -lam_k vecs_k / m_j."""
    f = jnp.where(valid, lam, 0.0)[..., None] * vecs
    i, j, f = i.reshape(-1), j.reshape(-1), f.reshape(-1, 3)
    return x.at[i].add(invm[i][:, None] * f).at[j].add(-invm[j][:, None] * f)


# ----------------------------------------------------------------------------- multipliers


def _residual(lam, r0, s, coup, d2):
    """F_k = |r_k(lam)|^2 - d_k^2 with r_k = r0_k + sum_l c_kl lam_l s_l; returns (F, r)."""
    r = r0 + jnp.einsum("...kl,...l,...lx->...kx", coup, lam, s)
    return jnp.sum(r * r, axis=-1) - d2, r


def _jacobian(r, s, coup):
    """dF_k / dlam_l = 2 c_kl r_k . s_l, (B, K, K)."""
    return 2.0 * coup * jnp.einsum("...kx,...lx->...kl", r, s)


def _solve(a, b):
    """Solve a x = b for batches of small K x K systems, a: (..., K, K), b: (..., K).

    K <= 3 (single bonds, waters, CH3 and NH3 groups: every cluster of bonds to hydrogen) by
    Cramer's rule, elementwise over the batch; larger clusters by LU. Batched LAPACK LU on
    3 x 3 blocks went through column-major copies and a pivoting loop: measured 0.4 ms per
    projection of 775 waters, most of a constrained water step's constraint cost."""
    k = a.shape[-1]
    if k == 1:
        return b / a[..., 0]
    if k == 2:
        det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
        return jnp.stack([a[..., 1, 1] * b[..., 0] - a[..., 0, 1] * b[..., 1],
                          a[..., 0, 0] * b[..., 1] - a[..., 1, 0] * b[..., 0]], -1) / det[..., None]
    if k == 3:
        c0 = jnp.cross(a[..., 1, :], a[..., 2, :])  # rows of the adjugate's transpose
        c1 = jnp.cross(a[..., 2, :], a[..., 0, :])
        c2 = jnp.cross(a[..., 0, :], a[..., 1, :])
        det = jnp.sum(a[..., 0, :] * c0, -1)
        x = c0 * b[..., 0:1] + c1 * b[..., 1:2] + c2 * b[..., 2:3]
        return x / det[..., None]
    return jnp.linalg.solve(a, b[..., None])[..., 0]


def _implicit_tangent(lam, primals, tangents):
    """Implicit-function theorem: dlam = -(dF/dlam)^-1 (dF/dtheta . dtheta) at F(lam) = 0."""
    resid = lambda *theta: _residual(lam, *theta)[0]
    _, dF = jax.jvp(resid, primals, tangents)
    _, r = _residual(lam, *primals)
    return -_solve(_jacobian(r, primals[1], primals[2]), dF)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _multipliers(max_iter, r0, s, coup, d2, tol, lam0):
    """Solve F(lam) = 0 by Newton's method from ``lam0``; stops when the largest relative
    error |r^2 - d^2| / (2 d^2) is below tol, after max_iter steps, or when the error stops
    decreasing (round-off floor). Differentiated implicitly (tol and lam0 get no tangent)."""

    def error(f):
        return jnp.max(jnp.abs(f) / (2.0 * d2))

    # A relative error of a few ulps is the round-off floor: SETTLE's closed form for a float32
    # water lands there, and forcing Newton steps on it cost 4 iterations per call (measured
    # 2.7 ms of a 28 ms solvated step).
    floor = jnp.maximum(tol, 16.0 * jnp.finfo(r0.dtype).eps)

    def cond(state):
        it, _, _, _, err, prev = state
        improving = (err < prev) | (it < 4)
        return (err > floor) & (it < max_iter) & improving

    def body(state):
        it, lam, f, r, err, _ = state
        lam = lam - _solve(_jacobian(r, s, coup), f)
        f, r = _residual(lam, r0, s, coup, d2)
        return it + 1, lam, f, r, error(f), err

    f0, rr = _residual(lam0, r0, s, coup, d2)
    init = (jnp.asarray(0, jnp.int32), lam0, f0, rr, error(f0), jnp.asarray(jnp.inf, r0.dtype))
    return jax.lax.while_loop(cond, body, init)[1]


@_multipliers.defjvp
def _multipliers_jvp(max_iter, primals, tangents):
    lam = _multipliers(max_iter, *primals)
    return lam, _implicit_tangent(lam, primals[:4], tangents[:4])


def _settle(r0, s, d2, m):
    """SETTLE for (W,) waters in constraint space: the multipliers (W, 3) of the analytic
    solution. r0, s: (W, 3, 3) new and reference bond vectors in the order O-H1, O-H2, H1-H2
    (x_i - x_j); d2: (W, 3) squared lengths; m: (W, 3) masses (O, H1, H2). Exact when the
    hydrogen masses are equal; otherwise a close starting guess for Newton's method."""
    unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    b0, c0 = -s[:, 0], -s[:, 1]  # reference H positions relative to reference O
    b1, c1 = -r0[:, 0], -r0[:, 1]  # new H positions relative to new O
    m_o, m_h1, m_h2 = m[:, 0:1], m[:, 1:2], m[:, 2:3]
    total = m_o + m_h1 + m_h2
    com = (m_h1 * b1 + m_h2 * c1) / total
    a1, b1, c1 = -com, b1 - com, c1 - com  # new positions relative to their centre of mass
    # Frame: z normal to the reference plane, y along the in-plane part of the new O position.
    ez = unit(jnp.cross(b0, c0))
    ex = unit(jnp.cross(a1, ez))
    frame = jnp.stack([ex, jnp.cross(ez, ex), ez], axis=1)  # rows are the axes
    loc = lambda v: jnp.einsum("wij,wj->wi", frame, v)
    (xb0, yb0, _), (xc0, yc0, _) = loc(b0).T, loc(c0).T
    za1 = loc(a1)[:, 2]
    xb1, yb1, zb1 = loc(b1).T
    xc1, yc1, zc1 = loc(c1).T
    # Canonical water (O on +y, H1 at -x, H2 at +x, centre of mass at the origin), tilted by
    # phi about x and psi about y so that its out-of-plane coordinates match the new ones.
    d_oh, d_hh = jnp.sqrt(d2[:, 0]), jnp.sqrt(d2[:, 2])
    rc = 0.5 * d_hh
    height = jnp.sqrt(d_oh**2 - rc**2)
    ra = height * (m_h1 + m_h2)[:, 0] / total[:, 0]
    rb = height - ra
    sin_phi = za1 / ra
    cos_phi = jnp.sqrt(1.0 - sin_phi**2)
    sin_psi = (zb1 - zc1) / (2.0 * rc * cos_phi)
    cos_psi = jnp.sqrt(1.0 - sin_psi**2)
    ya2 = ra * cos_phi
    xb2 = -rc * cos_psi
    yb2 = -rb * cos_phi - rc * sin_psi * sin_phi
    yc2 = -rb * cos_phi + rc * sin_psi * sin_phi
    # In-plane rotation theta: the displacement must exert no torque about z (forces along the
    # reference bonds): alpha sin(theta) + beta cos(theta) = gamma.
    alpha = xb2 * (xb0 - xc0) + yb0 * yb2 + yc0 * yc2
    beta = xb2 * (yc0 - yb0) + xb0 * yb2 + xc0 * yc2
    gamma = xb0 * yb1 - xb1 * yb0 + xc0 * yc1 - xc1 * yc0
    norm2 = alpha**2 + beta**2
    root = jnp.sqrt(norm2 - gamma**2)
    sin_t = (alpha * gamma - beta * root) / norm2
    cos_t = (beta * gamma + alpha * root) / norm2
    a3 = jnp.stack([-ya2 * sin_t, ya2 * cos_t, za1], axis=-1)
    b3 = jnp.stack([xb2 * cos_t - yb2 * sin_t, xb2 * sin_t + yb2 * cos_t, zb1], axis=-1)
    c3 = jnp.stack([-xb2 * cos_t - yc2 * sin_t, -xb2 * sin_t + yc2 * cos_t, zc1], axis=-1)
    lab = lambda v: jnp.einsum("wji,wj->wi", frame, v)
    disp = jnp.stack([lab(a3) - a1, lab(b3) - b1, lab(c3) - c1], axis=1)  # (W, atom, 3)
    # Multipliers from M disp = G(ref)^T lam (least squares; exact for a SETTLE solution).
    p = m[..., None] * disp
    rhs = jnp.sum(s * (p[:, _WATER_I] - p[:, _WATER_J]), axis=-1)
    normal = _coupling(jnp.asarray(_WATER_I), jnp.asarray(_WATER_J), jnp.ones(3, s.dtype),
                       jnp.ones(3, bool))
    normal = normal[None] * jnp.einsum("wkx,wlx->wkl", s, s)
    return _solve(normal, rhs)


# ----------------------------------------------------------------------------- projections


def constrain_positions(reference: Array, positions: Array, masses: Array, c: Constraints,
                        tol=1e-10, *, max_iter: int = 50) -> Array:
    """Project ``positions`` onto the constraints along the reference bond vectors (SHAKE).

    reference: (N, 3) nm, constrained positions of the previous step (the directions of the
    constraint forces); positions: (N, 3) nm, unconstrained; masses: (N,) amu.
    tol: relative distance tolerance of the iterative solver (numeric; waters are analytic);
    max_iter: Newton iteration cap (structural). Returns (N, 3) nm with every
    ``|x_i - x_j| = d`` to ``tol`` and the centre of mass unchanged. Differentiable (implicit
    derivatives) in reference, positions, masses and distances; jit/vmap/scan compatible.
    """
    reference, positions, masses = jnp.asarray(reference), jnp.asarray(positions), \
        jnp.asarray(masses)
    _check_inputs({"reference": reference, "positions": positions}, masses, c)
    dtype = positions.dtype
    tol = jnp.asarray(tol, dtype)
    invm = (1.0 / masses).astype(dtype)
    out = positions
    for kind, i, j, valid, d in _groups(c):
        r0 = _bond_vectors(positions, i, j, valid)
        s = _bond_vectors(reference, i, j, valid)
        coup = _coupling(i, j, invm, valid)
        d2 = (d * d).astype(dtype)
        if kind == "pairs":
            lam0 = jnp.zeros(d2.shape, dtype)
        else:  # SETTLE's closed form, refined by Newton only if it is off (unequal H masses)
            lam0 = jax.lax.stop_gradient(_settle(r0, s, d2, masses[c.waters].astype(dtype)))
        lam = _multipliers(int(max_iter), r0, s, coup, d2, tol, lam0)
        out = _scatter(out, invm, i, j, valid, lam, s)
    return out


def constrain_velocities(positions: Array, velocities: Array, masses: Array,
                         c: Constraints) -> Array:
    """Remove the velocity components along the constraints (RATTLE's velocity step).

    positions: (N, 3) nm (constrained); velocities: (N, 3) nm/ps; masses: (N,) amu.
    Returns (N, 3) nm/ps with ``(x_i - x_j) . (v_i - v_j) = 0`` for every constraint: the
    mass-weighted orthogonal projection v + M^-1 G^T mu, one linear solve per cluster and
    water (exact, so autodiff through it is the implicit derivative). Momentum is unchanged.
    """
    positions, velocities, masses = jnp.asarray(positions), jnp.asarray(velocities), \
        jnp.asarray(masses)
    _check_inputs({"positions": positions, "velocities": velocities}, masses, c)
    invm = (1.0 / masses).astype(velocities.dtype)
    out = velocities
    for _, i, j, valid, _ in _groups(c):
        r = _bond_vectors(positions, i, j, valid)
        a = _coupling(i, j, invm, valid) * jnp.einsum("...kx,...lx->...kl", r, r)
        rv = jnp.where(valid, jnp.sum(r * (velocities[i] - velocities[j]), axis=-1), 0.0)
        out = _scatter(out, invm, i, j, valid, _solve(a, -rv), r)
    return out
