"""The :class:`System`: everything a simulation needs besides its dynamical state, in one object.

A system is a potential with its parameters, the masses, constraints, topology, box and start
positions, and the unit system they are written in. Every driver (``Simulation``, ``Session``,
``gradient``, ``fit``) reads all of these from one ``System``, so that none can be half-passed
(constraints forgotten, masses left at 1 amu); a driver that is given one piece explicitly uses
it in place of the system's, and says so when it contradicts the system.

Systems are immutable: :meth:`System.replace` returns a copy with some pieces changed
(``system.replace(params=fitted)``). They save and load as one ``.npz`` file
(:func:`save` / :func:`load`, format described in :data:`FILE_FORMAT`; never pickle).

Units: ``units="molecular"`` (nm, ps, amu, kJ/mol, e, K; OpenMM's) or ``"reduced"``
(Lennard-Jones sigma, epsilon, m, tau). :func:`check_settings` warns or refuses numbers that are
likely unit mistakes in molecular units (kT given in kelvin, dt in fs).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import space as spaces
from . import units as wunits

__all__ = ["System", "UnitWarning", "UNIT_SYSTEMS", "check_settings", "unpack", "FILE_FORMAT",
           "KT_LIMIT_MOLECULAR", "DT_LIMIT_MOLECULAR"]

UNIT_SYSTEMS = ("molecular", "reduced")

KT_LIMIT_MOLECULAR = 100.0
"""kJ/mol: a kT above this (12,000 K) in molecular units is refused as a likely kelvin value."""

DT_LIMIT_MOLECULAR = 0.01
"""ps: a time step above this (10 fs) in molecular units gets a :class:`UnitWarning`."""

FILE_FORMAT = """A workbench system file is one ``.npz`` archive (numpy's zip of ``.npy`` arrays):

* ``__meta__``: UTF-8 JSON as uint8 bytes: ``{"format": "workbench-system", "version": 1,
  "kind": "pair" | "forcefield", "units", "name", "element", "params": [leaf names in
  flattening order], "potential": {how to rebuild it}, "space": "free" | "periodic" |
  "triclinic"}``;
* ``positions`` (N, 3) nm, ``masses`` (N,) amu, ``box`` (3, 3) nm (zeros in free space);
* ``param:<leaf name>``: each parameter leaf (names as :mod:`workbench.naming` gives them);
* for ``kind="forcefield"``: ``openmm_xml`` (the imported OpenMM System, serialized by
  ``openmm.XmlSerializer``, as uint8 bytes) and ``topology_pdb`` (the topology as PDB text);
  the potential's ``forcefield_files`` (when known) regroup parameters by force-field type;
* for ``kind="pair"``: the :class:`~workbench.potentials.pair.PairPotential` arguments and
  ``types`` (N,) when it has several particle types.
"""


class UnitWarning(UserWarning):
    """A number that is probably in the wrong unit (see :func:`check_settings`)."""


@dataclass(frozen=True, eq=False)
class System:
    """A simulation's system.

    potential: energy model (an :class:`~workbench.potentials.base.EnergyTerm` or ``Sum``);
    params: its parameter pytree; positions: (N, 3) nm start structure; masses: (N,) amu or a
    scalar (None: 1 for every atom, recorded in :attr:`masses_defaulted`); space: boundary
    conditions (default: the potential's); topology: ``mdtraj.Topology`` or
    ``openmm.app.Topology`` or None; constraint_set: a
    :class:`~workbench.dynamics.constraints.Constraints` or None (read it through
    :meth:`constraints`); units: ``"molecular"`` or ``"reduced"``; element, name: for the
    placeholder topology of systems without one.
    """

    potential: Any
    params: Any
    positions: np.ndarray
    masses: Any = None
    space: spaces.Space | None = None
    topology: Any = None
    constraint_set: Any = None
    units: str = "molecular"
    element: str = "Ar"
    name: str = "system"
    masses_defaulted: bool = field(default=False, repr=False)

    def __post_init__(self):
        pos = np.asarray(self.positions, dtype=float)
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] < 1:
            raise ValueError(f"System positions must have shape (N, 3) nm, got {pos.shape}")
        if not np.all(np.isfinite(pos)):
            bad = np.nonzero(~np.all(np.isfinite(pos), axis=1))[0][:10].tolist()
            raise ValueError(f"System positions contain NaN or infinite values (atoms {bad})")
        object.__setattr__(self, "positions", pos)
        n = pos.shape[0]
        if self.masses is None:
            object.__setattr__(self, "masses", np.ones(n))
            object.__setattr__(self, "masses_defaulted", True)
        else:
            m = np.asarray(self.masses, dtype=float)
            if m.ndim == 0:
                m = np.full(n, float(m))
            if m.shape != (n,):
                raise ValueError(f"System masses must be a scalar or shape ({n},) amu, got "
                                 f"{m.shape}")
            if not np.all(np.isfinite(m) & (m > 0)):
                bad = np.nonzero(~(np.isfinite(m) & (m > 0)))[0][:10].tolist()
                raise ValueError(f"System masses must be positive and finite (amu); atoms {bad} "
                                 "are not (virtual sites are not supported)")
            object.__setattr__(self, "masses", m)
        if self.space is None:
            sp = getattr(self.potential, "space", None)
            if sp is None:
                raise ValueError("System needs a space: the potential has none; pass "
                                 "space=workbench.space.free() or periodic(L)")
            object.__setattr__(self, "space", sp)
        if self.units not in UNIT_SYSTEMS:
            raise ValueError(f"System units must be one of {UNIT_SYSTEMS}, got {self.units!r}")

    # ------------------------------------------------------------------ views
    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def box(self) -> np.ndarray | None:
        """(3, 3) nm box vectors (rows), or None in free space."""
        return np.asarray(self.space.box, dtype=float) if self.space.periodic else None

    def constraints(self):
        """Distance constraints as a :class:`~workbench.dynamics.constraints.Constraints`, or
        None when the system has none."""
        return self.constraint_set

    def mdtraj_topology(self):
        """The topology as an ``mdtraj.Topology``: the system's own (converted from OpenMM's
        if needed) or one unbonded atom of :attr:`element` per residue."""
        top = self.topology
        if top is None:
            return placeholder_topology(self.n_atoms, self.element, self.name)
        if hasattr(top, "n_atoms"):  # already mdtraj
            return top
        import mdtraj as md

        return md.Topology.from_openmm(top)

    def replace(self, **changes) -> "System":
        """A copy with some pieces replaced, e.g. ``system.replace(params=fitted)``."""
        return replace(self, **changes)

    def energy(self, positions=None, params=None) -> float:
        """Potential energy (kJ/mol or epsilon) at ``positions`` (default: the start
        structure) with ``params`` (default: the system's)."""
        import jax.numpy as jnp

        r = self.positions if positions is None else np.asarray(positions, float)
        aux = self.potential.allocate(r)
        p = self.params if params is None else params
        return float(self.potential.energy(jnp.asarray(r), p, aux, jnp.asarray(self.space.box)))

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> None:
        """Write the system to ``path`` (.npz, format :data:`FILE_FORMAT`); atomic (a temporary
        file renamed into place)."""
        from .system_file import save

        save(self, path)

    @staticmethod
    def load(path: str) -> "System":
        """Read a system written by :meth:`save`."""
        from .system_file import load

        return load(path)

    def write_pdb(self, path: str, positions=None) -> None:
        """Write ``positions`` (N, 3) nm or (F, N, 3) frames (default: the start structure) to
        a PDB file with this system's topology and box."""
        import mdtraj as md

        xyz = np.asarray(self.positions if positions is None else positions, float)
        if xyz.ndim == 2:
            xyz = xyz[None]
        if xyz.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions have shape {xyz.shape}; this system has "
                             f"{self.n_atoms} atoms: expected (N, 3) or (F, N, 3) nm")
        traj = md.Trajectory(xyz, self.mdtraj_topology())
        if self.box is not None:
            traj.unitcell_vectors = np.broadcast_to(self.box, (len(xyz), 3, 3)).copy()
        traj.save_pdb(path)


def placeholder_topology(n_atoms: int, element: str = "Ar", name: str = "LJ"):
    """An mdtraj.Topology of ``n_atoms`` unbonded atoms, one residue each: what trajectories of
    systems without a molecular topology (fluids, landscapes) are written with."""
    import mdtraj as md

    top = md.Topology()
    chain = top.add_chain()
    el = md.element.get_by_symbol(element)
    for _ in range(n_atoms):
        top.add_atom(name[:4] or "X", el, top.add_residue(name[:4] or "X", chain))
    return top


def check_settings(units: str, settings: dict, *, where: str = "settings") -> None:
    """Refuse or warn about likely unit mistakes in integrator ``settings`` (a dict of numbers)
    for a system in ``units``. Molecular units: kT above :data:`KT_LIMIT_MOLECULAR` kJ/mol
    raises ValueError (a temperature in kelvin was probably given: kT = k_B T, e.g.
    ``workbench.units.kT_from_kelvin(300)`` = 2.494 kJ/mol); dt above
    :data:`DT_LIMIT_MOLECULAR` ps warns (:class:`UnitWarning`; dt is in ps: 2 fs = 0.002)."""
    for k, v in settings.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not np.isfinite(x):
            raise ValueError(f"{where}: {k}={v} is not a finite number")
    if units != "molecular":
        return
    kT = settings.get("kT")
    if kT is not None and float(kT) > KT_LIMIT_MOLECULAR:
        t = float(kT)
        raise ValueError(
            f"{where}: kT={t:g} kJ/mol is {wunits.kelvin_from_kT(t):,.0f} K. kT is an energy in "
            f"kJ/mol, not a temperature: for {t:g} K pass kT=workbench.units.kT_from_kelvin("
            f"{t:g}) = {wunits.kT_from_kelvin(t):.4g} kJ/mol (or build the system with "
            "units='reduced' for Lennard-Jones units)")
    dt = settings.get("dt")
    if dt is not None and float(dt) > DT_LIMIT_MOLECULAR:
        warnings.warn(
            f"{where}: dt={float(dt):g} ps is {float(dt) * 1000:g} fs, longer than molecular "
            f"dynamics can integrate (usually 0.5-4 fs): dt is in ps, so 2 fs is dt=0.002",
            UnitWarning, stacklevel=3)


def unpack(model, constraints=None):
    """(potential, constraints) from a :class:`System` or a bare potential: what integrator and
    sampler factories accept as their first argument. A system brings its own constraints
    unless ``constraints`` is given."""
    if isinstance(model, System):
        return model.potential, (model.constraints() if constraints is None else constraints)
    return model, constraints
