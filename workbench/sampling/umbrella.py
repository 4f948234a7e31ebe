"""Umbrella sampling over 1 or 2 CVs: harmonic windows run as one batch, free energies by MBAR
(:mod:`workbench.sampling.mbar`) or WHAM.

* :func:`umbrella` builds the windows' sampler: the integrator on
  ``Sum({"system": potential, "bias": Harmonic(cvs)})`` with the window centres as a batch of
  bias params, so all windows step together under ``vmap`` in one compiled program
  (``init_windows`` / ``step_windows``); a new set of centres never recompiles. The inner
  integrator is a name or any Integrator / sampler object, rebuilt on the biased system: umbrella
  windows under NPT are ``umbrella(system, cvs, centers, k,
  integrator=monte_carlo_barostat(system, pressure))`` (each window keeps its own box and
  barostat state; the volume moves see the window's bias).
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
from ..dynamics.registry import resolve
from ..potentials.base import Sum
from ..system import unpack
from . import cv as cvs_mod
from . import batch
from .bias import Grid, Harmonic
from .mbar import _diagnose, _second_eigenvalue, mbar, overlap_matrix

Array = jax.Array

__all__ = ["Umbrella", "umbrella", "bias_matrix", "unbiased_log_weights", "free_energy_mbar",
           "wham", "WHAMResult"]


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
        """Batched bias params (W, d) for ``centers``/``k`` (default: the sampler's; host side,
        checked as in :func:`umbrella`, same shapes so no recompilation)."""
        w, d = self.centers.shape
        c = self.centers if centers is None else _centers(centers, d, n_windows=w)
        kk = self.k if k is None else _force_constants(k, c.shape)
        dtype = jnp.result_type(float)
        return {"center": jnp.asarray(c, dtype), "k": jnp.asarray(kk, dtype)}

    def init_windows(self, key, positions, params, settings, **kwargs) -> integ.MDState:
        """Window states with a leading window axis. positions: (N, 3) (every window starts
        there) or (W, N, 3)."""
        r = np.asarray(positions, dtype=float)
        if r.ndim == 2:
            r = np.broadcast_to(r, (self.n_windows,) + r.shape)
        if r.ndim != 3 or r.shape[0] != self.n_windows or r.shape[2] != 3:
            raise ValueError(f"positions must be (N, 3) or ({self.n_windows}, N, 3), got {r.shape}")
        if not np.all(np.isfinite(r)):
            raise ValueError("positions contain non-finite values (NaN or inf)")
        cvs_mod.check(self.cvs, r.shape[1])  # atom indices inside the system
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
             integrator="langevin", constraints=None) -> Umbrella:
    """Harmonic umbrella windows on ``cvs`` (1 or 2) at ``centers`` (W,) or (W, d) with force
    constants ``k`` (scalar, (d,) or (W, d); kJ/mol per CV unit squared). ``potential`` may be
    a System (its constraints come along). integrator: a thermostatted name in
    :data:`~workbench.dynamics.registry.INTEGRATORS` or an Integrator / sampler object (e.g. a
    barostat), rebuilt on the biased system."""
    potential, constraints = unpack(potential, constraints)
    cvs = cvs_mod._check_cvs(cvs)
    c = _centers(centers, len(cvs))
    kk = _force_constants(k, c.shape).copy()
    term = Harmonic(cvs, space=potential.space)
    biased = Sum({"system": potential, "bias": term})
    inner = resolve(integrator, biased, constraints, where="umbrella", thermostat=True)
    return Umbrella(cvs, c, kk, term, inner)


def _centers(centers, d: int, n_windows: int | None = None) -> np.ndarray:
    """Window centres as (W, d) finite floats ((W,) allowed for one CV)."""
    try:
        c = np.asarray(centers, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"centers must be numbers (CV units), got {centers!r}") from e
    c = c.reshape(-1, 1) if (c.ndim == 1 and d == 1) else c
    if c.ndim != 2 or c.shape[1] != d or c.shape[0] < 1 or \
            (n_windows is not None and c.shape[0] != n_windows):
        w = "W" if n_windows is None else n_windows
        raise ValueError(f"centers must have shape ({w}, {d}) (one centre per window and CV), "
                         f"got {np.shape(centers)}")
    if not np.all(np.isfinite(c)):
        raise ValueError(f"centers must be finite, got {c[~np.isfinite(c)][:5]}")
    return c


def _force_constants(k, shape: tuple[int, int]) -> np.ndarray:
    """Force constants broadcast to ``shape`` (W, d): finite and > 0 (kJ/mol/CV unit^2)."""
    try:
        kk = np.broadcast_to(np.asarray(k, dtype=float), shape)
    except (TypeError, ValueError) as e:
        raise ValueError(f"umbrella force constants k must be a scalar, ({shape[1]},) or "
                         f"{shape} (kJ/mol/CV unit^2), got shape {np.shape(k)}") from e
    if not np.all(np.isfinite(kk) & (kk > 0)):
        raise ValueError(f"umbrella force constants k must be finite and positive "
                         f"(kJ/mol/CV unit^2), got {np.unique(kk[~(np.isfinite(kk) & (kk > 0))])}")
    return kk


def _window_data(samples, centers, k, kT, periods, what: str, grid=None):
    """Checked window samples (K, T, d), centres (K, d), force constants (K, d), kT and
    periods (d,) (default: the grid's) for the estimators."""
    if grid is not None and not isinstance(grid, Grid):
        raise TypeError(f"{what}: grid must be a workbench.sampling.bias.Grid, got "
                        f"{type(grid).__name__}")
    try:
        s = np.asarray(samples, dtype=float)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: samples must be numbers, got {type(samples).__name__}") from e
    if s.ndim not in (2, 3) or s.shape[0] < 1 or s.shape[1] < 1:
        raise ValueError(f"{what}: samples must be (K, T, d) or (K, T) window CV values, got "
                         f"shape {s.shape}")
    s = s.reshape(s.shape[0], s.shape[1], -1)
    n_win, _, d = s.shape
    if grid is not None and grid.dim != d:
        raise ValueError(f"{what}: a {grid.dim}-D grid for {d} CV(s); make the grid with "
                         "Grid.for_cvs(cvs, ...)")
    if not np.all(np.isfinite(s)):
        w, t = (int(x) for x in np.argwhere(~np.isfinite(s))[0][:2])
        raise ValueError(f"{what}: samples contain non-finite CV values (window {w}, sample {t})")
    c = _centers(centers, d, n_windows=n_win)
    kk = _force_constants(k, c.shape)
    if isinstance(kT, jax.core.Tracer) or np.ndim(kT) != 0 or \
            not (np.isfinite(float(kT)) and float(kT) > 0):
        raise ValueError(f"{what}: kT must be a finite number > 0 (kJ/mol), got {kT!r}")
    if periods is None and grid is None:
        raise ValueError(f"{what}: periods needs one entry per CV (None where not periodic)")
    periods = tuple(grid.periods if periods is None else periods)
    if len(periods) != d:
        raise ValueError(f"{what}: periods needs one entry per CV ({d}), got {periods}")
    return s, c, kk, float(kT), periods


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
    s, c, kk, kT, periods = _window_data(samples, centers, k, kT, periods,
                                         "unbiased_log_weights")
    n_win, n_per, d = s.shape
    u = bias_matrix(s.reshape(-1, d), c, kk, kT, periods)
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
    s, c, kk, kT, periods = _window_data(samples, centers, k, kT, periods, "free_energy_mbar",
                                         grid)
    lw0, result = unbiased_log_weights(s, c, kk, kT, periods)
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
    overlap: Array
    overlap_eigenvalue: Array

    @property
    def spectral_gap(self) -> Array:
        """() 1 - second-largest eigenvalue of the overlap matrix (as MBARResult's)."""
        return 1.0 - self.overlap_eigenvalue


def _wham_solve(counts, n_k, bias_kb, tol, max_iter):
    """Self-consistent WHAM in log space: counts (K, B) histograms, n_k (K,) samples per window,
    bias_kb (K, B) reduced bias at the bin centres."""
    log_num = jnp.log(jnp.sum(counts, 0))  # (B,) total counts per bin (-inf if empty)
    log_nk = jnp.where(n_k > 0, jnp.log(jnp.maximum(n_k, 1e-300)), -jnp.inf)

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
    # the overlap matrix of the binned problem: MBAR's with the bins as samples, weighted by
    # their counts; W_kb = exp(f_k - bias_kb) / sum_k' N_k' exp(f_k' - bias_k'b)
    log_den = jax.scipy.special.logsumexp(log_nk[:, None] + f[:, None] - bias_kb, 0)
    o = overlap_matrix(f[:, None] - bias_kb - log_den[None, :], n_k, jnp.sum(counts, 0))
    return WHAMResult(f=f, log_p=log_p, iterations=jnp.asarray(it), change=change, overlap=o,
                      overlap_eigenvalue=_second_eigenvalue(o, n_k))


def wham(samples, centers, k, kT: float, grid: Grid, *, tol: float = 1e-10,
         max_iter: int = 100000, periods: Sequence[float | None] | None = None):
    """F (kJ/mol, minimum 0, inf where unsampled) on the points of ``grid`` from window samples
    (K, T, d) (or (K, T)) by WHAM with one bin per grid point. Returns (grid axes, F,
    WHAMResult); stops when the window free energies change by less than ``tol`` (kT; at least
    64 machine epsilons of the working precision). Raises :class:`~.mbar.OverlapError` when
    the windows' histograms fall into disconnected groups (their free-energy differences are
    then undetermined) and warns (:class:`~.mbar.PoorOverlapWarning`) on poor overlap, as
    :func:`~.mbar.mbar`; ``result.overlap`` is the binned overlap matrix."""
    s, c, kk, kT, periods = _window_data(samples, centers, k, kT, periods, "wham", grid)
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"wham: max_iter must be an integer >= 1, got {max_iter!r}")
    if not (np.isfinite(float(tol)) and float(tol) > 0):
        raise ValueError(f"wham: tol must be finite and > 0 (kT), got {tol!r}")
    n_win, n_per, d = s.shape
    n_bins = int(np.prod(grid.shape))
    counts = np.zeros((n_win, n_bins))
    for w in range(n_win):
        flat, inside = _bin_index(grid, s[w])
        counts[w] = np.bincount(flat[inside], minlength=n_bins)
    mesh = np.stack([m.ravel() for m in np.meshgrid(*grid.axes(), indexing="ij")], -1)
    bias_kb = bias_matrix(mesh, c, kk, kT, periods)
    # the change cannot fall below round-off: in float32 stop at 64 eps (~8e-6 kT)
    tol = max(float(tol), 64.0 * float(jnp.finfo(bias_kb.dtype).eps))
    result = _wham_solve(jnp.asarray(counts, bias_kb.dtype),
                         jnp.asarray(counts.sum(1), bias_kb.dtype), bias_kb, tol, max_iter)
    _diagnose(np.asarray(result.overlap), float(result.overlap_eigenvalue), "WHAM")
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
