"""Force-field types: which atoms, bonds, angles and torsions share parameters.

OpenMM's ``System`` stores parameters per instance; the force field they came from assigned them
per *type* (amber's atom classes, a residue template's atom charge). To tune a force field rather
than one molecule, instances are grouped back into types:

* with the ``ForceField`` at hand, each atom's type and class come from OpenMM's own residue
  template matching, and an instance's type is keyed by its atoms' classes (canonical order)
  plus its parameter values (so wildcard matches with different values stay apart);
* without it, instances with identical parameter values form one type.

:class:`TypeTable` turns per-instance keys into (types (M,), names (T,), first instance of each
type). OpenMM is imported lazily.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AtomTypes", "atom_types", "TypeTable", "group"]


@dataclass(frozen=True)
class AtomTypes:
    """Per-atom force-field labels (N,) each: ``type`` (e.g. 'protein-CT'), ``klass`` (the
    atom class, e.g. 'CT'), ``residue`` (template name) and ``name`` (template atom name)."""

    type: list[str]
    klass: list[str]
    residue: list[str]
    name: list[str]


def atom_types(forcefield, topology) -> AtomTypes | None:
    """Atom types and classes from ``forcefield``'s template matching for ``topology`` (the same
    matching ``createSystem`` does). Returns None when a residue matches no template or the
    OpenMM internals it relies on changed (typing then falls back to parameter values)."""
    try:
        bonded = forcefield._buildBondedToAtomList(topology)
        out = AtomTypes([], [], [], [])
        for res in topology.residues():
            template, matches = forcefield._getResidueTemplateMatches(res, bonded)
            if template is None or matches is None:
                return None
            for atom, m in zip(res.atoms(), matches):
                t = template.atoms[m]
                out.type.append(t.type)
                out.klass.append(forcefield._atomTypes[t.type].atomClass)
                out.residue.append(template.name)
                out.name.append(t.name)
        return out
    except (AttributeError, KeyError, TypeError, ValueError):  # internals changed: fall back
        return None


def _fmt(x) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


@dataclass
class TypeTable:
    """Assign type rows to instances by key, in order of first appearance."""

    def __post_init__(self):
        self.index: dict[Hashable, int] = {}
        self.names: list[str] = []
        self.first: list[int] = []
        self.types: list[int] = []

    def add(self, key: Hashable, name: str) -> int:
        row = self.index.get(key)
        if row is None:
            row = self.index[key] = len(self.names)
            self.names.append(name)
            self.first.append(len(self.types))
        self.types.append(row)
        return row

    def arrays(self) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
        """(types (M,), unique names (T,), first instance of each type (T,))."""
        names, seen = [], {}
        for n in self.names:  # two keys with one label (different values) get a suffix
            seen[n] = seen.get(n, 0) + 1
            names.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
        return (np.asarray(self.types, np.int32), tuple(names), np.asarray(self.first, np.int64))


def group(atoms: Sequence[Sequence[int]], values: Sequence[tuple], labels: AtomTypes | None,
          symmetric: bool = True, extra: Sequence[str] | None = None) -> TypeTable:
    """Group instances (atom tuples with parameter-value tuples) into types.

    With ``labels``, the key is the atom classes (reversed when that sorts first, for
    ``symmetric`` forms) plus the values, and the name joins the classes ('CT-HC'); without,
    the key is the values alone. ``extra``: a suffix per instance for the name (e.g. 'n=3')."""
    table = TypeTable()
    for m, (tup, vals) in enumerate(zip(atoms, values)):
        if labels is not None:
            classes = tuple(labels.klass[a] for a in tup)
            if symmetric and classes[::-1] < classes:
                classes = classes[::-1]
            key, name = (classes, tuple(vals)), "-".join(c or "?" for c in classes)
        else:
            key, name = tuple(vals), "(" + ", ".join(_fmt(v) for v in vals) + ")"
        if extra is not None:
            name = f"{name} {extra[m]}"
        table.add(key, name)
    return table
