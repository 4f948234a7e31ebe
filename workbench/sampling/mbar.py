"""MBAR: the multistate Bennett acceptance ratio (Shirts and Chodera, J. Chem. Phys. 129, 124105,
2008), in JAX.

Input: reduced potentials ``u_kn`` (K, N), the energy of every sample n (from any state) in
every state k, in units of kT (u = beta U, plus beta p V in NPT), and ``N_k`` (K,), how many of the
N samples came from each state. The free energies f_k (kT, f_0 = 0) solve the self-consistent
equations, which are the stationarity conditions of the convex function

    F(f) = sum_n log sum_k N_k exp(f_k - u_kn) - sum_k N_k f_k,

so they are found here by Newton's method on F (gradient and Hessian from the weights, every
sum a log-sum-exp), with a backtracking line search: no fixed-point iteration, and quadratic
convergence to the round-off floor. Written for the workbench (rather than calling pymbar)
so that it compiles, runs on the batch axis and is differentiable; the tests compare it with
pymbar on the same data.

Uncertainties are the asymptotic covariance of Kong et al. as pymbar's default ("svd-ew"):
Theta = W^T (I - W diag(N_k) W^T)^+ W from the SVD of the (N, K) weight matrix W.

Overlap: the result carries pymbar's overlap matrix O = W^T W diag(N_k) (``compute_overlap``;
row-stochastic, O_ij the probability that a sample from state i is seen in state j) and its
second-largest eigenvalue (1 minus it is pymbar's overlap scalar, the spectral gap). States whose
samples never reach each other (the groups of :func:`overlap_groups`: connected components of
O_ij > :data:`OVERLAP_THRESHOLD` over the sampled states) have undetermined free-energy
differences: with concrete input :func:`mbar` raises :class:`OverlapError` listing the groups,
and warns (:class:`PoorOverlapWarning`) when the gap is below :data:`POOR_OVERLAP_GAP`. Under
``jit``/``vmap``/``grad`` nothing can be raised: the standard errors between groups are then
``inf``. Input (NaN, -inf, counts) is checked when concrete; u_kn = +inf (a state a sample
cannot reach, e.g. a hard-core overlap) is allowed as long as every sample has a finite energy
in some sampled state and every state is finite for some sample.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

Array = jax.Array

__all__ = ["MBARResult", "OverlapError", "PoorOverlapWarning", "OVERLAP_THRESHOLD",
           "POOR_OVERLAP_GAP", "covariance", "log_weights", "mbar", "overlap_groups",
           "overlap_matrix", "reweight"]

OVERLAP_THRESHOLD = 1e-8
"""States i and j are connected when max(O_ij, O_ji) exceeds this (far below any usable
overlap: two unit Gaussians 10 sigma apart, 500 samples each, give 5e-12 and df ~ 4000 kT)."""

POOR_OVERLAP_GAP = 1e-3
"""Warn when 1 - (second-largest eigenvalue of O) is below this."""


class OverlapError(ValueError):
    """The states fall into groups whose samples never reach each other, so free-energy
    differences between groups are undetermined. ``groups``: lists of state indices."""

    def __init__(self, message: str, groups: list[list[int]]):
        super().__init__(message)
        self.groups = groups


class PoorOverlapWarning(UserWarning):
    """The states overlap poorly (spectral gap of the overlap matrix below
    :data:`POOR_OVERLAP_GAP`): the estimates rest on few samples; read the uncertainties."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MBARResult:
    """f: (K,) free energies in kT, f_0 = 0; df: (K, K) standard errors of f_j - f_i (kT);
    log_w: (K, N) log weights, sum_n exp(log_w[k]) = 1; log_d: (N,) log sum_k N_k exp(f_k -
    u_kn), each sample's mixture denominator; iterations, gradient_norm: solver
    diagnostics (the largest |dF/df_k| / N at the end); overlap: (K, K) overlap matrix
    O = W^T W diag(N_k) (pymbar's ``compute_overlap()["matrix"]``); overlap_eigenvalue: ()
    its second-largest eigenvalue (1 for disconnected states; 0 for one state). df is inf
    between states in different :func:`overlap_groups`."""

    f: Array
    df: Array
    log_w: Array
    log_d: Array
    iterations: Array
    gradient_norm: Array
    overlap: Array
    overlap_eigenvalue: Array

    @property
    def delta_f(self) -> Array:
        """(K, K) f_j - f_i (kT)."""
        return self.f[None, :] - self.f[:, None]

    @property
    def spectral_gap(self) -> Array:
        """() 1 - second-largest eigenvalue of the overlap matrix: pymbar's overlap scalar
        (0: disconnected states, up to 1: full overlap)."""
        return 1.0 - self.overlap_eigenvalue


def _concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check(u_kn, n_k):
    """Shapes always (static); values (counts, NaN, -inf, unreachable states) when concrete."""
    u_kn = jnp.asarray(u_kn)
    if u_kn.ndim != 2 or u_kn.shape[0] < 1 or u_kn.shape[1] < 1:
        raise ValueError(f"u_kn must be (K, N) reduced potentials with K, N >= 1, got shape "
                         f"{u_kn.shape}")
    if not jnp.issubdtype(u_kn.dtype, jnp.floating):
        u_kn = u_kn.astype(jnp.result_type(float))
    n_raw = n_k
    n_k = jnp.asarray(n_k)
    if n_k.shape != (u_kn.shape[0],):
        raise ValueError(f"N_k must have shape ({u_kn.shape[0]},) (one count per state), "
                         f"got {n_k.shape}")
    if _concrete(n_k):
        counts = np.asarray(n_k)
        if counts.dtype.kind not in "iuf" or not np.all(np.isfinite(counts)) \
                or np.any(counts != np.round(counts)):
            raise ValueError(f"N_k must be whole numbers of samples per state, got {n_raw!r}")
        if np.any(counts < 0) or abs(counts.sum() - u_kn.shape[1]) > 0.5:
            raise ValueError(f"N_k must be non-negative and sum to N = {u_kn.shape[1]} samples, "
                             f"got sum {counts.sum():g}")
    n_k = n_k.astype(u_kn.dtype)
    if _concrete(u_kn, n_k):
        _check_values(u_kn, np.asarray(n_k) > 0)
    return u_kn, n_k


def _check_values(u_kn: Array, sampled: np.ndarray) -> None:
    """NaN and -inf are errors; +inf (unreachable) is allowed where every sample is finite in
    a sampled state and every state is finite for some sample."""
    u = np.asarray(u_kn)  # concrete (host copy: numpy, also inside a jit trace)
    bad = np.isnan(u) | (u == -np.inf)
    if bad.any():
        k, n = (int(x) for x in np.argwhere(bad)[0])
        raise ValueError(f"u_kn has a non-finite reduced potential {u[k, n]} at state "
                         f"k={k}, sample n={n} ({int(bad.sum())} in all); only "
                         "+inf (state unreachable from that sample) is allowed: check the "
                         "energies and kT")
    finite = np.isfinite(u)
    dead = np.nonzero(~finite.any(1))[0]
    if dead.size:
        raise ValueError(f"u_kn is +inf for every sample in state(s) {dead[:10].tolist()}: no "
                         "sample reaches them, so their free energies are undefined")
    lost = np.nonzero(~finite[sampled].any(0))[0]
    if lost.size:
        raise ValueError(f"sample(s) n={lost[:10].tolist()} have u_kn = +inf in every sampled "
                         "state (N_k > 0): a sample must have a finite energy in the state it "
                         "came from")


def _log_counts(n_k):
    """(K,) log N_k, -inf for unsampled states (they drop out of every mixture sum)."""
    return jnp.where(n_k > 0, jnp.log(jnp.maximum(n_k, 1e-300)), -jnp.inf)


def _log_denominator(f, u_kn, log_nk):
    """(N,) log sum_k N_k exp(f_k - u_kn)."""
    return logsumexp(log_nk[:, None] + f[:, None] - u_kn, axis=0)


def log_weights(f, u_kn, n_k) -> Array:
    """(K, N) log W_kn = f_k - u_kn - log sum_k' N_k' exp(f_k' - u_k'n): normalized weights of
    every sample in every state (rows sum to one in exp)."""
    u_kn, n_k = _check(u_kn, n_k)
    log_nk = _log_counts(n_k)
    return f[:, None] - u_kn - _log_denominator(f, u_kn, log_nk)[None, :]


def _objective(f, u_kn, n_k, log_nk):
    return jnp.sum(_log_denominator(f, u_kn, log_nk)) - jnp.dot(n_k, f)


def _solve(u_kn, n_k, f0, max_iter: int, tol):
    log_nk = _log_counts(n_k)
    n = u_kn.shape[1]

    def grad_hess(f):
        lw = f[:, None] - u_kn - _log_denominator(f, u_kn, log_nk)[None, :]
        w = jnp.exp(lw + log_nk[:, None])  # N_k W_kn: sums over k to one for every n
        g = jnp.sum(w, 1) - n_k
        h = jnp.diag(jnp.sum(w, 1)) - w @ w.T
        return g, h

    free = _free_states(n_k)

    def step(state):
        it, f, _ = state
        g, h = grad_hess(f)
        # Solve on the sampled states but one (F is flat along (1, ..., 1)); the other rows of
        # the Hessian (unsampled states carry no weight) become the identity.
        h = jnp.where(free[:, None] & free[None, :], h, jnp.diag(jnp.where(free, 0.0, 1.0)))
        g0 = jnp.where(free, g, 0.0)
        delta = -jnp.linalg.solve(h, g0)
        obj = _objective(f, u_kn, n_k, log_nk)

        def shrink(carry):
            t, _ = carry
            return t * 0.5, _objective(f + 0.5 * t * delta, u_kn, n_k, log_nk)

        def worse(carry):
            t, value = carry
            return (value > obj + 1e-4 * t * jnp.dot(g0, delta)) & (t > 1e-8)

        t, _ = jax.lax.while_loop(worse, shrink,
                                  (jnp.asarray(1.0, f.dtype),
                                   _objective(f + delta, u_kn, n_k, log_nk)))
        f = f + t * delta
        g, _ = grad_hess(f)
        return it + 1, f, jnp.max(jnp.abs(jnp.where(free, g, 0.0))) / n

    def cond(state):
        it, _, gnorm = state
        return (it < max_iter) & (gnorm > tol)

    g, _ = grad_hess(f0)
    return jax.lax.while_loop(cond, step, (jnp.asarray(0, jnp.int32), f0,
                                           jnp.max(jnp.abs(jnp.where(free, g, 0.0))) / n))


def _free_states(n_k):
    """(K,) bool: the states whose f the solver moves: sampled ones but the first (pinned)."""
    sampled = n_k > 0
    first = jnp.argmax(sampled)
    return sampled & (jnp.arange(n_k.shape[0]) != first)


def covariance(log_w, n_k) -> Array:
    """(K, K) asymptotic covariance Theta of the free energies (kT^2), pymbar's "svd-ew":
    Theta = V S [(I - S V^T diag(N_k) V S)^+] S V^T with W = U S V^T the thin SVD of the
    (N, K) weight matrix."""
    w = jnp.exp(log_w).T  # (N, K)
    _, s, vt = jnp.linalg.svd(w, full_matrices=False)
    v = vt.T
    inner = jnp.eye(s.shape[0], dtype=w.dtype) - (s[:, None] * (vt * n_k[None, :]) @ v) * s[None, :]
    return (v * s[None, :]) @ jnp.linalg.pinv(inner) @ (s[:, None] * vt)


def overlap_matrix(log_w, n_k, counts=None) -> Array:
    """(K, K) overlap O_ij = N_j sum_n c_n W_in W_jn from log weights (K, N) (rows normalized)
    and counts N_k (K,); ``counts`` (N,) are per-sample multiplicities (WHAM's bin counts;
    default 1). Row-stochastic, as pymbar's ``compute_overlap``."""
    w = jnp.exp(log_w)
    wc = w if counts is None else w * counts[None, :]
    return (wc @ w.T) * n_k[None, :]


def _second_eigenvalue(o: Array, n_k: Array) -> Array:
    """Second-largest eigenvalue of O = G diag(N) (G symmetric): from the symmetric
    diag(N)^1/2 G diag(N)^1/2, which has the same spectrum (0 for one state)."""
    if o.shape[0] < 2:
        return jnp.zeros((), o.dtype)
    root = jnp.sqrt(n_k)
    g = o / jnp.where(n_k > 0, n_k, 1.0)[None, :]
    return jnp.linalg.eigvalsh(root[:, None] * g * root[None, :])[-2]


def _group_labels(o, sampled):
    """(K,) group label of every state (traceable): connected components of
    max(O_ij, O_ji) > OVERLAP_THRESHOLD over the sampled states; an unsampled state joins the
    group of the sampled state holding most of its overlap."""
    k = o.shape[0]
    link = (jnp.maximum(o, o.T) > OVERLAP_THRESHOLD) & sampled[:, None] & sampled[None, :]
    reach = (link | jnp.eye(k, dtype=bool)).astype(o.dtype)
    for _ in range(max(1, int(np.ceil(np.log2(max(k, 2)))))):  # transitive closure
        reach = (reach @ reach > 0).astype(o.dtype)
    host = jnp.where(sampled, jnp.arange(k), jnp.argmax(jnp.where(sampled[None, :], o, -1.0), 1))
    first = jnp.argmax(reach > 0, axis=1)  # smallest state index in each sampled state's group
    return first[host]


def overlap_groups(result: "MBARResult | np.ndarray") -> list[list[int]]:
    """Host side: the groups of states whose samples reach each other (one group when all
    free-energy differences are determined), from ``result.overlap``. Sampled states are those
    with O_jj > 0."""
    o = np.asarray(result.overlap if isinstance(result, MBARResult) else result, float)
    labels = np.asarray(_group_labels(jnp.asarray(o), jnp.asarray(np.diag(o) > 0)))
    return [np.nonzero(labels == g)[0].tolist() for g in np.unique(labels)]


@jax.jit
def _diagnostics(log_w, n_k):
    """Overlap matrix, group labels and second eigenvalue (not differentiated; one compiled
    program, also when called eagerly)."""
    o = overlap_matrix(log_w, n_k)
    return o, _group_labels(o, n_k > 0), _second_eigenvalue(o, n_k)


def _diagnose(o: np.ndarray, eigenvalue: float, what: str = "MBAR") -> None:
    """Raise OverlapError for disconnected groups; warn on a small spectral gap."""
    groups = overlap_groups(o)
    if len(groups) > 1:
        raise OverlapError(
            f"{what}: the states fall into {len(groups)} groups whose samples never reach each "
            f"other: {' | '.join(str(g) for g in groups)} (overlap below {OVERLAP_THRESHOLD:g}); "
            "free-energy differences between groups are undetermined. Add intermediate states "
            "(windows) or sample longer so that neighbouring states overlap", groups)
    gap = 1.0 - float(eigenvalue)
    if gap < POOR_OVERLAP_GAP:
        off = o - np.diag(np.diag(o))
        warnings.warn(f"{what}: poor overlap between states: spectral gap 1 - lambda_2 = "
                      f"{gap:.2e} < {POOR_OVERLAP_GAP:g} (least-connected state: largest "
                      f"overlap {off.max(1).min():.2e} with another state); the estimates rest "
                      "on few samples: read the uncertainties, add states or sample longer",
                      PoorOverlapWarning, stacklevel=3)


def mbar(u_kn, n_k, *, f_init=None, max_iter: int = 100, tol: float = 1e-12,
         check: bool = True) -> MBARResult:
    """Solve MBAR for reduced potentials ``u_kn`` (K, N) kT and counts ``N_k`` (K,).

    f_init: (K,) starting free energies (default zeros); max_iter: Newton steps (structural);
    tol: stop when the largest |gradient| / N is below it (the self-consistent equations to that
    relative accuracy; at least 8 machine epsilons of the data's precision, so float32 data stop
    at round-off instead of running all max_iter steps). Works under jit and vmap (over
    stacked data sets of one shape); the free energies are differentiable with respect to u_kn
    by implicit differentiation of the
    stationarity condition (autodiff through the converged weights gives it exactly, because
    F is differentiated at its minimum).

    check: with concrete input (not traced), raise :class:`OverlapError` when the states fall
    into disconnected groups and warn (:class:`PoorOverlapWarning`) on poor overlap; False
    skips both (the result then has df = inf between groups, as under jit). Bad input
    (shapes, counts, NaN) raises ValueError.
    """
    u_kn, n_k = _check(u_kn, n_k)
    k = u_kn.shape[0]
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not (np.isfinite(float(tol)) and float(tol) > 0):
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    if f_init is None:
        f0 = jnp.zeros(k, u_kn.dtype)
    else:
        f0 = jnp.asarray(f_init, u_kn.dtype)
        if f0.shape != (k,):
            raise ValueError(f"f_init must have shape ({k},) (one free energy per state), got "
                             f"{f0.shape}")
        if _concrete(f0) and not np.all(np.isfinite(np.asarray(f0))):
            raise ValueError(f"f_init must be finite, got {np.asarray(f0)}")
    # the gradient cannot fall below round-off: in float32 stop at 8 eps (~1e-6 of N)
    tol = max(float(tol), 8.0 * float(jnp.finfo(u_kn.dtype).eps))
    its, f, gnorm = _solve(jax.lax.stop_gradient(u_kn), jax.lax.stop_gradient(n_k),
                           jax.lax.stop_gradient(f0), int(max_iter), tol)
    f = _implicit(f, u_kn, n_k)
    log_nk = _log_counts(n_k)
    log_d = _log_denominator(f, u_kn, log_nk)
    # Every state's f from the pooled samples (the unsampled ones too), relative to state 0.
    f = -logsumexp(-u_kn - log_d[None, :], axis=1)
    f = f - f[0]
    log_d = _log_denominator(f, u_kn, log_nk)
    log_w = f[:, None] - u_kn - log_d[None, :]
    theta = covariance(log_w, n_k)
    d = jnp.diag(theta)
    var = d[:, None] + d[None, :] - 2.0 * theta
    o, labels, eig = _diagnostics(jax.lax.stop_gradient(log_w), jax.lax.stop_gradient(n_k))
    df = jnp.where(labels[:, None] == labels[None, :], jnp.sqrt(jnp.maximum(var, 0.0)), jnp.inf)
    result = MBARResult(f=f, df=df, log_w=log_w, log_d=log_d, iterations=its,
                        gradient_norm=gnorm, overlap=o, overlap_eigenvalue=eig)
    if check and _concrete(u_kn, n_k, result.overlap):
        _diagnose(np.asarray(result.overlap), float(result.overlap_eigenvalue))
    return result


@jax.custom_jvp
def _implicit(f, u_kn, n_k):
    return f


@_implicit.defjvp
def _implicit_jvp(primals, tangents):
    """df/du from the stationarity condition g(f, u) = 0, g_i = sum_n N_i W_in - N_i, on the
    free states (sampled, but the pinned first one): J df = -(dg/du) du; other states get no
    tangent here (the pooled formula in :func:`mbar` gives theirs)."""
    f, u_kn, n_k = primals
    _, du, _ = tangents
    log_nk = _log_counts(n_k)
    free = _free_states(n_k)

    def g(f, u):
        lw = f[:, None] - u - _log_denominator(f, u, log_nk)[None, :]
        return jnp.where(free, jnp.sum(jnp.exp(lw + log_nk[:, None]), 1) - n_k, 0.0)

    jac = jax.jacobian(g, 0)(f, u_kn)
    jac = jnp.where(free[:, None] & free[None, :], jac, jnp.diag(jnp.where(free, 0.0, 1.0)))
    rhs = jax.jvp(lambda u: g(f, u), (u_kn,), (du,))[1]
    return f, -jnp.linalg.solve(jac, rhs)


def reweight(result: MBARResult, u_n, observable_n=None):
    """A new state on the pooled samples: its free energy (kT, relative to state 0) from its
    reduced potentials ``u_n`` (N,), and, if ``observable_n`` (N,) is given, the expectation of
    that observable there. Returns f_new, or (f_new, <A>). u_n may be +inf (unreachable) but
    not NaN or -inf (checked when concrete)."""
    u_n = jnp.asarray(u_n)
    n = result.log_d.shape[-1]
    if u_n.shape != (n,):
        raise ValueError(f"u_n must have shape ({n},) (one reduced potential per pooled "
                         f"sample), got {u_n.shape}")
    if _concrete(u_n):
        bad = np.isnan(np.asarray(u_n)) | (np.asarray(u_n) == -np.inf)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"u_n has a non-finite reduced potential {float(u_n[i])} at sample "
                             f"n={i}; only +inf (unreachable) is allowed")
    if observable_n is not None:
        a = jnp.asarray(observable_n)
        if a.shape != (n,):
            raise ValueError(f"observable_n must have shape ({n},) (one value per pooled "
                             f"sample), got {a.shape}")
        if _concrete(a) and not np.all(np.isfinite(np.asarray(a))):
            raise ValueError("observable_n contains non-finite values (NaN or inf)")
    log_w = -u_n - result.log_d
    f_new = -logsumexp(log_w)
    if observable_n is None:
        return f_new
    return f_new, jnp.sum(jnp.exp(log_w + f_new) * jnp.asarray(observable_n))
