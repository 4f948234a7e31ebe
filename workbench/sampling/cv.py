"""Collective variables: differentiable functions of positions (and box) that sampling methods
bias and free energies are written in.

Every CV is a frozen dataclass, called as ``cv(positions, box=None) -> ()`` (positions (N, 3)
nm; box (3, 3) nm rows, or None for the construction-time box of ``space``). Gradients come
from autodiff, so any CV works under ``jit``, ``grad`` and ``vmap``. Each has ``name`` (PLUMED's
keyword where there is one), ``unit``, and ``period``: None, or the period of a periodic CV
(a dihedral: 2 pi, values in (-pi, pi]), which biases and grids read to wrap differences.

=====================  =======================  ==========================================
class                  PLUMED                   value
=====================  =======================  ==========================================
:class:`Position`      POSITION                 one Cartesian component of an atom (nm)
:class:`Distance`      DISTANCE                 |r_j - r_i| (minimum image) (nm)
:class:`Angle`         ANGLE                    angle i-j-k (rad)
:class:`Dihedral`      TORSION                  dihedral i-j-k-l, IUPAC sign (rad, periodic)
:class:`RMSD`          RMSD TYPE=OPTIMAL        RMSD after optimal superposition (nm)
:class:`Gyration`      GYRATION                 (mass-weighted) radius of gyration (nm)
:class:`Coordination`  COORDINATION             sum of (1 - (r/r0)^n) / (1 - (r/r0)^m)
:class:`Function`      CUSTOM                   any JAX function of (positions, box)
=====================  =======================  ==========================================

:func:`values` evaluates a tuple of CVs as a (d,) vector and :func:`wrap` wraps differences of
periodic CVs into [-period/2, period/2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import space as spaces
from ..space import Space

Array = jax.Array

__all__ = ["CV", "Position", "Distance", "Angle", "Dihedral", "RMSD", "Gyration",
           "Coordination", "Function", "values", "wrap", "periods", "backbone_torsions"]


class CV:
    """Base of collective variables: ``__call__(positions, box=None) -> ()``."""

    name: str = "cv"
    unit: str = ""
    period: float | None = None

    def __call__(self, positions: Array, box: Array | None = None) -> Array:
        raise NotImplementedError


def _atoms(indices, what: str) -> np.ndarray:
    a = np.asarray(indices, dtype=np.int64).reshape(-1)
    if a.size == 0 or a.min() < 0:
        raise ValueError(f"{what}: atom indices must be non-negative and not empty, got {indices}")
    return a


def _space(space: Space | None) -> Space:
    return spaces.free() if space is None else space


def _vector(space: Space, box, a: Array, b: Array) -> Array:
    """Minimum-image vector from a to b (nm)."""
    return space.with_box(box).displacement(b, a)


@dataclass(frozen=True, eq=False)
class Position(CV):
    """Component ``axis`` (0, 1, 2 = x, y, z) of atom ``atom``'s position (nm)."""

    atom: int
    axis: int = 0
    name: str = "position"
    unit: str = "nm"

    def __post_init__(self):
        if self.axis not in (0, 1, 2):
            raise ValueError(f"Position axis must be 0, 1 or 2, got {self.axis}")

    def __call__(self, positions, box=None):
        return positions[self.atom, self.axis]


@dataclass(frozen=True, eq=False)
class Distance(CV):
    """Distance between atoms i and j (nm), minimum image in a periodic ``space``."""

    i: int
    j: int
    space: Space | None = None
    name: str = "distance"
    unit: str = "nm"

    def __call__(self, positions, box=None):
        d = _vector(_space(self.space), box, positions[self.i], positions[self.j])
        return jnp.sqrt(jnp.sum(d * d))


@dataclass(frozen=True, eq=False)
class Angle(CV):
    """Angle i-j-k at atom j (rad, in [0, pi])."""

    i: int
    j: int
    k: int
    space: Space | None = None
    name: str = "angle"
    unit: str = "rad"

    def __call__(self, positions, box=None):
        s = _space(self.space)
        a = _vector(s, box, positions[self.j], positions[self.i])
        b = _vector(s, box, positions[self.j], positions[self.k])
        # atan2 of |a x b| and a.b: accurate (and differentiable) near 0 and pi, unlike arccos
        return jnp.arctan2(jnp.linalg.norm(jnp.cross(a, b)), jnp.dot(a, b))


@dataclass(frozen=True, eq=False)
class Dihedral(CV):
    """Dihedral angle i-j-k-l (rad, in (-pi, pi], IUPAC sign convention as OpenMM and PLUMED's
    TORSION): periodic with period 2 pi."""

    i: int
    j: int
    k: int
    l: int  # noqa: E741
    space: Space | None = None
    name: str = "torsion"
    unit: str = "rad"
    period: float = 2.0 * np.pi

    def __call__(self, positions, box=None):
        s = _space(self.space)
        b1 = _vector(s, box, positions[self.i], positions[self.j])
        b2 = _vector(s, box, positions[self.j], positions[self.k])
        b3 = _vector(s, box, positions[self.k], positions[self.l])
        n1, n2 = jnp.cross(b1, b2), jnp.cross(b2, b3)
        y = jnp.dot(b2 / jnp.linalg.norm(b2), jnp.cross(n1, n2))
        return jnp.arctan2(y, jnp.dot(n1, n2))


def _kabsch_msd(x: Array, y: Array, w: Array) -> Array:
    """Weighted mean squared deviation after optimal rotation (both centred), from the largest
    eigenvalue of Horn's 4x4 quaternion matrix: differentiable (eigenvector of a simple top
    eigenvalue), no reflection, no SVD sign fix-ups."""
    r = (x * w[:, None]).T @ y  # (3, 3) correlation
    sxx, sxy, sxz = r[0, 0], r[0, 1], r[0, 2]
    syx, syy, syz = r[1, 0], r[1, 1], r[1, 2]
    szx, szy, szz = r[2, 0], r[2, 1], r[2, 2]
    k = jnp.array([
        [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
        [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
        [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
        [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
    ])
    lam = jnp.linalg.eigvalsh(k)[-1]
    g = jnp.sum(w * (jnp.sum(x * x, 1) + jnp.sum(y * y, 1)))
    return jnp.maximum(g - 2.0 * lam, 0.0)


@dataclass(frozen=True, eq=False)
class RMSD(CV):
    """RMSD (nm) of ``atoms`` from ``reference`` (N_ref, 3) nm or (len(atoms), 3), after optimal
    translation and rotation (``align=True``, PLUMED TYPE=OPTIMAL) or translation only
    (``align=False``, TYPE=SIMPLE without rotation). ``weights``: per-atom weights (masses);
    default uniform. Positions are used as given (no periodic unwrapping)."""

    reference: np.ndarray
    atoms: Sequence[int] | None = None
    weights: np.ndarray | None = None
    align: bool = True
    name: str = "rmsd"
    unit: str = "nm"

    def __post_init__(self):
        ref = np.asarray(self.reference, dtype=np.float64)
        if ref.ndim != 2 or ref.shape[1] != 3:
            raise ValueError(f"RMSD reference must have shape (N, 3), got {ref.shape}")
        atoms = np.arange(ref.shape[0]) if self.atoms is None else _atoms(self.atoms, "RMSD")
        if ref.shape[0] != atoms.size:
            if ref.shape[0] <= atoms.max():
                raise ValueError(f"RMSD reference has {ref.shape[0]} rows; it needs one per atom "
                                 f"({atoms.size}) or one per atom of the system")
            ref = ref[atoms]
        w = np.ones(atoms.size) if self.weights is None else np.asarray(self.weights, float)
        if w.shape != (atoms.size,) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"RMSD weights must be {atoms.size} non-negative numbers, not all 0")
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "weights", w / w.sum())

    def __call__(self, positions, box=None):
        w = jnp.asarray(self.weights, positions.dtype)
        x = positions[self.atoms]
        y = jnp.asarray(self.reference, positions.dtype)
        x = x - jnp.sum(w[:, None] * x, 0)
        y = y - jnp.sum(w[:, None] * y, 0)
        if self.align:
            msd = _kabsch_msd(x, y, w)
        else:
            msd = jnp.sum(w * jnp.sum((x - y) ** 2, 1))
        # sqrt with a finite derivative at 0 (the reference structure itself)
        return jnp.sqrt(jnp.maximum(msd, jnp.finfo(positions.dtype).tiny))


@dataclass(frozen=True, eq=False)
class Gyration(CV):
    """Radius of gyration (nm) of ``atoms``, mass-weighted when ``masses`` (N,) are given.
    Positions are used as given (make molecules whole first)."""

    atoms: Sequence[int]
    masses: np.ndarray | None = None
    name: str = "gyration"
    unit: str = "nm"

    def __post_init__(self):
        atoms = _atoms(self.atoms, "Gyration")
        m = np.ones(atoms.size) if self.masses is None else np.asarray(self.masses, float)
        if m.shape[0] != atoms.size:
            m = m[atoms]
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "masses", m / m.sum())

    def __call__(self, positions, box=None):
        w = jnp.asarray(self.masses, positions.dtype)
        x = positions[self.atoms]
        d = x - jnp.sum(w[:, None] * x, 0)
        return jnp.sqrt(jnp.sum(w * jnp.sum(d * d, 1)))


@dataclass(frozen=True, eq=False)
class Coordination(CV):
    """Smooth coordination number between ``group_a`` and ``group_b`` (PLUMED COORDINATION):
    sum over pairs (a != b) of s(r) = (1 - (r/r0)^n) / (1 - (r/r0)^m), with s(r0) = n/m.
    r0 in nm. With a periodic ``space``, minimum-image distances."""

    group_a: Sequence[int]
    group_b: Sequence[int]
    r0: float
    n: int = 6
    m: int = 12
    space: Space | None = None
    name: str = "coordination"
    unit: str = ""

    def __post_init__(self):
        if not self.r0 > 0 or not (0 < self.n < self.m):
            raise ValueError(f"Coordination needs r0 > 0 and 0 < n < m, got r0={self.r0}, "
                             f"n={self.n}, m={self.m}")
        a, b = _atoms(self.group_a, "Coordination group_a"), _atoms(self.group_b, "group_b")
        ia, ib = np.meshgrid(a, b, indexing="ij")
        keep = ia != ib
        object.__setattr__(self, "group_a", a)
        object.__setattr__(self, "group_b", b)
        object.__setattr__(self, "_pairs", (ia[keep], ib[keep]))

    def __call__(self, positions, box=None):
        i, j = self._pairs
        d = _space(self.space).with_box(box).displacement(positions[j], positions[i])
        x = jnp.sqrt(jnp.sum(d * d, -1)) / self.r0
        # (1 - x^n) / (1 - x^m) is 0/0 at x = 1: near it use the Taylor expansion about 1
        near = jnp.abs(x - 1.0) < 1e-3
        xs = jnp.where(near, 0.5, x)
        s = (1.0 - xs**self.n) / (1.0 - xs**self.m)
        e = x - 1.0
        n, m = self.n, self.m
        taylor = n / m + e * n * (n - m) / (2.0 * m)
        return jnp.sum(jnp.where(near, taylor, s))


@dataclass(frozen=True, eq=False)
class Function(CV):
    """Any differentiable ``fn(positions, box) -> ()`` as a CV (box may be None)."""

    fn: Callable[[Array, Array | None], Array]
    name: str = "custom"
    unit: str = ""
    period: float | None = None

    def __call__(self, positions, box=None):
        return self.fn(positions, box)


def backbone_torsions(topology, residue: int = 1, space: Space | None = None
                      ) -> tuple[Dihedral, Dihedral]:
    """(phi, psi) of residue number ``residue`` (0-based, in chain order) of an OpenMM or mdtraj
    topology: phi = C(i-1)-N-CA-C, psi = N-CA-C-N(i+1), as ``mdtraj.compute_phi/psi``. For
    alanine dipeptide (ACE-ALA-NME) the alanine is residue 1."""
    residues = list(topology.residues() if callable(getattr(topology, "residues", None))
                    else topology.residues)
    if not 0 < residue < len(residues) - 1:
        raise ValueError(f"residue {residue} needs a residue before and after it; the topology "
                         f"has {len(residues)} residues")

    def atom(res, name):
        atoms = res.atoms() if callable(res.atoms) else res.atoms
        for a in atoms:
            if a.name == name:
                return a.index
        raise ValueError(f"residue {res.name} {residue} has no atom {name!r}")

    prev, res, nxt = residues[residue - 1], residues[residue], residues[residue + 1]
    n, ca, c = atom(res, "N"), atom(res, "CA"), atom(res, "C")
    phi = Dihedral(atom(prev, "C"), n, ca, c, space=space, name="phi")
    psi = Dihedral(n, ca, c, atom(nxt, "N"), space=space, name="psi")
    return phi, psi


def values(cvs: Sequence[CV], positions: Array, box: Array | None = None) -> Array:
    """The CVs at ``positions`` as a (d,) vector."""
    return jnp.stack([jnp.asarray(c(positions, box)) for c in cvs])


def periods(cvs: Sequence[CV]) -> tuple[float | None, ...]:
    """Period of each CV (None where not periodic)."""
    return tuple(c.period for c in cvs)


def wrap(delta: Array, period_list: Sequence[float | None]) -> Array:
    """Differences (..., d) of CV values with periodic components wrapped into
    [-period/2, period/2)."""
    out = []
    for a, p in enumerate(period_list):
        d = delta[..., a]
        out.append(d if p is None else d - p * jnp.floor(d / p + 0.5))
    return jnp.stack(out, -1)


def _check_cvs(cvs) -> tuple[CV, ...]:
    cvs = tuple(cvs) if isinstance(cvs, (list, tuple)) else (cvs,)
    bad = [type(c).__name__ for c in cvs if not isinstance(c, CV)]
    if bad or not cvs:
        raise TypeError("expected one or more CV objects (workbench.sampling.cv), got "
                        f"{bad or cvs}")
    return cvs

