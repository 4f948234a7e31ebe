"""Ewald summation and smooth particle-mesh Ewald (PME): reciprocal space and bookkeeping terms.

Ewald splits the Coulomb sum of a periodic system into a short-ranged direct part
``q_i q_j erfc(alpha r) / r`` (summed within a cutoff, elsewhere) and a smooth long-ranged part
summed in reciprocal space over wave vectors ``k = 2 pi B^-1 m`` (``B``: rows are the box vectors,
``m``: integer triples)::

    E_rec = (2 pi / V) * ONE_4PI_EPS0 * sum_{m != 0} exp(-k^2 / (4 alpha^2)) / k^2 * |S(k)|^2,
    S(k)  = sum_i q_i exp(i k . r_i).

Plain Ewald evaluates ``S(k)`` directly for ``|m_d| < kmax_d`` (cost N * K). Smooth PME (Essmann et
al., J. Chem. Phys. 103, 8577 (1995)) spreads the charges onto a regular grid over the fractional
coordinates with cardinal B-splines of order ``p`` (OpenMM: 5), takes one FFT of the grid, and
divides out the splines' Fourier moduli ``|b(m)|^2`` in the influence function, so that
``S(k)`` is approximated at cost N p^3 + G log G. The energy is differentiable in positions,
charges and box; forces come from ``jax.grad``, the PME virial from its closed form
(:func:`pme_reciprocal_energy_virial`).

The reciprocal sum counts every pair including each charge with itself and excluded pairs. The
bookkeeping terms below remove these: :func:`ewald_self_energy`, :func:`excluded_pair_correction`,
and, for a net charge, :func:`neutralizing_energy` (a uniform neutralizing background).

OpenMM conventions reproduced exactly (NonbondedForce, Reference platform, OpenMM 8):

* parameters from the error tolerance: :func:`pme_parameters`, :func:`ewald_parameters`
  (``NonbondedForceImpl::calcPMEParameters`` / ``calcEwaldParameters``; the grid is then rounded
  up to a legal FFT size by every platform except Reference, see ``platform``);
* grouping: with ``setReciprocalSpaceForceGroup(g)``, group ``g`` holds the reciprocal energy
  **plus** the self energy **plus** the neutralizing term (so its forces are the reciprocal forces
  alone); the excluded-pair correction (``-erf`` term for every exclusion and exception) is in the
  direct-space group, computed without periodic wrapping unless
  ``setExceptionsUsePeriodicBoundaryConditions(True)``;
* PME: fractional coordinates ``s = r B^-1``, B-spline order 5 spread forward from
  ``floor(s n)``, grid frequencies ``m = k`` for ``k < (n + 1) // 2`` else ``k - n`` (also at the
  Nyquist index, which matters for triclinic boxes), B-spline moduli below 1e-7 replaced by the mean
  of their neighbours, the ``m = 0`` term dropped.

Units: nm, e, kJ/mol; ``alpha`` in 1/nm. Structural (static, recompile when changed): ``grid``,
``order``, ``kmax``, array shapes. Numeric (traced): positions, charges, box, alpha.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ..units import ONE_4PI_EPS0

Array = jax.Array

__all__ = [
    "PLATFORMS",
    "ewald_parameters",
    "ewald_reciprocal_energy",
    "ewald_self_energy",
    "excluded_pair_correction",
    "legal_fft_size",
    "neutralizing_energy",
    "pme_parameters",
    "pme_reciprocal_energy",
    "pme_reciprocal_energy_virial",
]

PLATFORMS = ("Reference", "CPU", "CUDA", "OpenCL", "HIP")
"""OpenMM platforms whose PME grid-size rounding :func:`legal_fft_size` reproduces."""

_SQRT_PI = math.sqrt(math.pi)


# --------------------------------------------------------------------------------------------
# Parameters from an error tolerance (host side, plain Python)
# --------------------------------------------------------------------------------------------


def _check_parameter_inputs(cutoff: float, tolerance: float, box) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (3, 3):
        raise ValueError(
            f"box must be a (3, 3) array whose rows are the box vectors (nm), got shape {box.shape}"
        )
    if not np.all(np.isfinite(box)):
        raise ValueError("box contains non-finite values")
    if not (cutoff > 0 and math.isfinite(cutoff)):
        raise ValueError(f"cutoff must be a positive finite distance in nm, got {cutoff}")
    if not (0 < tolerance < 0.5):
        raise ValueError(
            "tolerance must lie in (0, 0.5) (OpenMM's ewaldErrorTolerance, typically 5e-4), "
            f"got {tolerance}"
        )
    diag = np.diag(box)
    if np.any(cutoff > 0.5 * diag):
        raise ValueError(
            f"cutoff {cutoff} nm exceeds half the box (diagonal {diag.tolist()} nm); "
            "use a smaller cutoff or a larger box (OpenMM raises the same error)"
        )
    return box


def _ewald_alpha(cutoff: float, tolerance: float) -> float:
    # Same floating-point operation order as OpenMM, so the result agrees to the last bit.
    return (1.0 / cutoff) * math.sqrt(-math.log(2.0 * tolerance))


def legal_fft_size(minimum: int, platform: str = "Reference") -> int:
    """Smallest grid size >= ``minimum`` that OpenMM's ``platform`` accepts for its PME FFT.

    Reference: any size. CPU (``CpuCalcPmeReciprocalForceKernel::findFFTDimension``): products of
    2, 3, 5, 7, optionally times one factor 11. CUDA and OpenCL
    (``ComputeContext::findLegalFFTDimension``): products of 2, 3, 5, 7. HIP (VkFFT): products of
    primes up to 13. (OpenCL builds with VkFFT also allow 11 and 13; the default build does not.)
    """
    if platform not in PLATFORMS:
        raise ValueError(f"unknown OpenMM platform {platform!r}; choose one of {PLATFORMS}")
    n = max(int(minimum), 1)
    if platform == "Reference":
        return n
    max_factor = 13 if platform == "HIP" else 7
    while True:
        rest = n
        for factor in range(2, max_factor + 1):
            while rest > 1 and rest % factor == 0:
                rest //= factor
        if rest == 1 or (platform == "CPU" and rest == 11):
            return n
        n += 1


def pme_parameters(
    cutoff: float, tolerance: float, box, platform: str = "Reference"
) -> tuple[float, tuple[int, int, int]]:
    """PME splitting parameter and grid from an error tolerance, as OpenMM's NonbondedForce does.

    ``alpha = sqrt(-log(2 tol)) / cutoff``; per axis ``n = ceil(2 alpha L / (3 tol^(1/5)))`` with
    ``L`` the diagonal element ``box[d, d]`` (not the vector length), at least 6, then rounded up
    with :func:`legal_fft_size` for ``platform``. The result equals what
    ``NonbondedForce.getPMEParametersInContext`` reports on that platform for a System whose
    default box is ``box`` (the CPU platform reports the rounded grid only after the first force
    or energy evaluation).

    Args:
        cutoff: direct-space cutoff, nm.
        tolerance: OpenMM's ``ewaldErrorTolerance`` (dimensionless, default there 5e-4).
        box: (3, 3) rows are the box vectors, nm (OpenMM reduced form for triclinic).
        platform: one of :data:`PLATFORMS`; decides the FFT-size rounding.

    Returns:
        ``(alpha, (nx, ny, nz))``: alpha in 1/nm, grid sizes as Python ints (structural).
    """
    box = _check_parameter_inputs(cutoff, tolerance, box)
    alpha = _ewald_alpha(cutoff, tolerance)
    denominator = 3 * math.pow(tolerance, 0.2)
    sizes = []
    for d in range(3):
        n = max(math.ceil(2 * alpha * float(box[d, d]) / denominator), 6)
        sizes.append(legal_fft_size(n, platform))
    return alpha, (sizes[0], sizes[1], sizes[2])


def _ewald_error(k: int, width: float, alpha: float, tolerance: float) -> float:
    """OpenMM's EwaldErrorFunction: tol - 0.05 sqrt(L alpha) k exp(-(pi k / (L alpha))^2)."""
    temp = k * math.pi / (width * alpha)
    return tolerance - 0.05 * math.sqrt(width * alpha) * k * math.exp(-temp * temp)


def _find_zero(width: float, alpha: float, tolerance: float, guess: int = 10) -> int:
    """OpenMM's NonbondedForceImpl::findZero: integer search from ``guess`` for the sign change."""
    k = guess
    value = _ewald_error(k, width, alpha, tolerance)
    if value > 0.0:
        while value > 0.0 and k > 0:
            k -= 1
            value = _ewald_error(k, width, alpha, tolerance)
        return k + 1
    while value < 0.0:
        k += 1
        value = _ewald_error(k, width, alpha, tolerance)
    return k


def ewald_parameters(cutoff: float, tolerance: float, box) -> tuple[float, tuple[int, int, int]]:
    """Ewald splitting parameter and k-space extent from an error tolerance, as OpenMM picks them.

    ``alpha`` as in :func:`pme_parameters`; per axis ``kmax`` is the smallest integer where
    ``0.05 sqrt(L alpha) k exp(-(pi k / (L alpha))^2)`` drops below the tolerance (OpenMM's
    ``findZero`` search from 10), made odd. Same on every OpenMM platform. OpenMM's Ewald needs a
    rectangular box; :func:`ewald_reciprocal_energy` accepts any box.

    Args:
        cutoff: direct-space cutoff, nm.
        tolerance: OpenMM's ``ewaldErrorTolerance``.
        box: (3, 3) rows are the box vectors, nm; only the diagonal is used.

    Returns:
        ``(alpha, (kx, ky, kz))``: alpha in 1/nm; wave vectors ``|m_d| <= k_d - 1`` are summed.
    """
    box = _check_parameter_inputs(cutoff, tolerance, box)
    alpha = _ewald_alpha(cutoff, tolerance)
    kmax = []
    for d in range(3):
        k = _find_zero(float(box[d, d]), alpha, tolerance)
        kmax.append(k + 1 if k % 2 == 0 else k)
    return alpha, (kmax[0], kmax[1], kmax[2])


# --------------------------------------------------------------------------------------------
# Shared helpers (traced)
# --------------------------------------------------------------------------------------------


def _check_system(positions, charges, box) -> tuple[Array, Array, Array]:
    positions, charges, box = jnp.asarray(positions), jnp.asarray(charges), jnp.asarray(box)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (N, 3) in nm, got {positions.shape}")
    if charges.shape != (positions.shape[0],):
        raise ValueError(
            f"charges must have shape (N,) = ({positions.shape[0]},) in e, got {charges.shape}"
        )
    if box.shape != (3, 3):
        raise ValueError(
            f"box must be a (3, 3) array whose rows are the box vectors (nm), got {box.shape}"
        )
    dtype = jnp.result_type(positions.dtype, charges.dtype, box.dtype, float)
    return positions.astype(dtype), charges.astype(dtype), box.astype(dtype)


def _static_triple(values, name: str, minimum: int) -> tuple[int, int, int]:
    try:
        triple = tuple(int(v) for v in values)
    except TypeError:
        raise TypeError(
            f"{name} must be a tuple of three Python ints (structural), got {values!r}"
        ) from None
    if len(triple) != 3 or any(v != w for v, w in zip(triple, values)):
        raise ValueError(f"{name} must be three integers, got {values!r}")
    if min(triple) < minimum:
        raise ValueError(f"every entry of {name} must be >= {minimum}, got {triple}")
    return triple  # type: ignore[return-value]


def _box_volume_and_inverse(box: Array) -> tuple[Array, Array]:
    """Volume (nm^3) and ``B^-1`` (1/nm) of a box with rows a, b, c.

    ``B^-1`` has columns ``(b x c, c x a, a x b) / V``, so fractional coordinates are ``r @ B^-1``
    and wave vectors ``2 pi B^-1 @ m``. Written out for clean derivatives in the box.
    """
    a, b, c = box[0], box[1], box[2]
    bc, ca, ab = jnp.cross(b, c), jnp.cross(c, a), jnp.cross(a, b)
    volume = jnp.dot(a, bc)
    return volume, jnp.stack([bc, ca, ab], axis=1) / volume


def _bspline_weights(dr, order: int, xp=jnp) -> list:
    """Cardinal B-spline weights ``M_order(dr + order - 1 - j)`` for ``j = 0 .. order-1``.

    ``dr`` in [0, 1) (any shape); returns ``order`` arrays of its shape. Weight ``j`` goes to grid
    point ``floor(u) + j`` (OpenMM spreads forward). Cox-de Boor recursion:
    ``M_k(x) = (x M_{k-1}(x) + (k - x) M_{k-1}(x - 1)) / (k - 1)``.
    """
    w = [1 - dr, dr]
    for k in range(3, order + 1):
        zero = xp.zeros_like(dr)
        prev = [zero] + w + [zero]  # prev[j + 1] = w^{(k-1)}_j, zero outside 0..k-2
        w = [((dr + k - 1 - j) * prev[j] + (1 - dr + j) * prev[j + 1]) / (k - 1) for j in range(k)]
    return w


def _bspline_moduli(n: int, order: int) -> np.ndarray:
    """``|sum_j M_order(j) exp(2 pi i k j / n)|^2`` for k = 0..n-1, OpenMM's zero patch applied."""
    values = np.asarray(_bspline_weights(np.float64(0.0), order, xp=np), dtype=np.float64)[::-1]
    data = np.zeros(n)
    data[:order] = values  # M_order(j) at j = 0 .. order-1 (M(0) = M(order) = 0)
    k = np.arange(n)
    phase = 2 * np.pi * np.outer(k, np.arange(n)) / n
    moduli = (data * np.cos(phase)).sum(1) ** 2 + (data * np.sin(phase)).sum(1) ** 2
    patched = moduli.copy()
    for i in range(n):
        if moduli[i] < 1e-7:
            patched[i] = 0.5 * (moduli[(i - 1) % n] + moduli[(i + 1) % n])
    return patched


def _grid_frequencies(n: int) -> np.ndarray:
    """Integer frequency of each FFT index in OpenMM's convention: k < (n+1)//2 -> k, else k - n."""
    k = np.arange(n)
    return np.where(k < (n + 1) // 2, k, k - n)


# --------------------------------------------------------------------------------------------
# Smooth PME
# --------------------------------------------------------------------------------------------


_SCATTER_WINDOWS = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(1, 2, 3), inserted_window_dims=(), scatter_dims_to_operand_dims=(0, 1, 2))


def _spline_setup(fractional: Array, grid: tuple[int, int, int], order: int):
    """Each atom's B-spline window on the grid: the grid point of its first weight per axis
    (N, 3) int32 in [0, n_d), and the weights and their derivatives with respect to the
    scaled coordinate u = s n_d, (N, 3, order) each. Weight j goes to grid point
    ``base + j`` (mod n_d): OpenMM spreads forward from floor(u). Positions outside the unit
    cell are wrapped. dM_p(x)/dx = M_{p-1}(x) - M_{p-1}(x - 1)."""
    n = jnp.asarray(grid, dtype=fractional.dtype)
    u = (fractional - jnp.floor(fractional)) * n[None, :]  # (N, 3) in [0, n]
    base = jnp.floor(u)
    dr = u - base
    base = jax.lax.stop_gradient(base).astype(jnp.int32)
    size = jnp.asarray(grid, jnp.int32)[None, :]
    base = jnp.where(base >= size, base - size, base)  # u rounded up to n: the same point as 0
    w = _bspline_weights(dr, order)
    v = _bspline_weights(dr, order - 1)
    dw = [(v[j - 1] if j > 0 else 0.0) - (v[j] if j < order - 1 else 0.0) for j in range(order)]
    return base, jnp.stack(w, -1), jnp.stack([d + jnp.zeros_like(dr) for d in dw], -1)


def _outer3(a: Array, b: Array, c: Array) -> Array:
    """(N, p) x 3 -> (N, p, p, p): a[:, i] b[:, j] c[:, k]."""
    return a[:, :, None, None] * b[:, None, :, None] * c[:, None, None, :]


def _scatter_windows(base: Array, windows: Array, grid: tuple[int, int, int]) -> Array:
    """Add each atom's (p, p, p) window at ``base`` into a periodic grid: one scatter of N
    windows into a grid padded by p - 1, whose overhang is then folded back."""
    p = windows.shape[-1]
    padded = jnp.zeros(tuple(g + p - 1 for g in grid), windows.dtype)
    padded = jax.lax.scatter_add(padded, base, windows, _SCATTER_WINDOWS,
                                 mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS)
    nx, ny, nz = grid
    a = padded[:nx].at[: p - 1].add(padded[nx:])
    b = a[:, :ny].at[:, : p - 1].add(a[:, ny:])
    return b[:, :, :nz].at[:, :, : p - 1].add(b[:, :, nz:])


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _spread_charges(
    fractional: Array, charges: Array, grid: tuple[int, int, int], order: int
) -> Array:
    """Charge grid Q (grid shape) from fractional coordinates (N, 3) by B-spline spreading:
    Q[a, b, c] = sum_i q_i Wx[i, a] Wy[i, b] Wz[i, c] over each atom's order^3 window.

    One windowed scatter-add (N updates of order^3 values), with a hand-written JVP so that
    reverse mode is its transpose: one windowed gather of the potential grid (the classic PME
    force interpolation). Autodiff of the spreading itself made XLA reduce (N, p, p, p)
    arrays along inner axes; measured at 2347 atoms on a 24^3 grid, value and gradient
    4.5 ms (dense outer products, the previous form) -> 1.5 ms. Any order of derivatives
    works (the rule is differentiable)."""
    base, w, _ = _spline_setup(fractional, grid, order)
    return _scatter_windows(base, charges[:, None, None, None] * _outer3(w[:, 0], w[:, 1], w[:, 2]),
                            grid)


@_spread_charges.defjvp
def _spread_charges_jvp(grid, order, primals, tangents):
    fractional, charges = primals
    dfrac, dq = tangents
    base, w, dw = _spline_setup(fractional, grid, order)
    wx, wy, wz = w[:, 0], w[:, 1], w[:, 2]
    w3 = _outer3(wx, wy, wz)
    q = _scatter_windows(base, charges[:, None, None, None] * w3, grid)
    du = charges[:, None] * jnp.asarray(grid, fractional.dtype)[None, :] * dfrac  # q_i du_i (N, 3)
    windows = (dq[:, None, None, None] * w3
               + du[:, 0, None, None, None] * _outer3(dw[:, 0], wy, wz)
               + du[:, 1, None, None, None] * _outer3(wx, dw[:, 1], wz)
               + du[:, 2, None, None, None] * _outer3(wx, wy, dw[:, 2]))
    return q, _scatter_windows(base, windows, grid)


def _pme_influence(
    inverse: Array, volume: Array, alpha, grid: tuple[int, int, int], order: int,
    virial: bool = False
):
    """Influence function on the rfft half grid (nx, ny, nz//2+1), conjugate partners folded in.

    ``C(m) = ONE_4PI_EPS0 exp(-pi^2 |h|^2 / alpha^2) / (pi V |h|^2 B(m))`` with ``h = B^-1 m``
    and ``B(m)`` the product of the B-spline moduli; ``C(0) = 0``. The energy is
    ``0.5 sum_m C(m) |F[Q](m)|^2`` over the full grid; the rfft stores one of each conjugate pair
    ``(m, -m mod n)``, whose ``C`` differ only at Nyquist indices of triclinic boxes, so the stored
    entries carry ``C(m) + C(partner)``.

    ``virial``: also return the virial weights (6, nx, ny, nz//2+1) for xx, yy, zz, xy, xz, yz,
    ``C(m) (delta_ab - 2 h_a h_b (1/|h|^2 + pi^2/alpha^2))``, folded the same way (see
    :func:`pme_reciprocal_energy_virial`).
    """
    dtype = inverse.dtype
    nx, ny, nz = grid
    m = [jnp.asarray(_grid_frequencies(n), dtype=dtype) for n in grid]
    mx, my, mz = m[0][:, None, None], m[1][None, :, None], m[2][None, None, :]
    h2 = sum((inverse[i, 0] * mx + inverse[i, 1] * my + inverse[i, 2] * mz) ** 2 for i in range(3))
    moduli = np.einsum(
        "i,j,k->ijk", *(_bspline_moduli(n, order) for n in grid)
    )  # static, from the grid
    origin = np.zeros(grid, dtype=bool)
    origin[0, 0, 0] = True
    safe_h2 = jnp.where(origin, 1.0, h2)
    c = (
        ONE_4PI_EPS0
        * jnp.exp(-(math.pi**2) * safe_h2 / alpha**2)
        / (math.pi * volume * safe_h2 * moduli.astype(dtype))
    )
    c = jnp.where(origin, 0.0, c)
    nzh = nz // 2 + 1
    kz = np.arange(nzh)
    partner_index = np.ix_((-np.arange(nx)) % nx, (-np.arange(ny)) % ny, (-kz) % nz)
    has_partner = ((kz > 0) & (2 * kz != nz)).astype(dtype)  # the partner is not stored itself

    def fold(a):
        return a[:, :, :nzh] + has_partner[None, None, :] * a[partner_index]

    if not virial:
        return fold(c)
    h = [inverse[i, 0] * mx + inverse[i, 1] * my + inverse[i, 2] * mz for i in range(3)]
    f = 2.0 * (1.0 / safe_h2 + math.pi**2 / alpha**2)
    voigt = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
    return fold(c), jnp.stack([fold(c * ((a == b) - f * h[a] * h[b])) for a, b in voigt])


def pme_reciprocal_energy(
    positions, charges, box, alpha, grid: tuple[int, int, int], order: int = 5
) -> Array:
    """Smooth-PME reciprocal-space energy, as OpenMM's ReferencePME computes it.

    Excludes the self energy, the neutralizing term and exclusion corrections (see the module
    docstring for what OpenMM's reciprocal group adds). Differentiable in positions, charges, box
    and alpha; jit with ``grid`` and ``order`` static.

    Args:
        positions: (N, 3) nm; any image (wrapped into the cell internally).
        charges: (N,) e.
        box: (3, 3) nm, rows are the box vectors (any right-handed box; OpenMM's reduced form for
            triclinic matches OpenMM).
        alpha: Ewald splitting parameter, 1/nm (numeric, traced).
        grid: (nx, ny, nz) PME grid sizes, Python ints >= order + 1 (structural).
        order: B-spline order (structural); OpenMM uses 5.

    Returns:
        () energy in kJ/mol.
    """
    s2, volume, inverse, grid, order = _pme_structure(positions, charges, box, grid, order)
    return 0.5 * jnp.sum(_pme_influence(inverse, volume, alpha, grid, order) * s2)


def pme_reciprocal_energy_virial(
    positions, charges, box, alpha, grid: tuple[int, int, int], order: int = 5
) -> tuple[Array, Array]:
    """:func:`pme_reciprocal_energy` and its virial tensor W = -dE/d(strain) (3, 3) kJ/mol, in
    one forward pass (the closed form of Essmann et al. 1995).

    Positions and box deformed together leave the fractional coordinates, and so the charge
    grid and its transform S(m), unchanged; only the influence function moves, through V and
    h = B^-1 m (h -> (1 + e)^-1 h). Hence
    ``W_ab = 1/2 sum_m C(m) |S(m)|^2 (delta_ab - 2 h_a h_b (1/|h|^2 + pi^2/alpha^2))``,
    exact for smooth PME (autodiff of the strain, without its backward pass through the grid).
    Arguments as :func:`pme_reciprocal_energy`; returns (energy, symmetric virial (3, 3))."""
    s2, volume, inverse, grid, order = _pme_structure(positions, charges, box, grid, order)
    influence, weights = _pme_influence(inverse, volume, alpha, grid, order, virial=True)
    w = 0.5 * jnp.sum(weights * s2[None], axis=(1, 2, 3))  # xx yy zz xy xz yz
    return 0.5 * jnp.sum(influence * s2), w[np.array([[0, 3, 4], [3, 1, 5], [4, 5, 2]])]


def _pme_structure(positions, charges, box, grid, order):
    """|F[Q](m)|^2 on the rfft half grid, the volume, B^-1, and the checked grid and order."""
    order = int(order)
    if order < 3:
        raise ValueError(f"order must be >= 3 (OpenMM uses 5), got {order}")
    grid = _static_triple(grid, "grid", order + 1)
    positions, charges, box = _check_system(positions, charges, box)
    volume, inverse = _box_volume_and_inverse(box)
    s = jnp.fft.rfftn(_spread_charges(positions @ inverse, charges, grid, order))
    return s.real**2 + s.imag**2, volume, inverse, grid, order


# --------------------------------------------------------------------------------------------
# Plain Ewald
# --------------------------------------------------------------------------------------------


def _half_space_vectors(kmax: tuple[int, int, int]) -> np.ndarray:
    """Integer vectors m with |m_d| < kmax_d, one of each pair (m, -m), m != 0: OpenMM's set.

    m_x >= 0; for m_x = 0, m_y >= 0; for m_x = m_y = 0, m_z >= 1. Shape (K, 3).
    """
    ranges = [np.arange(1 - k, k) for k in kmax]
    m = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    keep = (m[:, 0] > 0) | ((m[:, 0] == 0) & ((m[:, 1] > 0) | ((m[:, 1] == 0) & (m[:, 2] > 0))))
    return m[keep]


def ewald_reciprocal_energy(positions, charges, box, alpha, kmax: tuple[int, int, int]) -> Array:
    """Reciprocal-space energy by an explicit sum over wave vectors (OpenMM's Ewald).

    ``E = (4 pi / V) ONE_4PI_EPS0 sum_{half space} exp(-k^2 / (4 alpha^2)) / k^2 |S(k)|^2`` over
    ``|m_d| <= kmax_d - 1``. Memory and time scale as N * K with K ~ 4 kx ky kz: meant for
    checks and small systems. Excludes self, neutralizing and exclusion terms.

    Args:
        positions: (N, 3) nm.
        charges: (N,) e.
        box: (3, 3) nm, rows are the box vectors (OpenMM itself accepts only rectangular boxes).
        alpha: 1/nm (traced).
        kmax: (kx, ky, kz) Python ints >= 1 (structural), e.g. from :func:`ewald_parameters`.

    Returns:
        () energy in kJ/mol.
    """
    kmax = _static_triple(kmax, "kmax", 1)
    positions, charges, box = _check_system(positions, charges, box)
    dtype = positions.dtype
    m = _half_space_vectors(kmax)
    if m.shape[0] == 0:
        return jnp.zeros((), dtype)
    m = jnp.asarray(m, dtype=dtype)
    volume, inverse = _box_volume_and_inverse(box)
    phase = 2 * math.pi * (positions @ inverse) @ m.T  # (N, K)
    s_re = charges @ jnp.cos(phase)
    s_im = charges @ jnp.sin(phase)
    k = 2 * math.pi * m @ inverse.T  # (K, 3) wave vectors, 1/nm
    k2 = jnp.sum(k * k, axis=1)
    weight = jnp.exp(-k2 / (4 * alpha**2)) / k2
    return 4 * math.pi * ONE_4PI_EPS0 / volume * jnp.sum(weight * (s_re**2 + s_im**2))


# --------------------------------------------------------------------------------------------
# Bookkeeping terms
# --------------------------------------------------------------------------------------------


def ewald_self_energy(charges, alpha) -> Array:
    """Self-interaction removal ``-ONE_4PI_EPS0 alpha / sqrt(pi) sum_i q_i^2`` (kJ/mol).

    Args:
        charges: (N,) e.
        alpha: 1/nm (traced).
    """
    charges = jnp.asarray(charges)
    if charges.ndim != 1:
        raise ValueError(f"charges must have shape (N,) in e, got {charges.shape}")
    return -ONE_4PI_EPS0 * alpha / _SQRT_PI * jnp.sum(charges**2)


def neutralizing_energy(charges, box, alpha) -> Array:
    """Energy of a uniform background that neutralizes a net charge Q (kJ/mol).

    ``-Q^2 / (8 eps0 V alpha^2) = -ONE_4PI_EPS0 pi Q^2 / (2 V alpha^2)``, as OpenMM adds it (for
    Ewald and PME, to the reciprocal group) to pair with dropping the ``m = 0`` term. Zero for a
    neutral system; its charge and box derivatives are what a net-charged system needs.

    Args:
        charges: (N,) e.
        box: (3, 3) nm, rows are the box vectors.
        alpha: 1/nm (traced).
    """
    charges, box = jnp.asarray(charges), jnp.asarray(box)
    if charges.ndim != 1:
        raise ValueError(f"charges must have shape (N,) in e, got {charges.shape}")
    if box.shape != (3, 3):
        raise ValueError(
            f"box must be a (3, 3) array whose rows are the box vectors (nm), got {box.shape}"
        )
    volume, _ = _box_volume_and_inverse(box)
    total = jnp.sum(charges)
    return -ONE_4PI_EPS0 * math.pi * total**2 / (2 * volume * alpha**2)


def _erf_over_x(x: Array) -> Array:
    """erf(x) / x with a series near 0, so values and gradients stay finite at x = 0."""
    small = x < 1e-3
    safe = jnp.where(small, 1.0, x)
    x2 = x * x
    series = (2 / _SQRT_PI) * (1 - x2 / 3 + x2 * x2 / 10)
    return jnp.where(small, series, jax.scipy.special.erf(safe) / safe)


def excluded_pair_correction(r, qq, alpha) -> Array:
    """Remove excluded pairs' reciprocal interaction: ``-ONE_4PI_EPS0 sum qq erf(alpha r) / r``.

    OpenMM subtracts this (in the direct-space group) for every exclusion and every exception of
    a NonbondedForce with Ewald or PME, using the unwrapped distance unless exceptions use periodic
    boundary conditions. At ``r -> 0`` it tends to ``-ONE_4PI_EPS0 qq 2 alpha / sqrt(pi)``; value
    and gradients are finite there (OpenMM switches to that limit, with zero force, where
    ``erf(alpha r) <= 1e-6``; the difference is below 1e-12 relative).

    Args:
        r: (M,) pair distances, nm (>= 0).
        qq: (M,) charge products ``q_i q_j`` of the excluded pairs, e^2 (not the exception's
            scaled chargeProd).
        alpha: 1/nm (traced).

    Returns:
        () energy in kJ/mol.
    """
    r, qq = jnp.asarray(r), jnp.asarray(qq)
    if r.shape != qq.shape or r.ndim != 1:
        raise ValueError(f"r and qq must both have shape (M,), got {r.shape} and {qq.shape}")
    return -ONE_4PI_EPS0 * alpha * jnp.sum(qq * _erf_over_x(alpha * r))
