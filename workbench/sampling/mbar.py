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
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

Array = jax.Array

__all__ = ["MBARResult", "covariance", "log_weights", "mbar", "reweight"]


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MBARResult:
    """f: (K,) free energies in kT, f_0 = 0; df: (K, K) standard errors of f_j - f_i (kT);
    log_w: (K, N) log weights, sum_n exp(log_w[k]) = 1; log_d: (N,) log sum_k N_k exp(f_k -
    u_kn), each sample's mixture denominator; iterations, gradient_norm: solver
    diagnostics (the largest |dF/df_k| / N at the end)."""

    f: Array
    df: Array
    log_w: Array
    log_d: Array
    iterations: Array
    gradient_norm: Array

    @property
    def delta_f(self) -> Array:
        """(K, K) f_j - f_i (kT)."""
        return self.f[None, :] - self.f[:, None]


def _check(u_kn, n_k):
    u_kn = jnp.asarray(u_kn)
    if u_kn.ndim != 2:
        raise ValueError(f"u_kn must be (K, N) reduced potentials, got shape {u_kn.shape}")
    n_k = jnp.asarray(n_k, u_kn.dtype)
    if n_k.shape != (u_kn.shape[0],):
        raise ValueError(f"N_k must have shape ({u_kn.shape[0]},) (one count per state), "
                         f"got {n_k.shape}")
    if not isinstance(n_k, jax.core.Tracer):
        counts = np.asarray(n_k)
        if np.any(counts < 0) or abs(counts.sum() - u_kn.shape[1]) > 0.5:
            raise ValueError(f"N_k must be non-negative and sum to N = {u_kn.shape[1]} samples, "
                             f"got sum {counts.sum():g}")
    return u_kn, n_k


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


def mbar(u_kn, n_k, *, f_init=None, max_iter: int = 100, tol: float = 1e-12) -> MBARResult:
    """Solve MBAR for reduced potentials ``u_kn`` (K, N) kT and counts ``N_k`` (K,).

    f_init: (K,) starting free energies (default zeros); max_iter: Newton steps (structural);
    tol: stop when the largest |gradient| / N is below it (the self-consistent equations to that
    relative accuracy; at least 8 machine epsilons of the data's precision, so float32 data stop
    at round-off instead of running all max_iter steps). Works under jit and vmap (over stacked data sets of one shape); the
    free energies are differentiable with respect to u_kn by implicit differentiation of the
    stationarity condition (autodiff through the converged weights gives it exactly, because
    F is differentiated at its minimum).
    """
    u_kn, n_k = _check(u_kn, n_k)
    k = u_kn.shape[0]
    f0 = jnp.zeros(k, u_kn.dtype) if f_init is None else jnp.asarray(f_init, u_kn.dtype)
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
    return MBARResult(f=f, df=jnp.sqrt(jnp.maximum(var, 0.0)), log_w=log_w, log_d=log_d,
                      iterations=its,
                      gradient_norm=gnorm)


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
    that observable there. Returns f_new, or (f_new, <A>)."""
    u_n = jnp.asarray(u_n)
    log_w = -u_n - result.log_d
    f_new = -logsumexp(log_w)
    if observable_n is None:
        return f_new
    return f_new, jnp.sum(jnp.exp(log_w + f_new) * jnp.asarray(observable_n))
