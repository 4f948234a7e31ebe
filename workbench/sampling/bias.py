"""Bias potentials on collective variables, as energy terms (:mod:`workbench.potentials.base`):
add one to a system with ``Sum({"system": potential, "bias": bias})`` and every integrator,
minimizer and driver runs the biased system unchanged. Their parameters are ordinary params, so
a batch of umbrella windows is a batch (``vmap``) of bias params, and a new window centre or a
grown metadynamics bias never recompiles.

* :class:`Harmonic`: 0.5 sum_a k_a (s_a - s0_a)^2 (umbrella windows, restraints; PLUMED RESTRAINT).
* :class:`GridBias`: a bias tabulated on a 1-D or 2-D grid of CV values with its derivatives,
  interpolated by cubic Hermite polynomials (C1: continuous forces), the bias metadynamics grows.
  :class:`Grid` describes the grid; :func:`gaussian_on_grid` gives a hill's table.

Energies in kJ/mol; CV units as the CVs (nm, rad).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import space as spaces
from ..potentials.base import EnergyTerm
from ..space import Space
from . import cv as cvs_mod

Array = jax.Array

__all__ = ["Harmonic", "Grid", "GridBias", "gaussian_on_grid", "hermite_interpolate", "hill_reach",
           "add_hills", "HILL_CUTOFF"]


@dataclass(frozen=True, eq=False)
class Harmonic(EnergyTerm):
    """Harmonic bias 0.5 sum_a k_a wrap(s_a - center_a)^2 on ``cvs``.

    params: ``{"center": (d,), "k": (d,)}`` (CV units; kJ/mol per CV unit squared), from
    :meth:`init_params`. Periodic CVs use the wrapped difference."""

    cvs: Sequence[cvs_mod.CV]
    space: Space = field(default_factory=spaces.free)

    def __post_init__(self):
        object.__setattr__(self, "cvs", cvs_mod._check_cvs(self.cvs))

    def init_params(self, center, k) -> dict[str, Array]:
        """Params for centres ``center`` and force constants ``k`` (scalars or (d,)): finite,
        k >= 0 (checked when they are concrete numbers)."""
        d = len(self.cvs)
        out = {}
        for name, value in (("center", center), ("k", k)):
            a = jnp.asarray(value, jnp.result_type(float))
            if a.ndim > 1 or a.size not in (1, d):
                raise ValueError(f"Harmonic {name} must be a scalar or shape ({d},) (one per "
                                 f"CV), got shape {a.shape}")
            out[name] = jnp.broadcast_to(a.reshape(-1), (d,))
            if not isinstance(a, jax.core.Tracer):
                v = np.asarray(a)
                if not np.all(np.isfinite(v)) or (name == "k" and np.any(v < 0)):
                    raise ValueError(f"Harmonic {name} must be finite" +
                                     (" and >= 0 (kJ/mol/CV unit^2)" if name == "k" else "") +
                                     f", got {v}")
        return out

    def param_units(self) -> dict[str, str]:
        return {"center": "CV units", "k": "kJ/mol/(CV unit)^2"}

    def energy(self, positions, params, aux=None, box=None):
        s = cvs_mod.values(self.cvs, positions, box)
        d = cvs_mod.wrap(s - params["center"], cvs_mod.periods(self.cvs))
        return 0.5 * jnp.sum(params["k"] * d * d)


@dataclass(frozen=True)
class Grid:
    """A grid over d = 1 or 2 CVs. Along a periodic axis (``period`` not None) the points are
    lower + i h, i < bins, with h = period / bins and upper = lower + period; along a bounded axis
    they are lower + i h, i <= bins, h = (upper - lower) / bins. CV values outside a bounded axis
    are clamped to it (zero bias force there)."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    bins: tuple[int, ...]
    periods: tuple[float | None, ...]

    def __post_init__(self):
        d = len(self.bins)
        if d not in (1, 2) or not (len(self.lower) == len(self.upper) == len(self.periods) == d):
            raise ValueError("Grid: lower, upper, bins and periods need one entry per CV (1 or 2)")
        for a in range(d):
            _grid_bins(self.bins[a], a)
            if not (np.isfinite(self.lower[a]) and np.isfinite(self.upper[a])):
                raise ValueError(f"Grid axis {a}: lower and upper must be finite, got "
                                 f"[{self.lower[a]}, {self.upper[a]}]")
            p = self.periods[a]
            if p is not None and not (np.isfinite(p) and p > 0):
                raise ValueError(f"Grid axis {a}: period must be None or finite and > 0, got {p}")
            if not self.upper[a] > self.lower[a] or self.bins[a] < 2:
                raise ValueError(f"Grid axis {a}: need upper > lower and bins >= 2, got "
                                 f"[{self.lower[a]}, {self.upper[a]}] with {self.bins[a]} bins")
            p = self.periods[a]
            if p is not None and not np.isclose(self.upper[a] - self.lower[a], p):
                raise ValueError(f"Grid axis {a} is periodic (period {p}): it must span one "
                                 f"period, got [{self.lower[a]}, {self.upper[a]}]")

    @classmethod
    def for_cvs(cls, cvs, lower=None, upper=None, bins=100) -> "Grid":
        """A grid for ``cvs``: periodic CVs span their period from -period/2 (lower/upper may
        be None there); bounded ones need ``lower`` and ``upper``."""
        cvs = cvs_mod._check_cvs(cvs)
        d = len(cvs)
        def per_cv(x):
            many = isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim > 0)
            return list(x) if many else [x] * d

        lo, hi, nb = per_cv(lower), per_cv(upper), per_cv(bins)
        for a, c in enumerate(cvs):
            if c.period is not None:
                lo[a] = -0.5 * c.period if lo[a] is None else lo[a]
                hi[a] = lo[a] + c.period
            elif lo[a] is None or hi[a] is None:
                raise ValueError(f"CV {a} ({c.name}) is not periodic: give its grid lower and "
                                 "upper bounds")
        if not (len(lo) == len(hi) == len(nb) == d):
            raise ValueError(f"Grid.for_cvs: lower, upper and bins need one entry per CV ({d}), "
                             f"got {lower!r}, {upper!r}, {bins!r}")
        return cls(tuple(float(x) for x in lo), tuple(float(x) for x in hi),
                   tuple(_grid_bins(b, a) for a, b in enumerate(nb)),
                   tuple(c.period for c in cvs))

    @property
    def dim(self) -> int:
        return len(self.bins)

    @property
    def spacing(self) -> np.ndarray:
        return (np.asarray(self.upper) - np.asarray(self.lower)) / np.asarray(self.bins)

    @property
    def shape(self) -> tuple[int, ...]:
        """Points per axis."""
        return tuple(b if p is not None else b + 1 for b, p in zip(self.bins, self.periods))

    def axes(self) -> list[np.ndarray]:
        """Grid point coordinates along each axis."""
        return [self.lower[a] + self.spacing[a] * np.arange(self.shape[a])
                for a in range(self.dim)]

    def zeros(self, dtype=None) -> Array:
        """An empty bias table, shape (points..., 2^d): value and derivatives (see GridBias)."""
        return jnp.zeros(self.shape + (2**self.dim,), dtype or jnp.result_type(float))


def _grid_bins(b, axis: int) -> int:
    """A bin count: an integer (not a float, which would be truncated) >= 2."""
    a = np.asarray(b)
    if a.ndim != 0 or a.dtype.kind not in "iu":
        raise TypeError(f"Grid axis {axis}: bins must be an integer, got {b!r}")
    if int(a) < 2:
        raise ValueError(f"Grid axis {axis}: need bins >= 2, got {int(a)}")
    return int(a)


def _hermite(t: Array):
    """Cubic Hermite basis at t in [0, 1]: ((value left, value right), (slope left, slope
    right)) weights."""
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1, -2 * t3 + 3 * t2), (t3 - 2 * t2 + t, t3 - t2))


def hermite_interpolate(grid: Grid, table: Array, s: Array) -> Array:
    """The tabulated function at CV values ``s`` (d,): tensor-product cubic Hermite
    interpolation from ``table`` (points..., 2^d) holding the value and the derivatives
    d/ds_a (channel 2^a) and d^2/ds_0 ds_1 (channel 3, 2-D). C1 everywhere, exact for cubics.

    One gather of the cell's 2^d corners and one contraction with the per-axis weights (a few
    XLA ops: it runs every MD step, measured 3x cheaper than a loop over corners)."""
    idx, w = [], []
    for a in range(grid.dim):
        sp = float(grid.spacing[a])
        x = (s[a] - grid.lower[a]) / sp
        if grid.periods[a] is not None:
            x = jnp.mod(x, grid.bins[a])
            i = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, grid.bins[a] - 1)
            corners = jnp.stack([i, (i + 1) % grid.bins[a]])
        else:
            x = jnp.clip(x, 0.0, grid.bins[a])
            i = jnp.clip(jnp.floor(x).astype(jnp.int32), 0, grid.bins[a] - 1)
            corners = jnp.stack([i, i + 1])
        (v0, v1), (d0, d1) = _hermite(x - i)
        idx.append(corners)
        w.append(jnp.stack([jnp.stack([v0, v1]), sp * jnp.stack([d0, d1])]))  # (deriv, corner)
    if grid.dim == 1:
        block = table[idx[0]]  # (corner, channel = deriv)
        return jnp.einsum("ec,ce->", w[0], block)
    block = table[idx[0][:, None], idx[1][None, :]]  # (c0, c1, channel = e0 + 2 e1)
    block = block.reshape(2, 2, 2, 2)  # (c0, c1, e1, e0)
    return jnp.einsum("ac,bd,cdba->", w[0], w[1], block)


def gaussian_on_grid(grid: Grid, center: Array, sigma: Array, height: Array) -> Array:
    """Table (points..., 2^d) of the hill height exp(-sum_a delta_a^2 / (2 sigma_a^2)) with its
    derivatives, delta the (wrapped) distance from ``center`` (d,); sigma (d,) CV units;
    height kJ/mol."""
    g, dg = [], []
    for a, x in enumerate(grid.axes()):
        x = jnp.asarray(x, center.dtype)
        d = x - center[a]
        p = grid.periods[a]
        if p is not None:
            d = d - p * jnp.floor(d / p + 0.5)
        ga = jnp.exp(-0.5 * (d / sigma[a]) ** 2)
        g.append(ga)
        dg.append(-d / sigma[a] ** 2 * ga)
    out = []
    for c in range(2**grid.dim):  # channel c: derivative along axis a iff bit a of c is set
        factors = [dg[a] if (c >> a) & 1 else g[a] for a in range(grid.dim)]
        table = factors[0]
        for f in factors[1:]:
            table = jnp.multiply.outer(table, f)
        out.append(table)
    return height * jnp.stack(out, -1)


HILL_CUTOFF = 6.0
"""Hills are tabulated out to this many widths (exp(-18) ~ 1.5e-8 of the height beyond)."""


def hill_reach(grid: Grid, sigma) -> tuple[int, ...]:
    """Grid points on each side of a hill's centre that :func:`hill_patches` fills, for widths
    ``sigma`` (d,) (structural: from the construction-time widths)."""
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (grid.dim,))
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(f"hill widths sigma must be finite and > 0 (CV units), got {sig}")
    return tuple(int(np.ceil(HILL_CUTOFF * sg / sp)) for sg, sp in zip(sig, grid.spacing))


def _windows(grid: Grid, a: int, center: Array, m: int):
    """Axis ``a``'s update windows for a hill at ``center`` reaching ``m`` points each side:
    a list of (start index, (P,) wrapped distances of the window's points from the centre,
    (P,) mask of the points this window updates)."""
    sp, lo, n = float(grid.spacing[a]), grid.lower[a], grid.shape[a]
    p = grid.periods[a]
    size = min(2 * m + 1, n)
    i0 = jnp.rint((center - lo) / sp).astype(jnp.int32)
    first = jnp.clip(i0 - m, 0, n - size).astype(jnp.int32)
    starts = [first]
    if p is not None and size < n:  # the part of the hill that wraps past either end
        starts.append(jnp.where(i0 - m < 0, n - size, 0).astype(jnp.int32))
    out = []
    for k, start in enumerate(starts):
        j = start + jnp.arange(size)
        d = lo + j * sp - center
        if p is not None:
            d = d - p * jnp.floor(d / p + 0.5)
        keep = jnp.abs(d) <= (m + 0.5) * sp
        if k == 1:  # points the first window already holds
            keep &= (j < first) | (j >= first + size)
        out.append((start, d, keep))
    return out


def add_hills(grid: Grid, table: Array, centers: Array, sigma: Array, heights: Array,
              reach: tuple[int, ...]) -> Array:
    """``table`` plus hills at ``centers`` (W, d) with ``heights`` (W,) kJ/mol and widths
    ``sigma`` (d,), each on the grid points within ``reach`` (see :func:`hill_reach`) of its
    centre: (2 reach + 1)^d points instead of the whole grid.

    Written with ``dynamic_update_slice`` windows (two per periodic axis, for the part of a hill
    that wraps around): XLA updates those in place inside ``lax.cond``, where a scatter made it
    copy the whole table on every MD step, taken or not (measured 6 us a step for a 100 x 100
    grid)."""
    d_dim = grid.dim

    def one(w, tab):
        c, h = centers[w], heights[w]
        axes = []
        for a in range(d_dim):
            wins = []
            for start, d, keep in _windows(grid, a, c[a], reach[a]):
                g = jnp.where(keep, jnp.exp(-0.5 * (d / sigma[a]) ** 2), 0.0)
                wins.append((start, g, -d / sigma[a] ** 2 * g))
            axes.append(wins)
        combos = [(x,) for x in axes[0]] if d_dim == 1 else \
            [(x, y) for x in axes[0] for y in axes[1]]
        for combo in combos:
            chans = []
            for ch in range(2**d_dim):  # channel ch: derivative along axis a iff bit a set
                f = [combo[a][2] if (ch >> a) & 1 else combo[a][1] for a in range(d_dim)]
                chans.append(f[0] if d_dim == 1 else f[0][:, None] * f[1][None, :])
            patch = h * jnp.stack(chans, -1)
            start = tuple(x[0] for x in combo) + (jnp.asarray(0, jnp.int32),)
            cur = jax.lax.dynamic_slice(tab, start, patch.shape)
            tab = jax.lax.dynamic_update_slice(tab, cur + patch.astype(tab.dtype), start)
        return tab

    return jax.lax.fori_loop(0, centers.shape[0], one, table)


@dataclass(frozen=True, eq=False)
class GridBias(EnergyTerm):
    """A bias V(s) tabulated on ``grid`` over ``cvs`` and interpolated (see
    :func:`hermite_interpolate`). params: ``{"table": (points..., 2^d)}`` kJ/mol (value and
    derivatives), e.g. ``{"table": grid.zeros()}`` to start."""

    cvs: Sequence[cvs_mod.CV]
    grid: Grid
    space: Space = field(default_factory=spaces.free)

    def __post_init__(self):
        cvs = cvs_mod._check_cvs(self.cvs)
        object.__setattr__(self, "cvs", cvs)
        if len(cvs) != self.grid.dim:
            raise ValueError(f"GridBias: {len(cvs)} CVs but a {self.grid.dim}-D grid")
        if tuple(c.period for c in cvs) != tuple(self.grid.periods):
            raise ValueError("GridBias: the grid's periods must be the CVs' periods "
                             f"{tuple(c.period for c in cvs)}; use Grid.for_cvs")

    def init_params(self) -> dict[str, Array]:
        return {"table": self.grid.zeros()}

    def param_units(self) -> dict[str, str]:
        return {"table": "kJ/mol"}

    def bias_at(self, s: Array, params) -> Array:
        """V at CV values s (d,) (kJ/mol)."""
        return hermite_interpolate(self.grid, params["table"], s)

    def energy(self, positions, params, aux=None, box=None):
        return self.bias_at(cvs_mod.values(self.cvs, positions, box), params)
