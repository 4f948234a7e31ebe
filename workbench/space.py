"""Boundary conditions: how two positions turn into a displacement.

A :class:`Space` is a small pytree that potentials, neighbor lists and integrators use without
looking inside: ``displacement(ri, rj)`` gives the minimum-image vector ``ri - rj`` and
``wrap(r)`` maps positions back into the primary cell. Three kinds exist:

* :func:`free` - no boundaries (clusters, molecules in vacuum);
* :func:`periodic` - orthorhombic box with edge lengths ``(Lx, Ly, Lz)``;
* :func:`triclinic` - general box given by its three edge vectors as the rows of a (3, 3) matrix
  in OpenMM's reduced form (``a`` along x, ``b`` in the xy plane).

The box lengths are pytree leaves (numeric). The kind is static (structural).
Units: nm in molecular units, sigma in reduced units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["Space", "free", "periodic", "triclinic"]


def _along_last(v: Array, like: Array) -> Array:
    """A per-axis vector ``v`` (3,) shaped (1, ..., 1, 3) to broadcast against ``like``
    (..., 3) explicitly, not by implicit rank promotion."""
    return jnp.reshape(v, (1,) * (jnp.ndim(like) - 1) + (-1,))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Space:
    """Boundary conditions. Build with :func:`free`, :func:`periodic` or :func:`triclinic`.

    ``box``: (3, 3) matrix whose rows are the box vectors (nm); zeros for free space.
    ``kind``: ``"free"``, ``"periodic"`` or ``"triclinic"`` (static).
    """

    box: Array
    kind: str = field(metadata=dict(static=True), default="free")

    # ------------------------------------------------------------------ geometry
    @property
    def periodic(self) -> bool:
        return self.kind != "free"

    @property
    def lengths(self) -> Array:
        """Diagonal of the box matrix, (3,) nm."""
        return jnp.diagonal(self.box)

    @property
    def volume(self) -> Array:
        """Box volume (nm^3). Infinite for free space."""
        if not self.periodic:
            return jnp.asarray(jnp.inf)
        return box_volume(self.box)

    def perpendicular_widths(self) -> np.ndarray:
        """Distances between opposite faces, (3,) nm, computed on the host (for validation)."""
        box = np.asarray(self.box, dtype=np.float64)
        if not self.periodic:
            return np.full(3, np.inf)
        if self.kind == "periodic":
            return np.diag(box).copy()
        vol = abs(np.linalg.det(box))
        a, b, c = box
        return np.array(
            [
                vol / np.linalg.norm(np.cross(b, c)),
                vol / np.linalg.norm(np.cross(c, a)),
                vol / np.linalg.norm(np.cross(a, b)),
            ]
        )

    def to_fractional(self, r: Array) -> Array:
        """Cartesian (..., 3) nm -> fractional coordinates (..., 3)."""
        if self.kind == "periodic":
            return r / _along_last(self.lengths, r)
        return r @ jnp.linalg.inv(self.box)

    def from_fractional(self, s: Array) -> Array:
        """Fractional (..., 3) -> Cartesian (..., 3) nm."""
        if self.kind == "periodic":
            return s * _along_last(self.lengths, s)
        return s @ self.box

    def with_box(self, box: Array | None) -> "Space":
        """The same kind of space with box matrix ``box`` (3, 3) nm (rows a, b, c); ``None``
        keeps this one. Energy terms call this with the box of the state (which a barostat may
        change), so the box given at construction is only a default."""
        if box is None or self.kind == "free":
            return self
        return Space(box=jnp.asarray(box), kind=self.kind)

    # ------------------------------------------------------------------ maps
    def displacement(self, ri: Array, rj: Array) -> Array:
        """Minimum-image displacement ``ri - rj``, (..., 3) nm.

        For triclinic boxes this is exact when the interaction range is below half the smallest
        perpendicular width of a reduced box, which the neighbor list and pair terms check.
        """
        d = ri - rj
        if self.kind == "free":
            return d
        if self.kind == "periodic":
            lengths = _along_last(self.lengths, d)
            return d - lengths * jnp.round(d / lengths)
        # OpenMM's reduced-box rule: remove c, then b, then a; exact for distances below half
        # the smallest perpendicular width (checked by check_cutoff).
        a, b, c = (_along_last(self.box[k], d) for k in range(3))
        d = d - c * jnp.round(d[..., 2:3] / c[..., 2:3])
        d = d - b * jnp.round(d[..., 1:2] / b[..., 1:2])
        return d - a * jnp.round(d[..., 0:1] / a[..., 0:1])

    def displacement_components(self, dx: Array, dy: Array, dz: Array):
        """Minimum image of a displacement given as three separate component arrays (any equal
        shapes, nm). The same rule as :meth:`displacement`, in the structure-of-arrays form the
        pair kernels use (gathering x, y, z separately is much faster under XLA on CPU). NumPy
        inputs give NumPy outputs (host-side list builds)."""
        if self.kind == "free":
            return dx, dy, dz
        host = all(isinstance(a, np.ndarray) for a in (dx, dy, dz))
        xp, b = (np, np.asarray(self.box, dtype=np.float64)) if host else (jnp, self.box)
        if self.kind == "periodic":
            lx, ly, lz = b[0, 0], b[1, 1], b[2, 2]
            return (dx - lx * xp.round(dx / lx), dy - ly * xp.round(dy / ly),
                    dz - lz * xp.round(dz / lz))
        nc = xp.round(dz / b[2, 2])
        dx, dy, dz = dx - nc * b[2, 0], dy - nc * b[2, 1], dz - nc * b[2, 2]
        nb = xp.round(dy / b[1, 1])
        dx, dy = dx - nb * b[1, 0], dy - nb * b[1, 1]
        return dx - xp.round(dx / b[0, 0]) * b[0, 0], dy, dz

    def wrap(self, r: Array) -> Array:
        """Map positions (..., 3) nm into the primary cell [0, box)."""
        if self.kind == "free":
            return r
        s = self.to_fractional(r)
        return self.from_fractional(s - jnp.floor(s))

    def shift(self, r: Array, dr: Array) -> Array:
        """Move positions by ``dr``. Positions are not wrapped (unwrapped coordinates keep
        diffusion and trajectories continuous); wrap explicitly when needed."""
        return r + dr

    def check_cutoff(self, cutoff: float, what: str = "cutoff") -> None:
        """Raise if ``cutoff`` exceeds half the smallest perpendicular box width."""
        if not self.periodic:
            return
        half = 0.5 * float(np.min(self.perpendicular_widths()))
        if cutoff > half * (1.0 + 1e-12):
            raise ValueError(
                f"{what} {cutoff:g} is longer than half the box ({half:g}): the minimum-image "
                f"convention would miss or double-count pairs. Use a larger box (more particles "
                f"or lower density) or a shorter {what}."
            )


def box_volume(box) -> Array:
    """Volume (nm^3) of box vectors ``box`` (..., 3, 3) (rows): |det box|. The one formula for
    every volume in the package (pressures, densities, barostat moves, g(r) normalization)."""
    return jnp.abs(jnp.linalg.det(box))


def free(dimension: int = 3) -> Space:
    """Space without boundaries."""
    if dimension != 3:
        raise ValueError(f"only 3-dimensional spaces are supported, got dimension={dimension}")
    return Space(box=jnp.zeros((3, 3)), kind="free")


def periodic(lengths) -> Space:
    """Orthorhombic periodic box. ``lengths``: scalar or (3,) edge lengths (nm)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    if lengths.shape not in ((), (3,)):
        raise ValueError(
            f"box lengths must be a scalar or 3 edge lengths (Lx, Ly, Lz), got shape "
            f"{lengths.shape}; for a triclinic box use triclinic(box_vectors)"
        )
    lengths = np.broadcast_to(lengths, (3,))
    if not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
        raise ValueError(f"box lengths must be finite and positive, got {lengths.tolist()}")
    return Space(box=jnp.asarray(np.diag(lengths)), kind="periodic")


def triclinic(box_vectors) -> Space:
    """Triclinic periodic box. ``box_vectors``: (3, 3) rows a, b, c (nm), in reduced form
    (a = (ax, 0, 0), b = (bx, by, 0), c = (cx, cy, cz), |bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2),
    as OpenMM requires."""
    box = np.asarray(box_vectors, dtype=np.float64)
    if box.shape != (3, 3):
        raise ValueError(f"box_vectors must have shape (3, 3) (rows a, b, c), got {box.shape}")
    if not np.all(np.isfinite(box)):
        raise ValueError("box_vectors contain non-finite values")
    if abs(box[0, 1]) + abs(box[0, 2]) + abs(box[1, 2]) > 0:
        raise ValueError(
            "box_vectors must be lower-triangular (a along x, b in the xy plane), as in OpenMM; "
            f"got a={box[0].tolist()}, b={box[1].tolist()}"
        )
    if np.any(np.diag(box) <= 0):
        raise ValueError(f"box diagonal must be positive, got {np.diag(box).tolist()}")
    ax, by = box[0, 0], box[1, 1]
    tol = 1e-9 * ax
    if abs(box[1, 0]) > ax / 2 + tol or abs(box[2, 0]) > ax / 2 + tol or abs(box[2, 1]) > by / 2 + tol:
        raise ValueError(
            "box_vectors are not in reduced form (need |bx| <= ax/2, |cx| <= ax/2, |cy| <= by/2); "
            "reduce them first, e.g. with openmm.app.internal.unitcell.reducePeriodicBoxVectors"
        )
    return Space(box=jnp.asarray(box), kind="triclinic")
