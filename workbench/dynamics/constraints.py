"""Holonomic distance constraints (SHAKE / RATTLE / SETTLE) with implicit differentiation.

A :class:`Constraints` pytree (built, counted and checked in
:mod:`workbench.dynamics.constraint_set`; re-exported here) holds two kinds of rigid distances:

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

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import constraint_set
from .constraint_set import (_WATER_I, _WATER_J, Constraints, _check_inputs,  # noqa: F401
                             constrained_dof, constraint_errors, constraint_pairs,
                             constraints_from_openmm, make_constraints, n_constraints)

Array = jax.Array

__all__ = ["constrain_positions", "constrain_velocities", *constraint_set.__all__]


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
