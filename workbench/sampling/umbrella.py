"""Umbrella sampling over 1 or 2 CVs: harmonic windows run as one batch, free energies by MBAR
(:mod:`workbench.sampling.mbar`) or WHAM.

* :func:`umbrella` builds the windows' sampler: the integrator on
  ``Sum({"system": potential, "bias": Harmonic(cvs)})`` with the window centres as a batch of
  bias params, so all windows step together under ``vmap`` in one compiled program
  (``init_windows`` / ``step_windows``); a new set of centres never recompiles.
* :func:`bias_matrix` gives the reduced bias of every sample in every window (u_kn of MBAR; the
  system's energy cancels because all windows share it and the temperature).
* :func:`free_energy_mbar` and :func:`wham` turn window samples into a free-energy profile or
  surface on the points of a :class:`~workbench.sampling.bias.Grid`.

WHAM (Kumar et al. 1992) is the binned self-consistent solution, iterated in log space in a
``lax.while_loop``; MBAR is its bin-free limit (Shirts and Chodera 2008). Energies in kJ/mol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import neighbors as nl
from ..dynamics import integrators as integ
from ..potentials.base import Sum
from . import cv as cvs_mod
from . import batch
from .bias import Grid, Harmonic
from .mbar import mbar

Array = jax.Array

__all__ = ["Umbrella", "umbrella", "bias_matrix", "unbiased_log_weights", "free_energy_mbar",
           "wham", "WHAMResult"]

FACTORIES = {"langevin": integ.langevin, "brownian": integ.brownian}


@dataclass(frozen=True, eq=False)
class Umbrella:
    """Windows of harmonic umbrella sampling (see :func:`umbrella`).

    centers: (W, d) CV units; k: (W, d) kJ/mol per CV unit squared; bias: the Harmonic term;
    inner: the integrator on the biased system."""

    cvs: tuple
    centers: np.ndarray
    k: np.ndarray
    bias: Harmonic
    inner: Any
    _compiled: dict = field(default_factory=dict, repr=False)

    @property
    def n_windows(self) -> int:
        return self.centers.shape[0]

    def window_params(self, centers=None, k=None) -> dict[str, Array]:
        """Batched bias params (W, d) for ``centers``/``k`` (default: the sampler's)."""
        c = self.centers if centers is None else \
            np.asarray(centers, float).reshape(self.centers.shape)
        kk = self.k if k is None else np.broadcast_to(np.asarray(k, float), self.k.shape)
        dtype = jnp.result_type(float)
        return {"center": jnp.asarray(c, dtype), "k": jnp.asarray(kk, dtype)}

    def init_windows(self, key, positions, params, settings, **kwargs) -> integ.MDState:
        """Window states with a leading window axis. positions: (N, 3) (every window starts
        there) or (W, N, 3)."""
        r = np.asarray(positions, dtype=float)
        if r.ndim == 2:
            r = np.broadcast_to(r, (self.n_windows,) + r.shape)
        if r.ndim != 3 or r.shape[0] != self.n_windows:
            raise ValueError(f"positions must be (N, 3) or ({self.n_windows}, N, 3), got {r.shape}")
        keys = jax.random.split(key, self.n_windows)
        bp = self.window_params()
        states = [self.inner.init(keys[w], r[w], {"system": params, "bias":
                                  jax.tree_util.tree_map(lambda x: x[w], bp)}, settings, **kwargs)
                  for w in range(self.n_windows)]
        return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *states)

    def step_windows(self, states, params, settings, bias_params=None, *, energy: bool = True):
        """One step of every window (``vmap`` over the window axis); ``bias_params`` from
        :meth:`window_params` (default: the sampler's centres)."""
        bp = self.window_params() if bias_params is None else bias_params
        with nl.shared_rebuilds("windows"):  # one list-rebuild decision for all windows
            return jax.vmap(lambda st, b: self.inner.step(st, {"system": params, "bias": b},
                                                          settings, energy=energy),
                            axis_name="windows")(states, bp)

    def advance(self, states, params, settings, n_samples: int, stride: int,
                bias_params=None):
        """Host side: ``n_samples`` x ``stride`` steps of every window, recording the CVs every
        ``stride`` steps, with neighbor-list overflow recovery for the whole batch
        (:func:`.batch.advance`). Compiled once per (n_samples, stride). Returns (states, CV
        samples (n_samples, W, d), regrowths)."""
        states, (s, _), regrowths = self._advance(states, params, settings, n_samples, stride,
                                                  bias_params, False)
        return states, s, regrowths

    def sample(self, states, params, settings, n_samples: int, stride: int, bias_params=None):
        """As :meth:`advance`, also recording the frames: (states, CV samples (W, n_samples,
        d), positions (W, n_samples, N, 3), regrowths), window-major, the layout of
        :func:`unbiased_log_weights` and of reweighting frames from all windows
        (``positions.reshape(-1, N, 3)``)."""
        states, (s, r), regrowths = self._advance(states, params, settings, n_samples, stride,
                                                  bias_params, True)
        return states, jnp.swapaxes(s, 0, 1), jnp.swapaxes(r, 0, 1), regrowths

    def _advance(self, states, params, settings, n_samples, stride, bias_params, frames: bool):
        key = (int(n_samples), int(stride), bool(frames))
        if key not in self._compiled:
            def run(states, params, settings, bp):
                def sample(c, _):
                    c = jax.lax.fori_loop(0, key[1], lambda i, s: self.step_windows(
                        s, params, settings, bp, energy=False), c)
                    return c, (self.cv_values(c), c.positions if key[2] else None)
                return jax.lax.scan(sample, states, None, length=key[0])
            self._compiled[key] = jax.jit(run)
        bp = self.window_params() if bias_params is None else bias_params
        (states, out), regrowths = batch.advance(self._compiled[key], states, params, settings,
                                                 bp)
        return states, out, regrowths

    def cv_values(self, states) -> Array:
        """(W, d) CV values of every window's state."""
        return jax.vmap(lambda r, b: cvs_mod.values(self.cvs, r, b))(states.positions, states.box)


def umbrella(potential, cvs: Sequence[cvs_mod.CV] | cvs_mod.CV, centers, k, *,
             integrator: str = "langevin", constraints=None) -> Umbrella:
    """Harmonic umbrella windows on ``cvs`` (1 or 2) at ``centers`` (W,) or (W, d) with force
    constants ``k`` (scalar, (d,) or (W, d); kJ/mol per CV unit squared)."""
    cvs = cvs_mod._check_cvs(cvs)
    d = len(cvs)
    c = np.asarray(centers, dtype=float)
    c = c.reshape(-1, 1) if (c.ndim == 1 and d == 1) else c
    if c.ndim != 2 or c.shape[1] != d or c.shape[0] < 1:
        raise ValueError(f"centers must have shape (W, {d}), got {np.shape(centers)}")
    kk = np.broadcast_to(np.asarray(k, dtype=float), c.shape).copy()
    if np.any(kk <= 0):
        raise ValueError("umbrella force constants k must be positive")
    if integrator not in FACTORIES:
        raise ValueError(f"unknown integrator {integrator!r}; choose one of {sorted(FACTORIES)}")
    term = Harmonic(cvs, space=potential.space)
    factory = FACTORIES[integrator]
    biased = Sum({"system": potential, "bias": term})
    inner = factory(biased) if constraints is None else factory(biased, constraints)
    return Umbrella(cvs, c, kk, term, inner)


def bias_matrix(s, centers, k, kT, periods: Sequence[float | None]) -> Array:
    """Reduced bias u_kn = 0.5 sum_a k_ka wrap(s_na - c_ka)^2 / kT, (K, N), of samples s (N, d)
    in windows with centres (K, d) and force constants (K, d)."""
    s = jnp.asarray(s)
    s = s.reshape(s.shape[0], -1)
    d = cvs_mod.wrap(s[None, :, :] - jnp.asarray(centers)[:, None, :], periods)
    return 0.5 * jnp.sum(jnp.asarray(k)[:, None, :] * d * d, -1) / kT


def unbiased_log_weights(samples, centers, k, kT: float, periods: Sequence[float | None]):
    """Log weights (K T,) of pooled window samples toward the unbiased ensemble, by MBAR:
    sample n weighs 1 / sum_k N_k exp(f_k - u_kn) (u_kn: :func:`bias_matrix`). samples: window
    CV values (K, T, d) or (K, T), in window order, as the frames they came from; centers, k:
    the windows'; periods: one per CV. Returns (log weights (K T,) as a NumPy array,
    MBARResult). These are the ``log_weight`` of :class:`workbench.gradients.reweight.Samples`
    built from the same frames, for averages and free-energy gradients at the unbiased
    state."""
    s = np.asarray(samples, dtype=float)
    s = s.reshape(s.shape[0], s.shape[1], -1)
    n_win, n_per, d = s.shape
    u = bias_matrix(s.reshape(-1, d), np.asarray(centers).reshape(n_win, d),
                    np.broadcast_to(np.asarray(k, float), (n_win, d)), kT, tuple(periods))
    result = mbar(u, jnp.full(n_win, float(n_per)))
    return -np.asarray(result.log_d, float), result


def _bin_index(grid: Grid, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat grid-point index of each sample (N,), and whether it lies on the grid."""
    idx = []
    for a in range(grid.dim):
        x = np.rint((s[:, a] - grid.lower[a]) / grid.spacing[a]).astype(np.int64)
        idx.append(np.mod(x, grid.bins[a]) if grid.periods[a] is not None else x)
    inside = np.all([(i >= 0) & (i < n) for i, n in zip(idx, grid.shape)], axis=0)
    flat = np.ravel_multi_index([np.where(inside, i, 0) for i in idx], grid.shape)
    return flat, inside


def _profile(grid: Grid, log_p: np.ndarray, kT: float) -> np.ndarray:
    f = -kT * np.asarray(log_p, float).reshape(grid.shape)
    return f - f[np.isfinite(f)].min()


def free_energy_mbar(samples, centers, k, kT: float, grid: Grid,
                     periods: Sequence[float | None] | None = None):
    """F (kJ/mol, minimum 0, inf where unsampled) on the points of ``grid`` from window samples
    (K, T, d) (or (K, T) for one CV), by MBAR on the pooled samples and reweighting to the
    unbiased state. Returns (grid axes, F, MBARResult)."""
    s = np.asarray(samples, dtype=float)
    s = s.reshape(s.shape[0], s.shape[1], -1)
    periods = tuple(grid.periods) if periods is None else tuple(periods)
    lw0, result = unbiased_log_weights(s, centers, k, kT, periods)
    flat, inside = _bin_index(grid, s.reshape(-1, s.shape[-1]))
    p = np.bincount(flat[inside], weights=np.exp(lw0[inside] - lw0[inside].max()),
                    minlength=int(np.prod(grid.shape)))
    with np.errstate(divide="ignore"):
        return grid.axes(), _profile(grid, np.log(p), kT), result


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class WHAMResult:
    """f: (K,) window free energies (kT, f_0 = 0); log_p: (bins,) log unbiased probability per
    bin (normalized, -inf where empty); iterations: () int; change: () last max |delta f|."""

    f: Array
    log_p: Array
    iterations: Array
    change: Array


def _wham_solve(counts, n_k, bias_kb, tol, max_iter):
    """Self-consistent WHAM in log space: counts (K, B) histograms, n_k (K,) samples per window,
    bias_kb (K, B) reduced bias at the bin centres."""
    log_num = jnp.log(jnp.sum(counts, 0))  # (B,) total counts per bin (-inf if empty)
    log_nk = jnp.log(n_k)

    def update(f):
        log_p = log_num - jax.scipy.special.logsumexp(log_nk[:, None] + f[:, None] - bias_kb, 0)
        f_new = -jax.scipy.special.logsumexp(log_p[None, :] - bias_kb, 1)
        return f_new - f_new[0], log_p

    def cond(c):
        _, _, it, change = c
        return (it < max_iter) & (change > tol)

    def body(c):
        f, _, it, _ = c
        f_new, log_p = update(f)
        return f_new, log_p, it + 1, jnp.max(jnp.abs(f_new - f))

    f0 = jnp.zeros(counts.shape[0], bias_kb.dtype)
    f, log_p, it, change = jax.lax.while_loop(
        cond, body, (f0, jnp.zeros(counts.shape[1], bias_kb.dtype), 0, jnp.inf))
    log_p = log_p - jax.scipy.special.logsumexp(log_p)
    return WHAMResult(f=f, log_p=log_p, iterations=jnp.asarray(it), change=change)


def wham(samples, centers, k, kT: float, grid: Grid, *, tol: float = 1e-10,
         max_iter: int = 100000, periods: Sequence[float | None] | None = None):
    """F (kJ/mol, minimum 0, inf where unsampled) on the points of ``grid`` from window samples
    (K, T, d) (or (K, T)) by WHAM with one bin per grid point. Returns (grid axes, F,
    WHAMResult); stops when the window free energies change by less than ``tol`` (kT; at least
    64 machine epsilons of the working precision)."""
    s = np.asarray(samples, dtype=float)
    s = s.reshape(s.shape[0], s.shape[1], -1)
    n_win, n_per, d = s.shape
    periods = tuple(grid.periods) if periods is None else tuple(periods)
    n_bins = int(np.prod(grid.shape))
    counts = np.zeros((n_win, n_bins))
    for w in range(n_win):
        flat, inside = _bin_index(grid, s[w])
        counts[w] = np.bincount(flat[inside], minlength=n_bins)
    mesh = np.stack([m.ravel() for m in np.meshgrid(*grid.axes(), indexing="ij")], -1)
    bias_kb = bias_matrix(mesh, np.asarray(centers).reshape(n_win, d),
                          np.broadcast_to(np.asarray(k, float), (n_win, d)), kT, periods)
    # the change cannot fall below round-off: in float32 stop at 64 eps (~8e-6 kT)
    tol = max(float(tol), 64.0 * float(jnp.finfo(bias_kb.dtype).eps))
    result = _wham_solve(jnp.asarray(counts, bias_kb.dtype),
                         jnp.asarray(counts.sum(1), bias_kb.dtype), bias_kb, tol, max_iter)
    if not bool(result.change <= tol):
        raise RuntimeError(f"WHAM did not converge in {max_iter} iterations (last change "
                           f"{float(result.change):.3g} kT); raise max_iter or check the "
                           "windows' overlap")
    return grid.axes(), _profile(grid, np.asarray(result.log_p), kT), result




def sample_window(task: dict) -> np.ndarray:
    """One umbrella window as an independent task (for :func:`workbench.sampling.distributed.
    run_independent`): ``task`` holds ``potential``, ``params``, ``cvs``, ``center`` (d,), ``k``,
    ``settings`` (dict), ``positions`` (N, 3), ``steps`` (equilibration and sampling, each),
    ``stride`` and ``seed``; optional ``integrator`` and ``masses``. Returns the CV samples
    (steps // stride, d). Deterministic for a given task."""
    sampler = umbrella(task["potential"], task["cvs"], np.atleast_2d(task["center"]), task["k"],
                       integrator=task.get("integrator", "langevin"))
    settings = sampler.inner.settings(**task["settings"])
    kwargs = {"masses": task["masses"]} if "masses" in task else {}
    states = sampler.init_windows(jax.random.PRNGKey(int(task["seed"])), task["positions"],
                                  task["params"], settings, **kwargs)
    params, stride, steps = task["params"], int(task["stride"]), int(task["steps"])
    states, _, _ = sampler.advance(states, params, settings, steps // stride, stride)
    _, s, _ = sampler.advance(states, params, settings, steps // stride, stride)
    s = s[:, 0]
    return np.asarray(s)
