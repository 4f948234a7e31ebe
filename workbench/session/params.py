"""Flat names and units for the numeric knobs of a session.

A parameter pytree (``{"epsilon": (T,), ...}``, or ``{"lj": {...}, "trap": {...}}`` for a sum,
or a force field's per-type tables) is flattened into one name per scalar: ``epsilon``,
``lj.sigma``, ``epsilon[1]``, ``PeriodicTorsionForce.k[12]``. :func:`with_values` writes flat
values back into a pytree of the same structure and dtypes (so nothing recompiles).

Units come from the one place that knows them: the energy terms
(:meth:`~workbench.potentials.base.EnergyTerm.param_units`) and the integrators
(:data:`~workbench.dynamics.integrators.SETTING_UNITS`), in molecular units; reduced-unit labels
are derived from those by :data:`workbench.units.REDUCED_LABELS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import units as wu
from ..dynamics.integrators import SETTING_UNITS
from ..naming import key_name

__all__ = ["ParamSpec", "UNIT_SYSTEMS", "describe", "flat_values", "with_values", "unit_label",
           "base_name"]

UNIT_SYSTEMS = ("molecular", "reduced")
"""Label sets: OpenMM's molecular units, or reduced Lennard-Jones units."""


@dataclass(frozen=True)
class ParamSpec:
    """A numeric knob: flat ``name`` (e.g. ``"epsilon"``, ``"lj.sigma"``, ``"epsilon[1]"``),
    ``group`` (``"params"`` or ``"settings"``), current ``value`` and ``unit`` label."""

    name: str
    group: str
    value: float
    unit: str = ""


@dataclass
class Leaf:
    """One array of the pytree: its path, shape, dtype and the flat names of its scalars."""

    path: tuple
    shape: tuple
    dtype: Any
    names: list[str] = field(default_factory=list)


def describe(params) -> list[Leaf]:
    """Flat names for every scalar inside the params pytree."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(leaf)
        base = ".".join(key_name(k) for k in path) or "param"
        if arr.size == 1:
            names = [base]
        else:
            names = [f"{base}[{','.join(map(str, ix))}]" for ix in np.ndindex(arr.shape)]
        out.append(Leaf(path, arr.shape, jnp.asarray(leaf).dtype, names))
    return out


def base_name(name: str) -> str:
    """The leaf a flat name belongs to: ``"lj.epsilon[1]"`` -> ``"lj.epsilon"``."""
    return name.split("[")[0]


def flat_values(leaves: list[Leaf], tree) -> dict[str, float]:
    """Flat name -> value for every scalar of ``tree``."""
    out = {}
    for spec, leaf in zip(leaves, jax.tree_util.tree_leaves(tree)):
        flat = np.asarray(leaf, dtype=float).reshape(-1)
        out.update({n: float(v) for n, v in zip(spec.names, flat)})
    return out


def with_values(leaves: list[Leaf], tree, values: dict[str, float]):
    """A copy of ``tree`` with flat-named values replaced (cast to each leaf's dtype). A leaf's
    name without an index (``epsilon``) sets every entry of it."""
    flat, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [np.array(x, dtype=float) for x in flat]
    known = {}
    for i, spec in enumerate(leaves):
        for j, n in enumerate(spec.names):
            known[n] = (i, j)
        if len(spec.names) > 1:
            known.setdefault(base_name(spec.names[0]), (i, None))
    unknown = set(values) - set(known)
    if unknown:
        shown = sorted(known)
        more = f" ... ({len(shown)} in all)" if len(shown) > 40 else ""
        raise KeyError(f"unknown parameters {sorted(unknown)}; known: {shown[:40]}{more}")
    for name, v in values.items():
        v = float(v)
        if not np.isfinite(v):
            raise ValueError(f"parameter {name} must be finite, got {v}")
        i, j = known[name]
        if j is None:
            arrays[i][...] = v
        else:
            arrays[i].reshape(-1)[j] = v
    out = [jnp.asarray(a, dtype=spec.dtype) for a, spec in zip(arrays, leaves)]
    return jax.tree_util.tree_unflatten(treedef, out)


def unit_label(name: str, group: str, param_units: dict[str, str], unit_system: str) -> str:
    """The unit label of knob ``name``: from the potential's ``param_units()`` (params) or the
    integrators' :data:`SETTING_UNITS` (settings), in ``unit_system``."""
    if group == "settings":
        unit = SETTING_UNITS.get(name, "")
    else:
        key = base_name(name)
        unit = param_units.get(key, param_units.get(key.split(".")[-1], ""))
    if unit_system == "reduced":
        return wu.REDUCED_LABELS.get(unit, unit)
    return unit
