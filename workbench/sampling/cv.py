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

Atom indices are checked where they are given: they must be non-negative integers (a float is
a TypeError), distinct where a repeat is meaningless (the two atoms of a distance, an RMSD
selection), and, since JAX clamps an out-of-range index to the last atom instead of failing,
inside the system: :meth:`CV.check` (``n_atoms``) raises :class:`AtomIndexError`, and every CV
runs it on the (static) shape of the positions it is called with, so a CV never silently
reads another atom, under ``jit`` too. The samplers call :func:`check` when they meet the
first positions.
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

__all__ = ["CV", "AtomIndexError", "Position", "Distance", "Angle", "Dihedral", "RMSD",
           "Gyration", "Coordination", "Function", "values", "wrap", "periods", "check",
           "backbone_torsions"]


class AtomIndexError(IndexError, ValueError):
    """A CV's atom index is negative, repeated where a repeat is meaningless, or outside the
    system (>= n_atoms). An IndexError and a ValueError both."""


class CV:
    """Base of collective variables: ``__call__(positions, box=None) -> ()``.

    :meth:`atom_indices` lists the atoms a CV reads (by field); :meth:`check` raises
    :class:`AtomIndexError` when one is outside a system of ``n_atoms`` atoms."""

    name: str = "cv"
    unit: str = ""
    period: float | None = None

    def __call__(self, positions: Array, box: Array | None = None) -> Array:
        raise NotImplementedError

    def atom_indices(self) -> dict[str, np.ndarray]:
        """{field name: (M,) int atom indices} of the atoms this CV reads (empty if unknown)."""
        return {}

    def check(self, n_atoms: int) -> "CV":
        """Raise :class:`AtomIndexError` if an atom index is >= ``n_atoms`` (the system's atom
        count); returns the CV. Host side (cheap: one comparison after the first call)."""
        n = _count(n_atoms)
        top = self.__dict__.get("_top")
        if top is None:  # the largest index, computed once
            top = max((int(a.max()) for a in self.atom_indices().values() if a.size), default=-1)
            object.__setattr__(self, "_top", top)
        if top < n:
            return self
        for field_name, a in self.atom_indices().items():
            bad = a[a >= n]
            if bad.size:
                raise AtomIndexError(
                    f"{type(self).__name__} CV {self.name!r}: atom index {int(bad[0])} "
                    f"({field_name}) is out of range for a system of {n} atoms (indices 0.."
                    f"{n - 1}); fix the CV's atom indices or the positions passed")
        return self  # pragma: no cover - top >= n implies a bad index above

    def _checked(self, positions) -> None:
        """Positions must be (N, 3) with every atom index < N (shapes are static: works
        under jit and vmap)."""
        shape = jnp.shape(positions)
        if len(shape) != 2 or shape[1] != 3:
            raise ValueError(f"{type(self).__name__} CV {self.name!r}: positions must be (N, 3) "
                             f"nm, got shape {shape}")
        self.check(shape[0])


def _count(n_atoms) -> int:
    """A non-negative integer atom count."""
    a = np.asarray(n_atoms)
    if a.ndim != 0 or a.dtype.kind not in "iu" or int(a) < 0:
        raise TypeError(f"n_atoms must be a non-negative integer, got {n_atoms!r}")
    return int(a)


def _index(value, what: str) -> int:
    """One atom index: a non-negative integer (Python or NumPy; not a float or bool)."""
    a = np.asarray(value)
    if a.ndim != 0 or a.dtype.kind not in "iu":
        raise TypeError(f"{what} must be an integer atom index, got {value!r} "
                        f"({type(value).__name__})")
    if int(a) < 0:
        raise AtomIndexError(f"{what} must be a non-negative atom index, got {int(a)} "
                             "(negative indices are not counted from the end)")
    return int(a)


def _atoms(indices, what: str) -> np.ndarray:
    """(M,) distinct non-negative integer atom indices, not empty."""
    a = np.asarray(indices)
    if a.size == 0:
        raise AtomIndexError(f"{what}: atom indices must be non-negative and not empty, "
                             f"got {indices!r}")
    if a.ndim > 1 or a.dtype.kind not in "iu":
        raise TypeError(f"{what}: atom indices must be a 1-D sequence of integers, got "
                        f"{indices!r} (dtype {a.dtype}, shape {a.shape})")
    a = a.astype(np.int64).reshape(-1)
    if a.min() < 0:
        raise AtomIndexError(f"{what}: atom indices must be non-negative, got {a[a < 0][:5]} "
                             "(negative indices are not counted from the end)")
    uniq, counts = np.unique(a, return_counts=True)
    if np.any(counts > 1):
        raise AtomIndexError(f"{what}: atom {int(uniq[counts > 1][0])} is listed twice; list "
                             "each atom once")
    return a


def _distinct(cv: CV, names: str) -> None:
    """Validate the integer index fields ``names`` of ``cv`` (stored back as ints) and that
    they are different atoms."""
    seen: dict[int, str] = {}
    for n in names:
        i = _index(getattr(cv, n), f"{type(cv).__name__} {n}")
        if i in seen:
            raise AtomIndexError(f"{type(cv).__name__}: {seen[i]} and {n} are the same atom "
                                 f"({i}); the CV needs {len(names)} different atoms")
        seen[i] = n
        object.__setattr__(cv, n, i)


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
        object.__setattr__(self, "atom", _index(self.atom, "Position atom"))
        axis = np.asarray(self.axis)
        if axis.ndim != 0 or axis.dtype.kind not in "iu" or int(axis) not in (0, 1, 2):
            raise ValueError(f"Position axis must be 0, 1 or 2 (an integer), got {self.axis!r}")
        object.__setattr__(self, "axis", int(axis))

    def atom_indices(self):
        return {"atom": np.array([self.atom])}

    def __call__(self, positions, box=None):
        self._checked(positions)
        return positions[self.atom, self.axis]


@dataclass(frozen=True, eq=False)
class Distance(CV):
    """Distance between atoms i and j (nm), minimum image in a periodic ``space``."""

    i: int
    j: int
    space: Space | None = None
    name: str = "distance"
    unit: str = "nm"

    def __post_init__(self):
        _distinct(self, ("i", "j"))

    def atom_indices(self):
        return {"i": np.array([self.i]), "j": np.array([self.j])}

    def __call__(self, positions, box=None):
        self._checked(positions)
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

    def __post_init__(self):
        _distinct(self, ("i", "j", "k"))

    def atom_indices(self):
        return {n: np.array([getattr(self, n)]) for n in ("i", "j", "k")}

    def __call__(self, positions, box=None):
        self._checked(positions)
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

    def __post_init__(self):
        _distinct(self, ("i", "j", "k", "l"))

    def atom_indices(self):
        return {n: np.array([getattr(self, n)]) for n in ("i", "j", "k", "l")}

    def __call__(self, positions, box=None):
        self._checked(positions)
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
        if not np.all(np.isfinite(ref)):
            raise ValueError("RMSD reference contains non-finite coordinates (NaN or inf)")
        atoms = np.arange(ref.shape[0]) if self.atoms is None else _atoms(self.atoms,
                                                                          "RMSD atoms")
        if ref.shape[0] != atoms.size:
            if ref.shape[0] <= atoms.max():
                raise ValueError(f"RMSD reference has {ref.shape[0]} rows; it needs one per atom "
                                 f"({atoms.size}) or one per atom of the system")
            ref = ref[atoms]
        w = np.ones(atoms.size) if self.weights is None else np.asarray(self.weights, float)
        if w.shape != (atoms.size,) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or w.sum() <= 0:
            raise ValueError(f"RMSD weights must be {atoms.size} finite non-negative numbers, "
                             f"not all 0; got {np.asarray(self.weights)!r}")
        object.__setattr__(self, "reference", ref)
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "weights", w / w.sum())

    def atom_indices(self):
        return {"atoms": self.atoms}

    def __call__(self, positions, box=None):
        self._checked(positions)
        w = jnp.asarray(self.weights, positions.dtype)
        x = positions[self.atoms]
        y = jnp.asarray(self.reference, positions.dtype)
        x = x - jnp.sum(w[:, None] * x, 0, keepdims=True)
        y = y - jnp.sum(w[:, None] * y, 0, keepdims=True)
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
        atoms = _atoms(self.atoms, "Gyration atoms")
        m = np.ones(atoms.size) if self.masses is None else np.asarray(self.masses, float)
        if m.ndim != 1 or (m.shape[0] != atoms.size and m.shape[0] <= atoms.max()):
            raise ValueError(f"Gyration masses must have shape ({atoms.size},) (one per atom) "
                             f"or (N,) for the whole system, got {m.shape}")
        if m.shape[0] != atoms.size:
            m = m[atoms]
        if not np.all(np.isfinite(m) & (m > 0)):
            raise ValueError(f"Gyration masses must be positive and finite (amu), got {m}")
        object.__setattr__(self, "atoms", atoms)
        object.__setattr__(self, "masses", m / m.sum())

    def atom_indices(self):
        return {"atoms": self.atoms}

    def __call__(self, positions, box=None):
        self._checked(positions)
        w = jnp.asarray(self.masses, positions.dtype)
        x = positions[self.atoms]
        d = x - jnp.sum(w[:, None] * x, 0, keepdims=True)
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
        r0 = np.asarray(self.r0)
        if r0.ndim != 0 or r0.dtype.kind not in "iuf" or not (np.isfinite(r0) and r0 > 0):
            raise ValueError(f"Coordination needs a finite r0 > 0 (nm), got r0={self.r0!r}")
        for k in ("n", "m"):
            v = np.asarray(getattr(self, k))
            if v.ndim != 0 or v.dtype.kind not in "iu":
                raise TypeError(f"Coordination exponent {k} must be an integer, got "
                                f"{getattr(self, k)!r}")
        if not (0 < self.n < self.m):
            raise ValueError(f"Coordination needs r0 > 0 and 0 < n < m, got r0={self.r0}, "
                             f"n={self.n}, m={self.m}")
        a = _atoms(self.group_a, "Coordination group_a")
        b = _atoms(self.group_b, "Coordination group_b")
        ia, ib = np.meshgrid(a, b, indexing="ij")
        keep = ia != ib
        if not keep.any():
            raise AtomIndexError(f"Coordination group_a {a.tolist()} and group_b {b.tolist()} "
                                 "have no pair of different atoms")
        object.__setattr__(self, "r0", float(r0))
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "m", int(self.m))
        object.__setattr__(self, "group_a", a)
        object.__setattr__(self, "group_b", b)
        object.__setattr__(self, "_pairs", (ia[keep], ib[keep]))

    def atom_indices(self):
        return {"group_a": self.group_a, "group_b": self.group_b}

    def __call__(self, positions, box=None):
        self._checked(positions)
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
    """Any differentiable ``fn(positions, box) -> ()`` as a CV (box may be None). ``atoms``:
    optionally, the atoms ``fn`` reads, so that :meth:`check` can test them (without it the
    function's indices cannot be checked)."""

    fn: Callable[[Array, Array | None], Array]
    name: str = "custom"
    unit: str = ""
    period: float | None = None
    atoms: Sequence[int] | None = None

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Function CV needs a callable fn(positions, box), got {self.fn!r}")
        if self.period is not None and not (np.isfinite(self.period) and self.period > 0):
            raise ValueError(f"Function CV period must be None or finite and > 0, got "
                             f"{self.period!r}")
        if self.atoms is not None:
            object.__setattr__(self, "atoms", _atoms(self.atoms, "Function atoms"))

    def atom_indices(self):
        return {} if self.atoms is None else {"atoms": self.atoms}

    def __call__(self, positions, box=None):
        if self.atoms is not None:
            self._checked(positions)
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


def check(cvs: Sequence[CV] | CV, n_atoms: int) -> tuple[CV, ...]:
    """Every CV's atom indices against a system of ``n_atoms`` atoms (:meth:`CV.check`):
    :class:`AtomIndexError` naming the CV and the index otherwise. Returns the CVs as a
    tuple."""
    cvs = _check_cvs(cvs)
    for c in cvs:
        c.check(n_atoms)
    return cvs


def _check_cvs(cvs) -> tuple[CV, ...]:
    cvs = tuple(cvs) if isinstance(cvs, (list, tuple)) else (cvs,)
    bad = [type(c).__name__ for c in cvs if not isinstance(c, CV)]
    if bad or not cvs:
        raise TypeError("expected one or more CV objects (workbench.sampling.cv), got "
                        f"{bad or cvs}")
    return cvs

