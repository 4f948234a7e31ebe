"""Training data for neural potentials: configurations of one molecule (or one box) with
reference energies and forces, in workbench units (nm, kJ/mol, kJ/mol/nm).

Readers:

* :func:`load`: the workbench's npz (``positions``, ``energies``, ``forces``,
  ``atomic_numbers``, ``meta`` JSON with the units; written by ``tools/make_ml_data.py``), and
  npz files with the MD17/sGDML keys ``R`` (positions), ``E``, ``F`` and ``z``, whose units are
  given (``units=("kcal/mol", "A")``, MD17's, by default);
* :func:`read_extxyz`: extended XYZ through ASE (energies and forces in the units given,
  eV and Angstrom by default, ASE's convention).

Every reader checks what a trainer needs and names what is wrong: missing forces, shapes that
do not match, non-finite values, unknown or mixed units, frames with different atoms.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..units import BOHR_NM, EV_KJ_MOL, HARTREE_KJ_MOL, KCAL

__all__ = ["Dataset", "load", "read_extxyz", "ENERGY_UNITS", "LENGTH_UNITS", "DataError"]

ENERGY_UNITS = {"kJ/mol": 1.0, "kcal/mol": KCAL, "eV": EV_KJ_MOL, "hartree": HARTREE_KJ_MOL,
                "Eh": HARTREE_KJ_MOL}
"""Energy unit -> kJ/mol."""

LENGTH_UNITS = {"nm": 1.0, "A": 0.1, "Angstrom": 0.1, "Å": 0.1, "bohr": BOHR_NM}
"""Length unit -> nm."""


class DataError(ValueError):
    """Training data that cannot be used as it is (the message says what to fix)."""


def _unit(table: dict, name: str, what: str) -> float:
    if name not in table:
        raise DataError(f"unknown {what} unit {name!r}; known: {sorted(table)}")
    return table[name]


@dataclass(frozen=True, eq=False)
class Dataset:
    """positions (F, N, 3) nm; energies (F,) kJ/mol; forces (F, N, 3) kJ/mol/nm;
    atomic_numbers (N,); meta: provenance (level of theory, seeds, source file)."""

    positions: np.ndarray
    energies: np.ndarray
    forces: np.ndarray
    atomic_numbers: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        r = np.asarray(self.positions, float)
        e = np.asarray(self.energies, float)
        f = np.asarray(self.forces, float)
        z = np.asarray(self.atomic_numbers, int)
        where = self.meta.get("source", "the data")
        if r.ndim != 3 or r.shape[-1] != 3:
            raise DataError(f"{where}: positions must be (frames, atoms, 3), got {r.shape}")
        if z.shape != r.shape[1:2]:
            raise DataError(f"{where}: {z.shape[0] if z.ndim else 0} atomic numbers for "
                            f"{r.shape[1]} atoms")
        if e.shape != r.shape[:1]:
            raise DataError(f"{where}: {e.shape} energies for {r.shape[0]} frames")
        if f.shape != r.shape:
            raise DataError(f"{where}: forces have shape {f.shape}, positions {r.shape}")
        for name, a in (("positions", r), ("energies", e), ("forces", f)):
            if not np.all(np.isfinite(a)):
                bad = np.nonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0][:10]
                raise DataError(f"{where}: {name} are not finite in frames {bad.tolist()}")
        for k, v in (("positions", r), ("energies", e), ("forces", f), ("atomic_numbers", z)):
            object.__setattr__(self, k, v)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    def subset(self, indices) -> "Dataset":
        """The frames at ``indices``."""
        i = np.asarray(indices)
        return Dataset(self.positions[i], self.energies[i], self.forces[i], self.atomic_numbers,
                       dict(self.meta))

    def split(self, n_train: int, n_valid: int, seed: int = 0):
        """(train, valid, test): ``n_train`` and ``n_valid`` frames drawn at random
        (``seed``), the rest for testing. Same seed, same split."""
        if n_train < 1 or n_valid < 0 or n_train + n_valid > len(self):
            raise DataError(f"cannot split {len(self)} frames into {n_train} training and "
                            f"{n_valid} validation frames")
        order = np.random.default_rng(seed).permutation(len(self))
        return (self.subset(np.sort(order[:n_train])),
                self.subset(np.sort(order[n_train:n_train + n_valid])),
                self.subset(np.sort(order[n_train + n_valid:])))


def load(path: str, *, units: tuple[str, str] | None = None) -> Dataset:
    """Read an npz dataset (see the module docstring). units: (energy, length) of an MD17-style
    file (forces in energy/length); the workbench's own files carry theirs."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path!r} not found")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if {"positions", "atomic_numbers"} <= keys:
            meta = json.loads(str(f["meta"])) if "meta" in keys else {}
            declared = meta.get("units", {})
            e_unit = declared.get("energies", "kJ/mol")
            l_unit = declared.get("positions", "nm")
            f_unit = declared.get("forces", f"{e_unit}/{l_unit}")
            if units is not None:
                e_unit, l_unit = units
                f_unit = f"{e_unit}/{l_unit}"
            if f_unit != f"{e_unit}/{l_unit}":
                raise DataError(f"{path}: forces in {f_unit!r} but energies in {e_unit!r} and "
                                f"positions in {l_unit!r} (mixed units): convert the forces to "
                                f"{e_unit}/{l_unit}")
            if "forces" not in keys or "energies" not in keys:
                raise DataError(f"{path} has no {'forces' if 'forces' not in keys else 'energies'}"
                                ": training needs energies and forces of every frame")
            r, e, frc, z = f["positions"], f["energies"], f["forces"], f["atomic_numbers"]
        elif {"R", "z"} <= keys:
            meta = {}
            e_unit, l_unit = units or ("kcal/mol", "A")
            if "F" not in keys or "E" not in keys:
                raise DataError(f"{path} has no {'F (forces)' if 'F' not in keys else 'E'}: "
                                "training needs energies and forces of every frame")
            r, e, frc, z = f["R"], np.ravel(f["E"]), f["F"], f["z"]
        else:
            raise DataError(f"{path}: no positions (keys 'positions' or 'R') and atomic numbers "
                            f"('atomic_numbers' or 'z'); keys are {sorted(keys)}")
    ke = _unit(ENERGY_UNITS, e_unit, "energy")
    kl = _unit(LENGTH_UNITS, l_unit, "length")
    return Dataset(np.asarray(r) * kl, np.asarray(e) * ke, np.asarray(frc) * ke / kl, z,
                   dict(meta, source=str(path)))


def read_extxyz(path: str, *, energy_key: str = "energy", forces_key: str = "forces",
                units: tuple[str, str] = ("eV", "A"), index: str = ":") -> Dataset:
    """Read extended XYZ frames with ASE (``ase.io.read``): energy from ``info[energy_key]``
    or the attached calculator, forces from ``arrays[forces_key]`` or the calculator; units:
    (energy, length) of the file, ASE's eV and Angstrom by default."""
    import ase.io

    if not os.path.exists(path):
        raise FileNotFoundError(f"extended XYZ file {path!r} not found")
    frames = ase.io.read(path, index=index)
    if not frames:
        raise DataError(f"{path} holds no frames")
    zs = frames[0].get_atomic_numbers()
    r, e, f = [], [], []
    for k, atoms in enumerate(frames):
        if not np.array_equal(atoms.get_atomic_numbers(), zs):
            raise DataError(f"{path}: frame {k} has other atoms than frame 0; a dataset holds "
                            "one molecule (or box): split the file by composition")
        energy = atoms.info.get(energy_key)
        forces = atoms.arrays.get(forces_key)
        if (energy is None or forces is None) and atoms.calc is not None:
            results = atoms.calc.results
            energy = results.get("energy") if energy is None else energy
            forces = results.get("forces") if forces is None else forces
        if forces is None:
            raise DataError(f"{path}: frame {k} has no forces (looked for arrays[{forces_key!r}] "
                            "and the calculator's); training needs forces of every frame")
        if energy is None:
            raise DataError(f"{path}: frame {k} has no energy (looked for info[{energy_key!r}] "
                            "and the calculator's)")
        r.append(atoms.get_positions())
        e.append(float(energy))
        f.append(np.asarray(forces, float))
    ke = _unit(ENERGY_UNITS, units[0], "energy")
    kl = _unit(LENGTH_UNITS, units[1], "length")
    return Dataset(np.array(r) * kl, np.array(e) * ke, np.array(f) * ke / kl, zs,
                   dict(source=str(path), units_read=list(units)))
