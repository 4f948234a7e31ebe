"""Parameter gradients of free energies, by reweighting fixed samples.

The free energy of a region A of configuration space (a basin, a conformation, a bin of CVs) is
F_A(theta) = -kT ln int h_A(x) exp(-U(x; theta) / kT) dx, with h_A its indicator (or a smooth
weight in [0, 1]). From samples x_i of the ensemble at theta0 (with log weights toward it when
they came from biased runs), each free energy is a reweighted sum,

    F_B - F_A = -kT ln( sum_i w_i(theta) h_B(x_i) / sum_i w_i(theta) h_A(x_i) ),
    w_i(theta) = softmax_i( log_weight_i - (U(x_i; theta) - U(x_i; theta0)) / kT ),

and its derivative at theta0 is the difference of conditional averages

    d(F_B - F_A)/dtheta = <dU/dtheta>_B - <dU/dtheta>_A.

:func:`free_energy_difference` and :func:`free_energy_profile` (a surface over one or two CVs,
F_b = -kT ln P_b on bins, relative to the whole sample) compute the first form as pure JAX
functions of ``params``: ``jax.grad`` (or ``jax.jacrev`` for a profile) of them *is* the second
form, at theta0 and, by reweighting, near it. :func:`block_estimate` adds standard errors from
contiguous blocks of frames for any such function.

Where the samples come from decides their ``log_weight``:

* plain MD or Monte Carlo at theta0: zeros;
* umbrella windows: :func:`workbench.sampling.umbrella.unbiased_log_weights` (MBAR over the
  windows' biases);
* metadynamics: (V(s_t, t) - c(t)) / kT with :func:`workbench.sampling.metadynamics.rct`.

Energies in kJ/mol; kT in kJ/mol.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .reweight import Samples, fit_template, log_weights

Array = jax.Array

__all__ = ["Region", "free_energy_difference", "free_energy_profile", "block_estimate",
           "cv_region"]

Region = Callable[[Array, Any], Array]
"""region(positions (N, 3) nm, box (3, 3) | None) -> () weight in [0, 1] (1 inside)."""


def cv_region(cv, lower, upper) -> Region:
    """The region lower <= cv(x) < upper of a scalar CV (for a periodic CV, the interval taken
    on its wrapped values; lower > upper means the interval across the period's seam)."""
    lo, hi = float(lower), float(upper)

    def region(positions, box):
        s = cv(positions, box)
        inside = (s >= lo) & (s < hi) if lo <= hi else (s >= lo) | (s < hi)
        return inside.astype(positions.dtype)

    return region


def free_energy_difference(region_a: Region, region_b: Region, potential, params,
                           samples: Samples, kT, aux=None, *, ref_params=None,
                           batch_size: int | None = None) -> Array:
    """F_B - F_A (kJ/mol) at ``params`` from ``samples`` drawn at ``ref_params`` (default:
    ``params`` itself, held by ``stop_gradient``: the value is the plain estimate and its
    gradient <dU/dtheta>_B - <dU/dtheta>_A). region_a, region_b: :data:`Region` functions
    (e.g. :func:`cv_region`). aux: neighbor-list template (see
    :func:`~workbench.gradients.reweight.reweighted_average`). Pure: jit, grad, vmap. Both
    regions must hold samples (else the result is infinite)."""

    def both(positions, p, a, box):
        return jnp.stack([region_a(positions, box), region_b(positions, box)])

    log_w, h, _ = log_weights(both, potential, params, samples, kT, aux, ref_params=ref_params,
                              batch_size=batch_size)
    la = jax.scipy.special.logsumexp(log_w, b=h[:, 0])
    lb = jax.scipy.special.logsumexp(log_w, b=h[:, 1])
    return -kT * (lb - la)


def free_energy_profile(cvs: Callable[[Array, Any], Array], edges: Sequence[np.ndarray],
                        potential, params, samples: Samples, kT, aux=None, *, ref_params=None,
                        batch_size: int | None = None) -> Array:
    """Free energy F_b = -kT ln P_b (kJ/mol) of every bin of one or two CVs at ``params``,
    P_b the reweighted fraction of samples in bin b (so F is relative to the whole ensemble;
    subtract a reference bin for differences). Empty bins get +inf (and a zero gradient).

    cvs: ``cvs(positions, box) -> (d,)`` CV values (d = 1 or 2), e.g.
    ``lambda r, b: workbench.sampling.cv.values(cvs, r, b)``; edges: d arrays of bin edges
    (static). Returns F with shape (bins_0,) or (bins_0, bins_1). jax.jacrev gives
    dF_b/dtheta = <dU/dtheta>_b - <dU/dtheta>."""
    edges = [np.asarray(e, dtype=float) for e in edges]
    if len(edges) not in (1, 2) or any(e.ndim != 1 or e.size < 2 for e in edges):
        raise ValueError("edges: one or two 1-D arrays of at least 2 bin edges")
    shape = tuple(e.size - 1 for e in edges)

    def bin_of(positions, p, a, box):
        s = jnp.atleast_1d(cvs(positions, box))
        if s.shape != (len(edges),):
            raise ValueError(f"cvs returned shape {s.shape}; expected ({len(edges)},) for "
                             f"{len(edges)} sets of edges")
        idx, ok = [], jnp.asarray(True)
        for a_, e in enumerate(edges):
            i = jnp.searchsorted(jnp.asarray(e, s.dtype), s[a_], side="right") - 1
            ok = ok & (i >= 0) & (i < e.size - 1)
            idx.append(jnp.clip(i, 0, e.size - 2))
        flat = idx[0] if len(idx) == 1 else idx[0] * shape[1] + idx[1]
        return jnp.where(ok, flat, -1)

    log_w, b, _ = log_weights(bin_of, potential, params, samples, kT, aux, ref_params=ref_params,
                              batch_size=batch_size)
    n_bins = int(np.prod(shape))
    onehot = (b[:, None] == jnp.arange(n_bins)[None, :]).astype(log_w.dtype)  # (F, bins)
    empty = jnp.sum(onehot, 0) == 0
    # empty bins sum over every frame instead (finite, gradient masked below): a log of zero
    # would make the masked gradient 0 * inf = NaN
    log_p = jax.scipy.special.logsumexp(log_w[:, None], axis=0,
                                        b=jnp.where(empty[None, :], 1.0, onehot))
    return jnp.where(empty, jnp.inf, -kT * log_p).reshape(shape)


def block_estimate(fn: Callable[[Any, Samples], Array], params, samples: Samples, *,
                   n_blocks: int = 10, potential=None, aux=None) -> dict:
    """Host side: value and ``jax.jacrev`` of ``fn(params, samples)`` (any reweighted quantity:
    :func:`free_energy_difference`, a profile, an average), on all frames and on ``n_blocks``
    contiguous blocks of them; the spread of the blocks gives standard errors (blocks longer
    than the correlation time). With ``potential`` and ``aux``, the neighbor-list template is
    first grown until every frame fits (:func:`~workbench.gradients.reweight.fit_template`),
    and ``fn`` is called as ``fn(params, samples, aux)``.

    Returns {"value", "gradient" (params-shaped pytree, leaves value.shape + leaf.shape),
    "stderr" (same, or None with one block), "value_stderr"}, NumPy arrays."""
    if n_blocks < 1 or samples.n_frames < 2 * n_blocks:
        raise ValueError(f"need n_blocks >= 1 and at least 2 frames per block; got {n_blocks} "
                         f"blocks for {samples.n_frames} frames")
    if potential is not None:
        aux = fit_template(potential, samples, aux)
        call = jax.jit(lambda p, s: fn(p, s, aux))
        grad = jax.jit(jax.jacrev(lambda p, s: fn(p, s, aux)))
    else:
        call, grad = jax.jit(fn), jax.jit(jax.jacrev(fn))
    to_np = lambda t: jax.tree_util.tree_map(np.asarray, t)  # noqa: E731
    value, gradient = np.asarray(call(params, samples)), to_np(grad(params, samples))
    stderr = value_err = None
    if n_blocks > 1:
        parts = [samples.block(i, n_blocks) for i in range(n_blocks)]
        vals = np.stack([np.asarray(call(params, b)) for b in parts])
        grads = [to_np(grad(params, b)) for b in parts]
        value_err = np.std(vals, axis=0, ddof=1) / np.sqrt(n_blocks)
        stderr = jax.tree_util.tree_map(
            lambda *g: np.std(np.stack(g), axis=0, ddof=1) / np.sqrt(n_blocks), *grads)
    return {"value": value, "gradient": gradient, "stderr": stderr, "value_stderr": value_err}
