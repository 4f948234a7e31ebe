"""CMAP: the torsion-torsion energy correction map of CHARMM and amber ff19SB, as OpenMM's
``CMAPTorsionForce`` defines it.

An instance couples two dihedral angles, phi (atoms a1-a2-a3-a4) and psi (b1-b2-b3-b4), through
a tabulated map: a periodic ``size`` x ``size`` grid of energies, interpolated bicubically. The
*types* of :class:`CMAPTorsion` are the maps, and the grid values are the parameters:
``params = {"energy": (n_maps, size, size) kJ/mol}``, numeric (tuning a map never recompiles);
``size`` is structural (a new grid size retraces).

Conventions (OpenMM's, checked against its Reference platform in ``tests/test_cmap.py``):

* ``energy[m, i, j]`` is map ``m`` at phi = i * 2 pi / size, psi = j * 2 pi / size (rad): the
  first index is phi, and the grid starts at angle 0 and wraps around (angles are taken modulo
  2 pi, so -pi < phi < 0 lies in the upper half of the grid). OpenMM stores the same map flat,
  ``flat[i + size * j]``; :func:`map_from_openmm` and :func:`map_to_openmm` convert.
* Derivatives at the grid nodes come from periodic cubic splines through each row, each column,
  and (for the cross derivative d2E/dphi dpsi) through each row of the psi-derivatives; inside a
  cell the energy is the bicubic Hermite patch with those node values and derivatives (the
  patch OpenMM builds with its 16 x 16 coefficient table). Angles are dihedrals with the IUPAC
  sign, as :func:`~workbench.potentials.bonded.dihedral_angles`.

Every step from grid to energy is linear in the grid values: the spline derivative operator is a
``size`` x ``size`` matrix computed once in NumPy per grid size and applied in JAX, so the
energy is differentiable in the map values (and in positions: forces come from autodiff).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from .bonded import BondedTerm, dihedral_angles

Array = jax.Array

__all__ = [
    "CMAPTorsion", "map_from_openmm", "map_to_openmm",
    "periodic_spline_derivative_matrix",
]

_TWO_PI = 2.0 * np.pi


@functools.cache
def periodic_spline_derivative_matrix(size: int) -> np.ndarray:
    """(size, size) matrix D with ``D @ y`` = the first derivatives (per radian) at the nodes of
    the periodic cubic spline through ``y`` (size,) sampled at angles k * 2 pi / size.

    The spline's second derivatives m solve the cyclic system m[k-1] + 4 m[k] + m[k+1] =
    6 (y[k+1] - 2 y[k] + y[k-1]) / h^2 (h = 2 pi / size); the slope at node k is then
    (y[k+1] - y[k]) / h - h (2 m[k] + m[k+1]) / 6. Read-only; cached per size."""
    if size < 2:
        raise ValueError(f"a CMAP grid needs at least 2 points per angle, got {size}")
    h = _TWO_PI / size
    eye = np.eye(size)
    up = np.roll(eye, 1, axis=1)  # (up @ y)[k] = y[k+1]
    down = up.T  # (down @ y)[k] = y[k-1]
    second = np.linalg.solve(4.0 * eye + up + down, 6.0 / h**2 * (up - 2.0 * eye + down))
    d = (up - eye) / h - h / 6.0 * (2.0 * eye + up) @ second
    d.setflags(write=False)
    return d


def map_from_openmm(flat, size: int | None = None) -> np.ndarray:
    """OpenMM's flat map (size*size,), ``flat[i + size*j]``, -> grid (size, size) indexed
    [phi, psi]; kJ/mol."""
    flat = np.asarray(flat, dtype=float).ravel()
    size = round(np.sqrt(flat.size)) if size is None else int(size)
    if size * size != flat.size:
        raise ValueError(f"a CMAP map of {flat.size} values is not a square grid of size {size}")
    return flat.reshape(size, size).T.copy()


def map_to_openmm(grid) -> list[float]:
    """Grid (size, size) indexed [phi, psi] -> OpenMM's flat list ``flat[i + size*j]`` (for
    ``CMAPTorsionForce.setMapParameters``); kJ/mol."""
    g = np.asarray(grid, dtype=float)
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"a CMAP grid must be square (size, size), got shape {g.shape}")
    return [float(x) for x in g.T.ravel()]


def _hermite(t: Array) -> Array:
    """Cubic Hermite basis on [0, 1] at t (M,) -> (M, 2, 2): [[value at 0, value at 1],
    [slope at 0, slope at 1]] weights."""
    t2 = t * t
    t3 = t2 * t
    values = jnp.stack([2.0 * t3 - 3.0 * t2 + 1.0, 3.0 * t2 - 2.0 * t3], -1)
    slopes = jnp.stack([t3 - 2.0 * t2 + t, t3 - t2], -1)
    return jnp.stack([values, slopes], -2)


@dataclass(frozen=True, eq=False)
class CMAPTorsion(BondedTerm):
    """CMAP torsion-torsion corrections over M instances.

    indices: (M, 8) atoms, structural: the phi quadruple a1..a4 then the psi quadruple b1..b4
    (OpenMM's ``addTorsion`` order; for a backbone, b1..b4 = a2..a4 plus the next N).
    types: (M,) the map of each instance (default: one map per instance); type_names: a name
    per map. Parameters: ``energy`` (n_maps, size, size) kJ/mol, indexed [map, phi node, psi
    node] (see the module docstring for the grid). ``periodic``: measure both dihedrals with
    the minimum image (OpenMM's ``usesPeriodicBoundaryConditions``).
    ``constants["openmm_map"]`` (optional): the OpenMM map index of each type.
    """

    arity: ClassVar[int] = 8
    param_names: ClassVar[tuple[str, ...]] = ("energy",)
    units: ClassVar[Mapping[str, str]] = {"energy": "kJ/mol"}

    def init_params(self, energy) -> dict[str, Array]:
        """``{"energy": (n_maps, size, size)}`` from grids indexed [map, phi, psi] (kJ/mol); a
        single (size, size) grid is used for every map."""
        e = np.asarray(energy, dtype=float)
        if e.ndim == 2:
            e = np.broadcast_to(e, (self.n_types, *e.shape))
        if e.ndim != 3 or e.shape[0] != self.n_types or e.shape[1] != e.shape[2] or \
                e.shape[1] < 2:
            raise ValueError(f"CMAPTorsion energy must have shape (n_maps={self.n_types}, size, "
                             f"size) with size >= 2, got {np.shape(energy)}")
        if not np.all(np.isfinite(e)):
            raise ValueError("CMAPTorsion energy grid contains NaN or infinite values")
        return {"energy": jnp.asarray(e, dtype=jnp.result_type(float))}

    def torsion_angles(self, positions: Array, box=None) -> tuple[Array, Array]:
        """(phi, psi), (M,) each, rad in (-pi, pi]."""
        p = self._points(positions, box)
        return dihedral_angles(*p[:4]), dihedral_angles(*p[4:])

    def node_derivatives(self, grid: Array) -> tuple[Array, Array, Array]:
        """dE/dphi, dE/dpsi, d2E/dphi dpsi (per rad) at the nodes of grids (..., size, size),
        from OpenMM's periodic splines; linear in ``grid``."""
        d = jnp.asarray(periodic_spline_derivative_matrix(grid.shape[-1]), grid.dtype)
        d_phi = jnp.einsum("ik,...kj->...ij", d, grid)
        d_psi = jnp.einsum("jk,...ik->...ij", d, grid)
        d_cross = jnp.einsum("ik,...kj->...ij", d, d_psi)
        return d_phi, d_psi, d_cross

    def instance_energies(self, positions, params, box=None):
        grid = params["energy"]
        if grid.ndim != 3 or grid.shape[0] != self.n_types or grid.shape[1] != grid.shape[2]:
            raise ValueError(f"CMAPTorsion params['energy'] must have shape ({self.n_types}, "
                             f"size, size), got {grid.shape}")
        size = grid.shape[-1]
        h = _TWO_PI / size
        d_phi, d_psi, d_cross = self.node_derivatives(grid)
        # Per node a 2 x 2 block [[E, h dE/dpsi], [h dE/dphi, h^2 d2E/dphi dpsi]]: the values and
        # slopes (per cell width) of the Hermite patches meeting there.
        nodes = jnp.stack([jnp.stack([grid, h * d_psi], -1),
                           jnp.stack([h * d_phi, h * h * d_cross], -1)], -2)
        phi, psi = self.torsion_angles(positions, box)
        u = jnp.mod(phi, _TWO_PI) / h
        v = jnp.mod(psi, _TWO_PI) / h
        i0 = jnp.clip(jnp.floor(u), 0, size - 1).astype(jnp.int32)
        j0 = jnp.clip(jnp.floor(v), 0, size - 1).astype(jnp.int32)
        i = jnp.stack([i0, (i0 + 1) % size], 1)
        j = jnp.stack([j0, (j0 + 1) % size], 1)
        m = jnp.asarray(self.types)[:, None, None]
        # corners[M, a, b, du, dv]: node (i_a, j_b), derivative order du in phi, dv in psi.
        corners = nodes.reshape(-1, 2, 2)[(m * size + i[:, :, None]) * size + j[:, None, :]]
        bu = _hermite(u - i0.astype(u.dtype))  # (M, du, a)
        bv = _hermite(v - j0.astype(v.dtype))  # (M, dv, b)
        return jnp.einsum("mabuv,mua,mvb->m", corners, bu, bv)
