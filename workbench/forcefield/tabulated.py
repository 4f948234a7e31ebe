"""OpenMM tabulated functions as JAX callables, with OpenMM's interpolation.

:func:`tabulated_function` turns OpenMM's ``Continuous{1,2,3}DFunction`` and
``Discrete{1,2,3}DFunction`` into elementwise JAX callables: natural (or periodic) cubic
splines, bicubic and tricubic patches from spline-estimated derivatives, zero outside
``[min, max]`` for non-periodic continuous tables, wrapping for periodic ones, and C ``round``
plus clamping for discrete tables. Custom-force expressions use them through
:func:`workbench.forcefield.expression.compile_expression`'s ``functions``.

The table is structural (fixed at conversion); arguments are traced. OpenMM is imported lazily.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["TabulatedFunction", "discrete_lookup", "tabulated_function"]


def _as_float(value) -> Array:
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        array = array.astype(jnp.result_type(float))
    return array


def _solve_tridiagonal(a, b, c, rhs):
    """Thomas algorithm for rows ``a[i] x[i-1] + b[i] x[i] + c[i] x[i+1] = rhs[..., i]``."""
    n = len(b)
    x = np.empty_like(rhs)
    gamma = np.zeros(n)
    beta = b[0]
    x[..., 0] = rhs[..., 0] / beta
    for i in range(1, n):
        gamma[i] = c[i - 1] / beta
        beta = b[i] - a[i] * gamma[i]
        x[..., i] = (rhs[..., i] - a[i] * x[..., i - 1]) / beta
    for i in range(n - 2, -1, -1):
        x[..., i] -= gamma[i + 1] * x[..., i + 1]
    return x


def _spline_second_derivatives(x, y, periodic: bool):
    """Second derivatives at the knots of OpenMM's natural or periodic cubic spline (last axis)."""
    h = np.diff(x)
    slope = np.diff(y, axis=-1) / h
    n = len(x)
    if not periodic:
        a, b, c, rhs = np.zeros(n), np.ones(n), np.zeros(n), np.zeros(y.shape)
        a[1:-1], b[1:-1], c[1:-1] = h[:-1], 2.0 * (h[:-1] + h[1:]), h[1:]
        rhs[..., 1:-1] = 6.0 * (slope[..., 1:] - slope[..., :-1])
        return _solve_tridiagonal(a, b, c, rhs)
    # Cyclic system for the n-1 distinct knots (Sherman-Morrison on a tridiagonal matrix).
    a, b, c = np.roll(h, 1), 2.0 * (h + np.roll(h, 1)), h.copy()
    rhs = 6.0 * (slope - np.roll(slope, 1, axis=-1))
    corner_low, corner_high, gamma = c[-1], a[0], -b[0]
    b[0] -= gamma
    b[-1] -= corner_low * corner_high / gamma
    solution = _solve_tridiagonal(a, b, c, rhs)
    u = np.zeros(n - 1)
    u[0], u[-1] = gamma, corner_low
    z = _solve_tridiagonal(a, b, c, u)
    factor = (solution[..., 0] + corner_high * solution[..., -1] / gamma) / (
        1.0 + z[0] + corner_high * z[-1] / gamma
    )
    solution -= factor[..., None] * z
    return np.concatenate([solution, solution[..., :1]], axis=-1)


def _spline_slopes(x, values, axis: int, periodic: bool):
    """First derivatives at the knots of the 1D splines along ``axis`` (as OpenMM's fits)."""
    y = np.moveaxis(values, axis, -1)
    d = _spline_second_derivatives(x, y, periodic)
    h = np.diff(x)
    slopes = np.empty_like(y)
    slopes[..., :-1] = np.diff(y, axis=-1) / h - (2.0 * d[..., :-1] + d[..., 1:]) * h / 6.0
    last = (y[..., -1] - y[..., -2]) / h[-1]
    slopes[..., -1] = last + (d[..., -2] + 2.0 * d[..., -1]) * h[-1] / 6.0
    return np.moveaxis(slopes, -1, axis)


# Cubic Hermite basis in power form: rows are powers t^0..t^3, columns the data
# (value at 0, value at 1, h * slope at 0, h * slope at 1).
_HERMITE = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [-3, 3, -2, -1], [2, -2, 1, 1]], dtype=float)


def _patch_coefficients(grids, values, periodic: bool):
    """Power-basis coefficients ``C[cell..., p0, p1, ...]`` of the (bi/tri)cubic patches.

    Each cell is the tensor-product cubic with the table's values and the spline-estimated
    first and mixed derivatives at its corners: OpenMM's bicubic/tricubic interpolant.
    """
    ndim = len(grids)
    derivs = {(0,) * ndim: values}
    for order in sorted(itertools.product((0, 1), repeat=ndim), key=sum)[1:]:
        axis = order.index(1)  # differentiate along the first axis of this order
        lower = tuple(0 if k == axis else o for k, o in enumerate(order))
        derivs[order] = _spline_slopes(grids[axis], derivs[lower], axis, periodic)
    widths = [np.diff(g) for g in grids]
    cells = tuple(len(g) - 1 for g in grids)
    data = np.empty(cells + (4,) * ndim)
    for dofs in itertools.product(range(4), repeat=ndim):
        order = tuple(d // 2 for d in dofs)
        corner = tuple(slice(d % 2, d % 2 + n) for d, n in zip(dofs, cells))
        scale = np.ones(cells)
        for axis, o in enumerate(order):
            if o:
                shape = [1] * ndim
                shape[axis] = -1
                scale = scale * widths[axis].reshape(shape)
        data[(...,) + dofs] = derivs[order][corner] * scale
    for axis in range(ndim):
        data = np.moveaxis(np.tensordot(_HERMITE, data, axes=([1], [ndim + axis])), 0, ndim + axis)
    return data


def _wrap(t, low, high):
    """OpenMM's periodic wrap into [low, high)."""
    s = (t - low) / (high - low)
    return low + (high - low) * (s - jnp.floor(s))


def _c_round_index(t, size: int):
    """C ``round`` (halves away from zero), then clamped to ``[0, size-1]``, as int32."""
    whole = jnp.trunc(t)
    rounded = whole + jnp.where(jnp.abs(t - whole) >= 0.5, jnp.sign(t), 0.0)
    return jnp.clip(rounded, 0, size - 1).astype(jnp.int32)


@dataclass(frozen=True, eq=False)
class TabulatedFunction:
    """A JAX callable reproducing one OpenMM tabulated function; see :func:`tabulated_function`.

    ``kind`` is the OpenMM class name, ``num_args`` the argument count; call it elementwise
    with broadcasting: ``fn(x)``, ``fn(x, y)`` or ``fn(x, y, z)``.
    """

    kind: str
    num_args: int
    table: np.ndarray  # values (discrete) or patch coefficients (continuous)
    grids: tuple[np.ndarray, ...] = ()  # knots per axis (continuous only)
    bounds: tuple[tuple[float, float], ...] = ()  # (min, max) per axis (continuous only)
    periodic: bool = False

    def __call__(self, *args) -> Array:
        if len(args) != self.num_args:
            raise TypeError(f"{self.kind} takes {self.num_args} argument(s), got {len(args)}")
        args = tuple(jnp.broadcast_arrays(*(_as_float(a) for a in args)))
        table = jnp.asarray(self.table, dtype=jnp.result_type(*args))
        if not self.grids:
            return _lookup(table, args)
        return _interpolate(table, self.grids, args, self.bounds, self.periodic)


@jax.jit
def _lookup(table: Array, args: tuple[Array, ...]) -> Array:
    """Discrete tables: the entry at the C-rounded, clamped indices."""
    return table[tuple(_c_round_index(a, n) for a, n in zip(args, table.shape))]


@functools.partial(jax.jit, static_argnames=("bounds", "periodic"))
def _interpolate(table, grids, args, bounds, periodic: bool) -> Array:
    """Continuous tables: the cubic patch polynomial of the cell holding each point, else 0."""
    inside = jnp.ones(args[0].shape, bool)
    cells, powers = [], []
    for t, knots, (low, high) in zip(args, grids, bounds):
        if periodic:
            t = _wrap(t, low, high)
        ok = (t >= low) & (t <= high)
        inside = inside & ok
        t = jnp.where(ok, t, low)  # a safe point outside; the result there is 0
        knots = knots.astype(t.dtype)
        cell = jnp.clip(jnp.searchsorted(knots, t, side="right") - 1, 0, len(knots) - 2)
        local = (t - knots[cell]) / (knots[cell + 1] - knots[cell])
        cells.append(cell)
        powers.append(jnp.stack([jnp.ones_like(local), local, local**2, local**3], -1))
    weights = powers[0]  # tensor product of the per-axis power bases: (..., 4[, 4[, 4]])
    for k, p in enumerate(powers[1:], start=1):
        weights = weights[..., None] * jnp.expand_dims(p, tuple(range(-k - 1, -1)))
    value = jnp.sum(table[tuple(cells)] * weights, axis=tuple(range(-len(args), 0)))
    return jnp.where(inside, value, jnp.zeros_like(value))


def tabulated_function(fn) -> TabulatedFunction:
    """Convert an OpenMM TabulatedFunction into a JAX callable with OpenMM's interpolation.

    * ``Continuous1DFunction``: natural cubic spline through the values on the uniform grid
      ``min + i (max - min)/(n - 1)`` (periodic spline if ``getPeriodic()``; then the first and
      last values must be equal).
    * ``Continuous2DFunction`` / ``Continuous3DFunction``: bicubic / tricubic patches whose corner
      derivatives (first and mixed) come from 1D splines along each axis, as OpenMM's
      ``SplineFitter``.
    * Continuous, non-periodic: 0 (value and derivative) outside ``[min, max]`` on any axis;
      periodic: the argument is wrapped into ``[min, max)`` first.
    * ``Discrete{1,2,3}DFunction``: the value at the index C ``round(x)`` clamped to the table
      (x fastest in the flat 2D/3D tables); its derivative is 0.

    The table is fixed at conversion (structural); arguments are traced.
    """
    import openmm

    kind = type(fn).__name__
    discrete = tuple(getattr(openmm, f"Discrete{n}DFunction") for n in (1, 2, 3))
    continuous = tuple(getattr(openmm, f"Continuous{n}DFunction") for n in (1, 2, 3))
    if not isinstance(fn, discrete + continuous):
        raise TypeError(
            f"tabulated_function: unsupported {kind}; expected one of "
            f"{', '.join(c.__name__ for c in continuous + discrete)}"
        )
    params = list(fn.getFunctionParameters())
    if isinstance(fn, openmm.Discrete1DFunction):
        return TabulatedFunction(kind, 1, np.asarray(params, dtype=float))
    if isinstance(fn, discrete):
        ndim = len(params) - 1
        sizes, values = params[:ndim], np.asarray(params[ndim], dtype=float)
        table = values.reshape(sizes[::-1]).transpose(tuple(range(ndim))[::-1])
        return TabulatedFunction(kind, ndim, table)
    periodic = bool(fn.getPeriodic())
    if isinstance(fn, openmm.Continuous1DFunction):
        values, low, high = params
        sizes, values, bounds = [len(values)], np.asarray(values, dtype=float), [(low, high)]
    else:
        ndim = 2 if isinstance(fn, openmm.Continuous2DFunction) else 3
        sizes, flat = params[:ndim], np.asarray(params[ndim], dtype=float)
        values = flat.reshape(sizes[::-1]).transpose(tuple(range(ndim))[::-1])
        bounds = list(zip(params[ndim + 1 :: 2], params[ndim + 2 :: 2]))
    minimum = 3 if periodic else 2
    if min(sizes) < minimum:
        raise ValueError(f"{kind} needs at least {minimum} points per axis, got {sizes}")
    if periodic:
        for axis in range(values.ndim):
            first, last = np.take(values, 0, axis), np.take(values, -1, axis)
            if np.any(np.abs(first - last) > 1e-15 + 1e-15 * np.abs(last)):
                raise ValueError(
                    f"periodic {kind}: the first and last values along axis {axis} must be equal"
                )
    grids = tuple(
        np.array([low + i * (high - low) / (n - 1) for i in range(n)])
        for n, (low, high) in zip(sizes, bounds)
    )
    coefficients = _patch_coefficients(grids, values, periodic)
    bounds = tuple((float(low), float(high)) for low, high in bounds)
    return TabulatedFunction(kind, len(grids), coefficients, grids, bounds, periodic)


def discrete_lookup(table: Array, args) -> Array:
    """The entries of a discrete table (n1[, n2[, n3]]) at the C-rounded, clamped ``args`` (one
    array per axis, broadcast together), as OpenMM's ``Discrete{1,2,3}DFunction``.

    Unlike :func:`tabulated_function`, the table is an argument: it may be traced, so its values
    can be tuned (the lookup is differentiable in them; the derivative in ``args`` is 0)."""
    table = jnp.asarray(table)
    if len(args) != table.ndim:
        raise TypeError(f"a {table.ndim}D discrete table takes {table.ndim} argument(s), "
                        f"got {len(args)}")
    args = jnp.broadcast_arrays(*(_as_float(a) for a in args))
    return table[tuple(_c_round_index(a, n) for a, n in zip(args, table.shape))]
